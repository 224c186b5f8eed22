//! The Raft log and vote, as openraft's `RaftLogStorage`: entries in the WAL, the vote, the commit index and
//! the purge point in sled; appends acknowledged by the flusher (a leader's own entries at the append, see
//! `LogStore::append`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{CommittedLeaderId, EntryPayload, ErrorSubject, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::flusher::FlushRequest;
use super::sled_files::{flush_durably, SledFiles};
use super::wal::{LogProgress, Wal};
use super::{
    decode_error, read_error, write_error, StorageStats, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE,
};
use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The Raft log and vote. Cloning is cheap; clones share the same WAL, sled tree and flusher.
#[derive(Clone)]
pub struct LogStore {
    /// This node: a committed vote for it is read back uncommitted (see `read_vote`).
    pub(super) node_id: NodeId,
    pub(super) db: sled::Db,
    pub(super) meta: sled::Tree,
    pub(super) files: Arc<Mutex<SledFiles>>,
    pub(super) wal: Arc<Wal>,
    pub(super) flush_sender: SyncSender<FlushRequest>,
    pub(super) stats: Arc<StorageStats>,
    /// The leader id of the term this node leads, from the last vote saved: its committed vote for itself.
    /// `None` otherwise, and after a restart until openraft saves a vote (see `append`).
    pub(super) leading: Arc<Mutex<Option<CommittedLeaderId<NodeId>>>>,
}

