//! The SSH server (port 22220): shells with or without a PTY, `exec` with the real exit status or signal,
//! environment requests, the `sftp` subsystem (so `sftp` and OpenSSH 9's `scp` work), local (`direct-tcpip`) and
//! remote (`tcpip-forward`) port forwarding and agent forwarding. Built on russh.
//!
//! Authentication: the password is the per-sandbox daemon token (compared in constant time), or a public key
//! listed in the sandbox user's `~/.ssh/authorized_keys` (read at each attempt, so keys added inside the sandbox
//! work at once) or handed over at creation in `SANDBAR_SSH_AUTHORIZED_KEYS`. Any user name is accepted: a sandbox
//! has one user, the one the daemon runs commands as, and every session runs as that user. Keys carrying
//! authorized_keys options (`command=`, `from=`, `restrict`...) are skipped rather than honoured halfway.
//!
//! The host key is the ed25519 key the runner made for the container and handed over in `SANDBAR_SSH_HOST_KEY`
//! (the runner reports its public half, which the SSH gateway pins; the variable is kept out of the daemon's own
//! environment and every child's, like the token). A daemon started without one (tests, by hand) makes a key on
//! first start and keeps it in the state directory. Either way a restarted sandbox keeps its identity. Every child goes through the daemon's process table, like everything else in the daemon.

mod forward;
mod server;
mod session;
mod sftp;

use server::ConnCtx;
pub use server::{HOST_KEY_FILE, SshServer, parse_authorized_keys};
