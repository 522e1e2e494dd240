-- iSCSI VM disks: volumes, their attachment to nodes, and each node's CHAP secret.

-- Generated on the node's first export; handed to the node in its plan and to the
-- target, never logged.
ALTER TABLE nodes ADD COLUMN chap_secret TEXT;

CREATE TABLE volumes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes > 0),
    -- Attached to this node (as `lun`), or to none. Deleting a node detaches,
    -- never deletes: VM data outlives the hypervisor's records.
    node_id       INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    lun           INTEGER CHECK (lun IS NULL OR lun >= 1),
    created_at_ms INTEGER NOT NULL,
    UNIQUE (node_id, lun)
);
