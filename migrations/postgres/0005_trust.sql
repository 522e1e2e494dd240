-- Trust on the boot network (see docs/threat-model.md).
-- An operator vouched for the node (registered or approved it): it may boot
-- profiles that render secrets or attach volumes even when only facts it reports
-- itself matched it.
ALTER TABLE nodes ADD COLUMN approved BOOLEAN NOT NULL DEFAULT FALSE;
-- When DHCP last bound `ip` to the node (a grant, or a proxyDHCP sighting).
ALTER TABLE nodes ADD COLUMN ip_seen_at_ms BIGINT;
-- The address a boot's token was issued to: every agent request must come from it.
ALTER TABLE boots ADD COLUMN bound_ip TEXT;
-- The boot's secrets are released once: when the plan and the overlay were fetched.
ALTER TABLE boots ADD COLUMN plan_released_at_ms BIGINT;
ALTER TABLE boots ADD COLUMN overlay_released_at_ms BIGINT;
-- Reports (state changes, progress) the boot made; capped.
ALTER TABLE boots ADD COLUMN reports BIGINT  NOT NULL DEFAULT 0;
-- Registered nodes were an operator's act, and so is an assignment.
UPDATE nodes SET approved = TRUE WHERE profile IS NOT NULL;
