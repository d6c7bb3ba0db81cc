-- The dashboard's sign-in sessions (a key exchanged for a cookie; only the cookie's hash is kept) and a hint of
-- each API key (its last characters) so a list can tell keys apart without holding them.

CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    api_key_id TEXT NOT NULL REFERENCES api_keys (id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX dashboard_sessions_key ON dashboard_sessions (api_key_id);

ALTER TABLE api_keys ADD COLUMN value_hint TEXT;
