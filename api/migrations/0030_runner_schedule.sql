-- Draining a host (issue 21): whether a runner takes new sandboxes. 'active' does; 'cordoned' and 'draining' do
-- not (placement skips them; an archived sandbox homed there restores elsewhere). `move_out` = 1 on a draining
-- runner: the lifecycle moves its sandboxes away by archive and restore (`crate::domain::drain`).
ALTER TABLE runners ADD COLUMN schedule TEXT NOT NULL DEFAULT 'active';
ALTER TABLE runners ADD COLUMN move_out BIGINT NOT NULL DEFAULT 0;
-- A sandbox on its way off a draining runner: `restart` = 1 when it was started, so it starts again (restored on
-- another runner) once archived. The row goes when the move is done.
CREATE TABLE sandbox_moves (
    sandbox_id TEXT PRIMARY KEY,
    from_runner TEXT NOT NULL,
    restart BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
