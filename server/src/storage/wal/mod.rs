//! The write-ahead log of Raft log entries: segment files in `<data-dir>/wal/`, the in-memory index of where
//! each record lies, group-commit syncing, truncation, purging and crash recovery. `storage::LogStore` is its
//! only user; the vote, the commit index and the purge point stay in sled (see `storage`).
//!
//! Why it exists: a flush is on the path of every write (openraft 0.9 waits for each `append` callback; see
//! `storage` for the leader's), and sled's flush cost three `sync_file_range` calls plus our `fdatasync` per
//! write, 3-4 times a plain `write` + `fdatasync`. Here an append is one `pwrite` and its flush is one
//! `fdatasync`.
//!
//! On disk. Segment files named by the index of their first entry, zero-padded to 20 digits
//! (`00000000000000000042.wal`), each a sequence of records
//! `[u32 payload length][u32 crc32 of the payload][postcard(Entry)]` (both integers little-endian), holding
//! consecutive indexes. A segment is closed when the next record would take it past its size limit
//! (`SEGMENT_BYTES` for nodes); a record is never split. A new segment is extended to its size limit at once
//! (zeros, see `preallocate`), so appends write inside the file; a zero header with nothing but zeros after
//! it is the end of the records.
//!
//! In memory. Only where each record starts (per segment: its first index and a `Vec` of offsets) and the
//! last entry's log id; reads are positional (`read_exact_at`) and check length, crc and index.
//!
//! Durability (with `sync`; without it, as `SyncMode::Process`, nothing is synced and the log survives
//! kill -9 only):
//! - `append` writes its records at once (readable straight away, not synced); `sync` is the group-commit
//!   flush: one `fdatasync` of every segment written since the last `sync`, and an `fsync` of the directory
//!   if a segment was created since. Before a new segment is started the current one is `fdatasync`ed, so
//!   only the last segment can end in a torn write.
//! - Every append, sync and truncate publishes how far the log is written and synced (`LogProgress`); the
//!   state machine and the network read it to act on no entry the leader has not synced (see `storage`).
//!   On open, every segment kept is synced first: what a killed process left in the page cache is made
//!   durable before anything is built on it.
//! - `truncate` deletes later segments (last first, syncing the directory after each), cuts the segment
//!   holding the index and syncs it and anything else still unsynced, all before returning.
//! - `purge` deletes segments whose entries are all at or below the purge point (oldest first) and never
//!   returns such entries again, whether or not their file is still there. The caller records the purge point
//!   durably first; a purged segment that comes back after a power loss is deleted again on open.
//!
//! Recovery (`Wal::open`): segments are read in order; every record must be whole, within
//! `RECORD_BYTES_MAX`, match its crc, decode to exactly one entry, and carry the index its position implies,
//! with no gap or repeat between segments nor between the purge point and the first entry kept; a tail of
//! zeros ends a segment's records (the preallocated space). A bad record in the last segment with no valid
//! record anywhere after it is a torn write from a crash: the file is cut there (logged as a warning) and
//! preallocated again. Any other bad record is corruption and the WAL refuses to open, naming the
//! file and byte offset. A bad record followed by a valid one can also be the work of a power loss that
//! wrote a later page but not an earlier one (the device reorders unsynced writes); it is refused too, since
//! nothing can tell it from a damaged record that was acknowledged, and refusing loses nothing.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::kv::state_machine::ENTRY_BYTES_MAX;

mod record;
mod recovery;
mod segment;

use crate::raft::types::{Entry, LogId};
use record::{decode_record, invalid_data};
use segment::{preallocate, segment_name, sync_dir, Segment};

/// Size at which nodes start a new segment.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record payload (one encoded entry), refused over it when writing and when reading.
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of a record's header: payload length and crc32.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Directory of the segments inside the data dir.
pub const WAL_DIR: &str = "wal";
/// Buffer of the sequential reader that scans segments on open.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// Bytes read at once when reading a range of records (a larger record is read alone).
const READ_CHUNK_BYTES: u64 = 1024 * 1024;

// The largest entry the leader makes (a full write batch, see `write_batch`) fits with room to spare, so a
// write accepted by the API is never refused here.
const _: () = assert!(ENTRY_BYTES_MAX + 64 * 1024 <= RECORD_BYTES_MAX);

