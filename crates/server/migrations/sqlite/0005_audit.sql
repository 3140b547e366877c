-- palette-server schema v5 (SQLite): the audit log — every operator action,
-- who (the token's label), from where, what, when.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    source  TEXT,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
