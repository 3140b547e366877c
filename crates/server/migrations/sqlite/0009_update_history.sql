-- Every update outcome a host reported (agent and watchdog), newest last:
-- a host's report keeps only the latest one per product.
CREATE TABLE update_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    product TEXT NOT NULL,
    release_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX update_history_by_host ON update_history (hostname, id);
