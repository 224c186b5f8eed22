//! The client and admin gRPC services, and the one place a domain error becomes a `tonic::Status`.
//!
//! Writes are proposed only on the leader; any other node answers `Unavailable` with the leader hint in
//! metadata (`raftkv-leader-id`, `raftkv-leader-addr`), which the client library follows. A write that was
//! proposed but whose outcome is not known by its deadline is reported as indeterminate, never as failed.
//! Every status carries `raftkv-error`, a stable machine-readable kind (see `ApiError::kind`).

pub mod lease;
pub mod txn;
pub mod watch;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use raftkv_proto::contract::{
    ErrorKind, ERROR_KIND_KEY, LEADER_ADDR_KEY, LEADER_ID_KEY, WATCH_START_KEY,
};
use raftkv_proto::kv;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response as GrpcResponse, Status};

pub use crate::error::ApiError;
use crate::kv::state_machine::{
    self, Command, Expected, Rejection, Response, ScanRange, SessionRef,
};
use crate::kv::write_batch::{WriteBatcher, WriteError, PROPOSALS_PENDING_MAX};
use crate::lease::Lessor;
use crate::ops::telemetry;
use crate::raft::election::ElectionTiming;
use crate::raft::network::PeerChannels;
use crate::raft::quorum::QuorumClock;
use crate::raft::transfer;
use crate::raft::types::{Node, NodeId, Raft};
use crate::reads::{Consistency, Envelope, ReadRequest, Reader, Role};
use crate::storage::ReadError;

