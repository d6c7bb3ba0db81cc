-- Dockerfile builds (snapshots and sandboxes created with buildInfo), their logs, and what waits for them.
-- A build runs on one runner, where its image then lives (there is no registry), so what uses it goes there.
CREATE TABLE builds (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    dockerfile_hash TEXT NOT NULL,
    dockerfile TEXT NOT NULL,
    image_name TEXT NOT NULL,
    runner_id TEXT NOT NULL,
    -- pending (queued), building (a runner claimed it), done, failed
    state TEXT NOT NULL,
    error_reason TEXT,
    log_bytes BIGINT NOT NULL,
    log_attempt TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX builds_org_hash ON builds (organization_id, dockerfile_hash);

-- One row per batch of lines a runner sent; `text` holds the lines, each ending with a newline.
CREATE TABLE build_logs (
    build_id TEXT NOT NULL REFERENCES builds (id),
    seq BIGINT NOT NULL,
    attempt TEXT NOT NULL,
    line_offset BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE UNIQUE INDEX build_logs_batch ON build_logs (build_id, attempt, line_offset);

ALTER TABLE snapshots ADD COLUMN build_id TEXT;
ALTER TABLE sandboxes ADD COLUMN build_id TEXT;
CREATE INDEX sandboxes_build ON sandboxes (build_id);
CREATE INDEX snapshots_build ON snapshots (build_id);
