//! Snapshot files: the format (magic, header, keyspace body), building one from sled while entries go on being
//! applied, and reading one back to install it.
//!
//! A file is `SNAPSHOT_MAGIC`, the header's length (u64), the header (postcard `SnapshotMeta`), then the body
//! `keyspace::export_body` writes. The file itself is openraft's `SnapshotData`: the leader sends it as it
//! lies on disk, the follower receives it into `RECEIVING_FILE` and loads it into a new keyspace tree.
//!
//! A snapshot at revision R is a consistent cut without stopping writes: the history holds every version at
//! or below R, and applying only adds versions above it. Sessions have no history, so their entries are
//! copied when openraft asks for the builder (between two applies); the cut pins its compaction point
//! (`compaction::Pin`), so the physical compaction deletes no version the build still needs.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::{ErrorSubject, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::compaction::Pin;
use super::keyspace::export_body;
use super::paced_writer::{PacedWriter, SNAPSHOT_WRITE_BYTES_PER_SEC};
use super::{write_error, StorageStats, SNAPSHOT_FILE, SNAPSHOT_MAGIC};
use crate::raft::types::{Snapshot, SnapshotMeta, StorageError, TypeConfig};

/// Where a snapshot is written while it is built, before it is renamed to `SNAPSHOT_FILE`.
pub(super) const BUILDING_FILE: &str = "building.tmp";
/// Where a snapshot sent by the leader is received, before it is installed.
pub(super) const RECEIVING_FILE: &str = "receiving.tmp";
/// Largest snapshot header accepted (a membership of a few nodes takes well under a kilobyte).
const HEADER_BYTES_MAX: u64 = 1024 * 1024;
/// The nice value of a snapshot build's thread: the lowest priority.
#[cfg(target_os = "linux")]
const SNAPSHOT_NICE: libc::c_int = 19;
/// Buffer of the file writer and reader.
const FILE_BUFFER_BYTES: usize = 256 * 1024;

/// On-disk form of a snapshot's metadata.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    pub(super) meta: SnapshotMeta,
}

/// Reads the magic and header of a snapshot file, leaving `input` at the start of the body.
pub(super) fn read_header(input: &mut impl Read) -> Result<SnapshotMeta, String> {
    let mut magic = [0; SNAPSHOT_MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| "not a raftkv snapshot file (too short)".to_string())?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(if magic.starts_with(b"RKVSNAP") {
            format!(
                "snapshot format {} is not this version's ({}); move the data dir aside and let the node catch up from the cluster",
                String::from_utf8_lossy(&magic[7..]),
                String::from_utf8_lossy(&SNAPSHOT_MAGIC[7..])
            )
        } else {
            "not a raftkv snapshot file".to_string()
        });
    }
    let mut length = [0; 8];
    input
        .read_exact(&mut length)
        .map_err(|_| "snapshot header is truncated".to_string())?;
    let length = u64::from_be_bytes(length);
    if length > HEADER_BYTES_MAX {
        return Err(format!(
            "snapshot header of {length} bytes is over the limit of {HEADER_BYTES_MAX}"
        ));
    }
    let mut header = vec![0; length as usize];
    input
        .read_exact(&mut header)
        .map_err(|_| "snapshot header is truncated".to_string())?;
    let header: SnapshotHeader =
        postcard::from_bytes(&header).map_err(|error| format!("snapshot header: {error}"))?;
    Ok(header.meta)
}

