//! The applied state as openraft sees it (`RaftStateMachine`): applies committed entries to the keyspace in
//! sled, many entries to one atomic batch with the last one's log id, written before anything reads (a
//! keep-alive's lease lookup reads through them instead); starts
//! snapshot builds; installs snapshots into a new keyspace tree and switches to it atomically.
//!
//! Installing a snapshot: its body is loaded into a fresh tree `keyspace-<generation>`, sled is flushed
//! durably, the `meta` tree's pointer (`KEY_KEYSPACE_TREE`) is switched to the new tree and flushed durably,
//! and only then is the old tree dropped and the file made current. A crash before the switch leaves the old
//! keyspace in force and a partial tree that `open` drops; a crash after it finds the new one.

use std::fs;
use std::io::{self, BufReader, Seek};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{broadcast, watch};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, OptionalSend};

use super::backup::{self, BackupCut};
use super::compaction::Compactor;
use super::keyspace::{import_body, Keyspace};
use super::sled_files::{flush_durably, SledFiles};
use super::snapshot::{
    make_current, open_current, read_current_meta, read_header, Cut, SnapshotBuilder,
    RECEIVING_FILE,
};
use super::wal::LogProgress;
use super::{read_error, write_error, StorageStats, KEYSPACE_TREE_PREFIX, KEY_KEYSPACE_TREE};
use crate::kv::changes::{ChangeSet, HistoryEntry, KeyspaceRead, Pending};
use crate::kv::state_machine::{apply_batch_onto, BatchResponse, LeaseRecord, LEASE_KEYS_MAX};
use crate::raft::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Most keys one sled batch of applied entries writes; the entries beyond go to the next batch. A sled key
/// costs about 8 us, so a full batch holds apply for about 8 ms: at 16,384 keys a load of 1M keys saw a p99 of
/// 189 ms and 409 MB of RSS, at 1,024 25 ms and 285 MB (BENCHMARKS.md), while the fixed cost of a batch
/// (about 0.3 ms) is still spread over hundreds of keys.
pub const SLED_BATCH_WRITES_MAX: usize = 1_024;

/// The applied state. Reads see it through `StateMachineStore::read`, which first writes to sled what was
/// applied but not yet written, so inside a read `keyspace` holds everything up to `last_applied` (only
/// `StateMachineStore::lease_record` reads through the unwritten changes instead).
pub struct Applied {
    pub keyspace: Keyspace,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// What entries up to `last_applied` changed that sled does not hold yet (see `apply`).
    unwritten: Unwritten,
    /// An entry failed to apply part way: the unwritten changes are lost and sled is behind `last_applied`.
    /// Nothing is read any more; openraft has stopped, and a restart applies the log again.
    failed: bool,
}

/// Applied entries not yet written to sled: their changes on top of the keyspace, the last one's log id and
/// the membership among them, written together as one atomic batch.
#[derive(Default)]
struct Unwritten {
    changes: Option<ChangeSet>,
    last: Option<LogId>,
    membership: Option<StoredMembership>,
}

impl Applied {
    pub(super) fn new(
        keyspace: Keyspace,
        last_applied: Option<LogId>,
        membership: StoredMembership,
    ) -> Applied {
        Applied {
            keyspace,
            last_applied,
            membership,
            unwritten: Unwritten::default(),
            failed: false,
        }
    }

    /// Writes to sled, in one atomic batch with the last entry's log id, what was applied and is not written
    /// yet. Not flushed: the WAL still holds those entries, and a restart applies them again.
    fn write_unwritten(&mut self) -> Result<(), UnwrittenError> {
        if self.failed {
            return Err(UnwrittenError::ApplyFailed);
        }
        if let Some(changes) = self.unwritten.changes.take() {
            let result = self.keyspace.write(
                &changes,
                self.unwritten.last,
                self.unwritten.membership.as_ref(),
            );
            if let Err(error) = result {
                self.unwritten.changes = Some(changes);
                return Err(error.into());
            }
            self.unwritten = Unwritten::default();
        }
        Ok(())
    }
}

/// A read of the applied state failed: what was applied is not all in sled, so the keyspace there is behind.
/// Nothing is served from it.
#[derive(Debug, thiserror::Error)]
pub enum UnwrittenError {
    #[error("writing the applied entries to sled failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("an entry failed to apply, so the applied state is incomplete; restart the node")]
    ApplyFailed,
}

/// A lease with the keys attached to it (when asked for).
pub type LeaseWithKeys = (LeaseRecord, Vec<Vec<u8>>);

