//! The client side of the peer API: the only holder of peer channels.
//!
//! One tonic `Channel` per peer address, made lazily once and reused by every RPC to that peer (tonic
//! reconnects it after a failure, so a restarted peer is reached again). Every call has a connect deadline and
//! a request deadline. `--peer-route ID=ADDR` overrides where a peer is dialled, which is how the partition
//! harness puts a proxy on each link without the node knowing. With TLS on, every peer channel is mutual TLS:
//! it trusts only the cluster CA, presents this node's certificate, and verifies the peer's certificate
//! against `tls::PEER_SERVER_NAME`, not the dialled address (which may be a proxy's).
//!
//! Raft messages travel as postcard-encoded openraft types inside a `RaftMessage` envelope that names the
//! cluster, the sender and the intended receiver; the receiver checks the envelope before decoding.
//! AppendEntries (entries, heartbeats, commit updates) goes on one long-lived bidirectional stream per
//! follower, where each message and each reply is a single HTTP/2 DATA frame; votes and snapshot chunks are
//! unary calls.
//!
//! An AppendEntries never tells a follower a commit index beyond the leader's synced log (see
//! `RaftPeer::commit_to_send` and `storage`): the leader acknowledges its own appends before their sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::{RaftMessage, RaftReply, ReadIndexReply, ReadIndexRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::raft::pre_vote::{PreVoteReply, PreVoteRequest};
use crate::raft::quorum::QuorumClock;
use crate::raft::types::{LogId, Node, NodeId, TypeConfig};
use crate::storage::wal::LogProgress;

/// Largest peer message sent or accepted. An AppendEntries message is at most `APPEND_ENTRIES_BATCH_MAX`
/// entries of one write batch each (`node` checks at compile time that they fit), and a snapshot chunk is
/// `SNAPSHOT_CHUNK_BYTES`; both stay well below this.
pub const PEER_MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// How long dialling a peer may take before the RPC fails as unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Interval of HTTP/2 keep-alive pings on peer connections; a connection that stops answering is dropped and
/// redialled instead of holding requests on a dead path.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a keep-alive ping may go unanswered.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader's AppendEntries may wait for the leader's own log sync to reach the commit index it
/// announces (see `RaftPeer::commit_to_send`); after it the message goes with the synced part only. At most
/// half the RPC's own deadline, and the call gets what is left.
pub const COMMIT_SYNC_WAIT_MAX: Duration = Duration::from_millis(50);
/// AppendEntries messages queued on a stream ahead of the connection. openraft sends the next only after the
/// reply to the one before (or after giving up on it), so one is enough.
pub const APPEND_STREAM_MESSAGES_MAX: usize = 1;
/// Idle AppendEntries streams kept per peer address for later clients (see `PeerChannels`): as many as
/// read-index rounds may overlap (`read_index::READ_INDEX_ROUNDS_IN_FLIGHT_MAX`).
pub const APPEND_STREAMS_IDLE_MAX: usize = 4;

/// Where and how to reach peers; shared by every peer client and the follower read path.
pub struct PeerChannels {
    node_id: NodeId,
    cluster_id: String,
    /// Dial overrides from `--peer-route`.
    routes: BTreeMap<NodeId, String>,
    /// Mutual TLS to peers, or plaintext when `None`.
    tls: Option<ClientTlsConfig>,
    /// One channel per dialled address. A std mutex: it is held only to look up or insert, never across await.
    channels: Mutex<HashMap<String, Channel>>,
    /// Peers whose last Raft call did not reach them: trouble is logged at warn once when it starts and at
    /// info once when it ends, not on every retry. A std mutex, held only to update the set.
    unreachable: Mutex<BTreeSet<NodeId>>,
    /// The node's span: openraft calls the network from tasks of its own, outside it.
    span: tracing::Span,
    /// This node's quorum clock, set once Raft exists: while leader, every message says how long ago a quorum
    /// last acknowledged it (`leader_quorum_age_ms`), and a leader without a quorum falls silent.
    quorum: OnceLock<Arc<QuorumClock>>,
    /// AppendEntries streams not in use, per dialled address, at most `APPEND_STREAMS_IDLE_MAX` each.
    /// openraft makes a new client per follower for every leadership check behind a read-index round, and
    /// sends one heartbeat with it; those clients borrow a stream here instead of opening one per round.
    /// A std mutex, held only to take or put one.
    idle_append_streams: Mutex<HashMap<String, Vec<AppendStream>>>,
    /// Addresses whose peer does not serve the AppendEntries stream (an older version): unary calls there.
    unary_append: Mutex<BTreeSet<String>>,
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("peer {target} at {addr} is unreachable: {message}")]
    Unreachable {
        target: NodeId,
        addr: String,
        message: String,
    },
    #[error("peer {target} refused: {status}")]
    Refused {
        target: NodeId,
        status: tonic::Status,
    },
    #[error("peer {target} sent a malformed reply: {message}")]
    Malformed { target: NodeId, message: String },
}

