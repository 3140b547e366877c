-- palette-server schema v8 (SQLite): a command keeps its real issue time;
-- the whole-second time legacy v1 watchdogs see (`ts`, strictly increasing
-- so two commands issued in one second stay distinct) is stored beside it.
-- Older rows have none: their issued_at was that time.
ALTER TABLE commands ADD COLUMN legacy_ts INTEGER;
