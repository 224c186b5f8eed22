//! Wiring of one node: the only place that builds the `Raft`, spawns long-lived tasks and knows the
//! shutdown order.
//!
//! Start: open storage (refusing a data dir of another node or cluster), build openraft, bind the port, serve
//! peer + client + admin gRPC on it, then bootstrap if `--initial-cluster` names this node (idempotent: an
//! initialized node ignores it).
//!
//! Shutdown, in this order and bounded by `SHUTDOWN_TIMEOUT`: stop accepting requests (in-flight ones finish
//! or hit their own deadlines), stop Raft, flush storage, join every task.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::SnapshotPolicy;
use raftkv_proto::kv::admin_server::AdminServer;
use raftkv_proto::kv::kv_server::KvServer;
use raftkv_proto::peer::peer_server::PeerServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::api::{Api, PROPOSALS_PENDING_MAX};
use crate::config::NodeConfig;
use crate::network::{NetworkFactory, PeerChannels, PEER_MESSAGE_BYTES_MAX};
use crate::peer_service::PeerService;
use crate::raft_types::{Node as RaftNode, Raft};
use crate::read_index::ReadIndexBatcher;
use crate::reads::{LeaderContact, Reader};
use crate::state_machine::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::storage::{self, LogStore};

/// Largest client request accepted: a cas with a key, an expected value and a new value, plus framing.
/// Larger requests are refused by gRPC (`OutOfRange`/`ResourceExhausted`) before any handler runs.
pub const CLIENT_REQUEST_BYTES_MAX: usize = KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX + 1024;
/// Largest client response: a full scan of keys and values.
pub const CLIENT_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Entries per AppendEntries: with values of at most `VALUE_BYTES_MAX` a batch stays below
/// `PEER_MESSAGE_BYTES_MAX`, and it is large enough that a busy leader sends few, large messages.
pub const APPEND_ENTRIES_BATCH_MAX: u64 = 256;
/// Bytes per snapshot chunk sent to a lagging follower.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Deadline for one snapshot chunk to be received and stored.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bound on any request, whatever deadline the client sent.
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the whole shutdown may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node.
pub struct Node {
    pub raft: Raft,
    pub address: String,
    log_store: LogStore,
    stop_serving: oneshot::Sender<()>,
    tasks: JoinSet<()>,
}

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let raft_config = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.election_timeout_min.as_millis() as u64,
        election_timeout_max: config.election_timeout_max.as_millis() as u64,
        install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
        max_payload_entries: APPEND_ENTRIES_BATCH_MAX,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_in_snapshot_log_to_keep: config.log_keep_entries,
        enable_tick: true,
        enable_heartbeat: true,
        enable_elect: true,
        ..Default::default()
    };
    raft_config.validate().context("invalid raft timing flags")
}

impl Node {
    /// Opens storage, starts Raft and the gRPC server on an already bound listener, and bootstraps.
    pub async fn start_on(config: NodeConfig, listener: TcpListener) -> anyhow::Result<Node> {
        let (log_store, state_machine) =
            storage::open(&config.data_dir, config.id, &config.cluster_id)?;
        let peers = PeerChannels::new(
            config.id,
            config.cluster_id.clone(),
            config.peer_routes.clone(),
        );
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            NetworkFactory::new(peers.clone()),
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .context("cannot start raft")?;

        let mut tasks = JoinSet::new();
        let (batcher, batcher_task) =
            ReadIndexBatcher::start(raft.clone(), config.id, config.lease_duration);
        tasks.spawn(batcher_task);
        let leader_contact = LeaderContact::new();
        let reader = Reader {
            node_id: config.id,
            raft: raft.clone(),
            state_machine,
            batcher: batcher.clone(),
            peers,
            leader_contact: leader_contact.clone(),
        };
        let api = Api {
            node_id: config.id,
            address: config.advertise.clone(),
            cluster_id: config.cluster_id.clone(),
            raft: raft.clone(),
            reader,
            proposals: Arc::new(Semaphore::new(PROPOSALS_PENDING_MAX)),
        };
        let peer = PeerService {
            node_id: config.id,
            cluster_id: config.cluster_id.clone(),
            raft: raft.clone(),
            batcher,
            leader_contact,
        };
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .timeout(SERVER_REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .add_service(
                PeerServer::new(peer)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
            )
            .add_service(
                KvServer::new(api.clone())
                    .max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX)
                    .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
            )
            .add_service(AdminServer::new(api).max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX))
            .serve_with_incoming_shutdown(
                // The builder's `tcp_nodelay` only applies to listeners tonic binds itself; set it on every
                // accepted connection here, or Nagle holds each response's trailing frame until the client's
                // delayed ACK (~40 ms per call).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            );
        let node_id = config.id;
        tasks.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(node_id, %error, "grpc server failed");
            }
        });
        tracing::info!(node_id, listen = %config.listen, advertise = %config.advertise, "listening");

        if let Some(members) = &config.initial_cluster {
            bootstrap(&raft, members).await?;
        }
        Ok(Node {
            raft,
            address: config.advertise,
            log_store,
            stop_serving,
            tasks,
        })
    }

    /// Binds `config.listen` and starts the node.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let listener = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {}: is another process using the port?",
                config.listen
            )
        })?;
        Node::start_on(config, listener).await
    }

    /// Shuts the node down in order: stop serving, stop Raft, flush storage, join tasks.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let steps = async {
            tracing::info!("shutdown: stop accepting requests");
            let _ = self.stop_serving.send(());
            tracing::info!("shutdown: stop raft");
            if let Err(error) = self.raft.shutdown().await {
                tracing::warn!(%error, "raft did not stop cleanly");
            }
            tracing::info!("shutdown: flush storage");
            self.log_store.flush().context("final flush failed")?;
            tracing::info!("shutdown: join tasks");
            drop(self.raft);
            while let Some(result) = self.tasks.join_next().await {
                if let Err(error) = result {
                    tracing::warn!(%error, "a task ended badly");
                }
            }
            tracing::info!("shutdown: done");
            anyhow::Ok(())
        };
        tokio::time::timeout(SHUTDOWN_TIMEOUT, steps)
            .await
            .with_context(|| format!("shutdown took longer than {SHUTDOWN_TIMEOUT:?}"))?
    }
}

/// Initializes the cluster with `members` unless this node already is: every node of a new cluster may call
/// it with the same members.
async fn bootstrap(raft: &Raft, members: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    if raft
        .is_initialized()
        .await
        .context("raft stopped during bootstrap")?
    {
        tracing::info!("already initialized; --initial-cluster ignored");
        return Ok(());
    }
    let nodes: BTreeMap<u64, RaftNode> = members
        .iter()
        .map(|(id, addr)| (*id, RaftNode { addr: addr.clone() }))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initialized cluster");
            Ok(())
        }
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => {
            tracing::info!("another node initialized the cluster first");
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("cannot initialize the cluster: {error}")),
    }
}

/// Runs a node until `shutdown_signal` resolves, then shuts it down.
pub async fn run(
    config: NodeConfig,
    shutdown_signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    shutdown_signal.await;
    node.shutdown().await
}
