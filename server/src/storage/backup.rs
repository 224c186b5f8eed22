//! Backups: the keyspace of one node at one revision (every version readable then, and the sessions), as the
//! stream etcd's `Maintenance.Snapshot` sends and `etcdctl snapshot save` writes to a file, and the restore
//! that starts a new cluster from one (`raftkv-server --restore-from FILE`; sessions are not restored: a
//! client's exactly-once numbering does not carry over to a new cluster).
//!
//! A backup is `BACKUP_MAGIC`, the keyspace body (`keyspace::export_body`, as in a snapshot file), zeros up to
//! a multiple of `BACKUP_ALIGN_BYTES`, then the SHA-256 of everything before it, as etcd ends its own
//! snapshot stream with a SHA-256 (the body ends with its own end mark, so the padding is never read as it). It holds no Raft
//! state: a restored node starts a new log, with the keyspace, its revisions and its history as they were.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use openraft::StoredMembership;

use super::keyspace::{export_body, import_body, Keyspace};
use super::snapshot::Cut;

/// The first bytes of a backup.
pub const BACKUP_MAGIC: &[u8; 8] = b"RKVBAK01";
/// Length of the SHA-256 a backup ends with.
pub const BACKUP_DIGEST_BYTES: usize = 32;
/// The part of a backup before its digest is padded with zeros to a multiple of this: `etcdctl snapshot save`
/// takes a stream whose length is not 32 past a multiple of 512 (a bolt file's sector) as one without a
/// SHA-256, and refuses it.
pub const BACKUP_ALIGN_BYTES: u64 = 512;
/// Buffer of the file reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// A consistent cut of the keyspace, taken between two applies, to write as a backup.
pub struct BackupCut(pub(super) Cut);

/// Passes writes through while hashing them.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    digest: ring::digest::Context,
    written: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.digest.update(&bytes[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BackupCut {
    /// The store revision the backup holds.
    pub fn revision(&self) -> u64 {
        self.0.revision
    }

    /// Writes the backup to `out`; returns the number of entries it holds. Blocking: sled reads.
    pub fn write_to(self, out: &mut impl Write) -> io::Result<u64> {
        let cut = self.0;
        let mut hashing = Hashing {
            inner: out,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
        };
        hashing.write_all(BACKUP_MAGIC)?;
        let count = export_body(
            &cut.tree,
            cut.revision,
            cut.compact_revision,
            &cut.sessions,
            &mut hashing,
        )?;
        let padding =
            (BACKUP_ALIGN_BYTES - hashing.written % BACKUP_ALIGN_BYTES) % BACKUP_ALIGN_BYTES;
        hashing.write_all(&vec![0; padding as usize])?;
        let digest = hashing.digest.finish();
        out.write_all(digest.as_ref())?;
        out.flush()?;
        Ok(count)
    }
}

/// Checks a backup file: its magic and the SHA-256 it ends with. Returns that digest.
pub fn verify(path: &Path) -> Result<Vec<u8>, String> {
    let describe = |error: io::Error| format!("cannot read the backup {}: {error}", path.display());
    let file = File::open(path).map_err(describe)?;
    let length = file.metadata().map_err(describe)?.len();
    let overhead = (BACKUP_MAGIC.len() + BACKUP_DIGEST_BYTES) as u64;
    if length < overhead {
        return Err(format!(
            "{} is not a raftkv backup: it is {length} bytes, too short",
            path.display()
        ));
    }
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut magic = [0u8; BACKUP_MAGIC.len()];
    reader.read_exact(&mut magic).map_err(describe)?;
    if &magic != BACKUP_MAGIC {
        return Err(format!(
            "{} is not a raftkv backup (an etcd snapshot cannot be restored into raftkv; back up raftkv with `etcdctl snapshot save` against a raftkv node)",
            path.display()
        ));
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(&magic);
    let mut body = (&mut reader).take(length - overhead);
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let read = body.read(&mut buffer).map_err(describe)?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
    }
    let mut stored = [0u8; BACKUP_DIGEST_BYTES];
    reader.read_exact(&mut stored).map_err(describe)?;
    let computed = digest.finish();
    if computed.as_ref() != stored {
        return Err(format!(
            "{} is damaged: its SHA-256 does not match its contents (was the copy cut short?)",
            path.display()
        ));
    }
    Ok(stored.to_vec())
}

/// Loads a verified backup into the empty keyspace `tree`, with no applied log id: the node's log starts anew.
pub(super) fn load(path: &Path, tree: &sled::Tree) -> Result<(), String> {
    let describe = |error: io::Error| format!("cannot load the backup {}: {error}", path.display());
    let file = File::open(path).map_err(describe)?;
    let length = file.metadata().map_err(describe)?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut magic = [0u8; BACKUP_MAGIC.len()];
    reader.read_exact(&mut magic).map_err(describe)?;
    let body_bytes = length - (BACKUP_MAGIC.len() + BACKUP_DIGEST_BYTES) as u64;
    import_body(
        tree,
        &mut reader.take(body_bytes),
        None,
        &StoredMembership::default(),
    )
    .map_err(describe)?;
    // A new cluster starts a new log: sessions ordered by the old one's indexes would be evicted in an order
    // that depends on when each node wrote them, so they are not carried over (clients start new ones).
    Keyspace::clear_sessions(tree).map_err(|error| describe(io::Error::other(error)))
}