/// The sled handles installing a snapshot needs: the database (for new trees and flushes), its files (for
/// durable flushes) and the `meta` tree (for the keyspace pointer).
#[derive(Clone)]
pub(super) struct SledHandles {
    pub(super) db: sled::Db,
    pub(super) files: Arc<Mutex<SledFiles>>,
    pub(super) meta: sled::Tree,
}

/// Applied batches of changes a watcher may fall behind by before it reads the history from sled instead.
pub const APPLIED_CHANGES_QUEUED: usize = 1024;

/// The versions one `apply` call wrote, in revision order: whole revisions (a transaction's changes come
/// together).
pub type AppliedChanges = Arc<Vec<HistoryEntry>>;

/// The state machine side of storage. Clones share the same state; the node hands one to openraft and keeps
/// one to serve reads.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(super) applied: Arc<RwLock<Applied>>,
    pub(super) sled: SledHandles,
    pub(super) snapshot_dir: PathBuf,
    pub(super) snapshot_counter: Arc<AtomicU64>,
    pub(super) stats: Arc<StorageStats>,
    /// The log's written and synced ends: `apply` waits until an entry it is given is synced.
    pub(super) log_progress: watch::Receiver<LogProgress>,
    /// The store revision after the last applied entry.
    pub(super) revision: Arc<watch::Sender<u64>>,
    /// Every version each `apply` call wrote, in revision order, while anyone listens (watches).
    pub(super) changes: broadcast::Sender<AppliedChanges>,
    /// Held by a snapshot build, a step of the physical compaction and an install: they never overlap.
    pub(super) maintenance: Arc<Mutex<()>>,
    /// Counts keyspace trees: an install takes the next.
    pub(super) generation: Arc<AtomicU64>,
    /// The physical compaction.
    pub(super) compactor: Compactor,
    /// Counts applied entries that granted or revoked a lease, and snapshot installs: the leader's lessor
    /// reads the leases again when it moves.
    pub(super) lease_generation: Arc<AtomicU64>,
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

    /// Runs `read` on the applied state, once sled holds everything applied (written now if it does not).
    /// Hold it briefly: apply waits while it runs.
    pub fn read<T>(&self, read: impl FnOnce(&Applied) -> T) -> Result<T, UnwrittenError> {
        {
            let applied = self
                .applied
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if applied.unwritten.changes.is_none() && !applied.failed {
                return Ok(read(&applied));
            }
        }
        let mut applied = self
            .applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        applied.write_unwritten()?;
        Ok(read(&applied))
    }

    /// Runs `read` on the applied state as it is, sled possibly behind (`Applied::unwritten`).
    fn read_as_is<T>(&self, read: impl FnOnce(&Applied) -> T) -> T {
        let applied = self
            .applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&applied)
    }

    /// The log index of the last applied entry, written to sled or not.
    pub fn applied_index(&self) -> u64 {
        self.read_as_is(|applied| applied.last_applied.map_or(0, |log_id| log_id.index))
    }

    /// Grows whenever leases were granted or revoked (or a snapshot replaced them all) since the last look.
    pub fn lease_generation(&self) -> u64 {
        self.lease_generation.load(Ordering::Acquire)
    }

    /// Every lease in the applied state, at most `limit`.
    pub fn leases(&self, limit: usize) -> Result<Vec<(i64, LeaseRecord)>, String> {
        self.read(|applied| {
            applied
                .keyspace
                .leases(limit)
                .map_err(|error| error.to_string())
        })
        .map_err(|error| error.to_string())?
    }

    /// Lease `id` as applied, read through the changes not yet written to sled instead of writing them first
    /// (as `lease` does): a keep-alive needs only the record, every holder sends one every few seconds, and
    /// each would otherwise cut the leader's pending sled batch short.
    pub fn lease_record(&self, id: i64) -> Result<Option<LeaseRecord>, String> {
        self.read_as_is(|applied| {
            if applied.failed {
                return Err(UnwrittenError::ApplyFailed.to_string());
            }
            let pending = applied
                .unwritten
                .changes
                .as_ref()
                .and_then(|changes| changes.leases.get(&id));
            match pending {
                Some(record) => Ok(*record),
                None => applied.keyspace.lease(id).map_err(|error| error.0),
            }
        })
    }

    /// The lease and, if `with_keys`, the keys attached to it, from the applied state.
    pub fn lease(&self, id: i64, with_keys: bool) -> Result<Option<LeaseWithKeys>, String> {
        self.read(|applied| {
            let keyspace = &applied.keyspace;
            let Some(record) = keyspace.lease(id).map_err(|error| error.0)? else {
                return Ok(None);
            };
            let keys = if with_keys {
                keyspace
                    .lease_keys(id, LEASE_KEYS_MAX as usize)
                    .map_err(|error| error.0)?
            } else {
                Vec::new()
            };
            Ok(Some((record, keys)))
        })
        .map_err(|error| error.to_string())?
    }

    /// The versions every later `apply` writes (`AppliedChanges`), for watches.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<AppliedChanges> {
        self.changes.subscribe()
    }

    /// A consistent cut of the keyspace now, for a backup: taken between two applies (after writing what is
    /// unwritten), it holds the physical compaction back until it is written.
    pub fn backup_cut(&self) -> Result<BackupCut, String> {
        let generation = self.generation.load(Ordering::Acquire);
        self.read(|applied| self.cut(applied, generation).map(BackupCut))
            .map_err(|error| error.to_string())?
    }

    /// The keyspace of `applied` as a cut to export (a snapshot or a backup), pinning its compaction point.
    fn cut(&self, applied: &Applied, generation: u64) -> Result<Cut, String> {
        let keyspace = &applied.keyspace;
        let sessions = keyspace.unversioned_entries().map_err(|error| {
            format!("reading the sessions and leases for a cut failed: {error}")
        })?;
        Ok(Cut {
            tree: keyspace.tree().clone(),
            revision: keyspace.revision(),
            compact_revision: keyspace.compact_revision(),
            sessions,
            generation,
            _pin: self.compactor.pin(keyspace.compact_revision()),
        })
    }

    /// Loads a verified backup into this store's keyspace, emptied first; returns its revision. Only
    /// `storage::restore` calls it, before the node starts.
    pub(super) fn load_backup(&self, path: &std::path::Path) -> Result<u64, String> {
        let tree = self.read_as_is(|applied| applied.keyspace.tree().clone());
        // What an interrupted load of the same backup left, if anything, goes first.
        tree.clear()
            .map_err(|error| format!("cannot empty the keyspace before loading: {error}"))?;
        backup::load(path, &tree)?;
        let loaded = Keyspace::open(tree)?;
        Ok(loaded.revision())
    }

    /// The store revision after the last applied entry and the compaction point, written to sled or not:
    /// for status and the compaction schedule, which need no read of the keyspace itself.
    pub fn revisions(&self) -> (u64, u64) {
        let revision = *self.revision.borrow();
        // `apply` writes a compaction to sled at once, so sled's point is the applied one.
        let compact_revision = self.read_as_is(|applied| applied.keyspace.compact_revision());
        (revision, compact_revision)
    }

    /// The store revision of what is applied now, written to sled or not: read under the lock `apply` holds,
    /// so it is never behind an apply that has finished (the published `revision` may be, for a moment).
    pub fn applied_revision(&self) -> u64 {
        self.read_as_is(|applied| {
            applied
                .unwritten
                .changes
                .as_ref()
                .map_or_else(|| applied.keyspace.revision(), |changes| changes.revision)
        })
    }

    /// The store revision, published after every applied entry.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The keyspace's tree and compaction point, if it was ever compacted.
    fn compaction_point(&self) -> Option<(sled::Tree, u64)> {
        // The point as written to sled (`apply` writes an entry that compacts at once): the compaction
        // deletes from sled what is hidden there.
        self.read_as_is(|applied| {
            let point = applied.keyspace.compact_revision();
            (point > 0).then(|| (applied.keyspace.tree().clone(), point))
        })
    }

    /// Has the physical compaction catch up with the keyspace's compaction point.
    pub(super) fn wake_compactor(&self) {
        if let Some((tree, point)) = self.compaction_point() {
            self.compactor.request(tree, point);
        }
    }

    /// Deletes now, on this thread, the history no read can see any more, as far as snapshot builds in
    /// progress allow (the compaction thread does it in the background); returns the point reached. For tests
    /// and tools.
    pub fn compact_now(&self) -> Result<u64, String> {
        match self.compaction_point() {
            Some((tree, point)) => self.compactor.compact_now(&tree, point),
            None => Ok(0),
        }
    }

    /// Loads the snapshot received in `RECEIVING_FILE` into a new keyspace tree and switches to it.
    /// `received` is the file openraft hands over: normally `RECEIVING_FILE` itself; any other file (a
    /// snapshot built here, as openraft's test suite installs) is copied there first.
    fn install_received(&self, meta: &SnapshotMeta, mut received: fs::File) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let _maintenance = self
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.snapshot_dir.join(RECEIVING_FILE);
        let same_file = match (received.metadata(), fs::metadata(&path)) {
            (Ok(given), Ok(expected)) => {
                given.dev() == expected.dev() && given.ino() == expected.ino()
            }
            _ => false,
        };
        if !same_file {
            let mut copy = || -> io::Result<()> {
                received.seek(io::SeekFrom::Start(0))?;
                let mut target = fs::File::create(&path)?;
                io::copy(&mut received, &mut target)?;
                target.sync_all()
            };
            copy().map_err(|error| format!("copying the snapshot to install: {error}"))?;
        }
        drop(received);
        let mut input = BufReader::new(fs_open(&path)?);
        let header = read_header(&mut input)?;
        if header.last_log_id != meta.last_log_id {
            return Err(format!(
                "the received snapshot covers {:?}, not {:?} as its message says",
                header.last_log_id, meta.last_log_id
            ));
        }
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let name = format!("{KEYSPACE_TREE_PREFIX}{generation}");
        let sled = &self.sled;
        // A tree of this name can only be left over from an install that crashed.
        sled.db
            .drop_tree(name.as_bytes())
            .map_err(|error| error.to_string())?;
        let tree = sled
            .db
            .open_tree(name.as_bytes())
            .map_err(|error| error.to_string())?;
        import_body(&tree, &mut input, meta.last_log_id, &meta.last_membership)
            .map_err(|error| format!("loading the snapshot: {error}"))?;
        flush_durably(&sled.db, &sled.files).map_err(|error| error.to_string())?;
        sled.meta
            .insert(KEY_KEYSPACE_TREE, name.as_bytes())
            .map_err(|error| error.to_string())?;
        flush_durably(&sled.db, &sled.files).map_err(|error| error.to_string())?;
        let keyspace = Keyspace::open(tree)?;
        let revision = keyspace.revision();
        let old = {
            let mut applied = self
                .applied
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let old = std::mem::replace(&mut applied.keyspace, keyspace);
            // Entries applied but not written are older than the snapshot, which holds their effects.
            applied.unwritten = Unwritten::default();
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            old
        };
        self.generation.store(generation, Ordering::Release);
        self.lease_generation.fetch_add(1, Ordering::AcqRel);
        let old_name = old.tree().name();
        drop(old);
        sled.db
            .drop_tree(&old_name)
            .map_err(|error| error.to_string())?;
        make_current(&self.snapshot_dir, RECEIVING_FILE).map_err(|error| error.to_string())?;
        self.revision.send_replace(revision);
        Ok(())
    }
}

