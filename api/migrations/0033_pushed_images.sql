-- Images pushed to the operator's internal registry (runner/src/host/registry.rs, api/src/domain/placement.rs):
-- a snapshot's or a build's copy there lets placement put sandboxes of it on any runner, which pulls it first;
-- a failed push is kept as its reason, and the image stays pinned to its runner. A sandbox remembers the copy of
-- its image (`image_source`), so a restore or a fork's restore on another runner can pull its base too.
ALTER TABLE snapshots ADD COLUMN pushed_image TEXT;
ALTER TABLE snapshots ADD COLUMN push_error TEXT;
ALTER TABLE builds ADD COLUMN pushed_image TEXT;
ALTER TABLE builds ADD COLUMN push_error TEXT;
ALTER TABLE sandboxes ADD COLUMN image_source TEXT;
