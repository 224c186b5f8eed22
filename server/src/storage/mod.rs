//! Durable storage of a node: the Raft log in our own write-ahead log (`wal`), the vote and other metadata in
//! sled, snapshots in files, and the applied state.
//!
//! This is the only module that names sled. It implements openraft's v2 storage traits:
//! `LogStore` (`RaftLogStorage` + `RaftLogReader`) and `StateMachineStore` (`RaftStateMachine` +
//! `RaftSnapshotBuilder`).
//!
//! Where things are. `<data-dir>/wal/`: the log entries (`wal::Wal`: segment files of checksummed records,
//! an in-memory index of where each lies). `<data-dir>/raft/`: sled, tree `meta` only: node id, cluster id,
//! vote, commit index, purge point. `<data-dir>/snapshots/`: the current snapshot.
//!
//! Why the log is not in sled. openraft 0.9's core awaits the callback of each append (`append_to_log` wraps
//! it to block), so on a follower one flush per append bounds write latency (the leader's own appends no
//! longer wait, see below). sled's flush plus our device sync cost about 3 `sync_file_range` calls (each of
//! its io buffers synced on its own, 100-500 us each) plus one `fdatasync` per write, 3-4 times what a plain
//! `write` + `fdatasync` costs on the same disk. The WAL's flush is that one `fdatasync`.
//!
//! Order of duties (persist before you acknowledge):
//! - `append` writes the entries to the WAL (readable at once, not synced) and hands the sync to the flusher
//!   thread, which drains every append queued so far, syncs the WAL once (`fdatasync` of the segments
//!   written since the last flush, `fsync` of `wal/` if a segment was created) and only then completes their
//!   callbacks: group commit, one flush for a whole batch of appends. A follower's callback (its
//!   acknowledgement to the leader) always waits for that sync.
//! - The leader's own entries (`LogStore::leader_proposals`) are acknowledged at once, before their sync.
//!   openraft 0.9 sends nothing to followers until the leader's append callback completes, so waiting put
//!   the leader's `fdatasync` and the followers' in series; now they overlap. openraft then counts the
//!   leader towards a commit before its copy is durable, so nothing may act on such a commit until it is:
//!   the WAL publishes how far it is written and synced (`wal::LogProgress`), `apply` waits until an entry it
//!   holds is synced (no client answer, no read sees it before), and the network never tells followers a
//!   commit index beyond the leader's synced log (`network::RaftPeer::commit_to_send`), so no follower
//!   applies it either. Whatever is applied anywhere is durable on the leader and on the followers whose
//!   acknowledgements made the majority. Membership entries keep the synced path, so openraft's joint
//!   consensus steps only follow configurations a majority durably holds.
//! - `save_vote` writes the vote to sled and flushes sled durably (below) before it returns.
//! - `truncate` cuts the WAL and syncs it before it returns. `purge` writes the purge point to sled and
//!   flushes it durably first, then deletes the WAL segments wholly at or below it: the log never has a hole
//!   that the purge point does not account for, and purged entries are never returned again.
//! - `save_committed` is not flushed on its own: it reaches the disk with the next sled flush (a vote, a
//!   purge, shutdown, or sled's own background flush); a commit index lost in a crash is re-learnt from the
//!   leader.
//! - The applied state lives in memory and is made durable by snapshots (written to a temporary file,
//!   fsynced, renamed, directory fsynced) plus the log: on restart openraft re-applies the log from the
//!   snapshot up to the persisted commit index.
//!
//! What a sled flush guarantees. sled 0.34.7's `flush` writes its buffers with `pwrite` and then calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range of its one data file: the pages
//! reach the device, but neither the file's metadata (its size, newly allocated extents) nor the device's
//! volatile write cache is flushed, and values spilled to blob files (`blobs/`, any page over a quarter of a
//! segment) are written with no sync at all. That survives a crash of the process (kill -9), not a power
//! failure. So every durable sled flush here is sled's flush followed by `SledFiles::sync`: `fdatasync` of
//! the data file, of every new blob file, and `fsync` of the directories whose listing changed. See
//! ARCHITECTURE.md, "Durability".

// openraft's traits dictate `StorageError` (large) as the error type; helpers return the same type.
#![allow(clippy::result_large_err)]

pub mod wal;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};

