//! The server side of the peer API: Raft messages from other nodes and the follower read-index call.
//!
//! Before anything is decoded, the envelope is checked: the cluster id must be ours, the message must be
//! meant for this node, and the sender must be another node (and, for votes and read-index calls, a member).
//! A message that fails a check, or whose payload does not decode, is refused with a status and a warn log;
//! nothing a peer sends can panic the node. Snapshot chunks are also checked before openraft writes them
//! into the in-memory snapshot buffer (which seeks to a chunk's offset and fills any gap): a chunk holds at
//! most `SNAPSHOT_CHUNK_BYTES` and starts at 0 or within what was already received of the same snapshot, so
//! a bogus offset cannot make the node allocate an arbitrary amount of memory.
//!
//! AppendEntries arrives on a long-lived stream per leader replication (`AppendEntriesStream`, see `network`),
//! answered in order, one message at a time, each reply with its message's `seq`; the same checks apply to
//! each message, and a refusal ends the stream. The unary `AppendEntries` stays, with the same handling.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use raftkv_proto::peer::peer_server::Peer;
use raftkv_proto::peer::{RaftMessage, RaftReply, ReadIndexReply, ReadIndexRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::api::to_status;
use crate::api::SERVER_REQUEST_TIMEOUT;
use crate::error::ApiError;
use crate::raft::election::ElectionGate;
use crate::raft::handover::{TakeoverRequest, TimeoutNow};
use crate::raft::pre_vote::{self, PreVoteRequest, VoterView};
use crate::raft::quorum::QuorumClock;
use crate::raft::types::{NodeId, Raft, TypeConfig};
use crate::reads::read_index::{ReadIndexBatcher, ReadIndexError};
use crate::reads::LeaderContact;

/// Bytes per snapshot chunk a leader sends to a lagging follower; a received chunk over it is refused
/// (`InvalidArgument`), before openraft writes it into its in-memory buffer.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Deadline for one snapshot chunk to be received and stored.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies of one AppendEntries stream waiting to be sent. The leader sends a message only after the reply to
/// the one before, so one is enough; the rest is slack.
pub const APPEND_STREAM_REPLIES_MAX: usize = 4;

/// Decodes the payload of a peer message (`what` names it in the error): `InvalidArgument` if it does not
/// decode, never a panic, whatever the bytes.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Status> {
    postcard::from_bytes(payload)
        .map_err(|error| Status::invalid_argument(format!("malformed {what} payload: {error}")))
}

/// Serves the peer API for one node.
#[derive(Clone)]
pub struct PeerService {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub raft: Raft,
    pub batcher: ReadIndexBatcher,
    pub leader_contact: Arc<LeaderContact>,
    /// The snapshot being received (its id) and the end of the bytes received of it so far.
    pub snapshot_received: Arc<Mutex<Option<(String, u64)>>>,
    /// How long a voter refuses to vote after it last heard from a leader (`ElectionTiming::voter_lease`).
    pub voter_lease: Duration,
    /// This node's quorum age as leader, for the pre-vote rule.
    pub quorum: Arc<QuorumClock>,
    /// Leader messages are handled under its read guard, so that a campaign never starts in between the
    /// elector's last look at the silence and the campaign (`ElectionGate`).
    pub election_gate: Arc<ElectionGate>,
    /// Set when this node's leader asks it to take over (`TimeoutNow`); read by the elector and the pre-vote rule.
    pub takeover: Arc<TakeoverRequest>,
    /// Becomes true when the node starts to shut down: AppendEntries streams end after the message in hand,
    /// so that they do not hold the drain of requests in flight.
    pub draining: watch::Receiver<bool>,
}

impl PeerService {
    /// Refuses a snapshot chunk larger than `SNAPSHOT_CHUNK_BYTES` or one that would leave a gap in the
    /// snapshot being received; records how far the snapshot got.
    fn check_snapshot_chunk(
        &self,
        from: NodeId,
        request: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), Status> {
        let length = request.data.len() as u64;
        let mut received = self
            .snapshot_received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot_id = &request.meta.snapshot_id;
        let refusal = if length > SNAPSHOT_CHUNK_BYTES {
            Some(format!(
                "snapshot chunk of {length} bytes is over the limit of {SNAPSHOT_CHUNK_BYTES}"
            ))
        } else {
            match received.as_ref() {
                _ if request.offset == 0 => None,
                Some((id, end)) if id == snapshot_id && request.offset <= *end => None,
                _ => Some(format!(
                    "snapshot chunk at offset {} of snapshot {snapshot_id} leaves a gap after the bytes received",
                    request.offset
                )),
            }
        };
        if let Some(message) = refusal {
            tracing::warn!(from, "refused peer message: {message}");
            return Err(Status::invalid_argument(message));
        }
        let end = request.offset + length;
        match received.as_mut() {
            Some((id, received_end)) if id == snapshot_id => {
                *received_end = (*received_end).max(end)
            }
            _ => *received = Some((snapshot_id.clone(), end)),
        }
        Ok(())
    }

