-- palette-server schema v4 (SQLite): the signed release manifest, kept
-- exactly as the publisher signed it (the signature is in `signature`).
ALTER TABLE releases ADD COLUMN manifest TEXT;
