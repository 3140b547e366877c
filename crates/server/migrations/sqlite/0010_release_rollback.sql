-- palette-server schema v10 (SQLite): a release an operator rolled back is
-- withdrawn and, unlike a plain withdrawal, its hosts are offered the newest
-- older release as a downgrade.
ALTER TABLE releases ADD COLUMN rolled_back_at INTEGER;
