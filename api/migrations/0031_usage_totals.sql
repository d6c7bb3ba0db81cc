-- What each organization's and each runner's live sandboxes use, kept in step with every change of a sandbox
-- (`store::totals`), so a create's quota check and placement read one row each instead of summing every sandbox.
-- Rows are made on first use and recomputed from the sandboxes at every API start (`store::totals::reconcile`).
CREATE TABLE organization_totals (
    organization_id TEXT PRIMARY KEY,
    sandboxes BIGINT NOT NULL DEFAULT 0,
    cpu BIGINT NOT NULL DEFAULT 0,
    memory BIGINT NOT NULL DEFAULT 0,
    disk BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE runner_totals (
    runner_id TEXT PRIMARY KEY,
    sandboxes BIGINT NOT NULL DEFAULT 0,
    cpu BIGINT NOT NULL DEFAULT 0,
    memory BIGINT NOT NULL DEFAULT 0,
    disk BIGINT NOT NULL DEFAULT 0
);
-- `GET /api/sandbox/{name}` finds a name among destroyed sandboxes too (the live-name index skips them).
CREATE INDEX sandboxes_org_name ON sandboxes (organization_id, name);
