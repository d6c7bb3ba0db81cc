//! sandbar-runner: owns one Docker host through bollard. It will turn the control plane's jobs into containers
//! whose PID 1 is `sandbar-daemon` (bind-mounted read-only), enforce cpu/memory/disk limits, keep a warm pool,
//! manage network rules, build and cache sandbox images, and report container states back to the API.
//! Not built yet: see the runner issue.
