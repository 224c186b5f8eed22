//! Writing a large file (a snapshot) beside the WAL without flooding the disk.
//!
//! A snapshot is tens to hundreds of megabytes written while the node keeps syncing its WAL. Written at full
//! speed, it fills the page cache with dirty pages that the kernel then writes back in a burst, and the WAL's
//! `fdatasync`s queue behind that burst: every write the node acknowledges in the meantime waits (measured:
//! a put p99 of 9 ms became 60-500 ms). `PacedWriter` keeps the burst small: it starts the writeback of each
//! `WRITEBACK_CHUNK_BYTES` as soon as it is written (`sync_file_range`), waits for the chunk before the previous
//! one to reach the disk, so at most two chunks are ever in flight or dirty, and holds its pace to
//! `SNAPSHOT_WRITE_BYTES_PER_SEC`. The final `sync_all` of the file then has little left to do.

use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// Bytes written between two writeback requests.
pub const WRITEBACK_CHUNK_BYTES: u64 = 1024 * 1024;
/// The pace of a snapshot write: about a fifth of what this class of virtio disk sustains, so the WAL's syncs
/// keep most of it. A 1 GB keyspace then takes about 16 s to snapshot, which the snapshot cadence allows for.
pub const SNAPSHOT_WRITE_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

/// A file writer that paces itself and writes back as it goes (see the module doc).
pub struct PacedWriter {
    file: File,
    bytes_per_sec: u64,
    started: Instant,
    written: u64,
    /// The end of the last chunk whose writeback was started.
    requested: u64,
}

impl PacedWriter {
    pub fn new(file: File, bytes_per_sec: u64) -> Self {
        Self {
            file,
            bytes_per_sec: bytes_per_sec.max(1),
            started: Instant::now(),
            written: 0,
            requested: 0,
        }
    }

    /// The file, with everything written handed to the kernel (not yet synced).
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Starts the writeback of every whole chunk written since the last call, waiting for the chunk before
    /// each to be on disk; then sleeps until the pace allows the bytes written so far.
    fn write_back_and_pace(&mut self) -> io::Result<()> {
        while self.written - self.requested >= WRITEBACK_CHUNK_BYTES {
            let chunk = self.requested;
            sync_range(&self.file, chunk, WRITEBACK_CHUNK_BYTES, false)?;
            if let Some(before) = chunk.checked_sub(WRITEBACK_CHUNK_BYTES) {
                sync_range(&self.file, before, WRITEBACK_CHUNK_BYTES, true)?;
            }
            self.requested += WRITEBACK_CHUNK_BYTES;
        }
        let due = Duration::from_secs_f64(self.written as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
        Ok(())
    }
}

impl Write for PacedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        self.write_back_and_pace()?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Starts writing back `length` bytes of `file` from `offset`; with `wait`, also waits until they and any
/// writeback already under way for them are done. Data only: the file's size and metadata are left to the
/// final sync.
#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, length: u64, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for as long as `file` is
    // borrowed, and the offsets are plain integers the kernel checks.
    let result = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            length as libc::off64_t,
            flags,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no writeback hint: pacing alone.
#[cfg(not(target_os = "linux"))]
fn sync_range(_file: &File, _offset: u64, _length: u64, _wait: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn writes_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced");
        let data: Vec<u8> = (0..(3 * WRITEBACK_CHUNK_BYTES + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut writer = PacedWriter::new(File::create(&path).unwrap(), u64::MAX);
        for piece in data.chunks(100_000) {
            writer.write_all(piece).unwrap();
        }
        writer.into_inner().sync_all().unwrap();
        let mut read = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read.len(), data.len());
        assert!(read == data, "the file differs from what was written");
    }

    #[test]
    fn holds_its_pace() {
        let dir = tempfile::tempdir().unwrap();
        // 2 MiB at 8 MiB/s cannot finish in less than 250 ms.
        let mut writer = PacedWriter::new(
            File::create(dir.path().join("paced")).unwrap(),
            8 * WRITEBACK_CHUNK_BYTES,
        );
        let started = Instant::now();
        writer
            .write_all(&vec![7; 2 * WRITEBACK_CHUNK_BYTES as usize])
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
}
