//! TLS for the webhook server: a certificate resolver whose certificate can
//! be swapped while serving, and a poller that reloads it from files.
//!
//! I/O: reads PEM files. `app.rs` builds the resolver, `server.rs` serves
//! with it, and `bootstrap.rs` or [`watch_files`] swap certificates in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use thiserror::Error;

/// A certificate or key that cannot be served.
#[derive(Debug, Error)]
pub enum TlsError {
    /// No certificate in the PEM.
    #[error("no certificate in the PEM")]
    NoCertificate,
    /// PEM that does not parse.
    #[error("invalid PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// A key rustls refuses, or one that does not match the certificate.
    #[error("unusable key: {0}")]
    Key(#[from] rustls::Error),
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves whatever certificate was stored last.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
    /// The PEM pair currently served, to tell when files changed.
    loaded: RwLock<(String, String)>,
    provider: Arc<CryptoProvider>,
}

/// The ring provider: the one crypto provider of this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl Resolver ===

impl Resolver {
    /// A resolver serving this certificate chain and key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let key = certified_key(cert_pem, key_pem, &provider)?;
        Ok(Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
            loaded: RwLock::new((cert_pem.to_string(), key_pem.to_string())),
            provider,
        }))
    }

    /// Serves a new certificate from now on; `Ok(false)` when it is the one already served.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<bool, TlsError> {
        if self.is_current(cert_pem, key_pem) {
            return Ok(false);
        }
        let key = certified_key(cert_pem, key_pem, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) =
            (cert_pem.to_string(), key_pem.to_string());
        Ok(true)
    }

    /// Whether this pair is the one served.
    pub fn is_current(&self, cert_pem: &str, key_pem: &str) -> bool {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        loaded.0 == cert_pem && loaded.1 == key_pem
    }

    /// A rustls server configuration (HTTP/1.1 only) resolving through `self`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Parses a PEM chain and key into what rustls serves, checking that they match.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// Reads a certificate and key pair of files.
pub fn read_pair(cert: &Path, key: &Path) -> Result<(String, String), TlsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

/// Polls the files every `interval` and serves them when they change.
///
/// Secret volumes swap a `..data` symlink, so the file names stay and the
/// contents change: comparing contents catches it, and also catches a
/// cert-manager renewal. A pair that does not load (a half-written update)
/// is retried on the next tick while the old certificate stays served.
pub async fn watch_files(
    resolver: Arc<Resolver>,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    on_reload: impl Fn() + Send + 'static,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (cert_pem, key_pem) = match read_pair(&cert, &key) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "Cannot read the certificate files; serving the old one");
                continue;
            }
        };
        match resolver.update(&cert_pem, &key_pem) {
            Ok(true) => {
                tracing::info!(cert = %cert.display(), "Certificate reloaded");
                on_reload();
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, cert = %cert.display(), "New certificate does not load; serving the old one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::certs;

    #[test]
    fn resolver_swaps_certificates_and_refuses_mismatched_keys() {
        let names = vec!["a.example".to_string()];
        let one = certs::generate(&names, SystemTime::now()).unwrap();
        let two = certs::generate(&names, SystemTime::now()).unwrap();
        let resolver = Resolver::new(&one.cert_pem, &one.key_pem).unwrap();
        assert!(resolver.server_config().is_ok());
        assert!(!resolver.update(&one.cert_pem, &one.key_pem).unwrap());
        assert!(resolver.update(&two.cert_pem, &one.key_pem).is_err());
        assert!(resolver.is_current(&one.cert_pem, &one.key_pem));
        assert!(resolver.update(&two.cert_pem, &two.key_pem).unwrap());
        assert!(resolver.is_current(&two.cert_pem, &two.key_pem));
        assert!(matches!(
            Resolver::new("garbage", &one.key_pem),
            Err(TlsError::NoCertificate)
        ));
    }
}
