-- The daemon's SSH host key (OpenSSH public key line) as its runner reported it; the SSH gateway pins it.
ALTER TABLE sandboxes ADD COLUMN daemon_host_key TEXT;
