//! `/port`: the TCP ports listening in the sandbox.

use serde::{Deserialize, Serialize};

/// `GET /port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortList {
    /// Ascending, each once (IPv4 and IPv6 listeners merged).
    pub ports: Vec<u16>,
}

/// `GET /port/{port}/in-use`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortInUse {
    pub is_in_use: bool,
}
