-- Nodes, leases, boots and their event timeline. Times are Unix milliseconds,
-- lease expiry is Unix seconds (the DHCP core's clock).

CREATE TABLE nodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    mac             TEXT    NOT NULL UNIQUE,
    hostname        TEXT    NOT NULL,
    ip              TEXT,
    -- Explicitly assigned profile; NULL means the server's default profile.
    profile         TEXT,
    state           TEXT    NOT NULL,
    state_since_ms  INTEGER NOT NULL,
    current_boot_id INTEGER,
    -- The stage-one agent's hardware report (JSON), from its latest hello.
    inventory       TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);

CREATE TABLE leases (
    -- One row per address: an address can never be in two leases.
    ip            TEXT    PRIMARY KEY,
    mac           TEXT    NOT NULL,
    expires_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'released', 'declined')),
    updated_at_ms INTEGER NOT NULL
);
-- And a MAC holds at most one active lease.
CREATE UNIQUE INDEX leases_one_active_per_mac ON leases (mac) WHERE state = 'active';

CREATE TABLE boots (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id        INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    -- SHA-256 of the per-boot token; the token itself is never stored.
    token_hash     TEXT    NOT NULL UNIQUE,
    profile        TEXT    NOT NULL,
    -- The image pinned when the boot started: a rebuild mid-boot changes nothing.
    image_name     TEXT,
    image_digest   TEXT,
    image_size     INTEGER,
    image_format   TEXT,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    outcome        TEXT CHECK (outcome IN ('ready', 'failed', 'superseded'))
);
CREATE INDEX boots_node ON boots (node_id, id);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id  INTEGER NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    boot_id  INTEGER REFERENCES boots (id) ON DELETE CASCADE,
    at_ms    INTEGER NOT NULL,
    -- 'state' (a lifecycle move), 'progress', 'dhcp' or 'info'.
    kind     TEXT    NOT NULL,
    state    TEXT,
    -- For a state move: how long the node spent in the state it left.
    phase_ms INTEGER,
    message  TEXT    NOT NULL
);
CREATE INDEX events_node ON events (node_id, id);
