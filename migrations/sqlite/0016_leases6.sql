-- DHCPv6 bindings (IA_NA addresses). One row per address, as for IPv4; the client
-- is its DUID (hex) and IAID, the node its MAC when the DUID or the link-local
-- address names one. expires_at is Unix seconds; a 'declined' row's expires_at is
-- when its quarantine ends.
CREATE TABLE leases6 (
    address       TEXT    PRIMARY KEY,
    duid          TEXT    NOT NULL,
    iaid          INTEGER NOT NULL,
    mac           TEXT,
    expires_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'released', 'declined')),
    updated_at_ms INTEGER NOT NULL
);
-- A node holds one active IPv6 address whichever of its clients asked.
CREATE UNIQUE INDEX leases6_one_active_per_mac ON leases6 (mac) WHERE state = 'active' AND mac IS NOT NULL;
