-- palette-server schema v7 (SQLite): per-host credentials and "last used".
-- A host enrolls once with an agent (enrollment) token and receives its own
-- host token, kept here as a SHA-256 hash only. At most one live token per
-- host name (the partial unique index makes a second enrollment of a live
-- name fail atomically, whatever the concurrency).
CREATE TABLE host_tokens (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_used INTEGER
);
CREATE UNIQUE INDEX host_tokens_live ON host_tokens (hostname) WHERE revoked_at IS NULL;
ALTER TABLE agent_tokens ADD COLUMN last_used INTEGER;
ALTER TABLE operator_tokens ADD COLUMN last_used INTEGER;
