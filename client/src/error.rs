//! The typed errors of the client library, and how a gRPC status from a node becomes one.
//!
//! The distinction that matters most: a write that definitely did not happen (`Unavailable` before it was
//! sent anywhere, `InvalidArgument`, ...) versus one that may have happened (`Indeterminate`). The library
//! never reports a write that might have been applied as failed.

use std::time::Duration;

use raftkv_proto::contract::{ErrorKind, ERROR_KIND_KEY, LEADER_ADDR_KEY};

/// Everything a client call can fail with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The request is malformed or breaks a limit; nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request asks for more than a limit allows (e.g. a scan limit); nothing was written.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// No node could serve the request in time (no leader, no quorum, nodes down); a write was not applied.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        endpoints: Vec<String>,
    },
    /// The write may or may not have been applied.
    #[error("UNKNOWN: the write may have been applied ({message})")]
    Indeterminate { message: String },
    /// A stale read with a bound was refused: the node has not heard from a leader recently enough.
    #[error("too stale: {0}")]
    TooStale(String),
    /// The node did not reach the requested revision in time.
    #[error("revision not reached: {0}")]
    RevisionTimeout(String),
    /// The revision asked for is older than the oldest one kept; nothing changed.
    #[error("compacted: {0}")]
    Compacted(String),
    /// The revision asked for is beyond the store's; nothing changed.
    #[error("future revision: {0}")]
    FutureRevision(String),
    /// The overall deadline passed while retrying a read or an admin call.
    #[error("deadline exceeded after {elapsed:?}: {last_error}")]
    DeadlineExceeded {
        elapsed: Duration,
        last_error: String,
    },
    /// The node is overloaded; nothing was written.
    #[error("busy: {0}")]
    Busy(String),
    /// A condition the request depends on does not hold (e.g. a membership change refused).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The TLS files cannot be used (unreadable, not PEM, a key that does not fit its certificate).
    #[error("tls: {0}")]
    TlsConfig(String),
    /// The TLS handshake with a node failed: the node's certificate is not trusted, or the node refused this
    /// client's. Not retried; nothing was sent.
    #[error("{message}")]
    Tls { endpoint: String, message: String },
    /// A node refused the call because the client did not authenticate (e.g. plaintext to a TLS node).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Could not reach the one endpoint a call was pinned to.
    #[error("cannot reach {endpoint}: {message}")]
    Connection { endpoint: String, message: String },
    /// The request names a lease that does not exist (never granted, revoked or expired); nothing changed.
    #[error("{0}")]
    LeaseNotFound(String),
    /// Something the library did not expect.
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// A short, stable name of the error's kind (`unavailable`, `indeterminate`, ...), for counting errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::InvalidArgument(_) => "invalid_argument",
            ClientError::OutOfRange(_) => "out_of_range",
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::Indeterminate { .. } => "indeterminate",
            ClientError::TooStale(_) => "too_stale",
            ClientError::RevisionTimeout(_) => "revision_timeout",
            ClientError::Compacted(_) => "compacted",
            ClientError::FutureRevision(_) => "future_revision",
            ClientError::DeadlineExceeded { .. } => "deadline_exceeded",
            ClientError::Busy(_) => "busy",
            ClientError::FailedPrecondition(_) => "failed_precondition",
            ClientError::Connection { .. } => "connection",
            ClientError::Tls { .. } => "tls",
            ClientError::TlsConfig(_) => "tls_config",
            ClientError::Unauthenticated(_) => "unauthenticated",
            ClientError::LeaseNotFound(_) => "lease_not_found",
            ClientError::Other(_) => "other",
        }
    }
}

/// How a failed attempt is to be treated by the retry loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Not applied, and another node may do better: try again (following `leader_addr` if given).
    Retry {
        leader_addr: Option<String>,
        may_have_applied: bool,
    },
    /// Final: return this error.
    Fail,
}

/// True when a raftkv node sent the status (it names an error kind); false when the transport made it.
pub(crate) fn from_node(status: &tonic::Status) -> bool {
    status.metadata().get(ERROR_KIND_KEY).is_some()
}

/// The node's error kind; `None` from the transport, or for a kind this version does not know.
pub(crate) fn kind(status: &tonic::Status) -> Option<ErrorKind> {
    status
        .metadata()
        .get(ERROR_KIND_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(ErrorKind::from_name)
}

/// Classifies a failed attempt.
pub(crate) fn classify(status: &tonic::Status, is_write: bool) -> Attempt {
    let leader_addr = status
        .metadata()
        .get(LEADER_ADDR_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    match kind(status) {
        Some(ErrorKind::NotLeader) => Attempt::Retry {
            leader_addr,
            may_have_applied: false,
        },
        Some(
            ErrorKind::NoLeader | ErrorKind::NoQuorum | ErrorKind::ShuttingDown | ErrorKind::Busy,
        ) => Attempt::Retry {
            leader_addr: None,
            may_have_applied: false,
        },
        Some(ErrorKind::Indeterminate) => Attempt::Retry {
            leader_addr: None,
            may_have_applied: true,
        },
        Some(_) => Attempt::Fail,
        // A kind from a newer node: final, as its code says.
        None if from_node(status) => Attempt::Fail,
        // No kind: the failure came from the transport. A connection that was never made carried nothing; a
        // write on a connection that broke or timed out may have reached the leader.
        None => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => Attempt::Retry {
                leader_addr: None,
                may_have_applied: is_write && !never_connected(status),
            },
            _ => Attempt::Fail,
        },
    }
}

/// True when the status says the connection was never established, so the request was not sent.
pub(crate) fn never_connected(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        // hyper-util names a failed dial "tcp connect error"; tonic's connect timeout is an `Elapsed` under the
        // connector.
        let text = error.to_string();
        if text.contains("tcp connect error") || text.contains("connect timeout") {
            return true;
        }
        source = error.source();
    }
    false
}

/// The error a final status stands for.
pub(crate) fn from_status(status: &tonic::Status) -> ClientError {
    let message = status.message().to_string();
    match kind(status) {
        Some(ErrorKind::TooStale) => ClientError::TooStale(message),
        Some(ErrorKind::RevisionTimeout) => ClientError::RevisionTimeout(message),
        Some(ErrorKind::Compacted) => ClientError::Compacted(message),
        Some(ErrorKind::FutureRevision) => ClientError::FutureRevision(message),
        Some(ErrorKind::Indeterminate) => ClientError::Indeterminate { message },
        Some(ErrorKind::Busy) => ClientError::Busy(message),
        Some(ErrorKind::LeaseNotFound) => ClientError::LeaseNotFound(message),
        _ => match status.code() {
            tonic::Code::InvalidArgument => ClientError::InvalidArgument(message),
            tonic::Code::OutOfRange => ClientError::OutOfRange(message),
            tonic::Code::ResourceExhausted => ClientError::Busy(message),
            tonic::Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            tonic::Code::Unauthenticated => ClientError::Unauthenticated(message),
            tonic::Code::Unavailable => ClientError::Unavailable {
                message,
                endpoints: Vec::new(),
            },
            code => ClientError::Other(format!("{code:?}: {message}")),
        },
    }
}