/// Server-side bound on any request the node serves (client, admin or peer, and each message of an
/// AppendEntries stream), whatever deadline the caller sent.
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a proposed write may take to commit and apply before it is reported indeterminate.
pub const WRITE_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest client response sent (and, for a write a follower forwards, accepted from the leader): a full
/// scan of keys and values.
pub const CLIENT_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Longest a membership change may take.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The one mapping from domain errors to gRPC statuses.
pub fn to_status(error: ApiError) -> Status {
    use tonic::Code;
    let code = match &error {
        ApiError::InvalidArgument(_) | ApiError::KeyNotFound { .. } => Code::InvalidArgument,
        ApiError::LeaseNotFound { .. } => Code::NotFound,
        ApiError::LeaseExists { .. } => Code::FailedPrecondition,
        ApiError::OutOfRange(_) => Code::OutOfRange,
        ApiError::Busy(_) => Code::ResourceExhausted,
        ApiError::NotLeader { .. }
        | ApiError::LeaderTransfer { .. }
        | ApiError::NoLeader
        | ApiError::NoQuorum(_)
        | ApiError::LeaderWithoutQuorum { .. }
        | ApiError::ShuttingDown => Code::Unavailable,
        ApiError::TooStale { .. }
        | ApiError::SequenceTooOld { .. }
        | ApiError::Membership(_)
        | ApiError::Transfer(_) => Code::FailedPrecondition,
        ApiError::Revision(_) => Code::OutOfRange,
        ApiError::RevisionTimeout { .. }
        | ApiError::ApplyTimeout { .. }
        | ApiError::Indeterminate(_) => Code::DeadlineExceeded,
        ApiError::Internal(_) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    let metadata = status.metadata_mut();
    metadata.insert(
        ERROR_KIND_KEY,
        MetadataValue::from_static(error.kind().as_str()),
    );
    if let ApiError::NotLeader {
        leader_id,
        leader_addr,
    } = &error
    {
        if let Some(id) = leader_id {
            metadata.insert(LEADER_ID_KEY, MetadataValue::from(*id));
        }
        if let Some(addr) = leader_addr
            .as_deref()
            .and_then(|addr| MetadataValue::try_from(addr).ok())
        {
            metadata.insert(LEADER_ADDR_KEY, addr);
        }
    }
    status
}

/// The client key-value service and the admin service of one node.
#[derive(Clone)]
pub struct Api {
    pub node_id: NodeId,
    pub address: String,
    pub cluster_id: String,
    pub raft: Raft,
    pub reader: Reader,
    pub proposals: Arc<Semaphore>,
    pub writes: WriteBatcher,
    /// A leader that no quorum has acknowledged for longer than this refuses writes before proposing them
    /// (`ElectionTiming::voter_lease`: past it the other voters may elect someone else).
    pub leader_quorum_lapse_max: Duration,
    /// How long ago a quorum last acknowledged this node as leader, and a leadership transfer under way.
    pub quorum: Arc<QuorumClock>,
    /// For leadership transfers (`move_leader`).
    pub peers: Arc<PeerChannels>,
    pub timing: ElectionTiming,
    /// The leader's lease deadlines.
    pub lessor: Arc<Lessor>,
    /// Set when the node starts to shut down: long-lived response streams end (`until_draining`).
    pub draining: tokio::sync::watch::Receiver<bool>,
}

/// Refuses to open a long-lived stream (`ShuttingDown`) once the node has started to shut down, so that the
/// client opens it on another node instead of getting a stream that ends at once.
pub fn refuse_if_draining(draining: &tokio::sync::watch::Receiver<bool>) -> Result<(), ApiError> {
    match *draining.borrow() {
        true => Err(ApiError::ShuttingDown),
        false => Ok(()),
    }
}

/// `stream`, ended with `ending()` (the API's `ShuttingDown` status: `Unavailable`, kind `shutting_down`) as
/// soon as the node starts to shut down. A watch or a keep-alive stream otherwise lasts as long as its client
/// wants, and the shutdown's drain would wait for it until `DRAIN_TIMEOUT` and then drop the server. Clients
/// resume elsewhere, as after any unavailable node.
pub fn until_draining<T: Send + 'static>(
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
    draining: tokio::sync::watch::Receiver<bool>,
    ending: fn() -> Status,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>> {
    use futures::StreamExt as _;
    let stream = Box::pin(stream);
    Box::pin(futures::stream::unfold(
        Some((stream, draining)),
        move |state| async move {
            let (mut stream, mut draining) = state?;
            // `None`: the node started to shut down.
            let next = tokio::select! {
                item = stream.next() => Some(item),
                Ok(_) = draining.wait_for(|draining| *draining) => None,
            };
            match next {
                Some(item) => item.map(|item| (item, Some((stream, draining)))),
                None => Some((Err(ending()), None)),
            }
        },
    ))
}

fn session(session: Option<kv::Session>) -> Option<SessionRef> {
    session
        .filter(|session| session.client_id != 0)
        .map(|session| SessionRef {
            client_id: session.client_id,
            sequence: session.sequence,
        })
}

fn to_kv(kv: state_machine::KeyValue) -> kv::KeyValue {
    kv::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn role(role: Role) -> kv::Role {
    match role {
        Role::Leader => kv::Role::Leader,
        Role::Follower => kv::Role::Follower,
        Role::Candidate => kv::Role::Candidate,
        Role::Learner => kv::Role::Learner,
        Role::Shutdown => kv::Role::Shutdown,
    }
}

fn envelope(envelope: Envelope) -> kv::ReadEnvelope {
    kv::ReadEnvelope {
        node_id: envelope.node_id,
        role: role(envelope.role) as i32,
        consistency: match envelope.consistency {
            Consistency::Linearizable => kv::Consistency::Linearizable,
            Consistency::Lease => kv::Consistency::Lease,
            Consistency::Stale => kv::Consistency::Stale,
        } as i32,
        applied_index: envelope.applied_index,
        term: envelope.term,
        leader_id: envelope.leader_id.unwrap_or(0),
        millis_since_leader: envelope.millis_since_leader,
        revision: envelope.revision,
        compact_revision: envelope.compact_revision,
    }
}

fn read_request(options: Option<kv::ReadOptions>) -> Result<ReadRequest, ApiError> {
    let options = options.unwrap_or_default();
    let consistency = match kv::Consistency::try_from(options.consistency) {
        Ok(kv::Consistency::Unspecified | kv::Consistency::Linearizable) => {
            Consistency::Linearizable
        }
        Ok(kv::Consistency::Lease) => Consistency::Lease,
        Ok(kv::Consistency::Stale) => Consistency::Stale,
        Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown consistency {}",
                options.consistency
            )))
        }
    };
    if options.max_staleness_ms > 0 && consistency != Consistency::Stale {
        return Err(ApiError::InvalidArgument(
            "max_staleness applies to stale reads only".to_string(),
        ));
    }
    Ok(ReadRequest {
        consistency,
        max_staleness: (options.max_staleness_ms > 0)
            .then(|| Duration::from_millis(options.max_staleness_ms)),
        min_revision: options.min_revision,
        revision: options.revision,
    })
}

