-- palette-server schema v6 (SQLite): tokens can be listed and revoked. A
-- revoked token stays (revoked_at set), so a license key given again in
-- PALETTE_AGENT_TOKENS is not resurrected.
ALTER TABLE agent_tokens ADD COLUMN label TEXT;
ALTER TABLE agent_tokens ADD COLUMN revoked_at INTEGER;
ALTER TABLE operator_tokens ADD COLUMN revoked_at INTEGER;
