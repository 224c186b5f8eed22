//! TLS for the client: the CA it trusts, the certificate it may present, and what a failed handshake means.
//!
//! A client with a `TlsConfig` dials `https` and trusts only the given CA (no system roots: a raftkv cluster
//! has its own CA). Each node is verified against the address it is dialled at, so node certificates carry
//! the addresses clients use (`jepsen-lite certs` puts 127.0.0.1 and localhost in them). A handshake failure
//! is a configuration problem, not a passing fault: the client does not retry it and says what to change.
//! Nothing is sent before the handshake completes, so a write that failed there was not applied.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::ClientError;

/// Longest a TLS handshake with a node may take.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the client trusts and, optionally, presents. Checked when made: every file parses, the key fits
/// the certificate.
#[derive(Clone)]
pub struct TlsConfig {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        formatter
            .debug_struct("TlsConfig")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

fn config_error(message: String) -> ClientError {
    ClientError::TlsConfig(message)
}

fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| config_error(format!("{what} is not a PEM certificate: {error}")))?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "{what} holds no certificate (no -----BEGIN CERTIFICATE----- section)"
        )));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Trust `ca_pem` (one or more PEM CA certificates); present `identity` (PEM certificate chain, PEM
    /// private key) when given.
    pub fn from_pem(
        ca_pem: Vec<u8>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, ClientError> {
        Self::check(
            &ca_pem,
            "the CA",
            identity.as_ref(),
            ("the certificate", "the key"),
        )?;
        Ok(TlsConfig { ca_pem, identity })
    }

    /// Reads the CA and, if both are given, the client certificate and key from PEM files.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|error| {
                config_error(format!("cannot read {what} {}: {error}", path.display()))
            })
        };
        let ca_pem = read("the CA file", ca)?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                read("the certificate file", cert)?,
                read("the key file", key)?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(config_error(
                    "a client certificate needs its key: pass --key FILE too".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(config_error(
                    "a client key needs its certificate: pass --cert FILE too".to_string(),
                ))
            }
        };
        let named = |what: &str, path: Option<&Path>| {
            format!(
                "{what} {}",
                path.map(Path::display)
                    .map(|path| path.to_string())
                    .unwrap_or_default()
            )
        };
        Self::check(
            &ca_pem,
            &named("the CA", Some(ca)),
            identity.as_ref(),
            (&named("the certificate", cert), &named("the key", key)),
        )?;
        Ok(TlsConfig { ca_pem, identity })
    }

    fn check(
        ca_pem: &[u8],
        ca_name: &str,
        identity: Option<&(Vec<u8>, Vec<u8>)>,
        (cert_name, key_name): (&str, &str),
    ) -> Result<(), ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(ca_name, ca_pem)? {
            roots.add(ca).map_err(|error| {
                config_error(format!("{ca_name} is not a usable CA certificate: {error}"))
            })?;
        }
        if let Some((cert_pem, key_pem)) = identity {
            let chain = certificates(cert_name, cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| {
                config_error(format!("{key_name} is not a PEM private key: {error}"))
            })?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|error| {
                config_error(format!(
                    "{key_name} does not fit {cert_name}: {error}; pass the key the certificate was issued for"
                ))
            })?;
        }
        Ok(())
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    pub(crate) fn tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// What went wrong in a TLS handshake, as far as the client can tell.
enum HandshakeFailure {
    /// This client refused the node's certificate (rustls' own error, typed).
    Refused(rustls::Error),
    /// The node refused this client: a fatal alert. In TLS 1.3 it arrives after the client considers the
    /// handshake done, through hyper and h2, which keep only its text.
    AlertReceived(String),
}

/// The TLS failure somewhere in `status`'s sources, if the call failed in a handshake.
fn handshake_error(status: &tonic::Status) -> Option<HandshakeFailure> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(HandshakeFailure::Refused(tls.clone()));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // tokio-rustls carries rustls errors inside an io::Error, whose `source` skips the inner error.
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(HandshakeFailure::Refused(tls.clone()));
            }
            let text = io.to_string();
            if io.kind() == std::io::ErrorKind::InvalidData
                && text.starts_with("received fatal alert")
            {
                return Some(HandshakeFailure::AlertReceived(text));
            }
        }
        source = error.source();
    }
    None
}

/// The error for a call to `endpoint` that failed in the TLS handshake, saying what to change; `None` when
/// the failure was not a TLS one.
pub(crate) fn handshake_failure(status: &tonic::Status, endpoint: &str) -> Option<ClientError> {
    use rustls::CertificateError;
    let message = match handshake_error(status)? {
        HandshakeFailure::AlertReceived(alert) => format!(
            "{endpoint} refused the TLS handshake ({alert}): if the node requires client certificates, pass --cert FILE and --key FILE issued by the cluster CA"
        ),
        HandshakeFailure::Refused(error) => match &error {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the certificate of {endpoint} does not name that address ({error}): connect by an address the node's certificate carries"
            ),
            rustls::Error::InvalidCertificate(_) => format!(
                "certificate of {endpoint} not trusted ({error}): pass --ca FILE (or RAFTKV_CA) with the CA that issued the cluster's certificates"
            ),
            rustls::Error::AlertReceived(_) => format!(
                "{endpoint} refused the TLS handshake ({error}): if the node requires client certificates, pass --cert FILE and --key FILE issued by the cluster CA"
            ),
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InappropriateMessage { .. } => format!(
                "{endpoint} does not speak TLS ({error}): if the cluster runs without TLS, drop --ca"
            ),
            _ => format!("TLS handshake with {endpoint} failed: {error}"),
        },
    };
    Some(ClientError::Tls {
        endpoint: endpoint.to_string(),
        message,
    })
}
