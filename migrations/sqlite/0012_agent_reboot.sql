-- Reboots through the node's agent (issue 14), for nodes without a BMC: a rollout
-- (or an operator) asks, and stage two's `ramboot-agent commands` hears it on its
-- next poll of GET /boot/v1/command. Only a request made after the node's current
-- boot started counts; it is handed out once (delivered is set atomically).
ALTER TABLE nodes ADD COLUMN reboot_requested_at_ms INTEGER;
ALTER TABLE nodes ADD COLUMN reboot_delivered_at_ms INTEGER;
