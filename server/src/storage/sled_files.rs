//! sled's files and how raftkv makes what sled wrote durable: sled's flush, then `fdatasync` of its data
//! file and new blob files and `fsync` of directories whose listing changed (see the storage module docs).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SyncMode;

/// The files sled writes, kept open to be synced after sled's own flush (see the module docs).
///
/// sled 0.34.7 keeps one data file (`db`), spills large pages to `blobs/<lsn>` (written, never synced) and
/// rewrites its page-table snapshot (`snap.<lsn>`, renamed into place with no directory sync).
pub(super) struct SledFiles {
    pub(super) mode: SyncMode,
    /// sled's directory (`<data-dir>/raft`).
    pub(super) dir: PathBuf,
    /// sled's data file, opened read-only: `fdatasync` on any descriptor of a file syncs the file.
    pub(super) data: fs::File,
    /// Names in `dir` when it was last synced: a change (a new `snap.*`) means the directory needs an fsync.
    pub(super) dir_names: BTreeSet<OsString>,
    /// Blob files already synced (blob files never change once written; sled deletes them when obsolete).
    pub(super) blobs_synced: BTreeSet<OsString>,
}

impl SledFiles {
    pub(super) fn open(dir: &Path, mode: SyncMode) -> io::Result<SledFiles> {
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
    pub(super) fn sync(&mut self) -> io::Result<()> {
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
pub(super) fn flush_durably(db: &sled::Db, files: &Mutex<SledFiles>) -> io::Result<()> {
    db.flush().map_err(io::Error::other)?;
    files
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .sync()
}
