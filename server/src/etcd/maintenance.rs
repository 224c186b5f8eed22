//! etcd's Maintenance service: `Status` (what `etcdctl endpoint status` prints), `Alarm` (raftkv raises
//! none), `Hash` / `HashKV` (a checksum of this node's keyspace at a revision, so replicas can be compared)
//! `Defragment` (nothing to do: sled reuses its own space) and `Snapshot` (a backup of the keyspace, see
//! `storage::backup`), `MoveLeader` (`raft::transfer`). `Downgrade` is refused in words: there is no older
//! version.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use openraft::ServerState;
use raftkv_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcd::etcdserverpb::{self as pb, alarm_request::AlarmAction};
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::{etcd_error, forward, to_etcd_status, EtcdApi, ETCD_API_VERSION};
use crate::api::ApiError;
use crate::kv::state_machine::ScanRange;
use crate::storage::ReadError;

/// Deadline of a `MoveLeader` a follower passes to the leader: longer than a transfer may take at the
/// slowest election timing the flags allow to be practical.
pub const MOVE_LEADER_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a backup per `SnapshotResponse`.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks a backup may have ready before its writer waits for the client to take them.
pub const BACKUP_CHUNKS_QUEUED: usize = 4;

/// A backup as a stream of `SnapshotResponse` chunks. `remaining_bytes` is 0 on every one: the size is not
/// known until the cut is written (etcd clients read until the stream ends).
struct Chunks {
    sender: tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    header: pb::ResponseHeader,
    buffer: Vec<u8>,
}