impl PeerChannels {
    /// Made inside the node's span, which it keeps for its own log lines.
    pub fn new(
        node_id: NodeId,
        cluster_id: String,
        routes: BTreeMap<NodeId, String>,
        tls: Option<ClientTlsConfig>,
    ) -> Arc<Self> {
        Arc::new(PeerChannels {
            node_id,
            cluster_id,
            routes,
            tls,
            channels: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(BTreeSet::new()),
            span: tracing::Span::current(),
            quorum: OnceLock::new(),
            idle_append_streams: Mutex::new(HashMap::new()),
            unary_append: Mutex::new(BTreeSet::new()),
        })
    }

    /// Records whether the last Raft call reached `target`; logs only a change.
    fn record_reachability(
        &self,
        target: NodeId,
        addr: &str,
        failure: Option<&dyn std::fmt::Display>,
    ) {
        let mut unreachable = self
            .unreachable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match failure {
            Some(error) => {
                if unreachable.insert(target) {
                    tracing::warn!(parent: &self.span, peer = target, addr, %error, "peer unreachable; retrying in the background");
                }
            }
            None => {
                if unreachable.remove(&target) {
                    tracing::info!(parent: &self.span, peer = target, addr, "peer reachable again");
                }
            }
        }
    }

    /// An idle AppendEntries stream to `addr`, if there is one.
    fn take_idle_stream(&self, addr: &str) -> Option<AppendStream> {
        self.idle_append_streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(addr)?
            .pop()
    }

    /// Keeps a stream with no message in flight for the next client of `addr`; drops it when enough are kept.
    fn keep_idle_stream(&self, addr: &str, stream: AppendStream) {
        let mut idle = self
            .idle_append_streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < APPEND_STREAMS_IDLE_MAX {
            streams.push(stream);
        }
    }

    /// Records that the peer at `addr` does not serve the AppendEntries stream.
    fn mark_appends_unary(&self, addr: &str) {
        self.unary_append
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(addr.to_string());
    }

    fn appends_are_unary(&self, addr: &str) -> bool {
        self.unary_append
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(addr)
    }

    /// Gives the network this node's quorum clock (Raft is built after the network, so this comes later).
    pub fn set_quorum_clock(&self, quorum: Arc<QuorumClock>) {
        let _ = self.quorum.set(quorum);
    }

    /// While this node leads: milliseconds since a quorum last acknowledged it (`QuorumClock`).
    fn leader_quorum_age_ms(&self) -> Option<u64> {
        self.quorum
            .get()?
            .leader_quorum_age()
            .map(|age| age.as_millis() as u64)
    }

    /// While this node is a leader without a quorum in a silent phase (`QuorumClock::silent_for`), the error
    /// an AppendEntries or snapshot chunk gets instead of being sent.
    fn silence(&self) -> Option<Unreachable> {
        let quorum_age = self.quorum.get()?.silent_for()?;
        Some(Unreachable::new(&std::io::Error::other(format!(
            "this leader has had no quorum for {quorum_age:?}; not sending"
        ))))
    }