/// The metadata of the current snapshot file, if there is one.
pub(super) fn read_current_meta(dir: &Path) -> Result<Option<SnapshotMeta>, String> {
    match fs::File::open(dir.join(SNAPSHOT_FILE)) {
        Ok(file) => read_header(&mut BufReader::new(file)).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Renames `from` (in `dir`) to the current snapshot and makes the rename durable.
pub(super) fn make_current(dir: &Path, from: &str) -> io::Result<()> {
    fs::rename(dir.join(from), dir.join(SNAPSHOT_FILE))?;
    fs::File::open(dir)?.sync_all()
}

/// Opens the current snapshot file as openraft's snapshot data.
pub(super) async fn open_current(dir: &Path, meta: SnapshotMeta) -> Result<Snapshot, StorageError> {
    let file = tokio::fs::File::open(dir.join(SNAPSHOT_FILE))
        .await
        .map_err(|error| {
            super::read_error(ErrorSubject::Snapshot(Some(meta.signature())), error)
        })?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

/// What a snapshot is built from, captured between two applies.
pub(super) struct Cut {
    pub(super) tree: sled::Tree,
    pub(super) revision: u64,
    pub(super) compact_revision: u64,
    /// The entries with no history (sessions, leases), copied when the cut was taken.
    pub(super) sessions: Vec<(sled::IVec, sled::IVec)>,
    /// The keyspace generation the tree belongs to: an install in between makes the cut obsolete.
    pub(super) generation: u64,
    /// Holds the physical compaction at `compact_revision` until the build is done.
    pub(super) _pin: Pin,
}

/// Builds a snapshot from a cut of the keyspace, off the apply path.
pub struct SnapshotBuilder {
    pub(super) meta: SnapshotMeta,
    pub(super) cut: Option<Cut>,
    pub(super) snapshot_dir: PathBuf,
    pub(super) maintenance: Arc<Mutex<()>>,
    pub(super) generation: Arc<AtomicU64>,
    pub(super) stats: Arc<StorageStats>,
}

/// Writes the snapshot of `cut` to `BUILDING_FILE` and makes it current, unless an install made the cut
/// obsolete or the current snapshot is already as new. Returns the meta of the snapshot now current.
fn write_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    cut: Cut,
    generation: &AtomicU64,
    maintenance: &Mutex<()>,
) -> Result<(SnapshotMeta, u64), String> {
    let _maintenance = maintenance
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let current = read_current_meta(dir)?;
    let obsolete = generation.load(Ordering::Acquire) != cut.generation
        || current
            .as_ref()
            .is_some_and(|current| current.last_log_id >= meta.last_log_id);
    if obsolete {
        if let Some(current) = current {
            let size = fs::metadata(dir.join(SNAPSHOT_FILE))
                .map(|metadata| metadata.len())
                .unwrap_or(0);
            return Ok((current, size));
        }
    }
    let header = postcard::to_stdvec(&SnapshotHeader { meta: meta.clone() })
        .map_err(|error| error.to_string())?;
    let path = dir.join(BUILDING_FILE);
    let write = || -> io::Result<u64> {
        let file = fs::File::create(&path)?;
        let paced = PacedWriter::new(file, SNAPSHOT_WRITE_BYTES_PER_SEC);
        let mut out = BufWriter::with_capacity(FILE_BUFFER_BYTES, paced);
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&(header.len() as u64).to_be_bytes())?;
        out.write_all(&header)?;
        export_body(
            &cut.tree,
            cut.revision,
            cut.compact_revision,
            &cut.sessions,
            &mut out,
        )?;
        let file = out
            .into_inner()
            .map_err(|error| error.into_error())?
            .into_inner();
        file.sync_all()?;
        let size = file.metadata()?.len();
        drop(file);
        make_current(dir, BUILDING_FILE)?;
        Ok(size)
    };
    let size = write().map_err(|error| error.to_string())?;
    Ok((meta.clone(), size))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let subject = ErrorSubject::Snapshot(Some(self.meta.signature()));
        let cut = self.cut.take().ok_or_else(|| {
            write_error(
                subject.clone(),
                io::Error::other("a snapshot builder is used once"),
            )
        })?;
        let (dir, meta) = (self.snapshot_dir.clone(), self.meta.clone());
        let (generation, maintenance) = (self.generation.clone(), self.maintenance.clone());
        let (done, built) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        std::thread::Builder::new()
            .name("raftkv-snapshot".to_string())
            .spawn(move || {
                lower_this_threads_priority();
                let _ = done.send(write_snapshot(&dir, &meta, cut, &generation, &maintenance));
            })
            .map_err(|error| write_error(subject.clone(), error))?;
        let built = built.await.map_err(|_| {
            write_error(
                subject.clone(),
                io::Error::other("the snapshot thread ended without a result"),
            )
        })?;
        let (meta, size) =
            built.map_err(|reason| write_error(subject, io::Error::other(reason)))?;
        self.stats.snapshot_bytes.store(size, Ordering::Relaxed);
        self.stats.snapshots_built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = size, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot built");
        open_current(&self.snapshot_dir, meta).await
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19), so that a snapshot build uses what the apply,
/// replication and request paths leave. On Linux a nice value belongs to the thread; the build has a thread of
/// its own, which ends with it (an unprivileged process cannot raise the priority back).
#[cfg(target_os = "linux")]
fn lower_this_threads_priority() {
    // SAFETY: setpriority takes plain integers; `who` 0 with PRIO_PROCESS names the calling thread on Linux.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SNAPSHOT_NICE) };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower the snapshot thread's priority");
    }
}

/// Elsewhere the build runs at the process's priority.
#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}
