//! Durable storage of a node: the Raft log in our own write-ahead log (`wal`); the vote and other metadata,
//! and the keyspace with its history, in sled; snapshots in files.
//!
//! This is the only module that names sled. It implements openraft's v2 storage traits:
//! `LogStore` (`RaftLogStorage` + `RaftLogReader`) and `StateMachineStore` (`RaftStateMachine` +
//! `RaftSnapshotBuilder`).
//!
//! Code map: `wal` (the log's files), `log_store` (the log and vote as openraft sees them), `flusher` (the
//! group-commit thread that tells openraft an append is durable), `sled_files` (making sled's writes durable),
//! `keyspace` (the keyspace, its history and the sessions in a sled tree), `compaction` (the physical
//! compaction thread and the pins of snapshot builds), `state_machine_store` (applying entries, installing
//! snapshots), `snapshot` (snapshot files and the builder); this file opens a data dir and wires them.
//!
//! Where things are. `<data-dir>/wal/`: the log entries (`wal::Wal`: segment files of checksummed records,
//! an in-memory index of where each lies). `<data-dir>/raft/`: sled; tree `meta`: node id, cluster id,
//! vote, commit index, purge point, and the name of the keyspace tree; tree `keyspace-<generation>`: the
//! keyspace (see `keyspace`). `<data-dir>/snapshots/`: the current snapshot.
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
//! - Applied entries' changes and the last one's log id go to the keyspace tree in one atomic sled batch (by
//!   the next read, snapshot cut or compaction, or when the batch is full; see `state_machine_store`), not
//!   flushed: the WAL is the source of truth. sled recovers a prefix of its writes after a crash, so the
//!   keyspace is always the state after some applied entry, and the applied log id it holds says which; on
//!   restart openraft re-applies the log from there up to the persisted commit index. Nothing is applied
//!   twice (the id and the changes are one batch) and nothing is skipped, because `purge` flushes sled
//!   durably before it deletes any entry: the log keeps every entry above what sled has made durable.
//! - Snapshots (written to a temporary file, fsynced, renamed, directory fsynced) bound the log and bring
//!   lagging followers up to date; installing one is described in `state_machine_store`.
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

pub mod backup;
mod compaction;
mod flusher;
pub mod keyspace;
mod log_store;
mod paced_writer;
mod sled_files;
mod snapshot;
mod state_machine_store;
pub mod wal;

use std::fmt::Debug;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::raft::types::{LogId, NodeId, StorageError};
use compaction::Compactor;
use flusher::run_flusher;
pub use keyspace::{Keyspace, ReadError};
pub use log_store::LogStore;
use sled_files::{flush_durably, SledFiles};
pub use snapshot::SnapshotBuilder;
use state_machine_store::SledHandles;
pub use state_machine_store::{
    Applied, AppliedChanges, LeaseWithKeys, StateMachineStore, APPLIED_CHANGES_QUEUED,
};
use wal::Wal;

/// Append callbacks that may wait for the flusher at once. An `append` beyond it waits for room, which
/// openraft's own bound on in-flight appends keeps rare.
const FLUSH_QUEUE_MAX: usize = 65_536;
/// Bytes that open every snapshot file, naming its format. 3: the keyspace with its history, streamed from
/// sled; an older format is refused, not misread.
const SNAPSHOT_MAGIC: &[u8; 8] = b"RKVSNAP3";
/// File name of the current snapshot inside the snapshot directory.
const SNAPSHOT_FILE: &str = "current.snap";

