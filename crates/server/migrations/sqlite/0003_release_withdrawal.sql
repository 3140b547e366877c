-- palette-server schema v3 (SQLite): a withdrawn release is no longer
-- offered to any host (it stays listed, and its artifact downloadable).
ALTER TABLE releases ADD COLUMN withdrawn_at INTEGER;
