-- palette-server schema v12 (SQLite): the dashboard's sessions and version
-- history live in the store, so every replica knows them and they outlast a
-- restart. Sessions keep only hashes: the session cookie's (`id_hash`) and
-- the operator token's it stands for.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);

-- The fleet's version mix over time (one sample a minute, a day kept), in
-- the store so that a restart or another replica shows the same history.
CREATE TABLE version_samples (
    at INTEGER PRIMARY KEY,
    mix TEXT NOT NULL
);
