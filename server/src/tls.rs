//! TLS on the node's one port: loading and checking the node's certificate, key and cluster CA, the accept
//! loop that runs handshakes, the refusal answered to plaintext clients, and who counts as a peer.
//!
//! One port carries client and peer traffic, so the server asks every client for a certificate but does not
//! insist (`allow_unauthenticated`), unless `--tls-require-client-cert`. A certificate that is presented must
//! chain to the cluster CA, or the handshake fails. The peer service then admits only connections whose
//! verified certificate is valid for `PEER_SERVER_NAME` (`PeerAuthenticator`): a client certificate issued by
//! the same CA for another name reaches the client API but not the peer API. Peers dial each other through
//! whatever address `--peer-route` gives (a proxy's, in the partition harness), so they verify each other's
//! server certificate against that fixed name rather than the dialled address.
//!
//! Handshakes run off the accept path, at most `TLS_HANDSHAKES_PENDING_MAX` at once and each bounded by
//! `TLS_HANDSHAKE_TIMEOUT`. A connection whose first byte is not a TLS handshake record is a plaintext client:
//! it is handed to a small gRPC server that answers every call with `Unauthenticated` and a message saying to
//! pass the CA, so the client sees why instead of a broken connection. Refusals are logged at warn, at most
//! once per remote address and kind per `REFUSAL_WARN_INTERVAL`, with a count of those left unlogged.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::config::TlsPaths;

/// The DNS name every node certificate carries and peers verify, whatever address they dial.
pub const PEER_SERVER_NAME: &str = "raftkv-node";
/// Longest a TLS handshake (including reading the first byte) may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes in progress at once; past it the node stops accepting until one finishes.
pub const TLS_HANDSHAKES_PENDING_MAX: usize = 256;
/// Plaintext connections waiting for the refusal server; past it they are closed without an answer.
pub const PLAINTEXT_CONNECTIONS_PENDING_MAX: usize = 64;
/// A refusal of one kind from one address is logged at most once per interval.
pub const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses remembered for rate-limiting refusal warnings; past it the oldest are forgotten.
pub const REFUSAL_WARN_ADDRESSES_MAX: usize = 1024;
/// The first byte of a TLS connection: a handshake record.
const TLS_RECORD_TYPE_HANDSHAKE: u8 = 0x16;
/// What a plaintext client is told.
pub const PLAINTEXT_REFUSAL: &str = "this node accepts TLS connections only: pass the cluster's CA certificate (raftkv --ca FILE or RAFTKV_CA)";

/// Why the TLS material cannot be used; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{flag} {path} holds no {what}: {detail}; pass a PEM file")]
    Pem {
        flag: &'static str,
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The node's TLS material, checked: what the server presents and asks for, and how it dials peers.
#[derive(Clone)]
pub struct NodeTls {
    pub server: Arc<ServerConfig>,
    /// Dials peers: trusts only the cluster CA, presents the node's own certificate, verifies
    /// `PEER_SERVER_NAME`.
    pub peer_client: ClientTlsConfig,
    pub require_client_cert: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem_error = |detail: String| TlsConfigError::Pem {
        flag,
        path: path.display().to_string(),
        what: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "no -----BEGIN CERTIFICATE----- section".to_string(),
        ));
    }
    Ok(certs)
}

