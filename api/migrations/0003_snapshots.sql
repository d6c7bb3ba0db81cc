-- Snapshots: named local images with default resources (no registry: the image must exist on the runners).
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    image_name TEXT NOT NULL,
    entrypoint TEXT,
    cpu BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX snapshots_org_name ON snapshots (organization_id, name);
