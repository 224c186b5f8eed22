//! Wiring of one node: the only place that builds the `Raft`, spawns long-lived tasks and knows the
//! shutdown order.
//!
//! Start: bind the gRPC port and the metrics port (a taken port fails before anything touches the disk), load
//! and check the TLS files if TLS is on, check the data dir is writable, open storage (refusing a data dir of another node or cluster), build openraft,
//! serve peer + client + admin + health + reflection gRPC on the one port, start the observer (gauges,
//! lifecycle logs, health) and the `/metrics` endpoint, then bootstrap if `--initial-cluster` names this node
//! (idempotent: an initialized node ignores it). Everything runs in the span `node{node_id}`; every RPC in a
//! child span `rpc{method, remote}` (debug level: made only when debug logging is on for `raftkv_server`).
//!
//! Shutdown, in this order and bounded by `SHUTDOWN_TIMEOUT` as a whole:
//! 1. health reports NOT_SERVING, so balancers and probes stop sending work here;
//! 2. stop accepting gRPC requests and let those in flight finish (bounded by `DRAIN_TIMEOUT`; a write in
//!    flight can still commit, because replication to peers goes over this node's outgoing connections);
//! 3. stop Raft (no more appends, votes or applies);
//! 4. flush storage (everything appended, the vote and the commit index reach the disk);
//! 5. stop and join the remaining tasks (observer, read-index batcher and forwarder, write batcher, metrics
//!    endpoint).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::SnapshotPolicy;
use raftkv_proto::etcd::etcdserverpb::auth_server::AuthServer as EtcdAuthServer;
use raftkv_proto::etcd::etcdserverpb::cluster_server::ClusterServer as EtcdClusterServer;
use raftkv_proto::etcd::etcdserverpb::kv_server::KvServer as EtcdKvServer;
use raftkv_proto::etcd::etcdserverpb::lease_server::LeaseServer as EtcdLeaseServer;
use raftkv_proto::etcd::etcdserverpb::maintenance_server::MaintenanceServer as EtcdMaintenanceServer;
use raftkv_proto::etcd::etcdserverpb::watch_server::WatchServer as EtcdWatchServer;
use raftkv_proto::etcd::v3electionpb::election_server::ElectionServer as EtcdElectionServer;
use raftkv_proto::etcd::v3lockpb::lock_server::LockServer as EtcdLockServer;
use raftkv_proto::kv::admin_server::AdminServer;
use raftkv_proto::kv::kv_server::KvServer;
use raftkv_proto::peer::peer_server::PeerServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::api::{
    self, Api, CLIENT_RESPONSE_BYTES_MAX, SERVER_REQUEST_TIMEOUT, WRITE_COMMIT_TIMEOUT,
};
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::etcd::{self, EtcdApi};
use crate::kv::state_machine::ENTRY_BYTES_MAX;
use crate::kv::state_machine::WRITE_BYTES_MAX;
use crate::kv::write_batch::{WriteBatcher, PROPOSALS_PENDING_MAX};
use crate::lease::Lessor;
use crate::ops::auto_compaction;
use crate::ops::health::{DrainingHealth, HealthPublisher, HEALTH_SERVICES};
use crate::ops::observer::Observer;
use crate::ops::snapshot_schedule::{self, SnapshotSchedule};
use crate::ops::telemetry;
use crate::raft::election::{ElectionGate, ElectionTiming, Elector};
use crate::raft::handover::TakeoverRequest;
use crate::raft::network::{NetworkFactory, PeerChannels, PEER_MESSAGE_BYTES_MAX};
use crate::raft::peer_service::{PeerService, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_CHUNK_TIMEOUT};
use crate::raft::quorum::{QuorumClock, SilencePolicy};
use crate::raft::types::{Node as RaftNode, Raft};
use crate::reads::read_index::{ReadIndexBatcher, ReadIndexForwarder};
use crate::reads::{LeaderContact, Reader, FOLLOWER_READ_INDEX_TIMEOUT};
use crate::storage::{self, LogStore, OpenError, StoreOptions};
use crate::tls::{self, NodeTls, PeerAuthenticator, RefusalLog, PLAINTEXT_CONNECTIONS_PENDING_MAX};