use crate::kv::state_machine::{BatchResponse, StateMachine};
use crate::raft::types::{
    Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use wal::{LogProgress, Wal};

/// Append callbacks that may wait for the flusher at once. An `append` beyond it waits for room, which
/// openraft's own bound on in-flight appends keeps rare.
const FLUSH_QUEUE_MAX: usize = 65_536;
/// Bytes that open every snapshot file, naming its format. 2: log entries carry write batches and the
/// session table's responses lost the `Empty` variant; a format-1 snapshot is refused, not misread.
const SNAPSHOT_MAGIC: &[u8; 8] = b"RKVSNAP2";
/// File name of the current snapshot inside the snapshot directory.
const SNAPSHOT_FILE: &str = "current.snap";

/// The sled tree that held the log before the WAL; a data dir where it is not empty is refused.
const OLD_LOG_TREE: &[u8] = b"log";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_NODE_ID: &[u8] = b"node_id";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";

/// How far a flush goes before anything is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// The WAL's `fdatasync` (and `fsync` of `wal/` when it gained a segment); for sled, its flush then
    /// `fdatasync` of the files it wrote and `fsync` of changed directories: an acknowledged write survives
    /// a power failure on a device that honours cache flushes. What nodes use.
    #[default]
    Device,
    /// No device sync at all: the WAL is only written (`pwrite`, never `fdatasync`ed) and sled only
    /// flushed (`pwrite` + `sync_file_range`). Survives kill -9 (the page cache outlives the process), not
    /// a power failure. Only for measuring what `Device` costs
    /// (`cargo run --release -p raftkv-server --example log_append`).
    Process,
}

/// How `open_with` opens a store; `Default` is what nodes use.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    pub sync_mode: SyncMode,
    /// Size at which the WAL starts a new segment (`wal::SEGMENT_BYTES`; tests use tiny ones).
    pub wal_segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_mode: SyncMode::Device,
            wal_segment_bytes: wal::SEGMENT_BYTES,
        }
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("cannot open the store in {dir}: {source}")]
    Sled { dir: PathBuf, source: sled::Error },
    #[error("data dir {dir} belongs to node {found}, not node {wanted}: pass --id {found} or use another --data-dir")]
    WrongNode {
        dir: PathBuf,
        found: u64,
        wanted: u64,
    },
    #[error("data dir {dir} belongs to cluster {found:?}, not {wanted:?}: pass --cluster-id {found} or use another --data-dir")]
    WrongCluster {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("snapshot in {dir} is unreadable: {reason}")]
    Snapshot { dir: PathBuf, reason: String },
    #[error("the Raft log is corrupt: WAL segment {file} at byte {offset}: {reason}")]
    WalCorrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("data dir {dir} keeps its Raft log in sled (raft/, tree `log`), the format of raftkv before the WAL (wal/); this version cannot read it and would lose those entries")]
    OldLogFormat { dir: PathBuf },
}

/// Figures the storage exposes for metrics and status.
#[derive(Debug, Default)]
pub struct StorageStats {
    pub flushes: AtomicU64,
    /// Appends (openraft callbacks, one or more entries each) made durable by the flushes.
    pub flushed_appends: AtomicU64,
    /// Log entries made durable by the flushes.
    pub flushed_entries: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshot_bytes: AtomicU64,
}

/// Opens (creating if needed) the store of node `node_id` of cluster `cluster_id` in `dir`.
///
/// A data dir remembers the node id and cluster id it was created for and refuses any other.
pub fn open(
    dir: &Path,
    node_id: NodeId,
    cluster_id: &str,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    open_with(dir, node_id, cluster_id, StoreOptions::default())
}

