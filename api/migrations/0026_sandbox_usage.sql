-- Per-sandbox usage from the runners' heartbeats (`GET /api/sandbox/{id}/usage`). `sandbox_usage` holds the latest
-- sample of each sandbox; `sandbox_usage_history` one sample every half minute or so, kept for about an hour (the
-- lifecycle's pruning drops older rows, and latest samples a day old). Times are the API's clock, in ms; a figure
-- the runner did not report is NULL. `cpu_millicores` is thousandths of a core.
CREATE TABLE sandbox_usage (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes (id),
    sampled_at BIGINT NOT NULL,
    cpu_nanos BIGINT NOT NULL,
    cpu_millicores BIGINT,
    memory_bytes BIGINT NOT NULL,
    memory_limit_bytes BIGINT,
    memory_peak_bytes BIGINT,
    oom_kills BIGINT,
    pids BIGINT,
    net_rx_bytes BIGINT,
    net_tx_bytes BIGINT,
    disk_bytes BIGINT
);

CREATE TABLE sandbox_usage_history (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    sampled_at BIGINT NOT NULL,
    cpu_nanos BIGINT NOT NULL,
    cpu_millicores BIGINT,
    memory_bytes BIGINT NOT NULL,
    oom_kills BIGINT,
    pids BIGINT,
    net_rx_bytes BIGINT,
    net_tx_bytes BIGINT,
    disk_bytes BIGINT,
    PRIMARY KEY (sandbox_id, sampled_at)
);
CREATE INDEX sandbox_usage_history_at ON sandbox_usage_history (sampled_at);