/// Largest client request accepted: a cas with a key, an expected value and a new value, plus framing.
/// Larger requests are refused by gRPC (`OutOfRange`/`ResourceExhausted`) before any handler runs.
pub const CLIENT_REQUEST_BYTES_MAX: usize = WRITE_BYTES_MAX + 1024;
/// Entries per AppendEntries. Each entry is one write batch of at most `WRITE_BATCH_BYTES_MAX` key and value
/// bytes (or one write of at most `WRITE_BYTES_MAX`) plus framing, so a message of this many entries stays
/// below `PEER_MESSAGE_BYTES_MAX` (checked at compile time below); entries are large when the leader is busy,
/// so a few dozen per message already make few, large messages.
pub const APPEND_ENTRIES_BATCH_MAX: u64 = 64;
const _: () = assert!(APPEND_ENTRIES_BATCH_MAX as usize * ENTRY_BYTES_MAX < PEER_MESSAGE_BYTES_MAX);
/// Interval of the HTTP/2 pings the server sends on an idle connection: a peer that vanished without closing
/// its connection (a dead host, a real partition) does not keep an AppendEntries stream and its task here for
/// ever.
pub const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one of those pings may go unanswered before the connection is closed.
pub const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the whole shutdown may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest shutdown waits for requests in flight once it stops accepting new ones: a write proposed just
/// before gets up to its own commit deadline; past this bound the gRPC server is dropped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);
/// Name of the file written and removed at start to prove the data dir is writable.
const WRITE_PROBE_FILE: &str = ".raftkv-write-probe";

/// The sockets a node serves on, bound before anything else starts.
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `--listen` and, if given, `--metrics-listen`; says what to do when a port is taken.
    pub async fn bind(config: &NodeConfig) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(config.listen).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot listen on {} (--listen): {error}; stop the process using the port or pick another address",
                config.listen
            )
        })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(telemetry::bind(addr).await?),
            None => None,
        };
        Ok(Listeners { grpc, metrics })
    }
}

/// A running node.
pub struct Node {
    pub raft: Raft,
    pub address: String,
    log_store: LogStore,
    health: HealthReporter,
    stop_serving: oneshot::Sender<()>,
    /// The gRPC server, awaited apart from `tasks`: shutdown drains it before Raft stops.
    server_task: JoinHandle<()>,
    /// Turns true to stop the observer and the metrics endpoint.
    stopping: watch::Sender<bool>,
    /// Set when shutdown starts: ends the AppendEntries streams this node serves (see `PeerService`).
    draining: watch::Sender<bool>,
    tasks: JoinSet<()>,
    span: tracing::Span,
}

/// openraft's configuration. Its own election timer is off: `election::Elector` campaigns (after a pre-vote)
/// instead. openraft still uses two of its timing fields: `election_timeout_max` becomes the lease during which
/// its voters refuse votes after a leader message, which we want to be `ElectionTiming::voter_lease`; and
/// `election_timeout_min` is the deadline of its vote calls. Its own randomized timeout is never drawn.
fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let voter_lease_ms = election_timing(config).voter_lease().as_millis() as u64;
    let heartbeat_ms = config.heartbeat_interval.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: heartbeat_ms,
        // Flags ensure election_timeout_min > 2 x heartbeat, so this lies above the heartbeat and below the lease.
        election_timeout_min: (voter_lease_ms / 2).max(heartbeat_ms + 1),
        election_timeout_max: voter_lease_ms,
        install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
        max_payload_entries: APPEND_ENTRIES_BATCH_MAX,
        // `ops::snapshot_schedule` triggers snapshots, by entries and by size, at a moment of each node's own.
        snapshot_policy: SnapshotPolicy::Never,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_in_snapshot_log_to_keep: config.log_keep_entries,
        enable_tick: true,
        enable_heartbeat: true,
        enable_elect: false,
        ..Default::default()
    };
    raft_config.validate().context("invalid raft timing flags")
}

