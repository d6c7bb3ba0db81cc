//! sandbar-proxy: the pingora edge. It will terminate TLS with rustls, route `/toolbox/{sandboxId}/...` and
//! `{port}-{sandboxId}.{domain}` to the right daemon with the per-sandbox daemon token added, authenticate callers,
//! pass WebSockets and long streams through, pool upstream connections, and run the SSH gateway on 2222.
//! Not built yet: see the proxy issue.

pub mod ssh_gateway;
