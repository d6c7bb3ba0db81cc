-- The IPv4 networks (CIDRs, comma-separated) a runner declared at its registration: its sandboxes' bridge subnet, or
-- its advertise address as a /32. The API refuses a report of that runner naming a daemon or SSH address outside
-- them (issue #21: a runner may not point the proxy at another host's sandboxes, or anywhere else).
ALTER TABLE runner_credentials ADD COLUMN daemon_networks TEXT NOT NULL DEFAULT '';
