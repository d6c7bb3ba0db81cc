//! The SSH host key and server settings shared by the daemon's SSH server and the proxy's SSH gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::ssh_key::{self, LineEnding, PrivateKey};
use russh::{MethodKind, MethodSet};

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read the SSH host key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the SSH host key {path} is not a valid OpenSSH private key: {source}")]
    Bad { path: PathBuf, source: ssh_key::Error },
    #[error("the SSH host key handed over (SANDBAR_SSH_HOST_KEY) is not a valid OpenSSH private key")]
    Invalid,
    #[error("cannot make an SSH host key: {0}")]
    Make(String),
    #[error("cannot write the SSH host key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Loads the ed25519 host key at `path`, making one the first time: the private key atomically with mode 0600
/// ([`crate::fs::write_private`]) and the public key beside it as `<path>.pub`. A restart reuses the key, so
/// clients' `known_hosts` entries stay valid.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    match std::fs::read(path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(pem).map_err(|source| HostKeyError::Bad { path: path.into(), source });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(HostKeyError::Read { path: path.into(), source }),
    }
    let key = generate_host_key()?;
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| HostKeyError::Make(e.to_string()))?;
    let public = key.public_key().to_openssh().map_err(|e| HostKeyError::Make(e.to_string()))?;
    crate::fs::write_private(path, pem.as_bytes())
        .map_err(|source| HostKeyError::Write { path: path.into(), source })?;
    let mut pub_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    pub_name.push(".pub");
    let pub_path = path.with_file_name(pub_name);
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|source| HostKeyError::Write { path: pub_path, source })?;
    Ok(key)
}

/// A fresh ed25519 host key.
pub fn generate_host_key() -> Result<PrivateKey, HostKeyError> {
    let seed: [u8; 32] = crate::token::random_bytes(32)
        .map_err(|e| HostKeyError::Make(e.to_string()))?
        .try_into()
        .map_err(|_| HostKeyError::Make("short seed".into()))?;
    Ok(PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed)))
}

/// A host key handed over as text (the runner gives each daemon its own through the container's environment):
/// (the OpenSSH private key, its public key line).
#[derive(Clone)]
pub struct HostKeyText {
    pub private: String,
    pub public: String,
}

impl std::fmt::Debug for HostKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeyText").field("public", &self.public).finish_non_exhaustive()
    }
}

impl HostKeyText {
    /// A fresh ed25519 key as text.
    pub fn generate() -> Result<Self, HostKeyError> {
        let key = generate_host_key()?;
        let private = key.to_openssh(LineEnding::LF).map_err(|e| HostKeyError::Make(e.to_string()))?.to_string();
        let public = key.public_key().to_openssh().map_err(|e| HostKeyError::Make(e.to_string()))?;
        Ok(Self { private, public })
    }

    /// The key and its public line from an OpenSSH private key; `None` if `private` is not one.
    pub fn parse(private: &str) -> Option<(PrivateKey, Self)> {
        let key = PrivateKey::from_openssh(private).ok()?;
        let public = key.public_key().to_openssh().ok()?;
        Some((key, Self { private: private.to_owned(), public }))
    }
}

/// russh server settings for a sandbar SSH server named `name` (the version string is `SSH-2.0-{name}_{version}`)
/// that accepts public keys and passwords.
///
/// Failed attempts take a constant second (no timing oracle), while OpenSSH's first "none" probe answers at once.
/// Keepalives find dead clients; a live one answers them, so an idle shell is never cut off.
pub fn server_config(name: &str, key: PrivateKey, max_auth_attempts: usize) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-{name}_{}", env!("CARGO_PKG_VERSION")).into()),
        methods,
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts,
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_host_key_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_host_ed25519_key");
        let first = load_or_create_host_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join("ssh_host_ed25519_key.pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        let again = load_or_create_host_key(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }

    #[test]
    fn host_keys_as_text_round_trip() {
        let k = HostKeyText::generate().unwrap();
        assert!(k.public.starts_with("ssh-ed25519 "), "{}", k.public);
        let (key, again) = HostKeyText::parse(&k.private).unwrap();
        assert_eq!(again.public, k.public);
        assert_eq!(key.public_key().to_openssh().unwrap(), k.public);
        assert!(!format!("{k:?}").contains("PRIVATE"));
        assert!(HostKeyText::parse("not a key").is_none());
        assert_ne!(HostKeyText::generate().unwrap().public, k.public);
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(load_or_create_host_key(&path), Err(HostKeyError::Bad { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
