//! Which daemon addresses a runner may report. A runner declares at registration the IPv4 networks its sandboxes'
//! daemons are reached in (its bridge subnet, or its `--advertise-addr` as a `/32`); every address it reports
//! afterwards (`daemonAddr`, `sshAddr` of a job result or its full picture) must lie in them. So a runner, which
//! holds only its own credential, cannot point the proxy and the SSH gateway at another host's sandboxes, at the
//! API's host or anywhere else on the network: the edge forwards signed requests to whatever address the API holds.

use sandbar_proto::network::Ipv4Cidr;
use sandbar_proto::runner::SandboxInfo;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::runners;

/// The most networks one registration may declare.
pub const MAX_NETWORKS: usize = 16;

/// Checks and normalises the networks of a registration: each an IPv4 CIDR, at most [`MAX_NETWORKS`]. Stored
/// comma-separated.
pub fn parse_networks(list: &[String]) -> ApiResult<String> {
    if list.len() > MAX_NETWORKS {
        return Err(ApiError::bad_request(format!(
            "daemonNetworks has {} entries; at most {MAX_NETWORKS} are allowed",
            list.len()
        )));
    }
    let cidrs = list
        .iter()
        .map(|n| n.parse::<Ipv4Cidr>().map_err(|e| ApiError::bad_request(format!("daemonNetworks: {e}"))))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

/// Whether `addr` (`ip:port`) is an IPv4 address inside one of `networks` (as [`parse_networks`] stores them).
fn inside(addr: &str, networks: &str) -> bool {
    let Ok(std::net::SocketAddr::V4(a)) = addr.parse::<std::net::SocketAddr>() else { return false };
    networks.split(',').filter_map(|n| n.parse::<Ipv4Cidr>().ok()).any(|n| n.contains(*a.ip()))
}

/// Refuses (403, naming the sandbox and the address) a report of `runner_id` whose daemon or SSH address lies
/// outside the networks it registered.
pub async fn check(app: &App, runner_id: &str, infos: &[&SandboxInfo]) -> ApiResult<()> {
    let addrs = |i: &&SandboxInfo| {
        let id = i.id.clone();
        [i.daemon_addr.clone(), i.ssh_addr.clone()].into_iter().flatten().map(move |a| (id.clone(), a))
    };
    let reported: Vec<(String, String)> = infos.iter().flat_map(addrs).collect();
    if reported.is_empty() {
        return Ok(());
    }
    let networks = runners::daemon_networks(&app.db.pool, runner_id).await?.unwrap_or_default();
    match reported.into_iter().find(|(_, a)| !inside(a, &networks)) {
        None => Ok(()),
        Some((id, addr)) => {
            tracing::warn!(runner_id, sandbox_id = %id, addr = %addr, "daemon address outside the runner's networks");
            Err(ApiError::forbidden(format!(
                "runner {runner_id} reported address {addr} for sandbox {id}, outside the networks it registered \
                 ({}); a runner reports only addresses on its own host (its bridge subnet or --advertise-addr)",
                if networks.is_empty() { "none" } else { networks.as_str() }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_checked_and_normalised() {
        assert_eq!(
            parse_networks(&["10.214.3.7/24".into(), "192.0.2.1/32".into()]).unwrap(),
            "10.214.3.0/24,192.0.2.1/32"
        );
        assert_eq!(parse_networks(&[]).unwrap(), "");
        assert_eq!(parse_networks(&["fd00::/8".into()]).unwrap_err().status, 400);
        assert_eq!(parse_networks(&vec!["10.0.0.0/8".to_owned(); MAX_NETWORKS + 1]).unwrap_err().status, 400);
    }

    #[test]
    fn only_addresses_inside_the_networks_pass() {
        let nets = "10.214.3.0/24,192.0.2.1/32";
        assert!(inside("10.214.3.9:2280", nets));
        assert!(inside("192.0.2.1:49153", nets));
        assert!(!inside("192.0.2.2:49153", nets));
        assert!(!inside("10.214.4.9:2280", nets));
        assert!(!inside("[::1]:2280", nets));
        assert!(!inside("not an address", nets));
        assert!(!inside("10.214.3.9:2280", ""));
    }
}