/// `open` with explicit options; nodes always use the defaults.
pub fn open_with(
    dir: &Path,
    node_id: NodeId,
    cluster_id: &str,
    options: StoreOptions,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    let sync_mode = options.sync_mode;
    let io_error = |source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let snapshot_dir = dir.join("snapshots");
    fs::create_dir_all(&snapshot_dir).map_err(io_error)?;
    let sled_error = |source| OpenError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let sled_dir = dir.join("raft");
    let db = sled::Config::new()
        .path(&sled_dir)
        .open()
        .map_err(sled_error)?;
    let files = SledFiles::open(&sled_dir, sync_mode).map_err(io_error)?;
    // Before the WAL the log was sled's tree `log`: refuse to start without it rather than lose it.
    if db
        .tree_names()
        .iter()
        .any(|name| name.as_ref() == OLD_LOG_TREE)
        && !db.open_tree(OLD_LOG_TREE).map_err(sled_error)?.is_empty()
    {
        return Err(OpenError::OldLogFormat {
            dir: dir.to_path_buf(),
        });
    }
    let meta = db.open_tree("meta").map_err(sled_error)?;

    match meta.get(KEY_NODE_ID).map_err(sled_error)? {
        Some(found) => {
            let found = u64::from_be_bytes(found.as_ref().try_into().unwrap_or([0; 8]));
            if found != node_id {
                return Err(OpenError::WrongNode {
                    dir: dir.to_path_buf(),
                    found,
                    wanted: node_id,
                });
            }
        }
        None => {
            meta.insert(KEY_NODE_ID, &node_id.to_be_bytes())
                .map_err(sled_error)?;
        }
    }
    match meta.get(KEY_CLUSTER_ID).map_err(sled_error)? {
        Some(found) => {
            let found = String::from_utf8_lossy(&found).into_owned();
            if found != cluster_id {
                return Err(OpenError::WrongCluster {
                    dir: dir.to_path_buf(),
                    found,
                    wanted: cluster_id.to_string(),
                });
            }
        }
        None => {
            meta.insert(KEY_CLUSTER_ID, cluster_id.as_bytes())
                .map_err(sled_error)?;
        }
    }
    let files = Arc::new(Mutex::new(files));
    flush_durably(&db, &files).map_err(io_error)?;
    let last_purged = match meta.get(KEY_LAST_PURGED).map_err(sled_error)? {
        Some(bytes) => Some(
            postcard::from_bytes::<LogId>(&bytes)
                .map_err(|error| {
                    io_error(io::Error::other(format!("stored purge point: {error}")))
                })?
                .index,
        ),
        None => None,
    };
    let wal = Wal::open(
        &dir.join(wal::WAL_DIR),
        options.wal_segment_bytes,
        sync_mode == SyncMode::Device,
        last_purged,
    )
    .map_err(|error| match error {
        wal::OpenError::Io { path, source } => OpenError::Io { dir: path, source },
        wal::OpenError::Corrupt {
            file,
            offset,
            reason,
        } => OpenError::WalCorrupt {
            file,
            offset,
            reason,
        },
    })?;
    if sync_mode == SyncMode::Device {
        // The entries `raft`, `wal` and `snapshots` of a new data dir.
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }

    let stats = Arc::new(StorageStats::default());
    let (flush_sender, flush_receiver) = std::sync::mpsc::sync_channel(FLUSH_QUEUE_MAX);
    let flusher_stats = stats.clone();
    std::thread::Builder::new()
        .name(format!("raftkv-flush-{node_id}"))
        .spawn(move || run_flusher(flush_receiver, flusher_stats))
        .map_err(io_error)?;

    let progress = wal.progress();
    let log_store = LogStore {
        node_id,
        db: db.clone(),
        meta,
        files,
        wal: Arc::new(wal),
        flush_sender,
        stats: stats.clone(),
        leading: Arc::new(Mutex::new(None)),
    };
    let current = read_snapshot_file(&snapshot_dir).map_err(|reason| OpenError::Snapshot {
        dir: snapshot_dir.clone(),
        reason,
    })?;
    let applied = match &current {
        Some((meta, data)) => Applied {
            state: StateMachine::decode(data).map_err(|reason| OpenError::Snapshot {
                dir: snapshot_dir.clone(),
                reason,
            })?,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        },
        None => Applied::default(),
    };
    let state_machine = StateMachineStore {
        applied: Arc::new(RwLock::new(applied)),
        snapshot_dir,
        snapshot_counter: Arc::new(AtomicU64::new(0)),
        stats,
        log_progress: progress,
    };
    Ok((log_store, state_machine))
}

