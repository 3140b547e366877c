-- palette-server schema for PostgreSQL: the same tables as SQLite schema
-- v11 (see ../sqlite/), created at once. Times are milliseconds since the
-- epoch (BIGINT); booleans are 0/1 as in SQLite.
CREATE TABLE hosts (
    hostname   TEXT PRIMARY KEY NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    report     TEXT,
    report_at  BIGINT
);

CREATE TABLE commands (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    legacy_ts  BIGINT
);

CREATE TABLE command_acks (
    command_id BIGINT NOT NULL REFERENCES commands(id),
    hostname   TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    message    TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (command_id, hostname)
);

CREATE TABLE releases (
    id         BIGSERIAL PRIMARY KEY,
    product    TEXT NOT NULL,
    version    TEXT NOT NULL,
    platform   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    md5        TEXT NOT NULL,
    size       BIGINT NOT NULL,
    signature  TEXT,
    created_at BIGINT NOT NULL,
    withdrawn_at BIGINT,
    manifest   TEXT,
    rolled_back_at BIGINT,
    held       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (product, version, platform, kind)
);

CREATE TABLE configs (
    revision   BIGSERIAL PRIMARY KEY,
    hostname   TEXT NOT NULL,
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       BIGINT NOT NULL,
    body       BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX configs_by_host ON configs (hostname, source, revision);

CREATE TABLE agent_tokens (
    id         BIGSERIAL UNIQUE,
    hash       TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    label      TEXT,
    revoked_at BIGINT,
    last_used  BIGINT
);

CREATE TABLE operator_tokens (
    id         BIGSERIAL UNIQUE,
    hash       TEXT PRIMARY KEY NOT NULL,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used  BIGINT
);

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE audit (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    source  TEXT,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);

CREATE TABLE host_tokens (
    id BIGSERIAL PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used BIGINT
);
CREATE UNIQUE INDEX host_tokens_live ON host_tokens (hostname) WHERE revoked_at IS NULL;

CREATE TABLE update_history (
    id BIGSERIAL PRIMARY KEY,
    hostname TEXT NOT NULL,
    product TEXT NOT NULL,
    release_id BIGINT NOT NULL,
    version TEXT NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX update_history_by_host ON update_history (hostname, id);

CREATE TABLE rollouts (
    id BIGSERIAL PRIMARY KEY,
    release_id BIGINT NOT NULL REFERENCES releases(id),
    selector TEXT NOT NULL,
    waves TEXT NOT NULL,
    soak_ms BIGINT NOT NULL,
    halt_after TEXT NOT NULL,
    max_concurrent BIGINT NOT NULL,
    phase TEXT NOT NULL,
    wave BIGINT NOT NULL,
    wave_started_at BIGINT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE rollout_members (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    hostname TEXT NOT NULL,
    position BIGINT NOT NULL,
    wave BIGINT NOT NULL,
    admitted_at BIGINT,
    outcome TEXT,
    finished_at BIGINT,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, hostname)
);

CREATE TABLE host_labels (
    hostname TEXT PRIMARY KEY,
    labels TEXT NOT NULL
);

CREATE TABLE pins (
    id BIGSERIAL PRIMARY KEY,
    selector TEXT NOT NULL,
    product TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE maintenance_windows (
    id BIGSERIAL PRIMARY KEY,
    selector TEXT NOT NULL,
    schedule TEXT NOT NULL,
    tz TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