    /// Refuses a message whose vote cannot be its sender's, before openraft sees it. A leader message
    /// (AppendEntries, snapshot chunk) carries its sender's committed vote: an uncommitted one would become this
    /// node's vote and break openraft's invariants (a debug build panics). A vote request carries its sender's
    /// uncommitted vote. And no committed vote may name a second leader of a term this node knows a leader of:
    /// with one leader per term openraft holds two such votes impossible and panics comparing them. The
    /// property test of the peer service found each of these; a correct peer never sends one.
    fn check_vote(
        &self,
        vote: &crate::raft::types::Vote,
        from: NodeId,
        leader_message: bool,
        what: &str,
    ) -> Result<(), Status> {
        let refuse = |status: fn(String) -> Status, message: String| {
            tracing::warn!("refused peer message: {message}");
            Err(status(message))
        };
        if leader_message && !vote.is_committed() {
            return refuse(
                Status::invalid_argument,
                format!("{what} carries vote {vote}, which is not a leader's (not committed)"),
            );
        }
        if !leader_message && vote.is_committed() {
            return refuse(
                Status::invalid_argument,
                format!("{what} carries vote {vote}, a leader's, not a candidate's"),
            );
        }
        if vote.leader_id().voted_for() != Some(from) {
            return refuse(
                Status::invalid_argument,
                format!(
                    "{what} from node {from} carries vote {vote}, which is not for node {from}"
                ),
            );
        }
        let ours = self.raft.metrics().borrow().vote;
        let second_leader = ours.is_committed()
            && vote.is_committed()
            && ours.leader_id().get_term() == vote.leader_id().get_term()
            && ours.leader_id().voted_for() != vote.leader_id().voted_for();
        if second_leader {
            return refuse(
                Status::failed_precondition,
                format!("{what} from node {from} claims to lead term {}, which this node knows another leader of ({ours})", vote.leader_id().get_term()),
            );
        }
        Ok(())
    }

    /// Refuses AppendEntries whose entries do not follow `prev_log_id` one index after another, in terms that
    /// never go down (a leader always sends them so; openraft relies on it, and asserts it in a debug build,
    /// where the property test of the peer service found both). An entry may be of a later term than the
    /// message's vote: a deposed leader's replication can read entries its successor's term wrote, and the
    /// receiver refuses the message by its vote.
    // Leader ids order partially (two leaders of one term are incomparable): `!(a >= b)` is meant, not `a < b`.
    #[allow(clippy::nonminimal_bool)]
    fn check_entries_follow(request: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
        let mut previous = request.prev_log_id;
        for entry in &request.entries {
            let due = previous.map_or(0, |log_id| log_id.index + 1);
            let leader = entry.log_id.leader_id;
            let refusal = if entry.log_id.index != due {
                Some(format!(
                    "holds entry {} where {due} was due",
                    entry.log_id.index
                ))
            } else if previous.is_some_and(|previous| !(leader >= previous.leader_id)) {
                Some(format!(
                    "holds entry {} of term {} after one of a later or another leader",
                    entry.log_id.index, leader.term
                ))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                let message = format!("append-entries {refusal}");
                tracing::warn!("refused peer message: {message}");
                return Err(Status::invalid_argument(message));
            }
            previous = Some(entry.log_id);
        }
        Ok(())
    }

    /// Checks who a message is from and for; `members_only` also requires the sender to be a member.
    fn check_envelope(
        &self,
        cluster_id: &str,
        from: NodeId,
        to: NodeId,
        what: &str,
        members_only: bool,
    ) -> Result<(), Status> {
        let refusal = if cluster_id != self.cluster_id {
            Some(format!(
                "{what} is for cluster {cluster_id:?}, this node is in cluster {:?}",
                self.cluster_id
            ))
        } else if to != self.node_id {
            Some(format!("{what} is for node {to}, this is node {}: check --peer-route and the member addresses", self.node_id))
        } else if from == 0 || from == self.node_id {
            Some(format!("{what} claims to be from node {from}"))
        } else if members_only && !self.is_member(from) {
            Some(format!("{what} is from node {from}, which is not a member"))
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(message) => {
                tracing::warn!(from, to, cluster_id, "refused peer message: {message}");
                Err(Status::failed_precondition(message))
            }
        }
    }