/// The files sled writes, kept open to be synced after sled's own flush (see the module docs).
///
/// sled 0.34.7 keeps one data file (`db`), spills large pages to `blobs/<lsn>` (written, never synced) and
/// rewrites its page-table snapshot (`snap.<lsn>`, renamed into place with no directory sync).
struct SledFiles {
    mode: SyncMode,
    /// sled's directory (`<data-dir>/raft`).
    dir: PathBuf,
    /// sled's data file, opened read-only: `fdatasync` on any descriptor of a file syncs the file.
    data: fs::File,
    /// Names in `dir` when it was last synced: a change (a new `snap.*`) means the directory needs an fsync.
    dir_names: BTreeSet<OsString>,
    /// Blob files already synced (blob files never change once written; sled deletes them when obsolete).
    blobs_synced: BTreeSet<OsString>,
}

impl SledFiles {
    fn open(dir: &Path, mode: SyncMode) -> io::Result<SledFiles> {
        Ok(SledFiles {
            mode,
            dir: dir.to_path_buf(),
            data: fs::File::open(dir.join("db"))?,
            dir_names: BTreeSet::new(),
            blobs_synced: BTreeSet::new(),
        })
    }

    /// Makes what sled's flush wrote durable on the device: `fdatasync` of the data file and every new blob
    /// file, `fsync` of a directory whose listing changed.
    fn sync(&mut self) -> io::Result<()> {
        if self.mode == SyncMode::Process {
            return Ok(());
        }
        self.data.sync_data()?;
        let blob_dir = self.dir.join("blobs");
        let mut blobs = BTreeSet::new();
        let mut new_blob = false;
        for entry in fs::read_dir(&blob_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.blobs_synced.contains(&name) {
                match fs::File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    // Removed by sled since the listing: obsolete, nothing to keep.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                new_blob = true;
            }
            blobs.insert(name);
        }
        if new_blob || blobs.len() != self.blobs_synced.len() {
            fs::File::open(&blob_dir)?.sync_all()?;
        }
        self.blobs_synced = blobs;
        let names = fs::read_dir(&self.dir)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<BTreeSet<_>>>()?;
        if names != self.dir_names {
            fs::File::open(&self.dir)?.sync_all()?;
            self.dir_names = names;
        }
        Ok(())
    }
}

/// sled's flush followed by the device sync of `SledFiles`: the only way this module makes writes durable.
fn flush_durably(db: &sled::Db, files: &Mutex<SledFiles>) -> io::Result<()> {
    db.flush().map_err(io::Error::other)?;
    files
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .sync()
}

/// One append waiting for its flush. It carries the WAL handle so that the idle flusher holds none: once the
/// last `LogStore` is dropped after its appends are acknowledged, every WAL file is closed (and sled, which
/// the flusher never touches, released its lock), so the store can be reopened at once.
struct FlushRequest {
    wal: Arc<Wal>,
    /// openraft's callback, completed after the flush; `None` when it was completed at the append (the
    /// leader's own entries, see `LogStore::append`).
    callback: Option<LogFlushed<TypeConfig>>,
    /// Entries in the append, for the entries-per-flush figure.
    entries: u64,
}

/// The flusher thread: waits for append callbacks, drains all that are queued, syncs the WAL once, completes
/// them. It ends when every `LogStore` handle is gone.
fn run_flusher(receiver: Receiver<FlushRequest>, stats: Arc<StorageStats>) {
    while let Ok(FlushRequest {
        wal,
        callback: first,
        entries,
    }) = receiver.recv()
    {
        let mut appends = 1;
        let mut batch: Vec<_> = first.into_iter().collect();
        let mut batch_entries = entries;
        while let Ok(next) = receiver.try_recv() {
            appends += 1;
            batch.extend(next.callback);
            batch_entries += next.entries;
        }
        let started = Instant::now();
        let result = wal.sync();
        // Let go of the WAL before completing the callbacks (see `FlushRequest`).
        drop(wal);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flushed_appends.fetch_add(appends, Ordering::Relaxed);
        stats
            .flushed_entries
            .fetch_add(batch_entries, Ordering::Relaxed);
        stats
            .flush_micros_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Err(error) = &result {
            // A leader's early-acknowledged entries have no callback left to fail: the WAL is now marked
            // failed, so they are never applied nor reported committed, and the next log call fails.
            tracing::error!(%error, "syncing the Raft log failed; this node must restart");
        }
        for callback in batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn write_error(
    subject: ErrorSubject<NodeId>,
    error: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Write, AnyError::new(&error)).into()
}

fn read_error(
    subject: ErrorSubject<NodeId>,
    error: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::new(&error)).into()
}

