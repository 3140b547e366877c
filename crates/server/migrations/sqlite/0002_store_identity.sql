-- palette-server schema v2 (SQLite): the store's identity (a UUID made when
-- the store is created), carried by every v2 check-in so a watchdog keys the
-- commands it performed by (store, id).
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