/// The consistency label of a read's metrics: what it asked for.
fn consistency_label(options: Option<&kv::ReadOptions>) -> &'static str {
    match options.map(|options| kv::Consistency::try_from(options.consistency)) {
        None | Some(Ok(kv::Consistency::Unspecified | kv::Consistency::Linearizable)) => {
            "linearizable"
        }
        Some(Ok(kv::Consistency::Lease)) => "lease",
        Some(Ok(kv::Consistency::Stale)) => "stale",
        Some(Err(_)) => "invalid",
    }
}

/// Runs one client operation, counting it and recording its latency by kind, consistency and outcome (`ok`
/// or the `raftkv-error` kind of the status).
async fn observed<T>(
    kind: &'static str,
    consistency: &'static str,
    operation: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = operation.await;
    let outcome = match &result {
        Ok(_) => telemetry::OUTCOME_OK,
        Err(status) => status
            .metadata()
            .get(ERROR_KIND_KEY)
            .and_then(|kind| kind.to_str().ok())
            .and_then(ErrorKind::from_name)
            .map_or("transport", ErrorKind::as_str),
    };
    telemetry::record_client_operation(kind, consistency, outcome, started.elapsed());
    result
}

impl Api {
    fn not_leader(&self) -> ApiError {
        let (leader_id, leader_addr) = self.reader.leader_hint();
        ApiError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    pub(crate) fn ensure_leader(&self) -> Result<(), ApiError> {
        let is_leader = self.raft.metrics().borrow().state == ServerState::Leader;
        if is_leader {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Refuses a write on a node that is not the leader, or that leads but has not been acknowledged by a
    /// quorum for longer than `leader_quorum_lapse_max`: openraft 0.9 has no check-quorum, so a leader cut
    /// off from the others keeps its role, and a write proposed there would wait out its deadline and end
    /// indeterminate, while the client could have gone to the new leader at once. Before its first
    /// acknowledgement a leader's age counts from its election (`QuorumClock`).
    fn ensure_leader_with_quorum(&self) -> Result<(), ApiError> {
        if let Some(target) = self.quorum.handover.target() {
            self.ensure_leader()?;
            return Err(ApiError::LeaderTransfer { target });
        }
        self.ensure_leader_and_quorum()
    }

    /// `ensure_leader_with_quorum` without refusing while leadership moves (for keep-alives).
    fn ensure_leader_and_quorum(&self) -> Result<(), ApiError> {
        self.ensure_leader()?;
        let quorum_age_ms = self
            .quorum
            .leader_quorum_age()
            .map(|age| age.as_millis() as u64);
        let limit_ms = self.leader_quorum_lapse_max.as_millis() as u64;
        match quorum_age_ms {
            Some(quorum_age_ms) if quorum_age_ms > limit_ms => Err(ApiError::LeaderWithoutQuorum {
                quorum_age_ms,
                limit_ms,
            }),
            _ => Ok(()),
        }
    }

    /// Proposes a write and waits for its response. Nothing is proposed unless the command is valid and this
    /// node believes it is the leader.
    pub(crate) async fn write(
        &self,
        session: Option<SessionRef>,
        command: Command,
    ) -> Result<Response, ApiError> {
        command.validate().map_err(ApiError::InvalidArgument)?;
        let _permit = self.proposals.clone().try_acquire_owned().map_err(|_| {
            ApiError::Busy(format!(
                "{PROPOSALS_PENDING_MAX} proposals already pending on this node; retry later"
            ))
        })?;
        self.ensure_leader_with_quorum()?;
        let request = state_machine::Request { session, command };
        // The batcher bounds the batch's commit by WRITE_COMMIT_TIMEOUT too; this bounds the wait for a batch.
        let response =
            match tokio::time::timeout(WRITE_COMMIT_TIMEOUT, self.writes.write(request)).await {
                Err(_) => {
                    return Err(ApiError::Indeterminate(format!(
                        "not committed within {WRITE_COMMIT_TIMEOUT:?}"
                    )))
                }
                Ok(Ok(response)) => response,
                Ok(Err(WriteError::Indeterminate(reason))) => {
                    return Err(ApiError::Indeterminate(reason))
                }
                Ok(Err(WriteError::ShuttingDown)) => return Err(ApiError::ShuttingDown),
                Ok(Err(WriteError::Internal(reason))) => return Err(ApiError::Internal(reason)),
            };
        match response {
            Response::Rejected(Rejection::SequenceTooOld { last_sequence }) => {
                Err(ApiError::SequenceTooOld { last_sequence })
            }
            Response::Rejected(Rejection::Invalid(reason)) => {
                Err(ApiError::InvalidArgument(reason))
            }
            Response::Rejected(Rejection::Compacted {
                requested,
                compact_revision,
            }) => Err(ApiError::Revision(ReadError::Compacted {
                requested,
                compact_revision,
            })),
            Response::Rejected(Rejection::FutureRevision { requested, current }) => {
                Err(ApiError::Revision(ReadError::FutureRevision {
                    requested,
                    current,
                }))
            }
            Response::Rejected(Rejection::KeyNotFound { key }) => Err(ApiError::KeyNotFound {
                key: String::from_utf8_lossy(&key).into_owned(),
            }),
            Response::Rejected(Rejection::RangeTooLarge { limit }) => Err(ApiError::OutOfRange(
                format!(
                    "the ranges of the write cover more than {limit} keys (or {} MiB) in all; narrow them",
                    state_machine::TXN_RESPONSE_BYTES_MAX / (1024 * 1024)
                ),
            )),
            Response::Rejected(Rejection::LeaseNotFound { id }) => {
                Err(ApiError::LeaseNotFound { id })
            }
            Response::Rejected(Rejection::LeaseExists { id }) => Err(ApiError::LeaseExists { id }),
            Response::Rejected(Rejection::LeaseFull { id, limit }) => Err(ApiError::OutOfRange(
                format!("lease {id} already has {limit} keys, the most one lease may hold; attach the key to another lease"),
            )),
            response => Ok(response),
        }
    }

    pub(crate) fn members(&self) -> kv::MembersResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let stored = &metrics.membership_config;
        let voters: BTreeSet<NodeId> = stored.membership().voter_ids().collect();
        let members = stored
            .membership()
            .nodes()
            .map(|(id, node)| kv::Member {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        kv::MembersResponse {
            members,
            log_index: stored.log_id().map_or(0, |log_id| log_id.index),
        }
    }

    pub(crate) async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Node>,
    ) -> Result<kv::MembersResponse, ApiError> {
        self.ensure_leader()?;
        if let Some(target) = self.quorum.handover.target() {
            return Err(ApiError::LeaderTransfer { target });
        }
        match tokio::time::timeout(
            MEMBERSHIP_CHANGE_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => Err(ApiError::Indeterminate(format!(
                "membership change not done within {MEMBERSHIP_CHANGE_TIMEOUT:?}"
            ))),
            Ok(Ok(_)) => Ok(self.members()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(self.not_leader())
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error)))) => {
                Err(ApiError::Membership(error.to_string()))
            }
            Ok(Err(RaftError::Fatal(error))) => Err(ApiError::Indeterminate(error.to_string())),
        }
    }

