-- An organization's build network: what the `RUN` steps of its Dockerfile builds may reach. NULL (the default): no
-- network at all; 'open': what a sandbox without an egress policy reaches; else a comma-separated IPv4 CIDR allow
-- list. Set by operators (`sandbar-api org-build-network`); the runner's floor applies to every value.
ALTER TABLE organizations ADD COLUMN build_network TEXT;
