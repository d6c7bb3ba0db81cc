//! The proxy's adapter to the API, the only place that speaks to another sandbar process: the HTTP client of the
//! internal surface ([`api`]), what the proxy remembers of its answers ([`cache`]), single-flight so a burst asks
//! once ([`flight`]), and the one activity reporter that the HTTP edge and the SSH gateway both feed
//! ([`activity`]). No decision about who may reach what is made here or anywhere in the proxy: the API answers, the
//! proxy caches.

pub mod activity;
pub mod api;
pub mod cache;
pub mod flight;
