//! openraft's network client for one peer (`RaftPeer`, made by `NetworkFactory`): AppendEntries on a
//! long-lived bidirectional stream (its own for a replication, borrowed from `PeerChannels` for the one-shot
//! clients of leadership checks), votes and snapshot chunks as unary calls; a commit index never beyond the
//! leader's synced log; a leader without a quorum kept silent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftkv_proto::peer::{RaftMessage, RaftReply};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::raft::types::{LogId, Node, NodeId, TypeConfig};
use crate::storage::wal::LogProgress;

use super::{
    is_transport_failure, transport_detail, PeerChannels, APPEND_STREAM_MESSAGES_MAX,
    COMMIT_SYNC_WAIT_MAX,
};

/// Makes openraft's per-peer clients; it never connects by itself.
pub struct NetworkFactory {
    pub(super) peers: Arc<PeerChannels>,
    pub(super) log_progress: watch::Receiver<LogProgress>,
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
    pub(super) target: NodeId,
    pub(super) addr: String,
    pub(super) peers: Arc<PeerChannels>,
    pub(super) log_progress: watch::Receiver<LogProgress>,
    /// The AppendEntries stream this client uses: borrowed from `PeerChannels` or opened by its first
    /// AppendEntries, dropped after a failure (the next call gets another), given back when the client is
    /// dropped with no message in flight on it.
    pub(super) append_stream: Option<AppendStream>,
}

/// One open AppendEntries stream: where messages go and where their replies come from.
pub(super) struct AppendStream {
    pub(super) messages: mpsc::Sender<RaftMessage>,
    pub(super) replies: tonic::Streaming<RaftReply>,
    /// The `seq` of the last message sent on it.
    pub(super) seq: u64,
    /// A message was sent and its reply not yet read (its call was given up on).
    pub(super) in_flight: bool,
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
pub(super) enum RaftRpc {
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
    pub(super) async fn commit_to_send(
        &mut self,
        leader_commit: Option<LogId>,
        wait: Duration,
    ) -> Option<LogId> {
        let commit = leader_commit?;
        let covered = |progress: &LogProgress| progress.covers_commit(commit);
        if !covered(&self.log_progress.borrow()) {
            let _ = tokio::time::timeout(wait, self.log_progress.wait_for(covered)).await;
        }
        self.log_progress.borrow().commit_to_announce(leader_commit)
    }

    /// Sends one AppendEntries message on this client's stream (opening one if it has none) and waits for its
    /// reply. A reply with an older `seq` answers a message whose call was given up (openraft drops a call at
    /// its own deadline) and is skipped. Not bounded in time here: the caller bounds it.
    pub(super) async fn append_on_stream(
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
    pub(super) fn decode_reply<Resp, E>(
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

    pub(super) async fn call<Req, Resp, E>(
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
