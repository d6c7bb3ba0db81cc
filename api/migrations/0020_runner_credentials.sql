-- Per-runner credentials (helper iso-images): a runner registers with the shared join token and gets a credential
-- bound to its id, stored hashed (SHA-256, hex); every later runner call carries it. A new registration replaces it.
CREATE TABLE runner_credentials (
    runner_id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    issued_at BIGINT NOT NULL
);
