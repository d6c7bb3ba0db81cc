-- Snapshots made from a sandbox (POST /sandbox/{id}/snapshot): the image lives on one runner (no registry), so the
-- row records that runner, the source sandbox, the image's size, and a state (pending while the runner commits).
-- Snapshots registered from an image keep the defaults: active, on every runner.
ALTER TABLE snapshots ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
ALTER TABLE snapshots ADD COLUMN error_reason TEXT;
ALTER TABLE snapshots ADD COLUMN source_sandbox_id TEXT;
ALTER TABLE snapshots ADD COLUMN runner_id TEXT;
ALTER TABLE snapshots ADD COLUMN size BIGINT;
