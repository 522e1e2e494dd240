-- The node's own boot chain (`ipxe` or `signed`); none: its profile's, else the
-- default profile's, else dhcp.boot_chain.
ALTER TABLE nodes ADD COLUMN boot_chain TEXT;
