-- palette-server schema v12 (SQLite): dashboard sessions live in the store,
-- so every replica knows them and they outlast a restart. Only hashes: the
-- session cookie's (`id_hash`) and the operator token's it stands for.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
