//! etcd's v3 API on every node's port, next to `raftkv.v1`, over the same store: so that `etcdctl` and etcd
//! client libraries work unchanged. This module owns what every etcd service shares: the response header,
//! the one mapping of raftkv's errors onto the codes and messages etcd clients match on (`to_etcd_status`),
//! the consistency ladder carried in request metadata, and forwarding a write from a follower to the leader
//! (etcd clients send writes to any member and expect it to reach the leader).
//!
//! The services: `kv` (Range, Put, DeleteRange, Txn, Compact), `cluster` (members), `maintenance` (status,
//! alarms, hashes, backups, leadership transfer), `auth` (disabled), `watch` (streams of changes), `lease`
//! (grants, keep-alives, expiry by the leader's `lease::Lessor`), `lock` and `election` (etcd's `v3lockpb` and
//! `v3electionpb`, built on `recipes`).

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipes;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use raftkv_proto::contract::{
    ERROR_KIND_KEY, ETCD_CONSISTENCY_KEY, ETCD_FORWARDED_KEY, ETCD_MAX_STALENESS_KEY,
    ETCD_MIN_REVISION_KEY, ETCD_SERVED_KEY,
};
use raftkv_proto::etcd::etcdserverpb::ResponseHeader;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::api::{Api, ApiError};
use crate::raft::network::PeerChannels;
use crate::raft::transfer::TransferError;
use crate::reads::{Consistency, Envelope, ReadRequest, Role};
use crate::storage::{LogStore, ReadError};

/// Deadline of a write a follower forwards to the leader, whatever the client's own deadline: the leader's
/// own commit bound (`api::WRITE_COMMIT_TIMEOUT`) with room for the hop.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(7);
/// `--max-request-bytes` unless given: etcd's default. raftkv's own limits on keys, values and transactions
/// (`kv::record`, `kv::txn`) are smaller and answer "request is too large".
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// The range `--max-request-bytes` may take.
pub const MAX_REQUEST_BYTES_MIN: usize = 1024;
pub const MAX_REQUEST_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// `--max-txn-ops` unless given: etcd's default (at most `kv::txn::TXN_OPS_MAX`).
pub const MAX_TXN_OPS_DEFAULT: usize = 128;
/// Deadline of a membership change a follower forwards: the leader's own bound with room for the hop.
pub const MEMBERSHIP_FORWARD_TIMEOUT: Duration =
    Duration::from_secs(crate::api::MEMBERSHIP_CHANGE_TIMEOUT.as_secs() + 2);
/// The etcd API level raftkv reports in `Status.version`: the 3.5 services, less Watch, Lease and Auth.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// The etcd services of one node.
#[derive(Clone)]
pub struct EtcdApi {
    pub api: Api,
    pub peers: Arc<PeerChannels>,
    pub log_store: LogStore,
    /// `--cluster-id` as etcd's number (`cluster_number`).
    pub cluster_id: u64,
    /// `http` or `https`: how member URLs are written.
    pub scheme: &'static str,
    /// `--max-txn-ops`: most compares, or operations in one branch, of a transaction.
    pub max_txn_ops: usize,
    /// `--watch-progress-notify-interval-ms`.
    pub progress_notify_interval: Duration,
    /// `--max-request-bytes`: also the size of a fragment of a watch response, for watches that ask for it.
    pub max_request_bytes: usize,
}