    fn is_member(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        // A node that has no membership yet (a new learner) cannot know its peers: accept.
        membership.nodes().next().is_none() || membership.get_node(&id).is_some()
    }

    fn decode<T: DeserializeOwned>(&self, message: &RaftMessage, what: &str) -> Result<T, Status> {
        decode_payload(&message.payload, what).inspect_err(|status| {
            tracing::warn!(
                from = message.from,
                error = status.message(),
                "malformed peer message"
            );
        })
    }

    /// Checks a Raft message's envelope and decodes its payload.
    fn open<T: DeserializeOwned>(
        &self,
        message: RaftMessage,
        what: &str,
        members_only: bool,
    ) -> Result<T, Status> {
        self.check_envelope(
            &message.cluster_id,
            message.from,
            message.to,
            what,
            members_only,
        )?;
        self.decode(&message, what)
    }

    fn encode_reply<T: Serialize>(result: &T) -> Result<RaftReply, Status> {
        let payload = postcard::to_stdvec(result)
            .map_err(|error| Status::internal(format!("cannot encode reply: {error}")))?;
        Ok(RaftReply { payload, seq: 0 })
    }

    fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
        Self::encode_reply(result).map(Response::new)
    }

    /// Handles one AppendEntries message, from a unary call or from the stream. The leader's quorum age is
    /// counted from when the message arrived, however long openraft took with it.
    async fn handle_append_entries(&self, message: RaftMessage) -> Result<RaftReply, Status> {
        let received = Instant::now();
        let quorum_age = message.leader_quorum_age_ms;
        let from = message.from;
        let request: AppendEntriesRequest<TypeConfig> =
            self.open(message, "append-entries", false)?;
        self.check_vote(&request.vote, from, true, "append-entries")?;
        Self::check_entries_follow(&request)?;
        let leader_commit = request.leader_commit.map_or(0, |log_id| log_id.index);
        let result = {
            let _campaigns_wait = self.election_gate.leader_message().await;
            self.raft.append_entries(request).await
        };
        if let Ok(response) = &result {
            if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                let handling = received.elapsed().as_millis() as u64;
                self.leader_contact
                    .touch(quorum_age.map(|age| age.saturating_add(handling)));
                self.leader_contact.record_leader_commit(leader_commit);
            }
        }
        Self::encode_reply(&result)
    }

    /// Answers the messages of one AppendEntries stream in order, each with its `seq`, until the leader ends the
    /// stream, a message is refused (the refusal ends the stream) or the node starts to shut down (the stream
    /// ends with `Unavailable`). Each message is worked on for at most its `deadline_ms` (the leader has given
    /// up on it by then, as a unary call's `grpc-timeout` says), and never longer than
    /// `SERVER_REQUEST_TIMEOUT`; one that runs out ends the stream with `DeadlineExceeded`.
    async fn serve_append_stream(
        self,
        mut messages: Streaming<RaftMessage>,
        replies: mpsc::Sender<Result<RaftReply, Status>>,
    ) {
        let mut draining = self.draining.clone();
        loop {
            let message = tokio::select! {
                message = messages.message() => message,
                Ok(()) = async { draining.wait_for(|draining| *draining).await.map(|_| ()) } => {
                    let _ = replies.send(Err(Status::unavailable("the node is shutting down"))).await;
                    break;
                }
            };
            let reply = match message {
                Ok(None) => break,
                Err(status) => Err(status),
                Ok(Some(message)) => {
                    let seq = message.seq;
                    let bound = match message.deadline_ms {
                        0 => SERVER_REQUEST_TIMEOUT,
                        millis => Duration::from_millis(millis).min(SERVER_REQUEST_TIMEOUT),
                    };
                    match tokio::time::timeout(bound, self.handle_append_entries(message)).await {
                        Ok(reply) => reply.map(|reply| RaftReply { seq, ..reply }),
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "append-entries not handled within {bound:?}"
                        ))),
                    }
                }
            };
            let refused = reply.is_err();
            if replies.send(reply).await.is_err() || refused {
                break;
            }
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle_append_entries(request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendEntriesStreamStream = ReceiverStream<Result<RaftReply, Status>>;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        let (replies, stream) = mpsc::channel(APPEND_STREAM_REPLIES_MAX);
        tokio::spawn(
            self.clone()
                .serve_append_stream(request.into_inner(), replies)
                .instrument(tracing::Span::current()),
        );
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        let from = message.from;
        let request: openraft::raft::VoteRequest<NodeId> = self.open(message, "vote", true)?;
        self.check_vote(&request.vote, from, false, "vote")?;
        Self::reply(&self.raft.vote(request).await)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        let from = message.from;
        let request: PreVoteRequest = self.open(message, "pre-vote", true)?;
        let node_id = self.node_id;
        let leader_quorum_age = self.quorum.leader_quorum_age();
        let last_log_id = self.raft.data_metrics().borrow().last_log;
        let handing_to = self.quorum.handover.target();
        let takeover = self.takeover.clone();
        let view = self
            .raft
            .with_raft_state(move |state| {
                let vote = state.vote_ref();
                let candidate_is_voter = state
                    .membership_state
                    .effective()
                    .membership()
                    .get_joint_config()
                    .iter()
                    .any(|set| set.contains(&from));
                let term = vote.leader_id().term;
                let transfer_target = handing_to.or(takeover.holds_for(term).then_some(node_id));
                let view = VoterView {
                    node_id,
                    state: state.server_state,
                    term,
                    vote_committed: vote.is_committed(),
                    since_vote_refreshed: state
                        .vote_last_modified()
                        .map(|at| tokio::time::Instant::now().saturating_duration_since(at)),
                    last_log_id,
                    leader_quorum_age,
                    transfer_target,
                };
                (view, candidate_is_voter)
            })
            .await;
        let Ok((view, candidate_is_voter)) = view else {
            return Err(to_status(ApiError::ShuttingDown));
        };
        let reply = pre_vote::decide(&view, from, &request, candidate_is_voter, self.voter_lease);
        tracing::debug!(from, term = request.term, ?reply, "pre-vote");
        Self::reply(&reply)
    }

    async fn timeout_now(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        let from = message.from;
        let request: TimeoutNow = self.open(message, "timeout-now", true)?;
        let node_id = self.node_id;
        let refusal = self
            .raft
            .with_raft_state(move |state| {
                let vote = state.vote_ref();
                let is_voter = state
                    .membership_state
                    .effective()
                    .membership()
                    .get_joint_config()
                    .iter()
                    .all(|set| set.contains(&node_id));
                if !is_voter {
                    Some(format!("node {node_id} is not a voter, so it cannot lead"))
                } else if vote.leader_id().term != request.term
                    || !vote.is_committed()
                    || vote.leader_id().voted_for() != Some(from)
                {
                    Some(format!(
                        "node {from} does not lead node {node_id} in term {} (its vote is {vote})",
                        request.term,
                    ))
                } else {
                    None
                }
            })
            .await
            .map_err(|_| to_status(ApiError::ShuttingDown))?;
        if let Some(message) = refusal {
            tracing::warn!(from, "refused a leadership transfer: {message}");
            return Err(Status::failed_precondition(message));
        }
        tracing::info!(
            from,
            term = request.term,
            "the leader hands leadership to this node; campaigning once the voters' lease runs out"
        );
        self.takeover
            .ask(request.term, Duration::from_millis(request.within_ms));
        Self::reply(&())
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        let quorum_age = message.leader_quorum_age_ms;
        let from = message.from;
        let request: InstallSnapshotRequest<TypeConfig> =
            self.open(message, "install-snapshot", false)?;
        self.check_vote(&request.vote, from, true, "install-snapshot")?;
        self.check_snapshot_chunk(from, &request)?;
        let result = {
            let _campaigns_wait = self.election_gate.leader_message().await;
            self.raft.install_snapshot(request).await
        };
        if result.is_ok() {
            self.leader_contact.touch(quorum_age);
        }
        Self::reply(&result)
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let request = request.into_inner();
        self.check_envelope(
            &request.cluster_id,
            request.from,
            request.to,
            "read-index",
            true,
        )?;
        match self.batcher.read_index().await {
            Ok(read_index) => Ok(Response::new(ReadIndexReply {
                read_index: read_index.index,
                term: read_index.term,
                leader_id: read_index.leader_id,
            })),
            Err(ReadIndexError::NotLeader { leader_id }) => Err(to_status(ApiError::NotLeader {
                leader_id,
                leader_addr: None,
            })),
            Err(ReadIndexError::NoQuorum(reason)) => Err(to_status(ApiError::NoQuorum(reason))),
            Err(ReadIndexError::Busy) => Err(to_status(ApiError::Busy(
                "read-index queue is full".to_string(),
            ))),
            Err(ReadIndexError::ShuttingDown) => Err(to_status(ApiError::ShuttingDown)),
        }
    }
}