/// The sled tree that held the log before the WAL; a data dir where it is not empty is refused.
const OLD_LOG_TREE: &[u8] = b"log";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_NODE_ID: &[u8] = b"node_id";
/// The SHA-256 of the backup the data dir was restored from (`restore`).
const KEY_RESTORED_FROM: &[u8] = b"restored_from";
/// The SHA-256 of the backup being loaded: present only while (or if a crash cut short) a restore.
const KEY_RESTORING: &[u8] = b"restoring";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// Key in `meta` holding the data dir's format, `DATA_FORMAT` as 4 big-endian bytes.
const KEY_DATA_FORMAT: &[u8] = b"data_format";
/// The format of what a data dir holds in its WAL, metadata and snapshots. 2: log ids name a term only, one
/// leader per term (openraft's `single-term-leader`). Dirs made before the key existed wrote log ids that also
/// name a node (openraft's default, several leaders per term); they are refused, not misread.
/// 3: keys carry a lease in their current record and log entries may grant and revoke leases; format 2
/// data is refused (its backups load: versions kept their encoding).
const DATA_FORMAT: u32 = 3;
/// Key in `meta` naming the sled tree that holds the keyspace.
const KEY_KEYSPACE_TREE: &[u8] = b"keyspace_tree";
/// Names of keyspace trees: this and a generation number, which each snapshot install increments.
const KEYSPACE_TREE_PREFIX: &str = "keyspace-";
/// Longest `open` waits for sled's lock held by a store or process that is going away (see `open_sled`).
const SLED_LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between two attempts to take sled's lock.
const SLED_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// sled's page cache when `--cache-mb` does not say: it bounds the memory the keyspace takes beyond what
/// sled keeps per tree.
pub const CACHE_MB_DEFAULT: u64 = 64;

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
    /// Bytes of sled's page cache (`--cache-mb`).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_mode: SyncMode::Device,
            wal_segment_bytes: wal::SEGMENT_BYTES,
            cache_bytes: CACHE_MB_DEFAULT * 1024 * 1024,
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
    #[error("the keyspace in {dir} is unreadable: {reason}")]
    Keyspace { dir: PathBuf, reason: String },
    #[error("the Raft log is corrupt: WAL segment {file} at byte {offset}: {reason}")]
    WalCorrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("data dir {dir} keeps its Raft log in sled (raft/, tree `log`), the format of raftkv before the WAL (wal/); this version cannot read it and would lose those entries")]
    OldLogFormat { dir: PathBuf },
    #[error("data dir {dir} is in format {found}, this version reads format {wanted} only ({}); to keep its data, take a backup with the raftkv that wrote it (etcdctl snapshot save) and start the new nodes from it with --restore-from", data_format_change(*found))]
    OldDataFormat {
        dir: PathBuf,
        found: u32,
        wanted: u32,
    },
}

/// What changed since format `found`, in words.
fn data_format_change(found: u32) -> &'static str {
    match found {
        1 => "format 1 names a node in every log id, from before raftkv kept one leader per term",
        2 => "format 2 has no leases in its records and log entries",
        _ => "a format this version does not know",
    }
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

/// Opens sled in `dir`. sled locks its files, and a store dropped a moment ago (or a process that is still
/// exiting) may hold the lock a little longer, while sled's background writes finish: a lock held by someone
/// else is waited for, at most `SLED_LOCK_WAIT_MAX`, before it is refused.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
        {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT_MAX =>
            {
                std::thread::sleep(SLED_LOCK_POLL);
            }
            result => return result,
        }
    }
}

/// Refuses a data dir written in another format than `DATA_FORMAT`; marks a new one with it. A dir that holds a
/// node id but no format is format 1.
fn check_data_format(dir: &Path, meta: &sled::Tree) -> Result<(), OpenError> {
    let sled_error = |source| OpenError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let found = match meta.get(KEY_DATA_FORMAT).map_err(sled_error)? {
        Some(bytes) => u32::from_be_bytes(bytes.as_ref().try_into().unwrap_or([0; 4])),
        None if meta.get(KEY_NODE_ID).map_err(sled_error)?.is_some() => 1,
        None => {
            meta.insert(KEY_DATA_FORMAT, &DATA_FORMAT.to_be_bytes())
                .map_err(sled_error)?;
            return Ok(());
        }
    };
    if found == DATA_FORMAT {
        return Ok(());
    }
    Err(OpenError::OldDataFormat {
        dir: dir.to_path_buf(),
        found,
        wanted: DATA_FORMAT,
    })
}

