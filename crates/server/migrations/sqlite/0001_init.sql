-- palette-server schema v1 (SQLite). Times are milliseconds since the epoch.
CREATE TABLE hosts (
    hostname   TEXT PRIMARY KEY NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    report     TEXT,
    report_at  INTEGER
);

CREATE TABLE commands (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE command_acks (
    command_id INTEGER NOT NULL REFERENCES commands(id),
    hostname   TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    message    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (command_id, hostname)
);

CREATE TABLE releases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    product    TEXT NOT NULL,
    version    TEXT NOT NULL,
    platform   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    md5        TEXT NOT NULL,
    size       INTEGER NOT NULL,
    signature  TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (product, version, platform, kind)
);

CREATE TABLE configs (
    revision   INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname   TEXT NOT NULL,
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    body       BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX configs_by_host ON configs (hostname, source, revision);

CREATE TABLE agent_tokens (
    hash       TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE operator_tokens (
    hash       TEXT PRIMARY KEY NOT NULL,
    label      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
