-- Dashboard sessions and version history (as SQLite v12): in the store, so every replica knows
-- them. Only hashes: the session cookie's and the operator token's.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);

-- The fleet's version mix over time (as SQLite v12).
CREATE TABLE version_samples (
    at BIGINT PRIMARY KEY,
    mix TEXT NOT NULL
);