/// Why the WAL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL segment {file} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// How far the log is written and how far it is synced, published by the WAL at every change (see
/// `Wal::progress`), and the one rule built on it: **nothing acts on an entry the leader has not synced**.
/// The state machine applies no entry that is written but not synced (`any_unsynced`), and the network
/// tells followers no commit index beyond the synced log (`commit_to_announce`): together they let the leader
/// acknowledge its own append before its sync (see `storage::log_store`) while nothing becomes visible until
/// the leader's copy is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// The last entry written (readable), synced or not; `None` when the WAL holds no entry.
    pub written: Option<LogId>,
    /// The last entry made durable: every entry the WAL holds up to it is synced. A sync sets it to the
    /// last entry written before the sync started; a truncate to the new last entry; a purge that leaves no
    /// entry clears it.
    pub synced: Option<LogId>,
    /// The WAL failed (see `Wal::failed`): nothing will be synced again until the node restarts.
    pub failed: bool,
}

impl LogProgress {
    /// Whether the entry at `index` is written and not yet synced (the only case a reader must wait for).
    pub fn unsynced(&self, index: u64) -> bool {
        self.written.is_some_and(|written| written.index >= index)
            && self.synced.is_none_or(|synced| synced.index < index)
    }

    /// The commit index a leader may announce to its followers for `commit`: never beyond its synced log.
    /// `None` once nothing of it is synced.
    pub fn commit_to_announce(&self, commit: Option<LogId>) -> Option<LogId> {
        commit.min(self.synced)
    }

    /// Whether announcing `commit` needs no wait: the synced log covers it, or the WAL failed (nothing will
    /// be synced again; the node stops on the next log call).
    pub fn covers_commit(&self, commit: LogId) -> bool {
        self.failed || self.synced.is_some_and(|synced| synced >= commit)
    }

    /// Whether any entry in `first..=last` is written and not yet synced. The synced entries are a prefix of
    /// the written ones, so it is enough to look at the last written entry of the range.
    pub fn any_unsynced(&self, first: u64, last: u64) -> bool {
        match self.written {
            Some(written) if written.index >= first => self.unsynced(last.min(written.index)),
            _ => false,
        }
    }
}

/// The Raft log's write-ahead log. Shared (`Arc`) by the log store's clones and by pending flushes.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// `fdatasync` / `fsync` at all (`SyncMode::Device`); without it nothing is synced.
    sync: bool,
    state: RwLock<State>,
    /// Held for the whole of a `sync`: a second sync waits for one in progress instead of finding nothing
    /// left to sync and reporting durable what is still being synced.
    sync_lock: Mutex<()>,
    /// Set by the first failed sync, truncate or purge, or an append that failed while writing: memory and
    /// disk may disagree from then on (and a failed `fdatasync` may have dropped dirty pages that a retry
    /// would then report synced), so every later call fails until the node restarts and recovers from disk.
    failed: AtomicBool,
    /// Published after every append, sync, truncate and failure; see `LogProgress`. Its lock is only ever
    /// taken after `state`'s, never before.
    progress: watch::Sender<LogProgress>,
}

struct State {
    /// Segments in index order, each holding at least one record; consecutive segments hold consecutive
    /// indexes.
    segments: VecDeque<Segment>,
    /// Entries at or below this index are purged: never read, and never written again.
    purged: Option<u64>,
    /// Log id of the last entry in `segments` (purged or not).
    last: Option<LogId>,
    /// Segments written since the last `sync`.
    unsynced: Vec<Arc<File>>,
    /// A segment was created since the last `sync`: the directory needs an fsync.
    dir_unsynced: bool,
}

/// Forgets a segment that is about to be deleted or was synced on its own.
fn drop_unsynced(state: &mut State, file: &Arc<File>) {
    state
        .unsynced
        .retain(|unsynced| !Arc::ptr_eq(unsynced, file));
}

/// Deletes the segments, oldest first, whose entries are all at or below the purge point. Not synced: one
/// that comes back after a power loss is deleted again on open.
fn drop_purged_segments(state: &mut State) -> io::Result<()> {
    let Some(purged) = state.purged else {
        return Ok(());
    };
    while state
        .segments
        .front()
        .is_some_and(|segment| segment.last_index() <= purged)
    {
        let segment = state.segments.pop_front().expect("checked");
        drop_unsynced(state, &segment.file);
        fs::remove_file(&segment.path)?;
    }
    if state.segments.is_empty() {
        state.last = None;
    }
    Ok(())
}

