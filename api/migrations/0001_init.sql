-- Portable between SQLite and PostgreSQL (the API reaches both through sqlx's Any driver): only TEXT and BIGINT
-- columns, booleans as 0/1, times as Unix milliseconds.

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('seq', 0);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    quota_cpu BIGINT NOT NULL,
    quota_memory BIGINT NOT NULL,
    quota_disk BIGINT NOT NULL,
    quota_sandboxes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    cpu BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    reported_sandboxes BIGINT NOT NULL,
    storage_driver TEXT NOT NULL,
    disk_enforced BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    runner_id TEXT,
    state TEXT NOT NULL,
    desired_state TEXT NOT NULL,
    error_reason TEXT,
    snapshot TEXT NOT NULL,
    os_user TEXT NOT NULL,
    env TEXT NOT NULL,
    labels TEXT NOT NULL,
    public BIGINT NOT NULL,
    network_block_all BIGINT NOT NULL,
    network_allow_list TEXT,
    target TEXT NOT NULL,
    cpu BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    auto_stop BIGINT NOT NULL,
    auto_archive BIGINT NOT NULL,
    auto_delete BIGINT NOT NULL,
    daemon_addr TEXT,
    ssh_addr TEXT,
    daemon_token TEXT NOT NULL,
    preview_token TEXT NOT NULL,
    provisioned BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL,
    state_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (organization_id, name) WHERE state <> 'destroyed';
CREATE INDEX sandboxes_org_created ON sandboxes (organization_id, created_at, id);
CREATE INDEX sandboxes_runner ON sandboxes (runner_id);
CREATE INDEX sandboxes_state ON sandboxes (state);

CREATE TABLE sandbox_labels (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
);
CREATE INDEX sandbox_labels_kv ON sandbox_labels (key, value);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    runner_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_state TEXT NOT NULL,
    via_state TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    handed_at BIGINT,
    completed_at BIGINT,
    error TEXT
);
CREATE INDEX jobs_runner_state ON jobs (runner_id, state);
CREATE INDEX jobs_sandbox_state ON jobs (sandbox_id, state);

CREATE TABLE route_changes (
    seq BIGINT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    at BIGINT NOT NULL
);

CREATE TABLE ssh_access (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE preview_tokens (
    token_hash TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    port BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
