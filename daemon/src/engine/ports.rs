//! The TCP ports listening in the sandbox (`/port`), read from the kernel's socket tables of the sandbox's network
//! namespace (`/proc/net/tcp` and `tcp6`), so a listener of any user or program counts, whoever started it.

use std::collections::BTreeSet;

use super::{Error, Result};

const TABLES: &[&str] = &["/proc/net/tcp", "/proc/net/tcp6"];
/// `st` of a listening socket in those tables.
const LISTEN: &str = "0A";

/// Every listening TCP port, ascending.
pub fn listening() -> Result<Vec<u16>> {
    let mut ports = BTreeSet::new();
    let mut read_any = false;
    for table in TABLES {
        match std::fs::read_to_string(table) {
            Ok(text) => {
                read_any = true;
                ports.extend(parse_listening(&text));
            }
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::internal("reading the socket table", e)),
        }
    }
    if !read_any {
        return Err(Error::internal("reading the socket table", "no /proc/net/tcp"));
    }
    Ok(ports.into_iter().collect())
}

/// Whether something listens on `port`.
pub fn in_use(port: u16) -> Result<bool> {
    Ok(listening()?.contains(&port))
}

/// The local ports of the listening sockets in one `/proc/net/tcp`-style table (malformed lines are skipped).
fn parse_listening(text: &str) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != LISTEN {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_ports_from_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:1F91 0100007F:D2E4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: garbage\n";
        assert_eq!(parse_listening(v4).collect::<Vec<_>>(), vec![8080]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:08E8 00000000000000000000000000000000:0000 0A 0 0 0\n";
        assert_eq!(parse_listening(v6).collect::<Vec<_>>(), vec![2280]);
    }

    #[test]
    fn a_listener_of_this_process_is_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening().unwrap().contains(&port));
        assert!(in_use(port).unwrap());
        drop(l);
        assert!(!in_use(port).unwrap());
    }
}
