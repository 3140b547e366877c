-- Dashboard sessions (as SQLite v12): in the store, so every replica knows
-- them. Only hashes: the session cookie's and the operator token's.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
