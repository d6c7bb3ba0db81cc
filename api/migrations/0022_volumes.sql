-- Volumes (Daytona's `daytona.volume`): named per organization, their data a directory on the runner that first
-- mounted them (`runner_id`, NULL until then), which sandboxes using them are placed on. `size_bytes` is what that
-- runner's heartbeat last measured. A deleted volume's row goes once its runner removed the data.
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    -- ready, deleting, error
    state TEXT NOT NULL,
    error_reason TEXT,
    runner_id TEXT,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX volumes_org_name ON volumes (organization_id, name);

-- Which sandbox mounts which volume (the in-use check); the mounts themselves, as the create asked, are the
-- sandbox's `volumes` column (JSON), which every spec sent to a runner carries.
CREATE TABLE sandbox_volumes (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    volume_id TEXT NOT NULL REFERENCES volumes (id),
    PRIMARY KEY (sandbox_id, volume_id)
);
CREATE INDEX sandbox_volumes_volume ON sandbox_volumes (volume_id);

ALTER TABLE sandboxes ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
