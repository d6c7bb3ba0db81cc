//! What the client commands trust for `https://` and `wss://` (the API and the proxy's HTTPS listener): the
//! system's roots, the self-signed certificate `sandbar up` generated in `<data-dir>/tls/` (when there is one),
//! and a certificate named with `--ca-cert` / `SANDBAR_CA_CERT`. One rustls configuration on ring serves both
//! reqwest and the WebSockets, so REST calls and terminals trust exactly the same certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificate the proxy generates under a data directory (see `sandbar_proxy::tls::generated_paths`).
pub fn generated_cert(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("localhost.crt")
}

/// Where the trusted certificates come from.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `--ca-cert`: must exist and hold at least one certificate.
    pub ca_cert: Option<PathBuf>,
    /// `<data-dir>/tls/localhost.crt`: used when present.
    pub data_dir: Option<PathBuf>,
    /// The operating system's roots (`/etc/ssl/certs`, `SSL_CERT_FILE`).
    pub system_roots: bool,
}

fn read_pem(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

impl Trust {
    /// The root store: explicit certificate (errors are fatal), generated certificate (when present), system roots
    /// (unreadable ones are skipped, as every TLS client does).
    pub fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        if let Some(p) = &self.ca_cert {
            for c in read_pem(p)? {
                roots.add(c).with_context(|| format!("{}: not a usable certificate", p.display()))?;
            }
        }
        if let Some(dir) = &self.data_dir {
            let p = generated_cert(dir);
            if p.exists() {
                for c in read_pem(&p)? {
                    roots.add(c).with_context(|| format!("{}: not a usable certificate", p.display()))?;
                }
            }
        }
        if self.system_roots {
            match rustls_native_certs::load_native_certs() {
                Ok(certs) => {
                    let (_, bad) = roots.add_parsable_certificates(certs);
                    if bad > 0 {
                        tracing::debug!(skipped = bad, "system certificates rustls cannot use");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the system's root certificates"),
            }
        }
        Ok(roots)
    }

    /// A client configuration on ring trusting [`Trust::roots`].
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_explicit_certificates_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = Trust { ca_cert: Some(dir.path().join("nope.pem")), ..Trust::default() };
        assert!(t.roots().is_err());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let t = Trust { ca_cert: Some(empty), ..Trust::default() };
        assert!(format!("{:#}", t.roots().unwrap_err()).contains("no PEM certificate"));
    }

    #[test]
    fn generated_certificate_is_used_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let t = Trust { data_dir: Some(dir.path().to_owned()), ..Trust::default() };
        assert!(t.roots().unwrap().is_empty());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::write(generated_cert(dir.path()), cert.cert.pem()).unwrap();
        assert_eq!(t.roots().unwrap().len(), 1);
        let both = Trust { ca_cert: Some(generated_cert(dir.path())), ..t };
        assert_eq!(both.roots().unwrap().len(), 2);
        assert!(both.client_config().is_ok());
    }
}