fn election_timing(config: &NodeConfig) -> ElectionTiming {
    ElectionTiming {
        election_timeout_min: config.election_timeout_min,
        election_timeout_max: config.election_timeout_max,
    }
}

impl Node {
    /// Starts a node on already bound listeners: checks the data dir, opens storage, starts Raft, the gRPC
    /// server, the observer and the metrics endpoint, and bootstraps.
    pub async fn start_on(config: NodeConfig, listeners: Listeners) -> anyhow::Result<Node> {
        let span = tracing::info_span!("node", node_id = config.id);
        Node::start_in_span(config, listeners, span.clone())
            .instrument(span)
            .await
    }

    async fn start_in_span(
        config: NodeConfig,
        listeners: Listeners,
        span: tracing::Span,
    ) -> anyhow::Result<Node> {
        let recorder = telemetry::recorder()?;
        let tls = match &config.tls {
            Some(paths) => Some(NodeTls::load(paths)?),
            None => None,
        };
        check_data_dir(&config.data_dir)?;
        let store_options = StoreOptions {
            cache_bytes: config.cache_mb * 1024 * 1024,
            ..StoreOptions::default()
        };
        if let Some(backup) = &config.restore_from {
            match storage::restore(
                &config.data_dir,
                config.id,
                &config.cluster_id,
                store_options,
                backup,
            )
            .map_err(|reason| anyhow::anyhow!("cannot restore {}: {reason}", backup.display()))?
            {
                storage::Restored::Loaded { revision } => {
                    tracing::info!(backup = %backup.display(), revision, "restored the keyspace from a backup")
                }
                storage::Restored::AlreadyLoaded => {
                    tracing::info!(backup = %backup.display(), "this backup was restored before; starting on the data dir as it is")
                }
            }
        }
        let (log_store, state_machine) = storage::open_with(
            &config.data_dir,
            config.id,
            &config.cluster_id,
            store_options,
        )
        .map_err(explain_open_error)?;
        let peers = PeerChannels::new(
            config.id,
            config.cluster_id.clone(),
            config.peer_routes.clone(),
            tls.as_ref().map(|tls| tls.peer_client.clone()),
        );
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            NetworkFactory::new(peers.clone(), log_store.progress()),
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .context("cannot start raft")?;
        let timing = election_timing(&config);
        let quorum = Arc::new(QuorumClock::new(
            raft.metrics(),
            SilencePolicy {
                silent_after: timing.leader_silent_after(),
                probe: timing.election_timeout_max,
            },
        ));
        peers.set_quorum_clock(quorum.clone());
        let election_gate = Arc::new(ElectionGate::default());
        let takeover = Arc::new(TakeoverRequest::default());

        let mut tasks = JoinSet::new();
        let (stopping, stopped) = watch::channel(false);
        let (batcher, batcher_task) =
            ReadIndexBatcher::start(raft.clone(), config.id, config.lease_duration);
        tasks.spawn(batcher_task.instrument(span.clone()));
        let leader_contact = LeaderContact::new();
        let proposals = Arc::new(Semaphore::new(PROPOSALS_PENDING_MAX));
        let (writes, writes_task) =
            WriteBatcher::start(raft.clone(), PROPOSALS_PENDING_MAX, WRITE_COMMIT_TIMEOUT);
        tasks.spawn(writes_task.instrument(span.clone()));
        tasks.spawn(
            snapshot_schedule::run(
                SnapshotSchedule {
                    after_entries: config.snapshot_after_entries,
                    after_bytes: config.snapshot_after_mb * 1024 * 1024,
                },
                raft.clone(),
                log_store.clone(),
                log_store.stats(),
                stopped.clone(),
            )
            .instrument(span.clone()),
        );
        if let Some(policy) = config.auto_compaction {
            tasks.spawn(
                auto_compaction::run(
                    policy,
                    raft.clone(),
                    state_machine.clone(),
                    writes.clone(),
                    stopped.clone(),
                )
                .instrument(span.clone()),
            );
        }
        let (forwarder, forwarder_task) =
            ReadIndexForwarder::start(peers.clone(), FOLLOWER_READ_INDEX_TIMEOUT);
        tasks.spawn(forwarder_task.instrument(span.clone()));
        let reader = Reader {
            node_id: config.id,
            raft: raft.clone(),
            state_machine,
            batcher: batcher.clone(),
            forwarder,
            leader_contact: leader_contact.clone(),
        };
        let lessor = Arc::new(Lessor::new(
            config.election_timeout_max,
            timing.voter_lease(),
        ));
        tasks.spawn(
            lessor
                .clone()
                .run(
                    raft.clone(),
                    reader.state_machine.clone(),
                    writes.clone(),
                    quorum.clone(),
                    stopped.clone(),
                )
                .instrument(span.clone()),
        );
        let (draining, draining_signal) = watch::channel(false);
        let health_draining = draining_signal.clone();
        let api = Api {
            node_id: config.id,
            address: config.advertise.clone(),
            cluster_id: config.cluster_id.clone(),
            raft: raft.clone(),
            reader,
            proposals: proposals.clone(),
            writes,
            leader_quorum_lapse_max: timing.voter_lease(),
            quorum: quorum.clone(),
            peers: peers.clone(),
            timing,
            lessor,
            draining: draining_signal.clone(),
        };
        let etcd = EtcdApi {
            api: api.clone(),
            peers: peers.clone(),
            log_store: log_store.clone(),
            cluster_id: etcd::cluster_number(&config.cluster_id),
            scheme: if tls.is_some() { "https" } else { "http" },
            max_txn_ops: config.max_txn_ops,
            progress_notify_interval: config.watch_progress_notify_interval,
            max_request_bytes: config.max_request_bytes,
        };
        let peer = PeerService {
            node_id: config.id,
            cluster_id: config.cluster_id.clone(),
            raft: raft.clone(),
            batcher,
            leader_contact: leader_contact.clone(),
            snapshot_received: Arc::default(),
            voter_lease: timing.voter_lease(),
            quorum,
            election_gate: election_gate.clone(),
            takeover: takeover.clone(),
            draining: draining_signal,
        };
        let elector = Elector {
            node_id: config.id,
            raft: raft.clone(),
            peers: peers.clone(),
            timing,
            gate: election_gate,
            takeover,
        };
        tasks.spawn(elector.run(stopped.clone()).instrument(span.clone()));
        let health_reporter = tonic_health::server::HealthReporter::new();
        let health_service =
            DrainingHealth::server(health_reporter.clone(), health_draining, || {
                api::to_status(ApiError::ShuttingDown)
            });
        let health = HealthPublisher::new(health_reporter.clone()).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftkv_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the grpc reflection service")?;
        // grpcurl and older tools still ask the v1alpha service.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftkv_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the grpc reflection service")?;

        let refusals = Arc::new(RefusalLog::default());
        let peer_authenticator = PeerAuthenticator {
            tls: tls.is_some(),
            refusals: refusals.clone(),
            span: span.clone(),
        };
        let (stop_serving, stop_signal) = oneshot::channel::<()>();
        let rpc_parent = span.clone();
        let server = tonic::transport::Server::builder()
            .timeout(SERVER_REQUEST_TIMEOUT)
            .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
            .trace_fn(move |request| {
                let extensions = request.extensions();
                let remote = extensions
                    .get::<TcpConnectInfo>()
                    .or_else(|| {
                        extensions
                            .get::<TlsConnectInfo<TcpConnectInfo>>()
                            .map(TlsConnectInfo::get_ref)
                    })
                    .and_then(TcpConnectInfo::remote_addr);
                // At debug: the fmt layer formats a span's fields when the span is made, which at info level
                // cost about 4% of a busy node's CPU for every request (profiled under `raftkv bench`).
                tracing::debug_span!(parent: &rpc_parent, "rpc", method = request.uri().path(), remote = ?remote)
            })
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                PeerServer::new(peer)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
                peer_authenticator,
            ))
            .add_service(
                KvServer::new(api.clone())
                    .max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX)
                    .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
            )
            .add_service(AdminServer::new(api).max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX))
            .add_service(
                EtcdKvServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes)
                    .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
            )
            .add_service(
                EtcdClusterServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes),
            )
            .add_service(
                EtcdMaintenanceServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes),
            )
            .add_service(
                EtcdWatchServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes)
                    .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
            )
            .add_service(
                EtcdLeaseServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes),
            )
            .add_service(
                EtcdLockServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes),
            )
            .add_service(
                EtcdElectionServer::new(etcd.clone())
                    .max_decoding_message_size(config.max_request_bytes),
            )
            .add_service(
                EtcdAuthServer::new(etcd).max_decoding_message_size(config.max_request_bytes),
            );
        let stopped_serving = async {
            let _ = stop_signal.await;
        };
        let server_task = match &tls {
            None => {
                // `Server::tcp_nodelay` does not apply to an incoming stream of our own: set it here, or
                // small responses wait for the client's delayed ACK (Nagle).
                let incoming = tonic::transport::server::TcpIncoming::from(listeners.grpc)
                    .with_nodelay(Some(true));
                let server = server.serve_with_incoming_shutdown(incoming, stopped_serving);
                tokio::spawn(
                    async move {
                        if let Err(error) = server.await {
                            tracing::error!(%error, "grpc server failed");
                        }
                    }
                    .instrument(span.clone()),
                )
            }
            Some(tls) => {
                // Plaintext connections go to a second server that only explains why they are refused. It
                // stops when the TLS incoming stream (holding the sender) is dropped at shutdown.
                let (plaintext, plaintext_connections) =
                    tokio::sync::mpsc::channel(PLAINTEXT_CONNECTIONS_PENDING_MAX);
                let incoming =
                    tls::incoming(listeners.grpc, tls, plaintext, refusals, span.clone());
                let server = server.serve_with_incoming_shutdown(incoming, stopped_serving);
                let refusal_server = tonic::transport::Server::builder()
                    .timeout(SERVER_REQUEST_TIMEOUT)
                    .add_routes(tls::plaintext_refusal_routes())
                    .serve_with_incoming(
                        tokio_stream::wrappers::ReceiverStream::new(plaintext_connections)
                            .map(Ok::<_, std::io::Error>),
                    );
                tokio::spawn(
                    async move {
                        let (served, refused) = tokio::join!(server, refusal_server);
                        if let Err(error) = served {
                            tracing::error!(%error, "grpc server failed");
                        }
                        if let Err(error) = refused {
                            tracing::warn!(%error, "plaintext refusal server failed");
                        }
                    }
                    .instrument(span.clone()),
                )
            }
        };
        tracing::info!(listen = %config.listen, advertise = %config.advertise, tls = tls.is_some(), "listening");

        let observer = Observer {
            node_id: config.id,
            cluster_id: config.cluster_id.clone(),
            raft: raft.clone(),
            log_store: log_store.clone(),
            storage_stats: log_store.stats(),
            proposals,
            leader_contact,
            health,
            leader_silence_max: config.election_timeout_max,
            recorder: recorder.clone(),
        };
        tasks.spawn(observer.run(stopped.clone()).instrument(span.clone()));
        if let Some(listener) = listeners.metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            tasks.spawn(telemetry::serve(listener, recorder, stopped).instrument(span.clone()));
        }

        let node = Node {
            raft,
            address: config.advertise,
            log_store,
            health: health_reporter,
            stop_serving,
            server_task,
            stopping,
            draining,
            tasks,
            span,
        };
        if let Some(members) = &config.initial_cluster {
            if let Err(error) = bootstrap(&node.raft, members).await {
                // Stop what was started, so the caller gets the error and a clean exit.
                if let Err(shutdown_error) = node.shutdown().await {
                    tracing::warn!(error = %shutdown_error, "shutdown after a failed bootstrap");
                }
                return Err(error);
            }
        }
        Ok(node)
    }

    /// Binds the listeners of `config` and starts the node.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let listeners = Listeners::bind(&config).await?;
        Node::start_on(config, listeners).await
    }

    /// Shuts the node down in the order of the module documentation, within `SHUTDOWN_TIMEOUT`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let span = self.span.clone();
        tokio::time::timeout(SHUTDOWN_TIMEOUT, self.shutdown_steps().instrument(span))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "shutdown took longer than {SHUTDOWN_TIMEOUT:?}; the log was flushed only if the step \"flush storage\" was logged"
                )
            })?
    }

    async fn shutdown_steps(mut self) -> anyhow::Result<()> {
        tracing::info!("shutdown: report not serving");
        for service in HEALTH_SERVICES {
            self.health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutdown: stop accepting requests, drain those in flight");
        let _ = self.draining.send(true);
        let _ = self.stop_serving.send(());
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.server_task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "grpc server task ended badly"),
            Err(_) => {
                tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; dropping them");
                self.server_task.abort();
            }
        }
        tracing::info!("shutdown: stop raft");
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
        tracing::info!("shutdown: flush storage");
        self.log_store.flush().context("final flush failed")?;
        tracing::info!("shutdown: join tasks");
        let _ = self.stopping.send(true);
        drop(self.raft);
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::warn!(%error, "a task ended badly");
            }
        }
        tracing::info!("shutdown: done");
        Ok(())
    }
}

