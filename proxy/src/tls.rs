//! Certificates for the HTTPS listener: certificate/key pairs from files, chosen by SNI (a wildcard `*.{domain}`
//! certificate covers every preview host), and a self-signed certificate for `localhost`, `*.localhost` and the
//! configured domain, generated on first start into `<data-dir>/tls/` and reused afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    /// a certificate or key file could not be read or parsed
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// the self-signed certificate could not be generated
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
    /// a key type rustls (ring) cannot sign with
    #[error("{path}: unsupported private key: {reason}")]
    Key { path: PathBuf, reason: String },
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// Loads a PEM certificate chain and its private key into a rustls signing pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The paths of the generated certificate and key under `data_dir`.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("localhost.crt"), dir.join("localhost.key"))
}

/// Returns the self-signed certificate under `<data_dir>/tls/`, generating it when missing (or when it does not
/// cover `domain`, so a changed domain gets a new certificate).
pub fn ensure_self_signed(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = generated_paths(data_dir);
    if cert_path.exists()
        && key_path.exists()
        && let Ok(pair) = load_pair(&cert_path, &key_path)
    {
        // webpki only honours wildcards with two labels after them, so `x.localhost` cannot be checked.
        let wildcard_ok = !domain.contains('.') || covers(&pair, &format!("x.{domain}"));
        if covers(&pair, domain) && wildcard_ok {
            return Ok((cert_path, key_path));
        }
    }
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let mut names = vec!["localhost".to_owned(), "*.localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if domain != "localhost" {
        names.push(domain.to_owned());
        names.push(format!("*.{domain}"));
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    sandbar_support::fs::write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| file_err(&key_path, e))?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok((cert_path, key_path))
}

/// Whether the leaf certificate of `pair` is valid for `name` (wildcards included).
fn covers(pair: &CertifiedKey, name: &str) -> bool {
    let Some(leaf) = pair.cert.first() else { return false };
    let Ok(parsed) = ParsedCertificate::try_from(leaf) else { return false };
    let Ok(server_name) = ServerName::try_from(name) else { return false };
    rustls::client::verify_server_name(&parsed, &server_name).is_ok()
}

/// Picks the first configured certificate valid for the client's SNI name, else the fallback (the first
/// configured one, or the generated one).
#[derive(Debug)]
pub struct SniResolver {
    pairs: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// `pairs` in order of preference; must not be empty.
    pub fn new(pairs: Vec<CertifiedKey>) -> Option<Self> {
        (!pairs.is_empty()).then(|| Self { pairs: pairs.into_iter().map(Arc::new).collect() })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name()
            && let Some(found) = self.pairs.iter().find(|p| covers(p, sni))
        {
            return Some(found.clone());
        }
        self.pairs.first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_reused_and_covers_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = ensure_self_signed(dir.path(), "localhost").unwrap();
        let first = std::fs::read(&c).unwrap();
        let pair = load_pair(&c, &k).unwrap();
        assert!(covers(&pair, "localhost"));
        // `*.localhost` is in the certificate, but webpki (like NSS and OpenSSL) wants two labels after a
        // wildcard, so verifying clients need a two-label domain (`--domain sandbar.localhost`) for preview hosts.
        assert!(!covers(&pair, "3000-abc.localhost"));
        assert!(!covers(&pair, "a.b.localhost"));
        assert!(!covers(&pair, "example.com"));
        let (c2, _) = ensure_self_signed(dir.path(), "localhost").unwrap();
        assert_eq!(std::fs::read(c2).unwrap(), first, "reused on the second start");
        // A new domain gets a new certificate that covers it.
        let (c3, k3) = ensure_self_signed(dir.path(), "sandbar.test").unwrap();
        let pair = load_pair(&c3, &k3).unwrap();
        assert!(covers(&pair, "2280-x.sandbar.test"));
        assert!(!covers(&pair, "a.b.sandbar.test"));
        assert!(covers(&pair, "localhost"));
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, "not pem").unwrap();
        assert!(load_pair(&p, &p).is_err());
        assert!(load_pair(&dir.path().join("missing"), &p).is_err());
    }
}
