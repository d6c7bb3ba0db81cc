//! sandbar-api: the control plane. It will serve the Daytona-compatible REST API under `/api`, own API keys,
//! organizations and quotas, the sandbox state machine, the job queue runners pull from, lifecycle timers
//! (auto-stop/archive/delete) and route lookups for the proxy, stored with sqlx (SQLite or PostgreSQL).
//! Not built yet: see the control-plane issue.
