-- Operator surface: API tokens, node labels, maintenance, reprovision, retry count.

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL CHECK (role IN ('read', 'admin')),
    -- SHA-256 of the token; the token itself is shown once and never stored.
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

-- JSON object of string labels, used by profile selectors.
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
-- Consecutive failed boots; reset when a boot reaches ready. Drives retry backoff.
ALTER TABLE nodes ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
-- Why the node is in maintenance (NULL when it is not).
ALTER TABLE nodes ADD COLUMN maintenance_reason TEXT;

CREATE INDEX nodes_state ON nodes (state);
CREATE INDEX events_id ON events (id);

-- Firmware architecture from the node's last DHCP request (for `arch` selectors).
ALTER TABLE nodes ADD COLUMN arch TEXT;