    /// The address to dial for `target`, whose advertised address is `advertised`.
    pub fn address_of(&self, target: NodeId, advertised: &str) -> String {
        self.routes
            .get(&target)
            .cloned()
            .unwrap_or_else(|| advertised.to_string())
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = match &self.tls {
            Some(tls) => {
                Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?
            }
            None => Endpoint::from_shared(format!("http://{addr}"))?,
        };
        let channel = endpoint
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn client(&self, target: NodeId, addr: &str) -> Result<PeerClient<Channel>, PeerCallError> {
        let channel = self
            .channel(addr)
            .map_err(|error| PeerCallError::Unreachable {
                target,
                addr: addr.to_string(),
                message: error.to_string(),
            })?;
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    fn envelope(&self, target: NodeId, payload: Vec<u8>) -> RaftMessage {
        RaftMessage {
            cluster_id: self.cluster_id.clone(),
            from: self.node_id,
            to: target,
            payload,
            leader_quorum_age_ms: self.leader_quorum_age_ms(),
            seq: 0,
            deadline_ms: 0,
        }
    }

    /// Asks the leader `target` (advertised at `advertised`) for a read index: the follower half of a
    /// linearizable read.
    pub async fn read_index(
        &self,
        target: NodeId,
        advertised: &str,
        timeout: Duration,
    ) -> Result<ReadIndexReply, PeerCallError> {
        let addr = self.address_of(target, advertised);
        let mut client = self.client(target, &addr)?;
        let mut request = tonic::Request::new(ReadIndexRequest {
            cluster_id: self.cluster_id.clone(),
            from: self.node_id,
            to: target,
        });
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.read_index(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if is_transport_failure(&status) => Err(PeerCallError::Unreachable {
                target,
                addr,
                message: transport_detail(&status),
            }),
            Ok(Err(status)) => Err(PeerCallError::Refused { target, status }),
            Err(_) => Err(PeerCallError::Unreachable {
                target,
                addr,
                message: format!("no answer within {timeout:?}"),
            }),
        }
    }
}

impl PeerChannels {
    /// Asks `target` (advertised at `advertised`) whether it would vote for this node now (see `pre_vote`).
    pub async fn pre_vote(
        &self,
        target: NodeId,
        advertised: &str,
        request: &PreVoteRequest,
        timeout: Duration,
    ) -> Result<PreVoteReply, PeerCallError> {
        let addr = self.address_of(target, advertised);
        let mut client = self.client(target, &addr)?;
        let payload = postcard::to_stdvec(request).map_err(|error| PeerCallError::Malformed {
            target,
            message: format!("cannot encode a pre-vote: {error}"),
        })?;
        let mut message = tonic::Request::new(self.envelope(target, payload));
        message.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.pre_vote(message)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) if is_transport_failure(&status) => {
                return Err(PeerCallError::Unreachable {
                    target,
                    addr,
                    message: transport_detail(&status),
                })
            }
            Ok(Err(status)) => return Err(PeerCallError::Refused { target, status }),
            Err(_) => {
                return Err(PeerCallError::Unreachable {
                    target,
                    addr,
                    message: format!("no answer within {timeout:?}"),
                })
            }
        };
        postcard::from_bytes(&reply.payload).map_err(|error| PeerCallError::Malformed {
            target,
            message: format!("pre-vote reply does not decode: {error}"),
        })
    }
}

/// True when a status means the request may never have reached the peer's application (as opposed to the
/// peer answering with an error): no raftkv error kind, and a transport code or a failure of this side's
/// transport (e.g. a TLS alert, which tonic reports as `Unknown`).
fn is_transport_failure(status: &tonic::Status) -> bool {
    let from_transport = std::error::Error::source(status)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    (from_transport
        || matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ))
        && status
            .metadata()
            .get(raftkv_proto::contract::ERROR_KIND_KEY)
            .is_none()
}

/// A transport failure with its causes ("transport error" alone does not say that, e.g., the peer's
/// certificate is not trusted).
fn transport_detail(status: &tonic::Status) -> String {
    let mut detail = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if !detail.ends_with(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = error.source();
    }
    detail
}

/// Makes openraft's per-peer clients; it never connects by itself.
pub struct NetworkFactory {
    peers: Arc<PeerChannels>,
    log_progress: watch::Receiver<LogProgress>,
}