fn fs_open(path: &std::path::Path) -> Result<fs::File, String> {
    fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read(|applied| (applied.last_applied, applied.membership.clone()))
            .map_err(|error| write_error(ErrorSubject::StateMachine, error))
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
        let mut compacted = false;
        let mut responses = Vec::with_capacity(entries.len());
        let mut published: Vec<HistoryEntry> = Vec::new();
        let revision = {
            let mut applied = self
                .applied
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Under the lock: a watcher that subscribes later reads the revision after this apply (it waits
            // for the lock), so it needs none of these changes from the channel.
            let listening = self.changes.receiver_count() > 0;
            // The changes go to sled later, as one batch for many entries (`Applied::write_unwritten`): by
            // the next read, snapshot or compaction, or once they reach `SLED_BATCH_WRITES_MAX` keys. A sled
            // batch costs a few hundred microseconds however small (it rolls sled's IO buffer and wakes its
            // writer threads), so one per entry capped the apply rate and added to every write's latency.
            let applied = &mut *applied;
            let mut entries = entries.into_iter().peekable();
            let mut last = applied.last_applied;
            let mut revision = applied.keyspace.revision();
            // What earlier calls applied, written or not: their changes were published then, and a resumed
            // `Pending` still holds the unwritten ones, which must not go out again.
            let before = applied
                .unwritten
                .changes
                .as_ref()
                .map_or(revision, |changes| changes.revision);
            while entries.peek().is_some() {
                let unwritten = applied.unwritten.changes.take();
                let mut pending = match unwritten {
                    Some(changes) => Pending::resume(&applied.keyspace, changes),
                    None => Pending::new(&applied.keyspace),
                };
                while let Some(entry) =
                    entries.next_if(|_| pending.writes() < SLED_BATCH_WRITES_MAX)
                {
                    if let Some(last) = last {
                        assert!(
                            entry.log_id.index > last.index,
                            "entries applied out of order"
                        );
                    }
                    let response = match entry.payload {
                        EntryPayload::Blank => BatchResponse::default(),
                        EntryPayload::Normal(batch) => {
                            if batch.writes.iter().any(|write| write.command.is_lease()) {
                                self.lease_generation.fetch_add(1, Ordering::AcqRel);
                            }
                            match apply_batch_onto(&mut pending, entry.log_id.index, &batch) {
                                Ok(response) => response,
                                Err(error) => {
                                    // The pending changes, earlier entries' included, go with it.
                                    applied.failed = true;
                                    let subject = ErrorSubject::Apply(entry.log_id);
                                    return Err(read_error(subject, error));
                                }
                            }
                        }
                        EntryPayload::Membership(change) => {
                            let membership = StoredMembership::new(Some(entry.log_id), change);
                            applied.unwritten.membership = Some(membership.clone());
                            applied.membership = membership;
                            BatchResponse::default()
                        }
                    };
                    responses.push(response);
                    last = Some(entry.log_id);
                }
                let full = pending.writes() >= SLED_BATCH_WRITES_MAX;
                let changes = pending.into_changes();
                if listening {
                    let known = published.last().map_or(before, |entry| entry.revision);
                    published.extend(
                        changes
                            .history
                            .iter()
                            .filter(|entry| entry.revision > known)
                            .cloned(),
                    );
                }
                compacted |= changes.compact_revision.is_some();
                revision = changes.revision;
                applied.last_applied = last;
                if last != applied.keyspace.applied_log_id() {
                    applied.unwritten.changes = Some(changes);
                    applied.unwritten.last = last;
                }
                if full || compacted {
                    // Bound what waits in memory; and let the compaction see its point in sled.
                    applied.write_unwritten().map_err(|error| {
                        write_error(
                            ErrorSubject::Apply(last.expect("an entry was applied")),
                            error,
                        )
                    })?;
                }
            }
            revision
        };
        if !published.is_empty() {
            // A watcher subscribes before it reads the revision it catches up to, so it misses none of these.
            let _ = self.changes.send(Arc::new(published));
        }
        self.revision.send_if_modified(|published| {
            let changed = *published != revision;
            *published = revision;
            changed
        });
        if compacted {
            self.wake_compactor();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let counter = self.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let read = self.read(|applied| {
            (
                self.cut(applied, generation),
                applied.last_applied,
                applied.membership.clone(),
            )
        });
        let (cut, last_applied, membership) = read.unwrap_or_else(|error| {
            let (last_applied, membership) = self.read_as_is(|applied| {
                (
                    applied.keyspace.applied_log_id(),
                    applied.membership.clone(),
                )
            });
            (Err(error.to_string()), last_applied, membership)
        });
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{counter}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{counter}"),
        };
        if let Err(error) = &cut {
            tracing::error!(%error, "cannot take a snapshot's cut");
        }
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            cut: cut.ok(),
            snapshot_dir: self.snapshot_dir.clone(),
            maintenance: self.maintenance.clone(),
            generation: self.generation.clone(),
            stats: self.stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshot_dir.join(RECEIVING_FILE);
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|error| write_error(ErrorSubject::Snapshot(None), error))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        snapshot
            .sync_all()
            .await
            .map_err(|error| write_error(subject.clone(), error))?;
        let received = snapshot.into_std().await;
        let store = self.clone();
        let install_meta = meta.clone();
        tokio::task::spawn_blocking(move || store.install_received(&install_meta, received))
            .await
            .map_err(|error| write_error(subject.clone(), error))?
            .map_err(|reason| write_error(subject, io::Error::other(reason)))?;
        self.stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        let size = fs::metadata(self.snapshot_dir.join(super::SNAPSHOT_FILE))
            .map_or(0, |metadata| metadata.len());
        self.stats.snapshot_bytes.store(size, Ordering::Relaxed);
        self.wake_compactor();
        tracing::info!(snapshot_id = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_dir.clone();
        let meta = tokio::task::spawn_blocking(move || read_current_meta(&dir))
            .await
            .map_err(|error| read_error(ErrorSubject::Snapshot(None), error))?
            .map_err(|reason| read_error(ErrorSubject::Snapshot(None), io::Error::other(reason)))?;
        match meta {
            None => Ok(None),
            Some(meta) => open_current(&self.snapshot_dir, meta).await.map(Some),
        }
    }
}
