-- Pruning of old route changes and finished jobs (lifecycle::prune) reads these.
CREATE INDEX route_changes_at ON route_changes (at);
CREATE INDEX jobs_completed_at ON jobs (completed_at);
