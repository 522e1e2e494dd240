-- Every operator change, whoever made it (issue 14): an API token by name, an
-- inventory file at a revision, or the server itself.
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms          INTEGER NOT NULL,
    -- 'token' (the API or the CLI), 'file' (an inventory file) or 'server'.
    actor_kind     TEXT    NOT NULL CHECK (actor_kind IN ('token', 'file', 'server')),
    -- The token's name, the file's path, or the server's cluster name.
    actor          TEXT    NOT NULL,
    -- A file's content digest; none for the others.
    actor_revision TEXT,
    -- What was done: `node.update`, `token.create`, ...
    action         TEXT    NOT NULL,
    -- What it was done to: 'node', 'volume', 'token', 'image'; and its name (a
    -- node's MAC), kept as text so the record outlives a deleted node.
    target_kind    TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    -- The node it concerns, if any (not a foreign key: the trail outlives nodes).
    node_id        INTEGER,
    -- The changed fields only, as JSON objects; no `before` for a creation and no
    -- `after` for a deletion.
    before         TEXT,
    after          TEXT
);
CREATE INDEX audit_node ON audit (node_id, id);

-- Time-boxed tokens: refused after this instant (none: never).
ALTER TABLE api_tokens ADD COLUMN expires_at_ms INTEGER;
