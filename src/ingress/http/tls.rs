//! TLS for the HTTP wake (rustls): a PEM certificate chain and its key,
//! read once at start (under systemd, from `LoadCredential=`).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS cannot be set up: one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} {path}: {error}")]
    Unreadable {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// No PEM certificate in the file.
    #[error("--tls-cert {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    /// No PEM key in the file.
    #[error("--tls-key {0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// rustls refused the pair.
    #[error("--tls-cert and --tls-key do not make a usable pair: {0}")]
    Pair(rustls::Error),
}

/// A TLS acceptor for the certificate chain in `cert` and the key in `key`.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Unreadable {
            flag,
            path: path.display().to_string(),
            error,
        })
    };
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::NoKey(key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