/// Opens (creating if needed) the store of node `node_id` of cluster `cluster_id` in `dir`.
///
/// A data dir remembers the node id and cluster id it was created for and refuses any other.
/// What `restore` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The backup was loaded: the keyspace is at this revision.
    Loaded { revision: u64 },
    /// The data dir was restored from this very backup before (a restart with the same flag): nothing done.
    AlreadyLoaded,
}

/// Starts the data dir `dir` of a new cluster's node from the backup at `backup` (checked against its
/// SHA-256): the keyspace, its history and sessions as they were, with an empty Raft log. The dir must hold no
/// state, except the same backup restored before, which is left alone.
pub fn restore(
    dir: &Path,
    node_id: NodeId,
    cluster_id: &str,
    options: StoreOptions,
    backup: &Path,
) -> Result<Restored, String> {
    let digest = backup::verify(backup)?;
    let (log_store, state_machine) =
        open_with(dir, node_id, cluster_id, options).map_err(|error| error.to_string())?;
    let restored_from = log_store
        .meta
        .get(KEY_RESTORED_FROM)
        .map_err(|error| error.to_string())?;
    if restored_from.as_deref() == Some(digest.as_slice()) {
        return Ok(Restored::AlreadyLoaded);
    }
    let interrupted = log_store
        .meta
        .get(KEY_RESTORING)
        .map_err(|error| error.to_string())?;
    let (revision, _) = state_machine.revisions();
    let has_log = log_store.wal.last_log_id().is_some()
        || log_store
            .meta
            .get(KEY_VOTE)
            .map_err(|error| error.to_string())?
            .is_some();
    match interrupted.as_deref() {
        // A load of this very backup was cut short (a crash): it is loaded again from the start.
        Some(marker) if marker == digest.as_slice() && !has_log => {}
        Some(_) => {
            return Err(format!(
                "{} holds part of another backup, whose restore was interrupted; restore into an empty data dir",
                dir.display()
            ))
        }
        None if revision > keyspace::INITIAL_REVISION || has_log || restored_from.is_some() => {
            return Err(format!(
                "{} already holds a node's state; restore a backup only into an empty data dir",
                dir.display()
            ))
        }
        None => {}
    }
    let durable = |what: &str| {
        sled_files::flush_durably(&log_store.db, &log_store.files)
            .map_err(|error| format!("cannot make {what} durable: {error}"))
    };
    log_store
        .meta
        .insert(KEY_RESTORING, digest.as_slice())
        .map_err(|error| error.to_string())?;
    durable("the restore's start")?;
    let revision = state_machine.load_backup(backup)?;
    let mut done = sled::Batch::default();
    done.insert(KEY_RESTORED_FROM, digest.as_slice());
    done.remove(KEY_RESTORING);
    log_store
        .meta
        .apply_batch(done)
        .map_err(|error| error.to_string())?;
    durable("the restored keyspace")?;
    Ok(Restored::Loaded { revision })
}

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
    let db = open_sled(&sled_dir, options.cache_bytes).map_err(sled_error)?;
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
    check_data_format(dir, &meta)?;

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
    stats.snapshot_bytes.store(
        fs::metadata(snapshot_dir.join(SNAPSHOT_FILE)).map_or(0, |metadata| metadata.len()),
        std::sync::atomic::Ordering::Relaxed,
    );
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
        meta: meta.clone(),
        files: files.clone(),
        wal: Arc::new(wal),
        flush_sender,
        stats: stats.clone(),
        leading: Arc::new(Mutex::new(None)),
    };
    let keyspace_error = |reason: String| OpenError::Keyspace {
        dir: sled_dir.clone(),
        reason,
    };
    // The keyspace tree in force; any other keyspace tree is a partial install that crashed.
    let keyspace_tree = match meta.get(KEY_KEYSPACE_TREE).map_err(sled_error)? {
        Some(name) => String::from_utf8_lossy(&name).into_owned(),
        None => {
            // A data dir of the versions that kept the keyspace in snapshot files cannot be read.
            if let Err(reason) = snapshot::read_current_meta(&snapshot_dir) {
                return Err(OpenError::Snapshot {
                    dir: snapshot_dir.clone(),
                    reason,
                });
            }
            let name = format!("{KEYSPACE_TREE_PREFIX}0");
            meta.insert(KEY_KEYSPACE_TREE, name.as_bytes())
                .map_err(sled_error)?;
            name
        }
    };
    let generation: u64 = keyspace_tree
        .strip_prefix(KEYSPACE_TREE_PREFIX)
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| keyspace_error(format!("unknown keyspace tree {keyspace_tree:?}")))?;
    for name in db.tree_names() {
        let leftover = std::str::from_utf8(&name)
            .is_ok_and(|name| name.starts_with(KEYSPACE_TREE_PREFIX) && name != keyspace_tree);
        if leftover {
            db.drop_tree(&name).map_err(sled_error)?;
        }
    }
    for leftover in [snapshot::BUILDING_FILE, snapshot::RECEIVING_FILE] {
        match fs::remove_file(snapshot_dir.join(leftover)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(io_error(error)),
            _ => {}
        }
    }
    let tree = db.open_tree(keyspace_tree.as_bytes()).map_err(sled_error)?;
    flush_durably(&db, &files).map_err(io_error)?;
    let keyspace = Keyspace::open(tree).map_err(keyspace_error)?;
    let (last_applied, membership) = keyspace.applied().map_err(keyspace_error)?;
    let revision = crate::kv::changes::KeyspaceRead::revision(&keyspace);
    let applied = Arc::new(RwLock::new(Applied::new(
        keyspace,
        last_applied,
        membership,
    )));
    let maintenance = Arc::new(Mutex::new(()));
    let compactor = Compactor::start(node_id, maintenance.clone()).map_err(io_error)?;
    let state_machine = StateMachineStore {
        applied,
        sled: SledHandles {
            db: db.clone(),
            files: files.clone(),
            meta: meta.clone(),
        },
        snapshot_dir,
        snapshot_counter: Arc::new(AtomicU64::new(0)),
        stats,
        log_progress: progress,
        revision: Arc::new(tokio::sync::watch::channel(revision).0),
        changes: tokio::sync::broadcast::channel(APPLIED_CHANGES_QUEUED).0,
        maintenance,
        generation: Arc::new(AtomicU64::new(generation)),
        compactor,
        lease_generation: Arc::default(),
    };
    // History compacted before a crash may still hold versions the compaction had not deleted yet.
    state_machine.wake_compactor();
    Ok((log_store, state_machine))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::kv::state_machine::BatchResponse;
    use crate::kv::state_machine::{Batch, Command, Request};
    use crate::raft::types::Entry;
    use crate::raft::types::Vote;
    use crate::storage::wal::LogProgress;
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::EntryPayload;
    use tokio::sync::watch;

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
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
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
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
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
        // One leader per term: an entry of term 3 from another node cannot exist while this node leads it.
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
        let id = |index| Some(LogId::new(CommittedLeaderId::new(1, NODE), index));
        let (progress, receiver) = watch::channel(LogProgress {
            written: id(3),
            synced: id(1),
            failed: false,
        });
        state_machine.log_progress = receiver;

        state_machine.apply([put(1, NODE, 1)]).await.unwrap();
        let pending = apply_waiting(&state_machine, vec![put(1, NODE, 2)]).await;
        assert_eq!(state_machine.applied_index(), 1);
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
        assert_eq!(state_machine.applied_index(), 5);
    }
}
