//! The applied state, as openraft's `RaftStateMachine`: applies committed entries to the in-memory key-value
//! state (never an entry the WAL holds unsynced), serves reads from it, and builds and installs snapshots.

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, OptionalSend};

use super::snapshot::{persist_snapshot, read_snapshot_file, SnapshotBuilder};
use super::wal::LogProgress;
use super::{read_error, write_error, StorageStats};
use crate::kv::state_machine::{BatchResponse, StateMachine};
use crate::raft::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The applied state: what reads see.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: StateMachine,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The state machine side of storage: applies entries to the in-memory state and keeps snapshots on disk.
/// Clones share the same state; the node hands one to openraft and keeps one to serve reads.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(super) applied: Arc<RwLock<Applied>>,
    pub(super) snapshot_dir: PathBuf,
    pub(super) snapshot_counter: Arc<AtomicU64>,
    pub(super) stats: Arc<StorageStats>,
    /// The log's written and synced ends: `apply` waits until an entry it is given is synced.
    pub(super) log_progress: watch::Receiver<LogProgress>,
}

impl StateMachineStore {
    /// Waits until no log entry from index `first` to `last` is held unsynced by this node's WAL. Only a
    /// leader's own entries are ever applied before their sync could finish (see `LogStore::append`), and
    /// they wait here for at most that sync; entries the WAL does not hold (openraft's storage suite applies
    /// some) do not wait. Unbounded in time like the sync itself: a failed sync ends it with an error, which
    /// stops the node.
    pub(super) async fn wait_synced(
        &mut self,
        first: u64,
        last: LogId,
    ) -> Result<(), StorageError> {
        let progress = self
            .log_progress
            .wait_for(|progress| progress.failed || !progress.any_unsynced(first, last.index))
            .await
            .map(|progress| *progress);
        match progress {
            Ok(progress) if !progress.failed => Ok(()),
            _ => Err(write_error(
                ErrorSubject::Apply(last),
                io::Error::other("the Raft log could not be synced; not applying unsynced entries"),
            )),
        }
    }

    /// Runs `read` on the applied state. Hold it briefly: apply waits while it runs.
    pub fn read<T>(&self, read: impl FnOnce(&Applied) -> T) -> T {
        let applied = self
            .applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&applied)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.read(|applied| (applied.last_applied, applied.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.wait_synced(first.log_id.index, last.log_id).await?;
        }
        let mut applied = self
            .applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(last) = applied.last_applied {
                assert!(
                    entry.log_id.index > last.index,
                    "entries applied out of order"
                );
            }
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => {
                    applied.state.apply_batch(entry.log_id.index, &batch)
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchResponse::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let counter = self.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let (data, last_applied, membership) = self.read(|applied| {
            (
                applied.state.encode(),
                applied.last_applied,
                applied.membership.clone(),
            )
        });
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{counter}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{counter}"),
        };
        SnapshotBuilder {
            data,
            last_applied,
            membership,
            snapshot_dir: self.snapshot_dir.clone(),
            snapshot_id,
            stats: self.stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let state = StateMachine::decode(&data)
            .map_err(|reason| read_error(subject.clone(), io::Error::other(reason)))?;
        let (_, size) = persist_snapshot(&self.snapshot_dir, meta, data, &self.stats).await?;
        let mut applied = self
            .applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = size, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_dir.clone();
        let current = tokio::task::spawn_blocking(move || read_snapshot_file(&dir))
            .await
            .map_err(|error| read_error(ErrorSubject::Snapshot(None), error))?
            .map_err(|reason| read_error(ErrorSubject::Snapshot(None), io::Error::other(reason)))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