    /// Hands leadership from this node, which must lead, to the voter `target` (`raft::transfer`); returns
    /// once `target` leads. Moving it to this node itself changes nothing.
    pub(crate) async fn move_leader(&self, target: NodeId) -> Result<(), ApiError> {
        self.ensure_leader()?;
        if target == self.node_id {
            return Ok(());
        }
        tracing::info!(target, "leadership transfer requested");
        transfer::transfer(
            &self.raft,
            &self.peers,
            &self.quorum.handover,
            self.timing,
            target,
        )
        .await
        .map_err(|error| {
            tracing::warn!(target, %error, "leadership transfer failed");
            ApiError::Transfer(error)
        })?;
        tracing::info!(target, "leadership transferred");
        Ok(())
    }
}

#[tonic::async_trait]
impl kv::kv_server::Kv for Api {
    async fn put(
        &self,
        request: Request<kv::PutRequest>,
    ) -> Result<GrpcResponse<kv::PutResponse>, Status> {
        observed("put", telemetry::CONSISTENCY_NONE, async move {
            let request = request.into_inner();
            // A put with a lease is a one-put transaction, which is what carries leases.
            let command = match request.lease {
                0 => Command::Put {
                    key: request.key,
                    value: request.value,
                },
                lease => Command::Txn(state_machine::Txn {
                    success: vec![state_machine::TxnOp::Put(state_machine::PutSpec {
                        key: request.key,
                        value: request.value,
                        prev_kv: false,
                        ignore_value: false,
                        lease,
                        ignore_lease: false,
                    })],
                    ..state_machine::Txn::default()
                }),
            };
            match self
                .write(session(request.session), command)
                .await
                .map_err(to_status)?
            {
                Response::Put { revision } | Response::Txn { revision, .. } => {
                    Ok(GrpcResponse::new(kv::PutResponse { revision }))
                }
                other => Err(to_status(ApiError::Internal(format!(
                    "put answered with {other:?}"
                )))),
            }
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<kv::DeleteRequest>,
    ) -> Result<GrpcResponse<kv::DeleteResponse>, Status> {
        observed("delete", telemetry::CONSISTENCY_NONE, async move {
            let request = request.into_inner();
            match self
                .write(
                    session(request.session),
                    Command::Delete { key: request.key },
                )
                .await
                .map_err(to_status)?
            {
                Response::Delete { revision, deleted } => {
                    Ok(GrpcResponse::new(kv::DeleteResponse { revision, deleted }))
                }
                other => Err(to_status(ApiError::Internal(format!(
                    "delete answered with {other:?}"
                )))),
            }
        })
        .await
    }

    async fn cas(
        &self,
        request: Request<kv::CasRequest>,
    ) -> Result<GrpcResponse<kv::CasResponse>, Status> {
        observed("cas", telemetry::CONSISTENCY_NONE, async move {
            let request = request.into_inner();
            let expected = match request.expected {
                Some(kv::cas_request::Expected::ExpectedValue(value)) => Expected::Value(value),
                Some(kv::cas_request::Expected::ExpectedRevision(revision)) => {
                    Expected::Revision(revision)
                }
                Some(kv::cas_request::Expected::ExpectedAbsent(_)) => Expected::Absent,
                None => return Err(to_status(ApiError::InvalidArgument(
                    "cas needs an expectation: expected_value, expected_revision or expected_absent"
                        .to_string(),
                ))),
            };
            let command = Command::Cas {
                key: request.key,
                expected,
                value: request.new_value,
            };
            match self
                .write(session(request.session), command)
                .await
                .map_err(to_status)?
            {
                Response::Cas {
                    revision,
                    swapped,
                    current,
                } => Ok(GrpcResponse::new(kv::CasResponse {
                    swapped,
                    revision,
                    current: current.map(to_kv),
                })),
                other => Err(to_status(ApiError::Internal(format!(
                    "cas answered with {other:?}"
                )))),
            }
        })
        .await
    }

    async fn get(
        &self,
        request: Request<kv::GetRequest>,
    ) -> Result<GrpcResponse<kv::GetResponse>, Status> {
        let consistency = consistency_label(request.get_ref().read.as_ref());
        observed("get", consistency, async move {
            let request = request.into_inner();
            state_machine::validate_key(&request.key)
                .map_err(|reason| to_status(ApiError::InvalidArgument(reason)))?;
            let read = read_request(request.read).map_err(to_status)?;
            let key = request.key;
            let (kv, env) = self
                .reader
                .serve(read, |applied| applied.keyspace.get(&key, read.revision))
                .await
                .map_err(to_status)?;
            Ok(GrpcResponse::new(kv::GetResponse {
                kv: kv.map(to_kv),
                envelope: Some(envelope(env)),
            }))
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<kv::CompactRequest>,
    ) -> Result<GrpcResponse<kv::CompactResponse>, Status> {
        observed("compact", telemetry::CONSISTENCY_NONE, async move {
            let revision = request.into_inner().revision;
            match self
                .write(None, Command::Compact { revision })
                .await
                .map_err(to_status)?
            {
                Response::Compact {
                    revision,
                    compact_revision,
                } => Ok(GrpcResponse::new(kv::CompactResponse {
                    revision,
                    compact_revision,
                })),
                other => Err(to_status(ApiError::Internal(format!(
                    "compact answered with {other:?}"
                )))),
            }
        })
        .await
    }

    async fn txn(
        &self,
        request: Request<kv::TxnRequest>,
    ) -> Result<GrpcResponse<kv::TxnResponse>, Status> {
        observed("txn", telemetry::CONSISTENCY_NONE, async move {
            let mut request = request.into_inner();
            let session = session(request.session.take());
            let txn = txn::to_txn(request).map_err(to_status)?;
            match self
                .write(session, Command::Txn(txn))
                .await
                .map_err(to_status)?
            {
                Response::Txn { revision, result } => {
                    Ok(GrpcResponse::new(txn::to_response(revision, result)))
                }
                other => Err(to_status(ApiError::Internal(format!(
                    "a transaction was answered with {other:?}"
                )))),
            }
        })
        .await
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<kv::WatchRequest>,
    ) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        let (stream, first) = self.start_watch(request.into_inner()).map_err(to_status)?;
        let mut response = GrpcResponse::new(stream);
        response
            .metadata_mut()
            .insert(WATCH_START_KEY, MetadataValue::from(first));
        Ok(response)
    }

    async fn lease_grant(
        &self,
        request: Request<kv::LeaseGrantRequest>,
    ) -> Result<GrpcResponse<kv::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let (id, ttl, revision) = self
            .lease_grant(request.id, request.ttl)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(kv::LeaseGrantResponse {
            id,
            ttl,
            revision,
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<kv::LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<kv::LeaseRevokeResponse>, Status> {
        let revision = self
            .lease_revoke(request.into_inner().id)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(kv::LeaseRevokeResponse { revision }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<kv::LeaseKeepAliveRequest>,
    ) -> Result<GrpcResponse<kv::LeaseKeepAliveResponse>, Status> {
        let ttl = self
            .lease_keep_alive(request.into_inner().id)
            .map_err(to_status)?;
        Ok(GrpcResponse::new(kv::LeaseKeepAliveResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<kv::LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<kv::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let status = self
            .lease_time_to_live(request.id, request.keys)
            .map_err(to_status)?;
        Ok(GrpcResponse::new(match status {
            Some(status) => kv::LeaseTimeToLiveResponse {
                found: true,
                ttl: status.remaining,
                granted_ttl: status.granted_ttl,
                keys: status.keys,
            },
            None => kv::LeaseTimeToLiveResponse::default(),
        }))
    }

    async fn lease_list(
        &self,
        _request: Request<kv::LeaseListRequest>,
    ) -> Result<GrpcResponse<kv::LeaseListResponse>, Status> {
        let ids = self.lease_list().map_err(to_status)?;
        Ok(GrpcResponse::new(kv::LeaseListResponse { ids }))
    }

    async fn scan(
        &self,
        request: Request<kv::ScanRequest>,
    ) -> Result<GrpcResponse<kv::ScanResponse>, Status> {
        let consistency = consistency_label(request.get_ref().read.as_ref());
        observed("scan", consistency, async move {
            let request = request.into_inner();
            let limit = match request.limit as usize {
                0 => state_machine::SCAN_LIMIT_DEFAULT,
                limit if limit > state_machine::SCAN_LIMIT_MAX => {
                    return Err(to_status(ApiError::OutOfRange(format!(
                        "scan limit {limit} is over the maximum of {}",
                        state_machine::SCAN_LIMIT_MAX
                    ))))
                }
                limit => limit,
            };
            let range = if !request.prefix.is_empty() {
                if !request.start.is_empty() || !request.end.is_empty() {
                    return Err(to_status(ApiError::InvalidArgument(
                        "give a prefix or a range, not both".to_string(),
                    )));
                }
                ScanRange::Prefix(request.prefix)
            } else {
                if !request.end.is_empty() && request.end <= request.start {
                    return Err(to_status(ApiError::InvalidArgument(
                        "scan range end must be after its start".to_string(),
                    )));
                }
                ScanRange::Range {
                    start: request.start,
                    end: (!request.end.is_empty()).then_some(request.end),
                }
            };
            let read = read_request(request.read).map_err(to_status)?;
            let (result, env) = self
                .reader
                .serve(read, |applied| {
                    applied.keyspace.scan(&range, limit, read.revision)
                })
                .await
                .map_err(to_status)?;
            Ok(GrpcResponse::new(kv::ScanResponse {
                kvs: result.kvs.into_iter().map(to_kv).collect(),
                more: result.more,
                envelope: Some(envelope(env)),
            }))
        })
        .await
    }
}

#[tonic::async_trait]
impl kv::admin_server::Admin for Api {
    async fn status(
        &self,
        _request: Request<kv::StatusRequest>,
    ) -> Result<GrpcResponse<kv::StatusResponse>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let leader_address = metrics
            .current_leader
            .and_then(|leader| membership.get_node(&leader).map(|node| node.addr.clone()))
            .unwrap_or_default();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let role = match metrics.state {
            ServerState::Leader => kv::Role::Leader,
            ServerState::Candidate => kv::Role::Candidate,
            ServerState::Learner => kv::Role::Learner,
            ServerState::Shutdown => kv::Role::Shutdown,
            ServerState::Follower if voters.contains(&self.node_id) => kv::Role::Follower,
            ServerState::Follower => kv::Role::Learner,
        };
        let replication = metrics
            .replication
            .as_ref()
            .map(|replication| {
                replication
                    .iter()
                    .filter(|(id, _)| **id != self.node_id)
                    .map(|(id, matched)| {
                        let matched_index = matched.map(|log_id| log_id.index);
                        kv::ReplicationProgress {
                            node_id: *id,
                            matched_index,
                            lag_entries: last_log_index.saturating_sub(matched_index.unwrap_or(0)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let millis_since_leader = if metrics.state == ServerState::Leader {
            metrics.millis_since_quorum_ack
        } else {
            self.reader
                .leader_contact
                .elapsed()
                .map(|elapsed| elapsed.as_millis() as u64)
        };
        let (revision, compact_revision) = self.reader.state_machine.revisions();
        let commit_index = self
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |log_id| log_id.index))
            .await
            .map_err(|_| to_status(ApiError::ShuttingDown))?;
        Ok(GrpcResponse::new(kv::StatusResponse {
            node_id: self.node_id,
            address: self.address.clone(),
            cluster_id: self.cluster_id.clone(),
            role: role as i32,
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address,
            commit_index,
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            last_log_index,
            snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
            millis_since_leader,
            voters,
            learners,
            replication,
            read_index_rounds: self.reader.batcher.rounds(),
            revision,
            compact_revision,
        }))
    }

    async fn list_members(
        &self,
        _request: Request<kv::ListMembersRequest>,
    ) -> Result<GrpcResponse<kv::MembersResponse>, Status> {
        Ok(GrpcResponse::new(self.members()))
    }

    async fn add_learner(
        &self,
        request: Request<kv::AddLearnerRequest>,
    ) -> Result<GrpcResponse<kv::MembersResponse>, Status> {
        let request = request.into_inner();
        if request.node_id == 0 || request.address.is_empty() {
            return Err(to_status(ApiError::InvalidArgument(
                "add-learner needs a node id above 0 and an address".to_string(),
            )));
        }
        self.ensure_leader().map_err(to_status)?;
        let node = Node {
            addr: request.address,
        };
        // Not blocking: the learner catches up in the background; `status` shows its progress.
        let result = tokio::time::timeout(
            MEMBERSHIP_CHANGE_TIMEOUT,
            self.raft.add_learner(request.node_id, node, false),
        )
        .await;
        match result {
            Err(_) => Err(to_status(ApiError::Indeterminate(
                "add-learner did not finish in time".to_string(),
            ))),
            Ok(Ok(_)) => Ok(GrpcResponse::new(self.members())),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(to_status(self.not_leader()))
            }
            Ok(Err(error)) => Err(to_status(ApiError::Membership(error.to_string()))),
        }
    }

    async fn promote(
        &self,
        request: Request<kv::PromoteRequest>,
    ) -> Result<GrpcResponse<kv::MembersResponse>, Status> {
        let id = request.into_inner().node_id;
        let change = ChangeMembers::AddVoterIds([id].into());
        Ok(GrpcResponse::new(
            self.change_membership(change).await.map_err(to_status)?,
        ))
    }

    async fn move_leader(
        &self,
        request: Request<kv::MoveLeaderRequest>,
    ) -> Result<GrpcResponse<kv::MoveLeaderResponse>, Status> {
        let target = request.into_inner().node_id;
        self.move_leader(target).await.map_err(to_status)?;
        Ok(GrpcResponse::new(kv::MoveLeaderResponse {
            leader_id: target,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<kv::RemoveMemberRequest>,
    ) -> Result<GrpcResponse<kv::MembersResponse>, Status> {
        let id = request.into_inner().node_id;
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        Ok(GrpcResponse::new(
            self.change_membership(change).await.map_err(to_status)?,
        ))
    }
}