impl NodeTls {
    /// Reads and checks the files: each parses, the key belongs to the certificate, the CA is usable, and
    /// the certificate is one the node's peers will accept (issued by the CA for `PEER_SERVER_NAME`, for
    /// server and client authentication).
    pub fn load(paths: &TlsPaths) -> Result<NodeTls, TlsConfigError> {
        let cert_pem = read("--tls-cert", &paths.cert)?;
        let key_pem = read("--tls-key", &paths.key)?;
        let ca_pem = read("--tls-ca", &paths.ca)?;
        let chain = certificates("--tls-cert", &paths.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsConfigError::Pem {
            flag: "--tls-key",
            path: paths.key.display().to_string(),
            what: "private key",
            detail: error.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for (number, ca) in certificates("--tls-ca", &paths.ca, &ca_pem)?
            .into_iter()
            .enumerate()
        {
            roots.add(ca).map_err(|error| {
                TlsConfigError::Invalid(format!(
                    "--tls-ca {}: certificate {} is not a usable CA certificate: {error}",
                    paths.ca.display(),
                    number + 1
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();

        let mut client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !paths.require_client_cert {
            client_verifier = client_verifier.allow_unauthenticated();
        }
        let client_verifier = client_verifier
            .build()
            .map_err(|error| TlsConfigError::Invalid(format!("--tls-ca: {error}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsConfigError::Invalid(format!("tls protocol versions: {error}")))?
            .with_client_cert_verifier(client_verifier.clone())
            .with_single_cert(chain.clone(), key)
            .map_err(|error| {
                TlsConfigError::Invalid(format!(
                    "--tls-key {} does not fit --tls-cert {}: {error}; pass the key the certificate was issued for",
                    paths.key.display(),
                    paths.cert.display()
                ))
            })?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        // The node's certificate must pass the checks its peers make, as server and as client.
        let (leaf, intermediates) = chain.split_first().expect("certificates() is never empty");
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| TlsConfigError::Invalid(format!("--tls-ca: {error}")))?;
        let peer_name = ServerName::try_from(PEER_SERVER_NAME).expect("a valid DNS name");
        let fix = format!(
            "issue it from --tls-ca with the DNS name {PEER_SERVER_NAME} and both server and client authentication (jepsen-lite certs does)"
        );
        server_verifier
            .verify_server_cert(leaf, intermediates, &peer_name, &[], UnixTime::now())
            .map_err(|error| {
                TlsConfigError::Invalid(format!(
                    "--tls-cert {} would be refused by peers: {error}; {fix}",
                    paths.cert.display()
                ))
            })?;
        client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|error| {
                TlsConfigError::Invalid(format!(
                    "--tls-cert {} cannot authenticate this node to its peers: {error}; {fix}",
                    paths.cert.display()
                ))
            })?;

        let peer_client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&cert_pem, &key_pem))
            .domain_name(PEER_SERVER_NAME)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        // Building an endpoint builds the connector: a bad identity fails here, not on the first dial.
        Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(peer_client.clone())
            .map_err(|error| {
                TlsConfigError::Invalid(format!(
                    "cannot dial peers with --tls-cert {} and --tls-key {}: {error}",
                    paths.cert.display(),
                    paths.key.display()
                ))
            })?;
        Ok(NodeTls {
            server: Arc::new(server),
            peer_client,
            require_client_cert: paths.require_client_cert,
        })
    }
}

/// What kind of refusal a warning is about; each kind is rate-limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The TLS handshake failed (untrusted certificate either way, protocol error, timeout).
    Handshake,
    /// The client spoke plaintext to a TLS node.
    Plaintext,
    /// A peer call came without a peer certificate.
    PeerCall,
}

/// Rate limit for refusal warnings: at most one per (remote address, kind) per `REFUSAL_WARN_INTERVAL`.
#[derive(Default)]
pub struct RefusalLog {
    /// When each (address, kind) last warned, and how many refusals were not logged since. A std mutex: held
    /// only to look up and update, never across await.
    last: Mutex<HashMap<(IpAddr, Refusal), (Instant, u64)>>,
}

impl RefusalLog {
    /// Whether to warn about this refusal now; if so, also how many were left unlogged since the last one.
    pub fn admit(&self, remote: Option<SocketAddr>, kind: Refusal) -> Option<u64> {
        let ip = remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((warned_at, suppressed)) = last.get_mut(&(ip, kind)) {
            if now.duration_since(*warned_at) < REFUSAL_WARN_INTERVAL {
                *suppressed += 1;
                return None;
            }
            let unlogged = *suppressed;
            *warned_at = now;
            *suppressed = 0;
            return Some(unlogged);
        }
        if last.len() >= REFUSAL_WARN_ADDRESSES_MAX {
            last.retain(|_, (warned_at, _)| now.duration_since(*warned_at) < REFUSAL_WARN_INTERVAL);
            if last.len() >= REFUSAL_WARN_ADDRESSES_MAX {
                last.clear();
            }
        }
        last.insert((ip, kind), (now, 0));
        Some(0)
    }
}

/// The stream of established TLS connections on `listener`, for `serve_with_incoming`. Handshakes run
/// concurrently inside the stream (driven as the server polls it), so a slow client never holds up the
/// accept loop; plaintext connections go to `plaintext`. Dropping the stream drops the listener and every
/// handshake in progress.
pub fn incoming(
    listener: TcpListener,
    tls: &NodeTls,
    plaintext: mpsc::Sender<TcpStream>,
    refusals: Arc<RefusalLog>,
    span: tracing::Span,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let state = AcceptState {
        listener,
        acceptor: TlsAcceptor::from(tls.server.clone()),
        plaintext,
        refusals,
        span,
        pending: FuturesUnordered::new(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            tokio::select! {
                accepted = state.listener.accept(), if state.pending.len() < TLS_HANDSHAKES_PENDING_MAX => {
                    match accepted {
                        Ok((stream, remote)) => {
                            let _ = stream.set_nodelay(true);
                            let handshake = handshake(
                                stream,
                                remote,
                                state.acceptor.clone(),
                                state.plaintext.clone(),
                                state.refusals.clone(),
                                state.span.clone(),
                            );
                            state.pending.push(Box::pin(handshake));
                        }
                        Err(error) => return Some((Err(error), state)),
                    }
                }
                Some(done) = state.pending.next(), if !state.pending.is_empty() => {
                    if let Some(stream) = done {
                        return Some((Ok(stream), state));
                    }
                }
            }
        }
    })
}

type Handshake =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<TlsStream<TcpStream>>> + Send>>;

struct AcceptState {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    plaintext: mpsc::Sender<TcpStream>,
    refusals: Arc<RefusalLog>,
    span: tracing::Span,
    pending: FuturesUnordered<Handshake>,
}

/// What the first byte said, and the handshake that followed.
enum Opened {
    /// Boxed: a TLS stream is over a kilobyte, the others a few words.
    Tls(Box<TlsStream<TcpStream>>),
    Plaintext(TcpStream),
    Closed,
}

async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    plaintext: mpsc::Sender<TcpStream>,
    refusals: Arc<RefusalLog>,
    span: tracing::Span,
) -> Option<TlsStream<TcpStream>> {
    let opened = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Ok(Opened::Closed);
        }
        if first[0] != TLS_RECORD_TYPE_HANDSHAKE {
            return Ok(Opened::Plaintext(stream));
        }
        acceptor
            .accept(stream)
            .await
            .map(|stream| Opened::Tls(Box::new(stream)))
    })
    .await;
    let error = match opened {
        Ok(Ok(Opened::Tls(stream))) => return Some(*stream),
        Ok(Ok(Opened::Closed)) => return None,
        Ok(Ok(Opened::Plaintext(stream))) => {
            if let Some(unlogged) = refusals.admit(Some(remote), Refusal::Plaintext) {
                tracing::warn!(parent: &span, %remote, unlogged, "refused a plaintext connection: this node serves TLS only; the client must pass the cluster CA");
            }
            // Full: the client gets a closed connection instead of the explanation.
            let _ = plaintext.try_send(stream);
            return None;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
    };
    if let Some(unlogged) = refusals.admit(Some(remote), Refusal::Handshake) {
        tracing::warn!(parent: &span, %remote, %error, unlogged, "refused a tls handshake");
    }
    None
}

/// The router of the server that answers plaintext connections: every call gets `Unauthenticated` with
/// `PLAINTEXT_REFUSAL`, whatever its service.
pub fn plaintext_refusal_routes() -> tonic::service::Routes {
    let router = axum::Router::new().fallback(|| async {
        Status::unauthenticated(PLAINTEXT_REFUSAL).into_http::<axum::body::Body>()
    });
    tonic::service::Routes::from(router)
}

/// True when `certificate` (already verified against the cluster CA by the handshake) is valid for
/// `PEER_SERVER_NAME`.
fn is_peer_certificate(certificate: &CertificateDer<'_>) -> bool {
    let peer_name = ServerName::try_from(PEER_SERVER_NAME).expect("a valid DNS name");
    webpki::EndEntityCert::try_from(certificate)
        .and_then(|certificate| certificate.verify_is_valid_for_subject_name(&peer_name))
        .is_ok()
}

/// Admits a peer call only from a connection with a verified certificate for `PEER_SERVER_NAME` (when TLS is
/// on); refuses the rest with `Unauthenticated` and a rate-limited warning.
#[derive(Clone)]
pub struct PeerAuthenticator {
    /// False without TLS: every call is admitted.
    pub tls: bool,
    pub refusals: Arc<RefusalLog>,
    pub span: tracing::Span,
}

impl tonic::service::Interceptor for PeerAuthenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.tls {
            return Ok(request);
        }
        let reason = match request.peer_certs() {
            Some(chain) if chain.first().is_some_and(is_peer_certificate) => return Ok(request),
            Some(_) => format!("its certificate is not issued for {PEER_SERVER_NAME}"),
            None => "it presented no client certificate".to_string(),
        };
        let remote = request.remote_addr();
        if let Some(unlogged) = self.refusals.admit(remote, Refusal::PeerCall) {
            tracing::warn!(parent: &self.span, remote = ?remote, unlogged, "refused a peer call: {reason}");
        }
        Err(Status::unauthenticated(format!(
            "peer calls need a client certificate from the cluster CA issued for {PEER_SERVER_NAME}: {reason}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_warn_once_per_address_and_kind_per_interval() {
        let log = RefusalLog::default();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let a_other_port: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(log.admit(Some(a), Refusal::Handshake), Some(0));
        assert_eq!(log.admit(Some(a_other_port), Refusal::Handshake), None);
        assert_eq!(log.admit(Some(a), Refusal::Handshake), None);
        assert_eq!(log.admit(Some(a), Refusal::PeerCall), Some(0));
        assert_eq!(log.admit(Some(b), Refusal::Handshake), Some(0));
        assert_eq!(log.admit(None, Refusal::Plaintext), Some(0));
    }

    #[test]
    fn refusal_log_stays_bounded() {
        let log = RefusalLog::default();
        for n in 0..(REFUSAL_WARN_ADDRESSES_MAX as u32 * 2) {
            let addr = SocketAddr::from((std::net::Ipv4Addr::from(n), 1));
            assert_eq!(log.admit(Some(addr), Refusal::Handshake), Some(0));
        }
        assert!(log.last.lock().unwrap().len() <= REFUSAL_WARN_ADDRESSES_MAX);
    }
}