fn decode_error(subject: ErrorSubject<NodeId>, error: postcard::Error) -> StorageError {
    read_error(subject, error)
}

/// The Raft log and vote. Cloning is cheap; clones share the same WAL, sled tree and flusher.
#[derive(Clone)]
pub struct LogStore {
    /// This node: a committed vote for it is read back uncommitted (see `read_vote`).
    node_id: NodeId,
    db: sled::Db,
    meta: sled::Tree,
    files: Arc<Mutex<SledFiles>>,
    wal: Arc<Wal>,
    flush_sender: SyncSender<FlushRequest>,
    stats: Arc<StorageStats>,
    /// The leader id of the term this node leads, from the last vote saved: its committed vote for itself.
    /// `None` otherwise, and after a restart until openraft saves a vote (see `append`).
    leading: Arc<Mutex<Option<CommittedLeaderId<NodeId>>>>,
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

    fn read_meta<T: for<'de> Deserialize<'de>>(
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

    fn write_meta<T: Serialize>(
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
    fn flush_meta(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        flush_durably(&self.db, &self.files).map_err(|error| write_error(subject, error))
    }

    /// Whether `entries` are this node's own proposals as leader, which `append` acknowledges before their
    /// sync: each carries the leader id of the term this node leads (only that term's leader makes such
    /// entries; a follower appends them under a vote for another node), and none changes the membership
    /// (the leader counts itself towards a membership change only once it holds the entry durably, so that
    /// openraft's joint-consensus steps only ever follow a configuration that a majority really holds).
    fn leader_proposals(&self, entries: &[Entry]) -> bool {
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
    fn last_log_id(&self, last_purged: Option<LogId>) -> Option<LogId> {
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
        let leading = (vote.is_committed() && vote.leader_id().voted_for() == Some(self.node_id))
            .then(|| *vote.leader_id());
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
    applied: Arc<RwLock<Applied>>,
    snapshot_dir: PathBuf,
    snapshot_counter: Arc<AtomicU64>,
    stats: Arc<StorageStats>,
    /// The log's written and synced ends: `apply` waits until an entry it is given is synced.
    log_progress: watch::Receiver<LogProgress>,
}

impl StateMachineStore {
    /// Waits until no log entry from index `first` to `last` is held unsynced by this node's WAL. Only a
    /// leader's own entries are ever applied before their sync could finish (see `LogStore::append`), and
    /// they wait here for at most that sync; entries the WAL does not hold (openraft's storage suite applies
    /// some) do not wait. Unbounded in time like the sync itself: a failed sync ends it with an error, which
    /// stops the node.
    async fn wait_synced(&mut self, first: u64, last: LogId) -> Result<(), StorageError> {
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

/// On-disk form of a snapshot's metadata.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
}

fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<u64> {
    let header =
        postcard::to_stdvec(&SnapshotHeader { meta: meta.clone() }).map_err(io::Error::other)?;
    let temporary = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut file = fs::File::create(&temporary)?;
    file.write_all(SNAPSHOT_MAGIC)?;
    file.write_all(&(header.len() as u64).to_be_bytes())?;
    file.write_all(&header)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(SNAPSHOT_FILE))?;
    fs::File::open(dir)?.sync_all()?;
    Ok((SNAPSHOT_MAGIC.len() + 8 + header.len() + data.len()) as u64)
}

fn read_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let bytes = match fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let header_start = SNAPSHOT_MAGIC.len() + 8;
    if bytes.len() < header_start || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
        return Err("not a raftkv snapshot file".to_string());
    }
    let header_len = u64::from_be_bytes(
        bytes[SNAPSHOT_MAGIC.len()..header_start]
            .try_into()
            .expect("8 bytes"),
    );
    let header_end = usize::try_from(header_len)
        .ok()
        .and_then(|len| header_start.checked_add(len))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| "snapshot header is truncated".to_string())?;
    let header: SnapshotHeader = postcard::from_bytes(&bytes[header_start..header_end])
        .map_err(|error| format!("snapshot header: {error}"))?;
    Ok(Some((header.meta, bytes[header_end..].to_vec())))
}

/// Writes a snapshot file off the async threads; gives the data back with the file's size.
async fn persist_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    data: Vec<u8>,
    stats: &StorageStats,
) -> Result<(Vec<u8>, u64), StorageError> {
    let subject = ErrorSubject::Snapshot(Some(meta.signature()));
    let (dir, file_meta) = (dir.to_path_buf(), meta.clone());
    let (data, size) = tokio::task::spawn_blocking(move || {
        let size = write_snapshot_file(&dir, &file_meta, &data);
        (data, size)
    })
    .await
    .map_err(|error| write_error(subject.clone(), error))?;
    let size = size.map_err(|error| write_error(subject, error))?;
    stats.snapshot_bytes.store(size, Ordering::Relaxed);
    Ok((data, size))
}

