-- Why a sandbox last left `started` without being asked: 'host' when its runner reported the stop (Docker
-- restarted, the daemon died, an operator stopped the container). The lifecycle brings such a sandbox back while
-- its desired state is still `started`, `host_restarts` times so far; any user or timer action clears both.
ALTER TABLE sandboxes ADD COLUMN stop_cause TEXT;
ALTER TABLE sandboxes ADD COLUMN host_restarts BIGINT NOT NULL DEFAULT 0;
-- The job deadline sweep reads unfinished jobs by age.
CREATE INDEX jobs_state_created ON jobs (state, created_at);