impl Chunks {
    /// Sends what is buffered; fails once the client has gone.
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buffer, Vec::with_capacity(BACKUP_CHUNK_BYTES));
        self.sender
            .blocking_send(Ok(pb::SnapshotResponse {
                header: Some(self.header),
                remaining_bytes: 0,
                blob,
                version: ETCD_API_VERSION.to_string(),
            }))
            .map_err(|_| std::io::Error::other("the client stopped reading the backup"))
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = BACKUP_CHUNK_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == BACKUP_CHUNK_BYTES {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keys hashed per read of the keyspace: the store's lock is taken once per page, not for the whole scan.
pub const HASH_PAGE_KEYS: usize = 10_000;

impl EtcdApi {
    /// A CRC-32 of every key visible at `revision` (0: now) on this node, with its value and revisions, and
    /// the revision hashed.
    fn hash_keyspace(&self, revision: u64) -> Result<(u32, u64, u64), Status> {
        let state_machine = &self.api.reader.state_machine;
        let read = |page: &dyn Fn(&crate::storage::Applied) -> Result<_, ReadError>| {
            state_machine
                .read(|applied| page(applied))
                .map_err(|error| to_etcd_status(ApiError::Internal(error.to_string())))?
                .map_err(|error| to_etcd_status(ApiError::Revision(error)))
        };
        let (current, compact_revision) = state_machine.revisions();
        let at = if revision == 0 { current } else { revision };
        let mut hasher = crc32fast::Hasher::new();
        let mut start = vec![0u8];
        loop {
            let range = ScanRange::Range {
                start: start.clone(),
                end: None,
            };
            let page = read(&|applied| applied.keyspace.scan(&range, HASH_PAGE_KEYS, at))?;
            for kv in &page.kvs {
                hasher.update(&(kv.key.len() as u64).to_be_bytes());
                hasher.update(&kv.key);
                hasher.update(&kv.create_revision.to_be_bytes());
                hasher.update(&kv.mod_revision.to_be_bytes());
                hasher.update(&kv.version.to_be_bytes());
                hasher.update(&kv.value);
            }
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((hasher.finalize(), at, compact_revision))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdApi {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<GrpcResponse<pb::AlarmResponse>, Status> {
        match AlarmAction::try_from(request.into_inner().action) {
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => {
                Ok(GrpcResponse::new(pb::AlarmResponse {
                    header: Some(self.header(self.api.reader.state_machine.revisions().0)),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(etcd_error(
                Code::FailedPrecondition,
                "raftkv: alarms cannot be raised by hand; raftkv has no space quota to raise them",
            )),
            Err(_) => Err(etcd_error(Code::InvalidArgument, "unknown alarm action")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let metrics = self.api.raft.metrics().borrow().clone();
        let raft_index = self
            .api
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |log_id| log_id.index))
            .await
            .map_err(|_| to_etcd_status(ApiError::ShuttingDown))?;
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.api.node_id);
        let db_size = i64::try_from(self.log_store.size_on_disk()).unwrap_or(i64::MAX);
        Ok(GrpcResponse::new(pb::StatusResponse {
            header: Some(self.header(self.api.reader.state_machine.revisions().0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index,
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: !is_voter && metrics.state != ServerState::Shutdown,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<GrpcResponse<pb::DefragmentResponse>, Status> {
        Ok(GrpcResponse::new(pb::DefragmentResponse {
            header: Some(self.header(self.api.reader.state_machine.revisions().0)),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<GrpcResponse<pb::HashResponse>, Status> {
        let (hash, revision, _) = self.hash_keyspace(0)?;
        Ok(GrpcResponse::new(pb::HashResponse {
            header: Some(self.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<GrpcResponse<pb::HashKvResponse>, Status> {
        let revision = u64::try_from(request.into_inner().revision)
            .map_err(|_| etcd_error(Code::InvalidArgument, "revision must not be negative"))?;
        let (hash, at, compact_revision) = self.hash_keyspace(revision)?;
        Ok(GrpcResponse::new(pb::HashKvResponse {
            header: Some(self.header(self.api.reader.state_machine.revisions().0)),
            hash,
            compact_revision: i64::try_from(compact_revision).unwrap_or(i64::MAX),
            hash_revision: i64::try_from(at).unwrap_or(i64::MAX),
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup of this node's keyspace (`storage::backup`), streamed as `etcdctl snapshot save` expects;
    /// `raftkv-server --restore-from FILE` starts a new cluster from it.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<GrpcResponse<Self::SnapshotStream>, Status> {
        let cut = self
            .api
            .reader
            .state_machine
            .backup_cut()
            .map_err(|error| to_etcd_status(ApiError::Internal(error)))?;
        let header = self.header(cut.revision());
        let (sender, receiver) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_QUEUED);
        tokio::task::spawn_blocking(move || {
            let mut chunks = Chunks {
                sender,
                header,
                buffer: Vec::with_capacity(BACKUP_CHUNK_BYTES),
            };
            match cut.write_to(&mut chunks) {
                Ok(_) => chunks.send(),
                Err(error) => {
                    let status =
                        to_etcd_status(ApiError::Internal(format!("the backup failed: {error}")));
                    let _ = chunks.sender.blocking_send(Err(status));
                    Ok(())
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    /// Passed to the leader from a follower (etcd answers "not leader" there; etcdctl finds the leader
    /// itself, other clients need not).
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<GrpcResponse<pb::MoveLeaderResponse>, Status> {
        if !self.is_leader() {
            let channel = self.leader_channel(request.metadata())?;
            let mut leader = MaintenanceClient::new(channel);
            return forward(
                MOVE_LEADER_FORWARD_TIMEOUT,
                request.into_inner(),
                |request| leader.move_leader(request),
            )
            .await;
        }
        let target = request.into_inner().target_id;
        self.api.move_leader(target).await.map_err(to_etcd_status)?;
        Ok(GrpcResponse::new(pb::MoveLeaderResponse {
            header: Some(self.header(self.api.reader.state_machine.revisions().0)),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<GrpcResponse<pb::DowngradeResponse>, Status> {
        Err(etcd_error(
            Code::Unimplemented,
            "raftkv: there is no earlier version to downgrade to",
        ))
    }
}