/// etcd names a cluster by a number; raftkv by a string. A decimal `--cluster-id` is used as it is, any other
/// string is hashed (64-bit FNV-1a), so every node reports the same number.
pub fn cluster_number(cluster_id: &str) -> u64 {
    if let Ok(number) = cluster_id.parse::<u64>() {
        return number;
    }
    cluster_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// etcd's error for `ApiError`, by the code and message its clients match on (the Go client retries only
/// `Unavailable`); raftkv's own kind stays in `raftkv-error` and its explanation follows etcd's message.
pub fn to_etcd_status(error: ApiError) -> Status {
    let kind = error.kind();
    let (code, message) = match &error {
        ApiError::NotLeader { .. }
        | ApiError::NoLeader
        | ApiError::NoQuorum(_)
        | ApiError::LeaderWithoutQuorum { .. } => {
            (Code::Unavailable, "etcdserver: no leader".to_string())
        }
        // What etcd answers a proposal dropped while leadership moves.
        ApiError::LeaderTransfer { .. } => {
            (Code::Unavailable, "etcdserver: leader changed".to_string())
        }
        // etcd's own messages, which clients match; the reason is in raftkv's API and the leader's log.
        ApiError::Transfer(TransferError::BadTarget { .. }) => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee".to_string(),
        ),
        ApiError::Transfer(_) => (
            Code::Unavailable,
            "etcdserver: request timed out, leader transfer took too long".to_string(),
        ),
        ApiError::Revision(ReadError::Compacted { .. }) => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".to_string(),
        ),
        ApiError::Revision(ReadError::FutureRevision { .. }) => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".to_string(),
        ),
        ApiError::Revision(ReadError::Storage(reason)) => {
            (Code::Internal, format!("etcdserver: {reason}"))
        }
        ApiError::Indeterminate(_) | ApiError::ApplyTimeout { .. } => (
            Code::Unavailable,
            "etcdserver: request timed out".to_string(),
        ),
        ApiError::Busy(_) => (
            Code::ResourceExhausted,
            "etcdserver: too many requests".to_string(),
        ),
        ApiError::ShuttingDown => (Code::Unavailable, "etcdserver: server stopped".to_string()),
        ApiError::InvalidArgument(reason) => {
            (Code::InvalidArgument, format!("etcdserver: {reason}"))
        }
        ApiError::OutOfRange(reason) => (Code::OutOfRange, format!("etcdserver: {reason}")),
        ApiError::LeaseNotFound { .. } => (
            Code::NotFound,
            "etcdserver: requested lease not found".to_string(),
        ),
        ApiError::LeaseExists { .. } => (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".to_string(),
        ),
        // Clients match this message exactly.
        ApiError::KeyNotFound { .. } => (
            Code::InvalidArgument,
            "etcdserver: key not found".to_string(),
        ),
        ApiError::TooStale { .. }
        | ApiError::RevisionTimeout { .. }
        | ApiError::SequenceTooOld { .. } => (
            Code::FailedPrecondition,
            format!("etcdserver: raftkv: {error}"),
        ),
        ApiError::Membership(reason) => (Code::FailedPrecondition, format!("etcdserver: {reason}")),
        ApiError::Internal(reason) => (Code::Internal, format!("etcdserver: {reason}")),
    };
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind.as_str()));
    status
}

/// An etcd error with a fixed message (e.g. `etcdserver: key is not provided`).
pub fn etcd_error(code: Code, message: &str) -> Status {
    Status::new(code, format!("etcdserver: {message}"))
}

impl EtcdApi {
    /// The header of a response served at store revision `revision`.
    pub fn header(&self, revision: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.api.node_id,
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
            raft_term: self.api.raft.metrics().borrow().current_term,
        }
    }

    fn is_leader(&self) -> bool {
        self.api.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A channel to the leader, to forward a write there. A write that was itself forwarded is not forwarded
    /// again: leadership is moving, and the client is told to retry.
    pub fn leader_channel(&self, metadata: &MetadataMap) -> Result<Channel, Status> {
        if metadata.contains_key(ETCD_FORWARDED_KEY) {
            return Err(etcd_error(Code::Unavailable, "leader changed"));
        }
        match self.api.reader.leader_hint() {
            (Some(leader), Some(address)) if leader != self.api.node_id => self
                .peers
                .channel_to(leader, &address)
                .map_err(|error| etcd_error(Code::Unavailable, &format!("no leader ({error})"))),
            _ => Err(etcd_error(Code::Unavailable, "no leader")),
        }
    }
}

/// Passes `message` to the leader with `call` (e.g. `|request| leader.put(request)`): marked
/// `raftkv-forwarded` so it is passed on no further, with `timeout` as its deadline there and here (the
/// leader may be cut off mid-call; etcd answers a write it cannot confirm in time the same way).
pub async fn forward<M, T, F, R>(
    timeout: Duration,
    message: M,
    call: F,
) -> Result<tonic::Response<T>, Status>
where
    F: FnOnce(tonic::Request<M>) -> R,
    R: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
        .metadata_mut()
        .insert(ETCD_FORWARDED_KEY, MetadataValue::from_static("1"));
    tokio::time::timeout(timeout, call(request))
        .await
        .unwrap_or_else(|_| Err(etcd_error(Code::Unavailable, "request timed out")))
}

