-- linkedSandbox at create: the sandbox this one is linked to (same runner; the two may connect to each other).
ALTER TABLE sandboxes ADD COLUMN linked_sandbox_id TEXT;
