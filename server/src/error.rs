//! The domain errors of serving a client: what can go wrong, in words, and its kind on the wire. `api` turns
//! them into gRPC statuses (`api::to_status`, the one mapping); `reads` and the peer service produce them too,
//! which is why they live here rather than in `api`.

use std::time::Duration;

use raftkv_proto::contract::ErrorKind;

use crate::raft::transfer::TransferError;
use crate::raft::types::NodeId;
use crate::storage::ReadError;

/// Everything that can go wrong serving a client, before it becomes a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    OutOfRange(String),
    /// A put that keeps a key's value found no such key (etcd's `ignore_value`).
    #[error("key not found: {key} does not exist, so its value cannot be kept")]
    KeyNotFound { key: String },
    #[error("{0}")]
    Busy(String),
    #[error("this node is not the leader{}", leader_id.map(|id| format!("; the leader is node {id}")).unwrap_or_default())]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("no leader is known to this node")]
    NoLeader,
    /// A write arrived while this leader hands leadership over (`raft::transfer`): it was not proposed.
    #[error("this node is handing leadership to node {target}; the write was not proposed, retry in a moment")]
    LeaderTransfer { target: NodeId },
    /// A leadership transfer that was refused or did not finish.
    #[error("leadership transfer failed: {0}")]
    Transfer(TransferError),
    #[error("cannot confirm this read with a quorum: {0}")]
    NoQuorum(String),
    #[error("this node leads, but no quorum has acknowledged it for {quorum_age_ms} ms (the limit is {limit_ms} ms): it may be cut off from the other nodes, which may elect another leader; the write was not proposed, try another node")]
    LeaderWithoutQuorum { quorum_age_ms: u64, limit_ms: u64 },
    #[error("node has not heard from a leader {}, over the bound of {bound_millis} ms", millis_since_leader.map(|millis| format!("for {millis} ms")).unwrap_or_else(|| "since it started".to_string()))]
    TooStale {
        millis_since_leader: Option<u64>,
        bound_millis: u64,
    },
    #[error("this node's store is at revision {reached}, still short of the min_revision {wanted} after {waited:?}; retry, or read from the leader")]
    RevisionTimeout {
        wanted: u64,
        reached: u64,
        waited: Duration,
    },
    #[error("this node has applied up to log index {applied}, still short of the read index {wanted} after {waited:?}; retry, or read from the leader")]
    ApplyTimeout {
        wanted: u64,
        applied: u64,
        waited: Duration,
    },
    /// A read or compaction at a revision that is compacted or in the future (never `ReadError::Storage`).
    #[error("{0}")]
    Revision(ReadError),
    #[error("the write was proposed but its outcome is unknown: it may have been applied ({0})")]
    Indeterminate(String),
    #[error("session sequence is older than the last one applied ({last_sequence})")]
    SequenceTooOld { last_sequence: u64 },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("lease {id} not found: it was never granted, or it was revoked or expired")]
    LeaseNotFound { id: i64 },
    #[error("lease {id} already exists; grant another id, or 0 to have one chosen")]
    LeaseExists { id: i64 },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The error's kind, sent as `raftkv-error`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::InvalidArgument(_) | ApiError::KeyNotFound { .. } => {
                ErrorKind::InvalidArgument
            }
            ApiError::OutOfRange(_) => ErrorKind::OutOfRange,
            ApiError::Busy(_) => ErrorKind::Busy,
            ApiError::NotLeader { .. } | ApiError::LeaderTransfer { .. } => ErrorKind::NotLeader,
            ApiError::Transfer(_) => ErrorKind::Membership,
            ApiError::NoLeader => ErrorKind::NoLeader,
            ApiError::NoQuorum(_) | ApiError::LeaderWithoutQuorum { .. } => ErrorKind::NoQuorum,
            ApiError::TooStale { .. } => ErrorKind::TooStale,
            ApiError::RevisionTimeout { .. } | ApiError::ApplyTimeout { .. } => {
                ErrorKind::RevisionTimeout
            }
            ApiError::Revision(ReadError::FutureRevision { .. }) => ErrorKind::FutureRevision,
            ApiError::Revision(_) => ErrorKind::Compacted,
            ApiError::Indeterminate(_) => ErrorKind::Indeterminate,
            ApiError::SequenceTooOld { .. } => ErrorKind::SequenceTooOld,
            ApiError::Membership(_) => ErrorKind::Membership,
            ApiError::LeaseNotFound { .. } => ErrorKind::LeaseNotFound,
            ApiError::LeaseExists { .. } => ErrorKind::InvalidArgument,
            ApiError::ShuttingDown => ErrorKind::ShuttingDown,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Storage(reason) => ApiError::Internal(reason),
            error => ApiError::Revision(error),
        }
    }
}