impl LogStore {
    /// Counters of flushes, for metrics.
    pub fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }

    /// The WAL's written and synced ends (`wal::LogProgress`), for the network's commit index.
    pub fn progress(&self) -> watch::Receiver<LogProgress> {
        self.wal.progress()
    }

    /// Bytes of the log after entry `index` (all of it for `None`): what a snapshot at `index` lets go.
    pub fn log_bytes_after(&self, index: Option<u64>) -> u64 {
        self.wal.bytes_after(index)
    }

    /// Bytes the store occupies on disk: sled and the WAL (not snapshots).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.wal.bytes()
    }

    /// Makes everything written so far durable, log and metadata; used on shutdown.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.wal
            .sync()
            .map_err(|error| write_error(ErrorSubject::Logs, error))?;
        self.flush_meta(ErrorSubject::Store)
    }

    pub(super) fn read_meta<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        match self
            .meta
            .get(key)
            .map_err(|error| read_error(subject.clone(), error))?
        {
            Some(bytes) => Ok(Some(
                postcard::from_bytes(&bytes).map_err(|error| decode_error(subject, error))?,
            )),
            None => Ok(None),
        }
    }

    pub(super) fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes =
            postcard::to_stdvec(value).map_err(|error| write_error(subject.clone(), error))?;
        self.meta
            .insert(key, bytes)
            .map_err(|error| write_error(subject, error))?;
        Ok(())
    }

    /// sled's flush plus its device sync: what makes the metadata (vote, purge point, commit index) durable.
    pub(super) fn flush_meta(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        flush_durably(&self.db, &self.files).map_err(|error| write_error(subject, error))
    }

    /// Whether `entries` are this node's own proposals as leader, which `append` acknowledges before their
    /// sync: each carries the leader id of the term this node leads (only that term's leader makes such
    /// entries; a follower appends them under a vote for another node), and none changes the membership
    /// (the leader counts itself towards a membership change only once it holds the entry durably, so that
    /// openraft's joint-consensus steps only ever follow a configuration that a majority really holds).
    pub(super) fn leader_proposals(&self, entries: &[Entry]) -> bool {
        let leading = *self
            .leading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(leading) = leading else {
            return false;
        };
        !entries.is_empty()
            && entries.iter().all(|entry| {
                entry.log_id.leader_id == leading
                    && !matches!(entry.payload, EntryPayload::Membership(_))
            })
    }

    /// The last log id: the WAL's last entry, or the purge point if it is later (or the WAL holds none).
    pub(super) fn last_log_id(&self, last_purged: Option<LogId>) -> Option<LogId> {
        match (self.wal.last_log_id(), last_purged) {
            (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
            (last, purged) => last.or(purged),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(index) => index.saturating_add(1),
            Bound::Excluded(index) => *index,
            Bound::Unbounded => u64::MAX,
        };
        self.wal
            .read(start, end)
            .map_err(|error| read_error(ErrorSubject::Logs, error))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta(KEY_LAST_PURGED, ErrorSubject::Store)?;
        let last_log_id = self.last_log_id(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.flush_meta(ErrorSubject::Vote)?;
        // One leader per term: the term alone names this node's own entries.
        let leading = (vote.is_committed() && vote.leader_id().voted_for() == Some(self.node_id))
            .then(|| CommittedLeaderId::new(vote.leader_id().get_term(), self.node_id));
        *self
            .leading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = leading;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self.read_meta(KEY_VOTE, ErrorSubject::Vote)?;
        // openraft 0.9 restarts a node whose stored vote is its own committed vote as leader of the same
        // term, without a new election and without a new blank entry. Such a leader does not know which of
        // its entries were committed before the crash (the persisted commit index may lag), so its read index
        // can be older than writes it acknowledged: a linearizable read after restart misses them (the crash
        // test caught it). Worse, entries committed by its followers but not yet flushed by it are gone from
        // its log, and it would propose other entries under the same log ids. Handing openraft the same vote
        // uncommitted makes the node start as a follower and campaign in a higher term like any Raft node;
        // the new leader commits a blank entry of its own term before serving. Who voted for whom in which
        // term is unchanged, so election safety holds.
        Ok(vote.map(|vote| match vote.leader_id().voted_for() {
            Some(leader) if vote.is_committed() && leader == self.node_id => {
                Vote::new(vote.leader_id().get_term(), leader)
            }
            _ => vote,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it rides on the next sled flush (a vote, a purge, shutdown, or sled's
        // background flush). A commit index that is lost or older on restart only means openraft re-learns it
        // from the leader.
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            self.read_meta(KEY_COMMITTED, ErrorSubject::Store)?;
        let committed = committed.flatten();
        // Never claim a commit beyond what this log holds (after a power loss the sled commit index, flushed
        // by sled's background thread, can be ahead of the WAL's synced end).
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED, ErrorSubject::Store)?;
        let held = self.last_log_id(last_purged);
        Ok(match (committed, held) {
            (Some(committed), Some(held)) if committed.index <= held.index => Some(committed),
            _ => None,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let early = self.leader_proposals(&entries);
        let count = self
            .wal
            .append(entries)
            .map_err(|error| write_error(ErrorSubject::Logs, error))?;
        // The leader's own entries are acknowledged now, before their sync, so that openraft replicates them
        // while the leader's disk syncs (openraft 0.9 sends nothing until this callback). Safe because the
        // WAL's `LogProgress` holds back every effect of such an entry until the sync: the state machine
        // does not apply it and followers are not told it is committed (`network`). An entry committed by
        // openraft's count, which includes the leader, is therefore acted on only once a majority has it
        // durably. Followers' entries are acknowledged after their sync: that acknowledgement is what the
        // leader counts.
        let callback = match early {
            true => {
                callback.log_io_completed(Ok(()));
                None
            }
            false => Some(callback),
        };
        match self.flush_sender.try_send(FlushRequest {
            wal: self.wal.clone(),
            callback,
            entries: count,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(FlushRequest { callback, .. })) => {
                // The flusher is far behind: flush here rather than queue without bound.
                let started = Instant::now();
                let result = self.wal.sync();
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats.flushed_appends.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .flushed_entries
                    .fetch_add(count, Ordering::Relaxed);
                self.stats
                    .flush_micros_total
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match callback {
                    Some(callback) => callback.log_io_completed(result),
                    None => result.map_err(|error| write_error(ErrorSubject::Logs, error))?,
                }
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(write_error(
                ErrorSubject::Logs,
                io::Error::other("log flusher has stopped"),
            )),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .truncate(log_id.index)
            .map_err(|error| write_error(ErrorSubject::Logs, error))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point durably first, so that a crash half way leaves no hole that is not accounted
        // for.
        self.write_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Store)?;
        self.flush_meta(ErrorSubject::Store)?;
        self.wal
            .purge(log_id.index)
            .map_err(|error| write_error(ErrorSubject::Logs, error))
    }
}