/// The read options of an etcd read: `serializable` is raftkv's `stale`; the other rungs of the ladder come
/// in metadata (`raftkv-consistency`, `raftkv-max-staleness`, `raftkv-min-revision`).
pub fn read_request(
    metadata: &MetadataMap,
    serializable: bool,
    revision: u64,
) -> Result<ReadRequest, Status> {
    let text = |key: &str| -> Result<Option<String>, Status> {
        metadata
            .get(key)
            .map(|value| {
                value
                    .to_str()
                    .map(str::to_string)
                    .map_err(|_| etcd_error(Code::InvalidArgument, &format!("{key} is not text")))
            })
            .transpose()
    };
    let asked = match text(ETCD_CONSISTENCY_KEY)?.as_deref() {
        None => None,
        Some("linearizable") => Some(Consistency::Linearizable),
        Some("lease") => Some(Consistency::Lease),
        Some("stale") => Some(Consistency::Stale),
        Some(other) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!(
                    "{ETCD_CONSISTENCY_KEY} {other:?} is not one of linearizable, lease, stale"
                ),
            ))
        }
    };
    let consistency = match (asked, serializable) {
        (None, false) => Consistency::Linearizable,
        (None, true) | (Some(Consistency::Stale), _) => Consistency::Stale,
        (Some(asked), false) => asked,
        (Some(_), true) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!(
                    "a serializable read is a stale one; {ETCD_CONSISTENCY_KEY} asks for another"
                ),
            ))
        }
    };
    let max_staleness = text(ETCD_MAX_STALENESS_KEY)?
        .map(|value| parse_duration(&value))
        .transpose()
        .map_err(|reason| {
            etcd_error(
                Code::InvalidArgument,
                &format!("{ETCD_MAX_STALENESS_KEY}: {reason}"),
            )
        })?;
    if max_staleness.is_some() && consistency != Consistency::Stale {
        return Err(etcd_error(
            Code::InvalidArgument,
            &format!("{ETCD_MAX_STALENESS_KEY} applies to stale (serializable) reads only"),
        ));
    }
    let min_revision = match text(ETCD_MIN_REVISION_KEY)? {
        None => 0,
        Some(value) => value.parse::<u64>().map_err(|_| {
            etcd_error(
                Code::InvalidArgument,
                &format!("{ETCD_MIN_REVISION_KEY} {value:?} is not a revision number"),
            )
        })?,
    };
    Ok(ReadRequest {
        consistency,
        max_staleness,
        min_revision,
        revision,
    })
}

/// `250ms`, `2s` or a bare number of milliseconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1000)
    } else {
        (text, 1)
    };
    number
        .trim()
        .parse::<u64>()
        .map(|number| Duration::from_millis(number.saturating_mul(scale)))
        .map_err(|_| format!("{text:?} is not a duration such as 500ms or 2s"))
}

/// The read envelope as response metadata: `raftkv-served` holds `key=value` pairs separated by commas
/// (`node`, `role`, `consistency`, `applied_index`, `term`, `leader`, `millis_since_leader`, `revision`,
/// `compact_revision`), the same fields raftkv's own API returns.
pub fn envelope_metadata(metadata: &mut MetadataMap, envelope: &Envelope) {
    let role = match envelope.role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    };
    let consistency = match envelope.consistency {
        Consistency::Linearizable => "linearizable",
        Consistency::Lease => "lease",
        Consistency::Stale => "stale",
    };
    let mut served = format!(
        "node={},role={role},consistency={consistency},applied_index={},term={},leader={},revision={},compact_revision={}",
        envelope.node_id,
        envelope.applied_index,
        envelope.term,
        envelope.leader_id.unwrap_or(0),
        envelope.revision,
        envelope.compact_revision,
    );
    if let Some(millis) = envelope.millis_since_leader {
        served.push_str(&format!(",millis_since_leader={millis}"));
    }
    if let Ok(value) = MetadataValue::try_from(served) {
        metadata.insert(ETCD_SERVED_KEY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_becomes_the_same_number_everywhere() {
        assert_eq!(cluster_number("42"), 42);
        assert_eq!(cluster_number("raftkv"), cluster_number("raftkv"));
        assert_ne!(cluster_number("raftkv"), cluster_number("raftkw"));
    }

    #[test]
    fn the_consistency_ladder_travels_in_metadata() {
        let mut metadata = MetadataMap::new();
        let read = read_request(&metadata, false, 0).unwrap();
        assert_eq!(read.consistency, Consistency::Linearizable);
        assert_eq!(
            read_request(&metadata, true, 0).unwrap().consistency,
            Consistency::Stale
        );
        metadata.insert(ETCD_CONSISTENCY_KEY, MetadataValue::from_static("lease"));
        assert_eq!(
            read_request(&metadata, false, 0).unwrap().consistency,
            Consistency::Lease
        );
        assert!(read_request(&metadata, true, 0).is_err());
        metadata.insert(ETCD_CONSISTENCY_KEY, MetadataValue::from_static("stale"));
        metadata.insert(ETCD_MAX_STALENESS_KEY, MetadataValue::from_static("2s"));
        metadata.insert(ETCD_MIN_REVISION_KEY, MetadataValue::from_static("17"));
        let read = read_request(&metadata, false, 5).unwrap();
        assert_eq!(read.max_staleness, Some(Duration::from_secs(2)));
        assert_eq!((read.min_revision, read.revision), (17, 5));
        metadata.insert(ETCD_MIN_REVISION_KEY, MetadataValue::from_static("x"));
        let refused = read_request(&metadata, false, 0).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("not a revision number"));
    }
}
