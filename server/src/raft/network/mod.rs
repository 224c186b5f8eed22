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
use std::time::Duration;

use openraft::error::Unreachable;
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::{RaftMessage, ReadIndexReply, ReadIndexRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::raft::handover::TimeoutNow;
use crate::raft::pre_vote::{PreVoteReply, PreVoteRequest};
use crate::raft::quorum::QuorumClock;
use crate::raft::types::NodeId;

mod raft_peer;

use raft_peer::AppendStream;
pub use raft_peer::{NetworkFactory, RaftPeer};

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

    /// While this node is a leader handing over leadership (`transfer::Handover::is_silent`) or a leader
    /// without a quorum in a silent phase (`QuorumClock::silent_for`), the error an AppendEntries or snapshot
    /// chunk gets instead of being sent.
    fn silence(&self) -> Option<Unreachable> {
        let quorum = self.quorum.get()?;
        if let Some(target) = quorum
            .handover
            .target()
            .filter(|_| quorum.handover.is_silent())
        {
            return Some(Unreachable::new(&std::io::Error::other(format!(
                "this leader is handing leadership to node {target}; not sending"
            ))));
        }
        let quorum_age = quorum.silent_for()?;
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

    /// A channel to node `target` (advertised at `advertised`), routed and secured as Raft traffic is: for
    /// requests a node passes on to another (the etcd API's forwarded writes).
    pub fn channel_to(&self, target: NodeId, advertised: &str) -> Result<Channel, PeerCallError> {
        let addr = self.address_of(target, advertised);
        self.channel(&addr)
            .map_err(|error| PeerCallError::Unreachable {
                target,
                addr,
                message: error.to_string(),
            })
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

/// The small unary peer calls whose payloads are postcard-encoded raftkv types (not openraft's).
#[derive(Clone, Copy, Debug)]
enum SmallCall {
    PreVote,
    TimeoutNow,
}

impl SmallCall {
    fn name(self) -> &'static str {
        match self {
            SmallCall::PreVote => "pre-vote",
            SmallCall::TimeoutNow => "timeout-now",
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
        self.small_call(target, advertised, SmallCall::PreVote, request, timeout)
            .await
    }

    /// Tells `target` (advertised at `advertised`) to take over leadership from this node (see `transfer`).
    pub async fn timeout_now(
        &self,
        target: NodeId,
        advertised: &str,
        request: &TimeoutNow,
        timeout: Duration,
    ) -> Result<(), PeerCallError> {
        self.small_call(target, advertised, SmallCall::TimeoutNow, request, timeout)
            .await
    }

    async fn small_call<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        target: NodeId,
        advertised: &str,
        call: SmallCall,
        request: &Req,
        timeout: Duration,
    ) -> Result<Reply, PeerCallError> {
        let addr = self.address_of(target, advertised);
        let mut client = self.client(target, &addr)?;
        let payload = postcard::to_stdvec(request).map_err(|error| PeerCallError::Malformed {
            target,
            message: format!("cannot encode a {}: {error}", call.name()),
        })?;
        let mut message = tonic::Request::new(self.envelope(target, payload));
        message.set_timeout(timeout);
        let sent = async {
            match call {
                SmallCall::PreVote => client.pre_vote(message).await,
                SmallCall::TimeoutNow => client.timeout_now(message).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, sent).await {
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
            message: format!("{} reply does not decode: {error}", call.name()),
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

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::raft::types::LogId;
    use crate::raft::types::TypeConfig;
    use crate::storage::wal::LogProgress;
    use openraft::error::{RPCError, RaftError};
    use openraft::network::{RPCOption, RaftNetwork};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    use raftkv_proto::peer::RaftReply;
    use tokio::sync::mpsc;
    use tokio::sync::watch;
    use tokio_stream::wrappers::ReceiverStream;

    /// Bound on a wait that must end.
    const DONE_WITHIN: Duration = Duration::from_secs(10);

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
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

        async fn timeout_now(
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