/// Proves `dir` can hold this node's data: creates it if needed, then writes and removes a probe file.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    let fix = "pass a --data-dir this user can create and write";
    std::fs::create_dir_all(dir).map_err(|error| {
        anyhow::anyhow!("cannot create data dir {}: {error}; {fix}", dir.display())
    })?;
    let probe = dir.join(WRITE_PROBE_FILE);
    std::fs::write(&probe, b"raftkv")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|error| {
            anyhow::anyhow!("data dir {} is not writable: {error}; {fix}", dir.display())
        })
}

/// Adds what to do to a storage error that does not say it already.
fn explain_open_error(error: OpenError) -> anyhow::Error {
    let fix = match &error {
        OpenError::WrongNode { .. } | OpenError::WrongCluster { .. } => None,
        OpenError::Io { .. } => Some("pass a --data-dir this user can create and write"),
        OpenError::Sled { .. } => Some(
            "if another raftkv-server uses this --data-dir stop it first; otherwise move the damaged dir away and let the node catch up from the leader",
        ),
        OpenError::Snapshot { .. } | OpenError::Keyspace { .. } => Some(
            "move the data dir away and let the node catch up from the leader, or restore it from a backup",
        ),
        OpenError::WalCorrupt { .. } => Some(
            "move the data dir away and let the node catch up from the leader, or restore it from a backup",
        ),
        OpenError::OldLogFormat { .. } | OpenError::OldDataFormat { .. } => Some(
            "start this node on an empty --data-dir and let it catch up from the leader (data dirs of raftkv before 1.0 are not upgraded in place)",
        ),
    };
    match fix {
        Some(fix) => anyhow::anyhow!("{error}; {fix}"),
        None => anyhow::anyhow!(error),
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