impl Wal {
    /// Fails when an earlier mutation failed (see `failed`).
    fn check_healthy(&self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the WAL failed earlier and may not match its files; restart the node to recover from disk",
            ));
        }
        Ok(())
    }

    /// Marks the WAL failed if `result` is an error for which memory and disk may now disagree.
    fn poison_on<T>(
        &self,
        result: io::Result<T>,
        harmless: impl Fn(&io::Error) -> bool,
    ) -> io::Result<T> {
        if let Err(error) = &result {
            if !harmless(error) {
                self.failed.store(true, Ordering::Release);
                self.progress.send_modify(|progress| progress.failed = true);
            }
        }
        result
    }

    /// A receiver of the WAL's `LogProgress`, current at once.
    pub fn progress(&self) -> watch::Receiver<LogProgress> {
        self.progress.subscribe()
    }

    /// Publishes the last entry written; wakes nobody (no reader waits for more to be written).
    fn publish_written(&self, state: &State) {
        self.progress.send_if_modified(|progress| {
            progress.written = state.last;
            false
        });
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log id of the last entry held, purged or not; `None` when no segment holds an entry.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.read_state().last
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.read_state()
            .segments
            .iter()
            .map(|segment| segment.bytes)
            .sum()
    }

    /// Bytes of the records held after entry `index` (all of them for `None`): the log a snapshot at `index`
    /// would let go.
    pub fn bytes_after(&self, index: Option<u64>) -> u64 {
        let state = self.read_state();
        state
            .segments
            .iter()
            .map(|segment| match index {
                None => segment.bytes,
                Some(index) if index < segment.first => segment.bytes,
                Some(index) => {
                    // Records of this segment after `index` start at offsets[index + 1 - first].
                    let next = (index + 1 - segment.first) as usize;
                    segment
                        .offsets
                        .get(next)
                        .map_or(0, |offset| segment.bytes - offset)
                }
            })
            .sum()
    }

    /// Writes `entries` (readable at once, durable after the next `sync`). Entries at or below the purge
    /// point are skipped (openraft's storage suite appends some); the others must continue the log: the
    /// first follows the last entry held, or the purge point when none is held. Returns the number written.
    /// Entries refused before anything is written (`InvalidInput`) leave the WAL usable; a failed write does
    /// not.
    pub fn append(&self, entries: impl IntoIterator<Item = Entry>) -> io::Result<u64> {
        self.check_healthy()?;
        let result = self.append_inner(entries);
        self.poison_on(result, |error| error.kind() == io::ErrorKind::InvalidInput)
    }

    fn append_inner(&self, entries: impl IntoIterator<Item = Entry>) -> io::Result<u64> {
        // Encode before taking the lock: every record with its header, one buffer.
        let mut buffer = Vec::new();
        let mut records: Vec<(LogId, usize)> = Vec::new();
        for entry in entries {
            let start = buffer.len();
            buffer.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
            buffer = postcard::to_extend(&entry, buffer).map_err(io::Error::other)?;
            let payload_len = buffer.len() - start - RECORD_HEADER_BYTES;
            if payload_len > RECORD_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "log entry {} encodes to {payload_len} bytes, over the WAL's RECORD_BYTES_MAX ({RECORD_BYTES_MAX})",
                        entry.log_id
                    ),
                ));
            }
            let crc = crc32fast::hash(&buffer[start + RECORD_HEADER_BYTES..]);
            buffer[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
            buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            records.push((entry.log_id, start));
        }
        let record_end = |k: usize| {
            records
                .get(k + 1)
                .map(|(_, start)| *start)
                .unwrap_or(buffer.len())
        };

        let mut state = self.write_state();
        let skip = match state.purged {
            Some(purged) => records
                .iter()
                .take_while(|(log_id, _)| log_id.index <= purged)
                .count(),
            None => 0,
        };
        let mut expected = match (state.last, state.purged) {
            (Some(last), _) => Some(last.index + 1),
            (None, Some(purged)) => Some(purged + 1),
            (None, None) => None,
        };
        for (log_id, _) in &records[skip..] {
            if expected.is_some_and(|expected| log_id.index != expected) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "append of log entry {log_id} where the log expects index {}",
                        expected.unwrap_or_default()
                    ),
                ));
            }
            expected = Some(log_id.index + 1);
        }

        let mut k = skip;
        while k < records.len() {
            let record_bytes = (record_end(k) - records[k].1) as u64;
            let roll = match state.segments.back() {
                None => true,
                Some(current) => {
                    current.bytes > 0 && current.bytes + record_bytes > self.segment_bytes
                }
            };
            if roll {
                self.start_segment(&mut state, records[k].0.index)?;
            }
            // Every following record that still fits goes into the same write.
            let current = state.segments.back().expect("a current segment");
            let mut end = k + 1;
            let mut run_bytes = record_bytes;
            while end < records.len() {
                let next = (record_end(end) - records[end].1) as u64;
                if current.bytes + run_bytes + next > self.segment_bytes {
                    break;
                }
                run_bytes += next;
                end += 1;
            }
            let run = &buffer[records[k].1..record_end(end - 1)];
            let at = current.bytes;
            if let Err(error) = current.file.write_all_at(run, at) {
                // Leave no partial record behind the last whole one, and no segment without records.
                if current.offsets.is_empty() {
                    let segment = state.segments.pop_back().expect("a current segment");
                    drop_unsynced(&mut state, &segment.file);
                    let _ = fs::remove_file(&segment.path);
                } else {
                    let _ = current.file.set_len(at);
                }
                return Err(error);
            }
            let file = current.file.clone();
            let run_start = records[k].1;
            let current = state.segments.back_mut().expect("a current segment");
            current.offsets.extend(
                records[k..end]
                    .iter()
                    .map(|(_, start)| at + (start - run_start) as u64),
            );
            current.bytes += run_bytes;
            state.last = Some(records[end - 1].0);
            if !state
                .unsynced
                .last()
                .is_some_and(|last| Arc::ptr_eq(last, &file))
            {
                state.unsynced.push(file);
            }
            k = end;
        }
        self.publish_written(&state);
        Ok((records.len() - skip) as u64)
    }

    /// Starts a new segment whose first record will be `first`, after syncing the current one so that only
    /// the last segment can end in a torn write.
    fn start_segment(&self, state: &mut State, first: u64) -> io::Result<()> {
        if let Some(current) = state.segments.back() {
            if self.sync {
                current.file.sync_data()?;
            }
            let file = current.file.clone();
            drop_unsynced(state, &file);
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        preallocate(&file, self.segment_bytes)?;
        state.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            bytes: 0,
        });
        state.dir_unsynced = true;
        Ok(())
    }

    /// The group-commit flush: makes everything appended so far durable (one `fdatasync` per segment
    /// written since the last call, an `fsync` of the directory if a segment was created). Does not hold
    /// the lock while syncing, so appends and reads go on.
    pub fn sync(&self) -> io::Result<()> {
        self.check_healthy()?;
        let _one_at_a_time = self
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.sync_inner();
        self.poison_on(result, |_| false)
    }

    /// `fdatasync` of `files` and, if `dir`, `fsync` of the WAL directory (nothing without `sync`).
    fn sync_files(&self, files: &[Arc<File>], dir: bool) -> io::Result<()> {
        if !self.sync {
            return Ok(());
        }
        files.iter().try_for_each(|file| file.sync_data())?;
        if dir {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Holds off every sync (and truncate) until the guard is dropped, so tests can see what happens
    /// between an append and its sync.
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Syncs what was written before it started and publishes it as synced. The caller holds `sync_lock`, so
    /// no truncate runs meanwhile and the entry it publishes is still the one it synced.
    fn sync_inner(&self) -> io::Result<()> {
        let (files, dir, target) = {
            let mut state = self.write_state();
            (
                std::mem::take(&mut state.unsynced),
                std::mem::take(&mut state.dir_unsynced),
                state.last,
            )
        };
        self.sync_files(&files, dir)?;
        // Assigned, not compared: after a purge emptied the WAL the next entries may carry a lower term than
        // the last synced one had (a snapshot installed over diverging entries).
        self.progress.send_if_modified(|progress| {
            let changed = target.is_some() && target != progress.synced;
            if changed {
                progress.synced = target;
            }
            changed
        });
        Ok(())
    }

    /// The entries with indexes in `start..end` that are held and not purged, in order.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.check_healthy()?;
        let state = self.read_state();
        let (Some(first), Some(last)) = (state.segments.front(), state.last) else {
            return Ok(Vec::new());
        };
        let start = start
            .max(first.first)
            .max(state.purged.map_or(0, |purged| purged.saturating_add(1)));
        let end = end.min(last.index + 1);
        let mut entries = Vec::with_capacity(end.saturating_sub(start) as usize);
        let mut index = start;
        while index < end {
            let position = state
                .segments
                .partition_point(|segment| segment.first <= index)
                - 1;
            let segment = &state.segments[position];
            let from = (index - segment.first) as usize;
            let until = ((end - segment.first) as usize).min(segment.offsets.len());
            // One positional read for as many records as fit in a chunk (at least one).
            let (span_start, mut span_end) = segment.record(from);
            let mut to = from + 1;
            while to < until {
                let (_, record_end) = segment.record(to);
                if record_end - span_start > READ_CHUNK_BYTES {
                    break;
                }
                span_end = record_end;
                to += 1;
            }
            let mut chunk = vec![0u8; (span_end - span_start) as usize];
            segment.file.read_exact_at(&mut chunk, span_start)?;
            for k in from..to {
                let (record_start, record_end) = segment.record(k);
                let bytes = &chunk
                    [(record_start - span_start) as usize..(record_end - span_start) as usize];
                let expected = segment.first + k as u64;
                let entry = decode_record(bytes)
                    .and_then(|entry| match entry.log_id.index == expected {
                        true => Ok(entry),
                        false => Err(format!("entry has index {}", entry.log_id.index)),
                    })
                    .map_err(|reason| {
                        invalid_data(format!(
                            "WAL segment {} at byte {record_start} (index {expected}): {reason}",
                            segment.path.display()
                        ))
                    })?;
                entries.push(entry);
            }
            index = segment.first + to as u64;
        }
        Ok(entries)
    }

    /// Deletes the entries at `index` and after, durably, before returning. Whatever else was written and
    /// not yet synced is synced too, so that every entry left is durable.
    pub fn truncate(&self, index: u64) -> io::Result<()> {
        self.check_healthy()?;
        // No sync runs meanwhile: one that started before would publish as synced an entry removed here.
        let _one_at_a_time = self
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.truncate_inner(index);
        self.poison_on(result, |_| false)
    }

    fn truncate_inner(&self, index: u64) -> io::Result<()> {
        let mut state = self.write_state();
        if state.last.is_none_or(|last| index > last.index) {
            return Ok(());
        }
        // Later segments first, last to first, so that a crash half way leaves the log a prefix of what it
        // was; each removal is made durable before the next.
        while let Some(segment) = state.segments.back() {
            if segment.first < index {
                break;
            }
            let segment = state.segments.pop_back().expect("checked");
            drop_unsynced(&mut state, &segment.file);
            fs::remove_file(&segment.path)?;
            if self.sync {
                sync_dir(&self.dir)?;
            }
        }
        if let Some(segment) = state.segments.back_mut() {
            let keep = (index - segment.first) as usize;
            if keep < segment.offsets.len() {
                let cut = segment.offsets[keep];
                segment.file.set_len(cut)?;
                preallocate(&segment.file, self.segment_bytes)?;
                if self.sync {
                    segment.file.sync_data()?;
                }
                segment.offsets.truncate(keep);
                segment.bytes = cut;
            }
        }
        // The new last entry's log id is on disk.
        state.last = match state.segments.back() {
            None => None,
            Some(segment) => {
                let k = segment.offsets.len() - 1;
                let (start, end) = segment.record(k);
                let mut bytes = vec![0u8; (end - start) as usize];
                segment.file.read_exact_at(&mut bytes, start)?;
                let entry = decode_record(&bytes).map_err(|reason| {
                    invalid_data(format!(
                        "WAL segment {} at byte {start}: {reason}",
                        segment.path.display()
                    ))
                })?;
                Some(entry.log_id)
            }
        };
        // Entries at or below the purge point are never kept as the log's end (openraft does not truncate
        // that far; if it did, the next append would start a new segment after the purge point).
        drop_purged_segments(&mut state)?;
        // Earlier segments were synced when the next one was started; sync whatever else is pending.
        let files = std::mem::take(&mut state.unsynced);
        self.sync_files(&files, std::mem::take(&mut state.dir_unsynced))?;
        let last = state.last;
        self.progress.send_modify(|progress| {
            progress.written = last;
            progress.synced = last;
        });
        Ok(())
    }

    /// Never returns entries at or below `index` again, and deletes the segments that hold only such
    /// entries (oldest first). The caller has recorded the purge point durably before.
    pub fn purge(&self, index: u64) -> io::Result<()> {
        self.check_healthy()?;
        let result = self.purge_inner(index);
        self.poison_on(result, |_| false)
    }

    fn purge_inner(&self, index: u64) -> io::Result<()> {
        let mut state = self.write_state();
        if state.purged.is_some_and(|purged| purged >= index) {
            return Ok(());
        }
        state.purged = Some(index);
        let result = drop_purged_segments(&mut state);
        if state.last.is_none() {
            // No entry held: `synced` must not go on naming one (the network sends it as a commit index).
            self.progress.send_modify(|progress| {
                progress.written = None;
                progress.synced = None;
            });
        } else {
            self.publish_written(&state);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::segment::{parse_segment_name, segment_name};
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_index() {
        assert_eq!(segment_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// A truncate that fails half way (a segment file vanished behind the WAL's back) leaves memory and disk
    /// disagreeing: every later call fails instead of reading out of bounds or appending after a gap.
    #[test]
    fn a_failed_truncate_fails_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        // Segments so small that each holds one record.
        let wal = Wal::open(dir.path(), 1, false, None).unwrap();
        wal.append((1..=4).map(blank)).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.read(1, 5).unwrap().len(), 4);
        fs::remove_file(dir.path().join(segment_name(4))).unwrap();
        assert!(
            wal.truncate(3).is_err(),
            "removing a vanished segment succeeded"
        );
        assert!(wal.read(1, 5).is_err());
        assert!(wal.append([blank(3)]).is_err());
        assert!(wal.sync().is_err());
        assert!(wal.purge(1).is_err());
    }

    /// `bytes_after` counts the records after an index, across segments and after a purge.
    #[test]
    fn bytes_after_counts_the_records_behind_an_index() {
        let dir = tempfile::tempdir().unwrap();
        // Three records per segment (a blank entry's record is a few bytes; each is the same size).
        let wal = Wal::open(dir.path(), 64, false, None).unwrap();
        wal.append([blank(1)]).unwrap();
        let record = wal.bytes();
        let per_segment = 64 / record;
        wal.append((2..=10).map(blank)).unwrap();
        assert!(wal.read_state().segments.len() > 1, "one segment only");
        assert_eq!(wal.bytes_after(None), 10 * record);
        assert_eq!(wal.bytes_after(Some(0)), 10 * record);
        for index in 1..=10 {
            assert_eq!(
                wal.bytes_after(Some(index)),
                (10 - index) * record,
                "after {index}"
            );
        }
        assert_eq!(wal.bytes_after(Some(11)), 0);
        wal.purge(per_segment + 1).unwrap();
        assert_eq!(
            wal.bytes_after(Some(per_segment + 1)),
            (10 - per_segment - 1) * record
        );
    }

    /// An entry refused before anything is written leaves the WAL usable.
    #[test]
    fn a_refused_append_leaves_the_wal_usable() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), SEGMENT_BYTES, false, None).unwrap();
        wal.append([blank(1)]).unwrap();
        let gap = wal.append([blank(5)]).unwrap_err();
        assert_eq!(gap.kind(), io::ErrorKind::InvalidInput, "{gap}");
        wal.append([blank(2)]).unwrap();
        assert_eq!(wal.read(1, 3).unwrap().len(), 2);
    }

    /// What the WAL publishes: appends move `written`, syncs move `synced` to what was written before
    /// they started, a truncate brings both back (syncing what is left), a failure sets `failed`.
    #[test]
    fn progress_follows_appends_syncs_truncates_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, false, None).unwrap();
        let progress = wal.progress();
        let index = |id: Option<LogId>| id.map(|id| id.index);
        assert_eq!(*progress.borrow(), LogProgress::default());
        wal.append((1..=4).map(blank)).unwrap();
        assert_eq!(index(progress.borrow().written), Some(4));
        assert_eq!(index(progress.borrow().synced), None);
        assert!(progress.borrow().unsynced(1) && progress.borrow().unsynced(4));
        assert!(!progress.borrow().unsynced(5), "not written: not unsynced");
        wal.sync().unwrap();
        assert_eq!(index(progress.borrow().synced), Some(4));
        assert!(!progress.borrow().unsynced(4));
        wal.append((5..=6).map(blank)).unwrap();
        wal.truncate(3).unwrap();
        assert_eq!(index(progress.borrow().written), Some(2));
        assert_eq!(index(progress.borrow().synced), Some(2));
        drop(wal);
        let wal = Wal::open(dir.path(), 1, false, None).unwrap();
        let progress = wal.progress();
        assert_eq!(
            (
                index(progress.borrow().written),
                index(progress.borrow().synced)
            ),
            (Some(2), Some(2)),
            "what the WAL recovers it has synced"
        );
        fs::remove_file(dir.path().join(segment_name(2))).unwrap();
        assert!(wal.truncate(2).is_err());
        assert!(progress.borrow().failed);
    }
}