impl NetworkFactory {
    /// `log_progress` is this node's WAL (`storage::LogStore::progress`): no commit index beyond what it
    /// has synced is sent.
    pub fn new(peers: Arc<PeerChannels>, log_progress: watch::Receiver<LogProgress>) -> Self {
        NetworkFactory {
            peers,
            log_progress,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> RaftPeer {
        let addr = self.peers.address_of(target, &node.addr);
        RaftPeer {
            target,
            addr,
            peers: self.peers.clone(),
            log_progress: self.log_progress.clone(),
            append_stream: None,
        }
    }
}

/// openraft's client for one peer.
pub struct RaftPeer {
    target: NodeId,
    addr: String,
    peers: Arc<PeerChannels>,
    log_progress: watch::Receiver<LogProgress>,
    /// The AppendEntries stream this client uses: borrowed from `PeerChannels` or opened by its first
    /// AppendEntries, dropped after a failure (the next call gets another), given back when the client is
    /// dropped with no message in flight on it.
    append_stream: Option<AppendStream>,
}

/// One open AppendEntries stream: where messages go and where their replies come from.
struct AppendStream {
    messages: mpsc::Sender<RaftMessage>,
    replies: tonic::Streaming<RaftReply>,
    /// The `seq` of the last message sent on it.
    seq: u64,
    /// A message was sent and its reply not yet read (its call was given up on).
    in_flight: bool,
}

impl Drop for RaftPeer {
    fn drop(&mut self) {
        if let Some(stream) = self.append_stream.take() {
            if !stream.in_flight {
                self.peers.keep_idle_stream(&self.addr, stream);
            }
        }
    }
}

/// Which Raft RPC a call is.
#[derive(Clone, Copy, Debug)]
enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftPeer {
    /// The commit index to send a follower in place of openraft's `leader_commit`: never beyond the last
    /// entry this leader has synced. openraft counts the leader's own entries before their sync (see
    /// `storage::LogStore::append`), so its commit index can name an entry that only one follower holds
    /// durably; a follower that applied it could then lose it to an election after the leader crashed.
    /// It first waits, at most `wait`, for the sync to reach the commit: openraft sends a commit index once,
    /// so one cut short here would reach the follower only with the next message (up to a heartbeat later).
    /// The wait is rarely more than nothing: a commit needs a follower's acknowledgement, which takes a round
    /// trip and the follower's own sync, while the leader's sync started before the entry was sent.
    async fn commit_to_send(
        &mut self,
        leader_commit: Option<LogId>,
        wait: Duration,
    ) -> Option<LogId> {
        let commit = leader_commit?;
        let synced_to_commit = |progress: &LogProgress| {
            progress.failed || progress.synced.is_some_and(|synced| synced >= commit)
        };
        if !synced_to_commit(&self.log_progress.borrow()) {
            let _ = tokio::time::timeout(wait, self.log_progress.wait_for(synced_to_commit)).await;
        }
        let synced = self.log_progress.borrow().synced;
        leader_commit.min(synced)
    }

    /// Sends one AppendEntries message on this client's stream (opening one if it has none) and waits for its
    /// reply. A reply with an older `seq` answers a message whose call was given up (openraft drops a call at
    /// its own deadline) and is skipped. Not bounded in time here: the caller bounds it.
    async fn append_on_stream(
        &mut self,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<RaftReply, tonic::Status> {
        let mut message = self.peers.envelope(self.target, payload);
        message.deadline_ms = deadline.as_millis().max(1) as u64;
        let stream = match self.append_stream.as_mut() {
            Some(stream) => {
                stream.seq += 1;
                message.seq = stream.seq;
                stream.in_flight = true;
                stream.messages.send(message).await.map_err(|_| {
                    tonic::Status::unavailable("the append-entries stream has closed")
                })?;
                stream
            }
            None => {
                let mut client = self
                    .peers
                    .client(self.target, &self.addr)
                    .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
                let (messages, outgoing) = mpsc::channel(APPEND_STREAM_MESSAGES_MAX);
                // The first message is queued before the stream opens, so it leaves with the request's
                // headers instead of after the reply's: on a slow link the message takes one trip, as a unary
                // call's does, and reaches the follower even if its reply is too late.
                message.seq = 1;
                messages
                    .try_send(message)
                    .expect("a new channel has room for one message");
                let replies = client
                    .append_entries_stream(tonic::Request::new(ReceiverStream::new(outgoing)))
                    .await?
                    .into_inner();
                self.append_stream.insert(AppendStream {
                    messages,
                    replies,
                    seq: 1,
                    in_flight: true,
                })
            }
        };
        let seq = stream.seq;
        loop {
            let reply = stream.replies.message().await.map_err(|status| {
                // A status the peer sent arrives in trailers, without a source; one with a source is the
                // connection failing under the stream (a reset, the peer killed), which a unary call reports
                // as a transport error.
                if std::error::Error::source(&status).is_some() {
                    tonic::Status::unavailable(transport_detail(&status))
                } else {
                    status
                }
            })?;
            match reply {
                Some(reply) if reply.seq == seq => {
                    stream.in_flight = false;
                    return Ok(reply);
                }
                Some(reply) if reply.seq < seq => continue,
                Some(reply) => {
                    return Err(tonic::Status::internal(format!(
                        "reply to message {} on the append-entries stream, where {seq} was the last sent",
                        reply.seq
                    )))
                }
                None => {
                    return Err(tonic::Status::unavailable(
                        "the peer ended the append-entries stream",
                    ))
                }
            }
        }
    }

    /// Turns a call's outcome into openraft's result: a transport failure or a missed deadline makes the
    /// peer unreachable (logged once), a refusal is a network error (logged at warn), and a reply is decoded.
    #[allow(clippy::result_large_err)] // openraft's error type, which the `RaftNetwork` methods return as is
    fn decode_reply<Resp, E>(
        &self,
        rpc: RaftRpc,
        reply: Result<RaftReply, tonic::Status>,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply = match reply {
            Ok(reply) => {
                self.peers
                    .record_reachability(self.target, &self.addr, None);
                reply
            }
            Err(status) if is_transport_failure(&status) => {
                let error = transport_detail(&status);
                self.peers
                    .record_reachability(self.target, &self.addr, Some(&error));
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => {
                tracing::warn!(parent: &self.peers.span, target_node = self.target, ?rpc, code = ?status.code(), message = status.message(), "peer refused a raft message");
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.payload)
            .map_err(|error| {
                tracing::warn!(parent: &self.peers.span, target_node = self.target, ?rpc, %error, "malformed raft reply");
                RPCError::Network(NetworkError::new(&error))
            })?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: RaftRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = postcard::to_stdvec(request)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let mut client = self
            .peers
            .client(self.target, &self.addr)
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        let deadline = option.hard_ttl();
        let mut message = tonic::Request::new(self.peers.envelope(self.target, payload));
        message.set_timeout(deadline);
        let call = async {
            match rpc {
                RaftRpc::Vote => client.vote(message).await,
                RaftRpc::InstallSnapshot => client.install_snapshot(message).await,
                RaftRpc::AppendEntries => client.append_entries(message).await,
            }
        };
        let reply = match tokio::time::timeout(deadline, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {deadline:?}"
            ))),
        };
        self.decode_reply(rpc, reply)
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        mut request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if let Some(silence) = self.peers.silence() {
            return Err(RPCError::Unreachable(silence));
        }
        let started = Instant::now();
        let budget = option.hard_ttl();
        request.leader_commit = self
            .commit_to_send(request.leader_commit, COMMIT_SYNC_WAIT_MAX.min(budget / 2))
            .await;
        if self.peers.appends_are_unary(&self.addr) {
            let option = RPCOption::new(budget.saturating_sub(started.elapsed()));
            return self.call(RaftRpc::AppendEntries, &request, &option).await;
        }
        let mut retried = false;
        let reply = loop {
            if self.append_stream.is_none() {
                self.append_stream = self.peers.take_idle_stream(&self.addr);
            }
            // A stream that was already open may have lost its connection while idle.
            let was_open = self.append_stream.is_some();
            let payload = postcard::to_stdvec(&request)
                .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
            let deadline = budget.saturating_sub(started.elapsed());
            let reply = match tokio::time::timeout(
                deadline,
                self.append_on_stream(payload, deadline),
            )
            .await
            {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {deadline:?}"
                ))),
            };
            let Err(status) = &reply else {
                break reply;
            };
            // Whatever is left on the stream (a reply still on its way, a broken connection) is not trusted:
            // the next message goes on a new stream, which it opens on its way (see `append_on_stream`), so
            // a link slower than the deadline still delivers every message, as unary calls did.
            self.append_stream = None;
            if status.code() == tonic::Code::Unimplemented {
                // A peer of an older version: this message and every later one go as unary calls.
                tracing::info!(parent: &self.peers.span, target_node = self.target, "peer has no append-entries stream; using unary calls");
                self.peers.mark_appends_unary(&self.addr);
                let option = RPCOption::new(budget.saturating_sub(started.elapsed()));
                return self.call(RaftRpc::AppendEntries, &request, &option).await;
            }
            // Once, on a new stream, when an old one turned out broken: AppendEntries is idempotent.
            if was_open && !retried && status.code() == tonic::Code::Unavailable {
                retried = true;
                continue;
            }
            break reply;
        };
        self.decode_reply(RaftRpc::AppendEntries, reply)
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if let Some(silence) = self.peers.silence() {
            return Err(RPCError::Unreachable(silence));
        }
        self.call(RaftRpc::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote, &request, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::LeaderId;

    use super::*;

    /// Bound on a wait that must end.
    const DONE_WITHIN: Duration = Duration::from_secs(10);

    fn id(index: u64) -> LogId {
        LogId::new(LeaderId::new(1, 1), index)
    }

    fn peer_at(addr: &str, progress: watch::Receiver<LogProgress>) -> RaftPeer {
        RaftPeer {
            target: 2,
            addr: addr.to_string(),
            peers: PeerChannels::new(1, "test".to_string(), BTreeMap::new(), None),
            log_progress: progress,
            append_stream: None,
        }
    }

    fn peer(progress: watch::Receiver<LogProgress>) -> RaftPeer {
        peer_at("127.0.0.1:1", progress)
    }

    /// Followers are never told a commit index beyond the leader's synced log: a message waits, boundedly,
    /// for the sync to reach the commit, then goes with what is synced.
    #[tokio::test]
    async fn the_commit_index_sent_never_passes_the_leaders_sync() {
        let (progress, receiver) = watch::channel(LogProgress {
            written: Some(id(9)),
            synced: Some(id(5)),
            failed: false,
        });
        let mut peer = peer(receiver);
        let short = Duration::from_millis(20);
        assert_eq!(peer.commit_to_send(None, short).await, None);
        assert_eq!(peer.commit_to_send(Some(id(4)), short).await, Some(id(4)));
        assert_eq!(
            peer.commit_to_send(Some(id(8)), short).await,
            Some(id(5)),
            "no sync came within the wait: the synced commit"
        );

        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            progress.send_modify(|progress| progress.synced = Some(id(9)));
            progress
        });
        assert_eq!(
            tokio::time::timeout(DONE_WITHIN, peer.commit_to_send(Some(id(8)), DONE_WITHIN))
                .await
                .unwrap(),
            Some(id(8)),
            "the message waits for the sync and then tells the whole commit"
        );
        let progress = sender.await.unwrap();
        progress.send_modify(|progress| progress.synced = None);
        assert_eq!(peer.commit_to_send(Some(id(8)), short).await, None);
    }

    /// A peer that answers every AppendEntries with success, unary or on streams (unless `has_stream` is
    /// false, as in an older version), and counts the calls and the streams opened.
    #[derive(Default)]
    struct FakePeer {
        has_stream: bool,
        /// Stream messages are received (and announced here) but never answered.
        silent: Option<mpsc::Sender<u64>>,
        unary_calls: Arc<std::sync::atomic::AtomicU64>,
        stream_calls: Arc<std::sync::atomic::AtomicU64>,
    }

    fn success() -> Vec<u8> {
        let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::Success);
        postcard::to_stdvec(&result).unwrap()
    }

    #[tonic::async_trait]
    impl raftkv_proto::peer::peer_server::Peer for FakePeer {
        async fn append_entries(
            &self,
            _request: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.unary_calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(tonic::Response::new(RaftReply {
                payload: success(),
                seq: 0,
            }))
        }

        type AppendEntriesStreamStream = ReceiverStream<Result<RaftReply, tonic::Status>>;

        async fn append_entries_stream(
            &self,
            request: tonic::Request<tonic::Streaming<RaftMessage>>,
        ) -> Result<tonic::Response<Self::AppendEntriesStreamStream>, tonic::Status> {
            self.stream_calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.has_stream {
                return Err(tonic::Status::unimplemented("no such method"));
            }
            let mut messages = request.into_inner();
            let (replies, stream) = mpsc::channel(4);
            let silent = self.silent.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = messages.message().await {
                    if let Some(received) = &silent {
                        let _ = received.send(message.seq).await;
                        continue;
                    }
                    let reply = RaftReply {
                        payload: success(),
                        seq: message.seq,
                    };
                    if replies.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            });
            Ok(tonic::Response::new(ReceiverStream::new(stream)))
        }

        async fn vote(
            &self,
            _request: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn pre_vote(
            &self,
            _request: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _request: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn read_index(
            &self,
            _request: tonic::Request<ReadIndexRequest>,
        ) -> Result<tonic::Response<ReadIndexReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    /// Serves `fake` on a free port; returns its address and what stops it.
    fn serve(
        fake: FakePeer,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(raftkv_proto::peer::peer_server::PeerServer::new(fake))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        (addr, stop, server)
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops a server made by `serve` and waits until it has stopped.
    async fn shut_down(
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let _ = stop.send(());
        tokio::time::timeout(DONE_WITHIN, server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    async fn heartbeat(peer: &mut RaftPeer) {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let response = tokio::time::timeout(
            DONE_WITHIN,
            peer.append_entries(request, RPCOption::new(Duration::from_secs(5))),
        )
        .await
        .expect("the call ends")
        .expect("the call succeeds");
        assert!(matches!(response, AppendEntriesResponse::Success));
    }

    /// Clients made one after another for the same peer (openraft makes one per follower for each
    /// leadership check) share one stream instead of opening one each.
    #[tokio::test]
    async fn clients_one_after_another_share_one_stream() {
        let fake = FakePeer {
            has_stream: true,
            ..FakePeer::default()
        };
        let (unary_calls, stream_calls) = (fake.unary_calls.clone(), fake.stream_calls.clone());
        let (addr, stop, server) = serve(fake);
        let (_progress, receiver) = watch::channel(LogProgress::default());
        let peers = PeerChannels::new(1, "test".to_string(), BTreeMap::new(), None);
        for _ in 0..5 {
            let mut peer = peer_at(&addr, receiver.clone());
            peer.peers = peers.clone();
            heartbeat(&mut peer).await;
            heartbeat(&mut peer).await;
        }
        assert_eq!(
            (count(&stream_calls), count(&unary_calls)),
            (1, 0),
            "streams opened, unary calls"
        );
        drop(peers);
        shut_down(stop, server).await;
    }

    /// A peer that answers `Unimplemented` to the stream gets unary AppendEntries: the message that found out
    /// and every later one, without asking for the stream again.
    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_calls() {
        let fake = FakePeer::default();
        let (unary_calls, stream_calls) = (fake.unary_calls.clone(), fake.stream_calls.clone());
        let (addr, stop, server) = serve(fake);
        let (_progress, receiver) = watch::channel(LogProgress::default());
        let mut peer = peer_at(&addr, receiver);
        for _ in 0..3 {
            heartbeat(&mut peer).await;
        }
        assert_eq!(
            (count(&stream_calls), count(&unary_calls)),
            (1, 3),
            "streams asked for, unary calls"
        );
        shut_down(stop, server).await;
    }

    /// A connection that breaks while a reply is awaited makes the peer unreachable, as a unary call's
    /// transport failure does, not a refusal (which openraft would not back off from).
    #[tokio::test]
    async fn a_connection_lost_under_a_stream_is_unreachable() {
        let (received, mut receipts) = mpsc::channel(4);
        let fake = FakePeer {
            has_stream: true,
            silent: Some(received),
            ..FakePeer::default()
        };
        let (server_addr, stop, server) = serve(fake);
        // A one-connection TCP relay in front of the peer: aborting it cuts the connection.
        let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay_listener.local_addr().unwrap().to_string();
        let relay = tokio::spawn(async move {
            let (mut inbound, _) = relay_listener.accept().await.unwrap();
            let mut outbound = tokio::net::TcpStream::connect(&server_addr).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        let (_progress, receiver) = watch::channel(LogProgress::default());
        let mut peer = peer_at(&relay_addr, receiver);
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let call = peer.append_entries(request, RPCOption::new(DONE_WITHIN));
        let cut = async {
            tokio::time::timeout(DONE_WITHIN, receipts.recv())
                .await
                .expect("the message reaches the peer");
            relay.abort();
        };
        let (result, ()) = tokio::join!(call, cut);
        match result {
            Err(RPCError::Unreachable(_)) => {}
            other => panic!("expected unreachable, got {other:?}"),
        }
        drop(peer);
        let _ = stop.send(());
        let _ = tokio::time::timeout(DONE_WITHIN, server).await;
    }
}
