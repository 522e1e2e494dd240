-- Dashboard sessions: a browser logs in with an API token once and then holds a
-- random session id in a cookie. Only the id's SHA-256 is stored, with the hash of
-- the token it came from: the session acts as that token, and ends with it.
CREATE TABLE ui_sessions (
    id_hash       TEXT   PRIMARY KEY,
    token_hash    TEXT   NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX ui_sessions_token ON ui_sessions (token_hash);
