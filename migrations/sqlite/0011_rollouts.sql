-- Rolling re-provisions (issue 14). The whole decision state of a rollout (its
-- spec, status and every node's phase: ramboot_core::rollout::Rollout) is one JSON
-- document, written in the transaction of each step, so a restarted server (or
-- another one) continues it from here alone.
CREATE TABLE rollouts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms  INTEGER NOT NULL,
    -- Who started it (an audit actor, as text).
    created_by     TEXT    NOT NULL,
    -- The selector and the target, in words.
    description    TEXT    NOT NULL,
    -- 'running', 'paused', 'halted', 'aborted' or 'done': `state`'s, for listing.
    status         TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    -- Per node: the profile and image digest a boot must have to count as done.
    targets        TEXT    NOT NULL,
    -- The named hooks (config `hooks:`) it runs: {"drain": ..., "undrain": ...}.
    hooks          TEXT    NOT NULL,
    -- An operator's pause, resume or abort, waiting for the driver's next step.
    command        TEXT,
    -- The server driving it, until when (another takes over after that).
    driver         TEXT,
    driver_until_ms INTEGER,
    updated_at_ms  INTEGER NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);

-- What a rollout did, step by step: its live progress and its timeline.
CREATE TABLE rollout_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at_ms      INTEGER NOT NULL,
    node_id    INTEGER,
    message    TEXT    NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
