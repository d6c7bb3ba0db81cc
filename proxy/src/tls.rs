//! Certificates for the HTTPS listener: certificate/key pairs from files, chosen by SNI (a wildcard `*.{domain}`
//! certificate covers every preview host), and a self-signed certificate for `localhost`, `*.localhost` and the
//! configured domain, generated on first start into `<data-dir>/tls/` and reused afterwards.
//!
//! Reloading: [`SniResolver`] remembers the files of every pair. [`SniResolver::reload`] reads them again and swaps
//! in each pair whose contents (a SHA-256 of certificate and key) changed, so new handshakes get the new pair while
//! open connections keep the session they negotiated. A pair that does not load (unreadable, garbage, half-written,
//! or a key that does not match the certificate, as between certbot's two renames) is refused with one warning per
//! distinct content and the old pair keeps serving; the next change is tried again. The proxy calls `reload` every
//! `tls_reload_interval` (5 s by default; polling the contents, so a replace by rename, an edit in place and a
//! changed symlink all count) and at once on SIGHUP ([`watch`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    /// a certificate or key file could not be read or parsed
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// the self-signed certificate could not be generated
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
    /// a key type rustls (ring) cannot sign with, or a key that is not the certificate's
    #[error("{path}: unsupported private key: {reason}")]
    Key { path: PathBuf, reason: String },
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// Loads a PEM certificate chain and its private key into a rustls signing pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    parse_pair(cert, &cert_pem, key, &key_pem)
}

/// Both files' bytes.
fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| file_err(p, e));
    Ok((read(cert)?, read(key)?))
}

/// A signing pair from the PEM bytes of `cert` and `key` (the paths name them in errors); the key must be the
/// certificate's.
fn parse_pair(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| file_err(key, e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(TlsError::Key { path: key.to_owned(), reason: format!("{e} (not this certificate's key?)") }),
    }
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

/// The files of one pair and the digest of the contents last tried.
#[derive(Debug)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
    seen: Mutex<[u8; 32]>,
}

/// Both files' contents hashed together.
fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for bytes in [cert_pem, key_pem] {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().into()
}

/// What one [`SniResolver::reload`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// pairs swapped in
    pub replaced: u64,
    /// changed pairs that did not load
    pub refused: u64,
}

/// Picks the first configured certificate valid for the client's SNI name, else the fallback (the first
/// configured one, or the generated one). Reloads its pairs from their files ([`SniResolver::reload`]).
#[derive(Debug)]
pub struct SniResolver {
    pairs: RwLock<Vec<Arc<CertifiedKey>>>,
    sources: Vec<Source>,
}

impl SniResolver {
    /// Loads every `(certificate, key)` pair, in order of preference; fails on the first that does not load, or
    /// when there is none.
    pub fn load(files: &[(PathBuf, PathBuf)]) -> Result<Self, TlsError> {
        let mut pairs = Vec::new();
        let mut sources = Vec::new();
        for (cert, key) in files {
            let (cert_pem, key_pem) = read_pair(cert, key)?;
            pairs.push(Arc::new(parse_pair(cert, &cert_pem, key, &key_pem)?));
            let seen = digest(&cert_pem, &key_pem);
            sources.push(Source { cert: cert.clone(), key: key.clone(), seen: Mutex::new(seen) });
        }
        if pairs.is_empty() {
            return Err(TlsError::Generate("no certificate configured".into()));
        }
        Ok(Self { pairs: RwLock::new(pairs), sources })
    }

    /// Reads every pair's files again and swaps in those that changed and load; a changed pair that does not load
    /// is logged (once per content) and the old one kept.
    pub fn reload(&self) -> Reloaded {
        let mut done = Reloaded::default();
        for (i, src) in self.sources.iter().enumerate() {
            // Hashed and parsed from the same bytes; a file missing for a moment (between a delete and a create)
            // counts as one more content to refuse.
            let read = read_pair(&src.cert, &src.key);
            let now = read.as_ref().map_or([0; 32], |(c, k)| digest(c, k));
            {
                let mut seen = sandbar_support::sync::lock(&src.seen);
                if *seen == now {
                    continue;
                }
                *seen = now;
            }
            match read.and_then(|(c, k)| parse_pair(&src.cert, &c, &src.key, &k)) {
                Ok(pair) => {
                    if let Some(slot) = sandbar_support::sync::write(&self.pairs).get_mut(i) {
                        *slot = Arc::new(pair);
                        done.replaced += 1;
                    }
                    tracing::info!(cert = %src.cert.display(), key = %src.key.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    done.refused += 1;
                    tracing::warn!(
                        error = %e,
                        cert = %src.cert.display(),
                        "TLS certificate changed but does not load; still serving the previous one"
                    );
                }
            }
        }
        done
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let pairs = sandbar_support::sync::read(&self.pairs);
        if let Some(sni) = hello.server_name()
            && let Some(found) = pairs.iter().find(|p| covers(p, sni))
        {
            return Some(found.clone());
        }
        pairs.first().cloned()
    }
}

/// Reloads `resolver` every `interval` (never when zero) and at once on every SIGHUP, counting in `metrics`, until the task
/// is dropped.
pub async fn watch(resolver: Arc<SniResolver>, interval: Duration, metrics: Arc<crate::metrics::Metrics>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS certificates reload by polling only");
            None
        }
    };
    let mut tick = (!interval.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let tick_recv = async {
            match tick.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        let hup_closed = tokio::select! {
            got = hup_recv => got.is_none(),
            _ = tick_recv => false,
        };
        if hup_closed {
            hup = None;
            continue;
        }
        let r = resolver.clone();
        match tokio::task::spawn_blocking(move || r.reload()).await {
            Ok(done) => {
                metrics.tls_reloads.fetch_add(done.replaced, Ordering::Relaxed);
                metrics.tls_reload_failures.fetch_add(done.refused, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
        }
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

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let g = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, g.cert.pem()).unwrap();
        std::fs::write(&k, g.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn served(r: &SniResolver) -> Vec<u8> {
        sandbar_support::sync::read(&r.pairs)[0].cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_a_changed_pair_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a.test");
        let (cb, kb) = write_pair(dir.path(), "b.test");
        let r = SniResolver::load(&[(c.clone(), k.clone())]).unwrap();
        let a = served(&r);
        let (none, one_ok, one_bad) =
            (Reloaded::default(), Reloaded { replaced: 1, refused: 0 }, Reloaded { replaced: 0, refused: 1 });
        assert_eq!(r.reload(), none, "nothing changed");
        // A half-done renewal: B's certificate with A's key is refused, A keeps serving.
        std::fs::copy(&cb, &c).unwrap();
        assert_eq!(r.reload(), one_bad);
        assert_eq!(r.reload(), none, "refused once per content");
        assert_eq!(served(&r), a);
        std::fs::copy(&kb, &k).unwrap();
        assert_eq!(r.reload(), one_ok);
        let b = served(&r);
        assert_ne!(b, a);
        assert_eq!(b, CertificateDer::from_pem_file(&cb).unwrap().to_vec());
        // Garbage, then a missing key: refused, B stays.
        std::fs::write(&c, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        assert_eq!(r.reload(), one_bad);
        std::fs::remove_file(&k).unwrap();
        assert_eq!(r.reload(), one_bad);
        assert_eq!(served(&r), b);
        assert!(SniResolver::load(&[]).is_err());
    }
}
