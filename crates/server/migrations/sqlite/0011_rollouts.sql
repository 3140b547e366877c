-- palette-server schema v11 (SQLite): staged rollouts, pins, maintenance
-- windows and operator-assigned host labels.
-- A held release is offered to no host until a rollout starts (every
-- release is held under --default-rollout manual).
ALTER TABLE releases ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases(id),
    selector TEXT NOT NULL,
    waves TEXT NOT NULL,
    soak_ms INTEGER NOT NULL,
    halt_after TEXT NOT NULL,
    max_concurrent INTEGER NOT NULL,
    phase TEXT NOT NULL,
    wave INTEGER NOT NULL,
    wave_started_at INTEGER NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE rollout_members (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    hostname TEXT NOT NULL,
    position INTEGER NOT NULL,
    wave INTEGER NOT NULL,
    admitted_at INTEGER,
    outcome TEXT,
    finished_at INTEGER,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, hostname)
);

CREATE TABLE host_labels (
    hostname TEXT PRIMARY KEY,
    labels TEXT NOT NULL
);

CREATE TABLE pins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    selector TEXT NOT NULL,
    product TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE maintenance_windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    selector TEXT NOT NULL,
    schedule TEXT NOT NULL,
    tz TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