/// Builds a snapshot from the state captured when openraft asked for a builder.
pub struct SnapshotBuilder {
    data: Vec<u8>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_dir: PathBuf,
    snapshot_id: String,
    stats: Arc<StorageStats>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let data = std::mem::take(&mut self.data);
        let (data, size) = persist_snapshot(&self.snapshot_dir, &meta, data, &self.stats).await?;
        self.stats.snapshots_built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = size, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{LeaderId, Membership};

    use super::*;
    use crate::kv::state_machine::{Batch, Command, Request};

    const NODE: NodeId = 1;
    /// Long enough that an `apply` that does not wait would have finished.
    const NOT_DONE_WITHIN: Duration = Duration::from_millis(200);
    /// Bound on waits that must end.
    const DONE_WITHIN: Duration = Duration::from_secs(10);

    fn open_store(dir: &Path) -> (LogStore, StateMachineStore) {
        open(dir, NODE, "test-cluster").expect("open store")
    }

    fn put(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId::new(term, leader), index),
            payload: EntryPayload::Normal(Batch::single(Request {
                session: None,
                command: Command::Put {
                    key: format!("k{index}").into_bytes(),
                    value: b"v".to_vec(),
                },
            })),
        }
    }

    fn membership(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId::new(term, leader), index),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([NODE])], None)),
        }
    }

    /// Only this node's own entries as the leader of its committed vote are acknowledged before their sync.
    #[tokio::test]
    async fn only_the_leaders_own_entries_are_acknowledged_before_their_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open_store(dir.path());
        assert!(
            !log.leader_proposals(&[put(3, NODE, 1)]),
            "no vote saved yet"
        );
        log.save_vote(&Vote::new(3, NODE)).await.unwrap();
        assert!(
            !log.leader_proposals(&[put(3, NODE, 1)]),
            "a candidate's vote is not a leader's"
        );
        log.save_vote(&Vote::new_committed(3, NODE)).await.unwrap();
        assert!(log.leader_proposals(&[put(3, NODE, 1), put(3, NODE, 2)]));
        assert!(
            !log.leader_proposals(&[put(3, NODE, 1), membership(3, NODE, 2)]),
            "a membership change waits for the leader's sync"
        );
        assert!(
            !log.leader_proposals(&[put(2, NODE, 1)]),
            "entries of this node's earlier term come from another leader now"
        );
        assert!(
            !log.leader_proposals(&[put(3, 2, 1)]),
            "another node's entries"
        );
        assert!(!log.leader_proposals(&[]));
        log.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        assert!(
            !log.leader_proposals(&[put(3, NODE, 1)]),
            "a follower acknowledges after its sync"
        );
    }

    /// Holds off the WAL's syncs, on a thread of its own, until the returned sender is dropped.
    fn hold_syncs(log: &LogStore) -> std::sync::mpsc::Sender<()> {
        let wal = log.wal.clone();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _guard = wal.hold_syncs();
            held.send(()).unwrap();
            // Ends when the test drops the sender.
            let _ = released.recv();
        });
        is_held.recv().unwrap();
        release
    }

    /// A follower's append returns only once its entries are synced: its acknowledgement is what the
    /// leader counts.
    #[tokio::test]
    async fn a_followers_append_returns_after_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open_store(dir.path());
        let mut progress = log.progress();
        log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        let release = hold_syncs(&log);
        let append =
            tokio::time::timeout(NOT_DONE_WITHIN, log.blocking_append([put(1, 2, 1)])).await;
        assert!(
            append.is_err(),
            "a follower's append returned while its sync was held"
        );
        assert!(progress.borrow().unsynced(1));
        drop(release);
        tokio::time::timeout(
            DONE_WITHIN,
            progress.wait_for(|progress| !progress.unsynced(1)),
        )
        .await
        .expect("synced once released")
        .unwrap();
        for index in 2..=20 {
            log.blocking_append([put(1, 2, index)]).await.unwrap();
            assert!(
                !progress.borrow().unsynced(index),
                "entry {index} was acknowledged before its sync"
            );
        }
    }

    /// The leader's append returns while its sync is still held off, with the entries published as written
    /// and not synced; once syncs go on, the flusher syncs them.
    #[tokio::test]
    async fn the_leaders_append_returns_before_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open_store(dir.path());
        let mut progress = log.progress();
        log.save_vote(&Vote::new_committed(1, NODE)).await.unwrap();
        let release = hold_syncs(&log);
        tokio::time::timeout(
            DONE_WITHIN,
            log.blocking_append([put(1, NODE, 1), put(1, NODE, 2)]),
        )
        .await
        .expect("the leader's append waited for its sync")
        .unwrap();
        assert_eq!(progress.borrow().written.map(|id| id.index), Some(2));
        assert!(progress.borrow().unsynced(1) && progress.borrow().unsynced(2));
        drop(release);
        tokio::time::timeout(
            DONE_WITHIN,
            progress.wait_for(|progress| !progress.unsynced(1) && !progress.unsynced(2)),
        )
        .await
        .expect("the flusher syncs the leader's entries")
        .unwrap();
    }

    /// Applies `entries` on a clone of `state_machine` in the background and checks that it is still waiting
    /// after `NOT_DONE_WITHIN`.
    async fn apply_waiting(
        state_machine: &StateMachineStore,
        entries: Vec<Entry>,
    ) -> tokio::task::JoinHandle<Result<Vec<BatchResponse>, StorageError>> {
        let mut waiting = state_machine.clone();
        let pending = tokio::spawn(async move { waiting.apply(entries).await });
        tokio::time::sleep(NOT_DONE_WITHIN).await;
        assert!(!pending.is_finished(), "applied an unsynced entry");
        pending
    }

    /// `apply` of an entry the WAL holds unsynced waits for its sync; an entry synced, or one the WAL does
    /// not hold, is applied at once; a failed WAL fails the apply.
    #[tokio::test]
    async fn apply_waits_until_the_entry_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut state_machine) = open_store(dir.path());
        let id = |index| Some(LogId::new(LeaderId::new(1, NODE), index));
        let (progress, receiver) = watch::channel(LogProgress {
            written: id(3),
            synced: id(1),
            failed: false,
        });
        state_machine.log_progress = receiver;

        state_machine.apply([put(1, NODE, 1)]).await.unwrap();
        let pending = apply_waiting(&state_machine, vec![put(1, NODE, 2)]).await;
        assert_eq!(
            state_machine.read(|applied| applied.last_applied.map(|id| id.index)),
            Some(1)
        );
        progress.send_modify(|progress| progress.synced = id(2));
        tokio::time::timeout(DONE_WITHIN, pending)
            .await
            .expect("applied once synced")
            .unwrap()
            .unwrap();

        // Entry 3 is written and unsynced, entry 4 not in the WAL: the batch waits for entry 3.
        let pending = apply_waiting(&state_machine, vec![put(1, NODE, 3), put(1, NODE, 4)]).await;
        progress.send_modify(|progress| progress.synced = id(3));
        tokio::time::timeout(DONE_WITHIN, pending)
            .await
            .expect("applied once synced")
            .unwrap()
            .unwrap();
        // Not held by the WAL at all (beyond what it has written): nothing to wait for.
        tokio::time::timeout(DONE_WITHIN, state_machine.apply([put(1, NODE, 5)]))
            .await
            .expect("entry 5 is not in the WAL")
            .unwrap();

        progress.send_modify(|progress| progress.written = id(7));
        let mut waiting = state_machine.clone();
        let pending = tokio::spawn(async move { waiting.apply([put(1, NODE, 6)]).await });
        progress.send_modify(|progress| progress.failed = true);
        let result = tokio::time::timeout(DONE_WITHIN, pending)
            .await
            .expect("a failed WAL ends the wait")
            .unwrap();
        assert!(result.is_err(), "applied an entry the WAL failed to sync");
        assert_eq!(
            state_machine.read(|applied| applied.last_applied.map(|id| id.index)),
            Some(5)
        );
    }
}
