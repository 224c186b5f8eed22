//! Snapshot files: the on-disk format (magic, header, state), written to a temporary file, synced and
//! renamed into place; and the builder openraft runs to make one.

use std::fs;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::{ErrorSubject, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::{write_error, StorageStats, SNAPSHOT_FILE, SNAPSHOT_MAGIC};
use crate::raft::types::{
    LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// On-disk form of a snapshot's metadata.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    pub(super) meta: SnapshotMeta,
}

pub(super) fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<u64> {
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

pub(super) fn read_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
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
pub(super) async fn persist_snapshot(
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
    pub(super) data: Vec<u8>,
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    pub(super) snapshot_dir: PathBuf,
    pub(super) snapshot_id: String,
    pub(super) stats: Arc<StorageStats>,
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
