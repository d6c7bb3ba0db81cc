//! The API's decisions, with no web framework: the sandbox state machine ([`state`] decides, [`apply`] carries it
//! out on rows), making and changing sandboxes ([`sandboxes`]), snapshots and builds (with the images an
//! organization may name, [`images`], and the rules a Dockerfile must follow, [`dockerfile`]), placement on
//! runners, quotas (sandbox resources, [`quota`]; image bytes, [`image_quota`]), network settings, who may reach
//! which port ([`access`], which the proxy asks), the lifecycle timers with pause/resume ([`lifecycle`]), volumes
//! ([`volumes`]), each sandbox's usage as runners sample it ([`usage`]), API keys ([`keys`]) and the dashboard's sign-in sessions ([`sessions`]). Runner jobs of each kind
//! are `crate::jobs`; every row is read and written through `crate::store`.

pub mod access;
pub mod apply;
pub mod builds;
pub mod daemon_addrs;
pub mod dockerfile;
pub mod drain;
pub mod group_commit;
pub mod image_quota;
pub mod images;
pub mod keys;
pub mod lifecycle;
pub mod network;
pub mod placement;
pub mod quota;
pub mod registries;
pub mod sandboxes;
pub mod sessions;
pub mod snapshots;
pub mod state;
pub mod usage;
pub mod volumes;
