//! TLS listeners, as mongod runs them with `net.tls.mode: requireTLS`.
//!
//! mongod takes its certificate and private key from one PEM file
//! (`net.tls.certificateKeyFile`, `--tlsCertificateKeyFile`), and a CA file
//! (`net.tls.CAFile`, `--tlsCAFile`) that validates the certificates clients present. With a
//! CA file, mongod requires every client to present a certificate the CA signed unless
//! `net.tls.allowConnectionsWithoutCertificates` is set (the server's own test
//! `jstests/ssl/ssl_weak.js`: with `tlsCAFile` and without that option a client without a
//! certificate cannot connect; with it, it can). The simulator does the same with rustls.
//!
//! With `requireTLS` a client that speaks plain TCP fails the TLS handshake and its
//! connection is closed; the simulator closes it too. No other behaviour changes:
//! hello answers the same over TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::error::SimError;

/// TLS settings of every process of a simulation (`requireTLS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM file with the server certificate (chain) and its private key, like mongod's
    /// `--tlsCertificateKeyFile`.
    pub certificate_key_file: PathBuf,
    /// PEM file with the CA certificates that sign client certificates, like mongod's
    /// `--tlsCAFile`: clients must then present a certificate it signed.
    pub ca_file: Option<PathBuf>,
    /// With `ca_file`: accept clients that present no certificate (mongod's
    /// `--tlsAllowConnectionsWithoutCertificates`); a certificate presented must still be
    /// valid.
    pub allow_connections_without_certificates: bool,
}

fn bad(file: &Path, what: &str) -> SimError {
    SimError::Spec(format!("TLS file {}: {what}", file.display()))
}

/// The TLS side of every listener of a simulation.
#[derive(Clone)]
pub(crate) struct Acceptor(pub TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor(requireTLS)")
    }
}

/// Builds the acceptor every listener uses.
///
/// # Errors
/// A file that cannot be read, holds no certificate or no private key, or a key that does
/// not match the certificate.
pub(crate) fn acceptor(spec: &TlsSpec) -> Result<Acceptor, SimError> {
    let file = &spec.certificate_key_file;
    let pem = std::fs::read(file).map_err(|e| bad(file, &format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(file, &format!("malformed certificate ({e})")))?;
    if certs.is_empty() {
        return Err(bad(file, "holds no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(file, &format!("holds no usable PRIVATE KEY block ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Spec(format!("TLS: {e}")))?;
    let builder = match &spec.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| bad(ca, &format!("cannot read it ({e})")))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(ca, &format!("malformed certificate ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(ca, &format!("unusable CA certificate ({e})")))?;
            }
            if roots.is_empty() {
                return Err(bad(ca, "holds no CERTIFICATE block"));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if spec.allow_connections_without_certificates {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| bad(ca, &format!("cannot verify clients with it ({e})")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad(file, &format!("the key does not fit the certificate ({e})")))?;
    Ok(Acceptor(TlsAcceptor::from(Arc::new(config))))
}
