-- Image bytes per organization (see api/src/domain/image_quota.rs): one row per image an organization's operation
-- left on a runner (a snapshot taken from a sandbox, a Dockerfile build, a fork), with the size the runner
-- reported; a row goes when the runner removed its image. Each organization's own limit is
-- `organizations.quota_image_bytes`: NULL takes the API's default (--quota-image-gib), 0 is no limit.
ALTER TABLE organizations ADD COLUMN quota_image_bytes BIGINT;

CREATE TABLE image_bytes (
    -- The snapshot, build or fork (sandbox) the image belongs to.
    owner_id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    -- snapshot, build or fork
    kind TEXT NOT NULL,
    runner_id TEXT NOT NULL,
    image_name TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX image_bytes_org ON image_bytes (organization_id);

-- Builds are collected by (runner, image) once nothing uses them; `removing` while the runner removes the image.
CREATE INDEX builds_runner_image ON builds (runner_id, image_name);
CREATE INDEX builds_state ON builds (state);
