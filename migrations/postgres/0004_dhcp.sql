-- DHCP for fleets: reservations from the node inventory, the PXE UUID (option 97)
-- as a node fact, and quarantine of declined addresses (expires_at of a
-- 'declined' row is when the quarantine ends).
ALTER TABLE nodes ADD COLUMN reserved_ip TEXT;
ALTER TABLE nodes ADD COLUMN client_uuid TEXT;
CREATE UNIQUE INDEX nodes_reserved_ip ON nodes (reserved_ip) WHERE reserved_ip IS NOT NULL;
