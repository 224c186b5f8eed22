//! Opening the WAL: every segment scanned in order, a torn tail of the last one cut off, anything else that
//! is not a valid record in its place refused as corruption (see the module docs).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::record::decode_entry;
use super::segment::{parse_segment_name, preallocate, rest_is_zero, sync_dir, Segment};
use super::{
    drop_purged_segments, LogProgress, OpenError, State, Wal, RECORD_BYTES_MAX,
    RECORD_HEADER_BYTES, SCAN_BUFFER_BYTES,
};
use crate::raft::types::LogId;

/// What went wrong with the record at some offset while scanning: either it is not whole or its crc fails
/// (`Torn`: a torn write if nothing valid follows it in the last segment), or it is whole and checksummed
/// but wrong (`Bad`: always corruption).
pub(super) enum Damage {
    Torn(String),
    Bad(String),
}

/// Result of reading one segment from start to end.
pub(super) struct Scan {
    pub(super) offsets: Vec<u64>,
    /// End of the last good record.
    pub(super) bytes: u64,
    pub(super) last: Option<LogId>,
    /// The first record that is not good, and why.
    pub(super) damage: Option<(u64, Damage)>,
}

/// Reads a segment's records in order, checking each; stops at the first that is not good.
pub(super) fn scan_segment(file: &File, first: u64) -> io::Result<Scan> {
    let len = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let mut scan = Scan {
        offsets: Vec::new(),
        bytes: 0,
        last: None,
        damage: None,
    };
    let mut payload = Vec::new();
    while scan.bytes < len {
        let offset = scan.bytes;
        let left = len - offset;
        if left < RECORD_HEADER_BYTES as u64 {
            // Too short for a record: the end of a preallocated tail if it is zeros.
            if rest_is_zero(&mut reader)? {
                break;
            }
            scan.damage = Some((
                offset,
                Damage::Torn(format!("{left} bytes left, less than a record header")),
            ));
            break;
        }
        let mut header = [0u8; RECORD_HEADER_BYTES];
        reader.read_exact(&mut header)?;
        let payload_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if payload_len == 0 {
            // Zeros from here to the end are the preallocated space after the last record.
            if crc == 0 && rest_is_zero(&mut reader)? {
                break;
            }
            scan.damage = Some((offset, Damage::Torn("zero length".to_string())));
            break;
        }
        if payload_len > RECORD_BYTES_MAX as u64 {
            scan.damage = Some((
                offset,
                Damage::Torn(format!(
                    "length {payload_len} is over RECORD_BYTES_MAX ({RECORD_BYTES_MAX})"
                )),
            ));
            break;
        }
        if payload_len > left - RECORD_HEADER_BYTES as u64 {
            scan.damage = Some((
                offset,
                Damage::Torn(format!(
                    "record of {payload_len} bytes runs past the end of the file ({len} bytes)"
                )),
            ));
            break;
        }
        payload.resize(payload_len as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            scan.damage = Some((offset, Damage::Torn("crc mismatch".to_string())));
            break;
        }
        let entry = match decode_entry(&payload) {
            Ok(entry) => entry,
            Err(reason) => {
                scan.damage = Some((offset, Damage::Bad(reason)));
                break;
            }
        };
        let expected = first + scan.offsets.len() as u64;
        if entry.log_id.index != expected {
            scan.damage = Some((
                offset,
                Damage::Bad(format!(
                    "entry has index {}, its position says {expected}",
                    entry.log_id.index
                )),
            ));
            break;
        }
        scan.offsets.push(offset);
        scan.bytes = offset + (RECORD_HEADER_BYTES as u64) + payload_len;
        scan.last = Some(entry.log_id);
    }
    Ok(scan)
}

/// The offset of the first valid record (whole, within the limit, crc matching, one entry) that starts
/// strictly after `from` in `file`, if any. Used only on open, for a bad record in the last segment.
pub(super) fn find_valid_record_after(file: &File, from: u64) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let start = from + 1;
    if len < start + RECORD_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut rest = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut rest, start)?;
    for at in 0..=rest.len() - RECORD_HEADER_BYTES {
        let payload_len =
            u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes")) as usize;
        if payload_len == 0
            || payload_len > RECORD_BYTES_MAX
            || payload_len > rest.len() - at - RECORD_HEADER_BYTES
        {
            continue;
        }
        let crc = u32::from_le_bytes(rest[at + 4..at + 8].try_into().expect("4 bytes"));
        let payload = &rest[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + payload_len];
        if crc32fast::hash(payload) == crc && decode_entry(payload).is_ok() {
            return Ok(Some(start + at as u64));
        }
    }
    Ok(None)
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), recovering as the module docs say. `purged` is the
    /// purge point the caller recorded; segments wholly at or below it are deleted (a purge cut short).
    /// `segment_bytes` is the size at which a new segment is started (`SEGMENT_BYTES` for nodes).
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        sync: bool,
        purged: Option<u64>,
    ) -> Result<Wal, OpenError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut names = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error(dir))? {
            let item = item.map_err(io_error(dir))?;
            let name = item.file_name();
            match name.to_str().and_then(parse_segment_name) {
                Some(first) => names.push((first, item.path())),
                None => tracing::warn!(file = %item.path().display(), "not a WAL segment; ignored"),
            }
        }
        names.sort();

        // Segments followed by one that starts at or below `purged + 1` hold only purged entries.
        let mut doomed = Vec::new();
        if let Some(purged) = purged {
            while names.len() >= 2 && names[1].0 <= purged.saturating_add(1) {
                doomed.push(names.remove(0).1);
            }
        }

        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut last: Option<LogId> = None;
        let count = names.len();
        for (position, (first, path)) in names.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let corrupt = |offset: u64, reason: String| OpenError::Corrupt {
                file: path.clone(),
                offset,
                reason,
            };
            match last {
                Some(last) if first != last.index + 1 => {
                    return Err(corrupt(
                        0,
                        format!(
                            "the segment starts at index {first} but the previous one ends at {}",
                            last.index
                        ),
                    ));
                }
                None => {
                    if let Some(purged) = purged {
                        if first > purged.saturating_add(1) {
                            return Err(corrupt(
                                0,
                                format!(
                                    "the first segment starts at index {first} but only entries up to {purged} \
                                     were purged: {}..={} are missing",
                                    purged + 1,
                                    first - 1
                                ),
                            ));
                        }
                    }
                }
                Some(_) => {}
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            let mut scan = scan_segment(&file, first).map_err(io_error(&path))?;
            if let Some((offset, damage)) = scan.damage.take() {
                let reason = match damage {
                    Damage::Bad(reason) => return Err(corrupt(offset, reason)),
                    Damage::Torn(reason) if !is_last => {
                        return Err(corrupt(
                            offset,
                            format!("{reason} (not in the last segment)"),
                        ))
                    }
                    Damage::Torn(reason) => reason,
                };
                if let Some(valid) =
                    find_valid_record_after(&file, offset).map_err(io_error(&path))?
                {
                    return Err(corrupt(
                        offset,
                        format!(
                            "{reason}, and a valid record follows at byte {valid}: not a torn tail"
                        ),
                    ));
                }
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    cut_bytes = file.metadata().map(|meta| meta.len() - offset).unwrap_or(0),
                    %reason,
                    "torn write at the end of the WAL (a crash during an append); cutting it off"
                );
                file.set_len(offset).map_err(io_error(&path))?;
                preallocate(&file, segment_bytes).map_err(io_error(&path))?;
                if sync {
                    file.sync_data().map_err(io_error(&path))?;
                }
            }
            if scan.offsets.is_empty() {
                if !is_last {
                    return Err(corrupt(0, "empty segment before the last one".to_string()));
                }
                // Created by an append that did not get to write a whole record.
                doomed.push(path);
                continue;
            }
            last = scan.last;
            segments.push_back(Segment {
                first,
                path,
                file: Arc::new(file),
                offsets: scan.offsets,
                bytes: scan.bytes,
            });
        }
        for path in doomed {
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
        let mut state = State {
            segments,
            purged,
            last,
            unsynced: Vec::new(),
            dir_unsynced: false,
        };
        // A purge cut short may also leave segments that only a scan shows to be wholly purged.
        drop_purged_segments(&mut state).map_err(io_error(dir))?;
        // What was found may be only in the page cache (written before a kill -9, never synced): sync it
        // now, so that everything this WAL holds is durable before it is acknowledged or applied.
        if sync {
            for segment in &state.segments {
                segment.file.sync_data().map_err(io_error(&segment.path))?;
            }
            // A segment created just before the crash, and the removals above, are directory entries.
            sync_dir(dir).map_err(io_error(dir))?;
        }
        let (progress, _) = watch::channel(LogProgress {
            written: state.last,
            synced: state.last,
            failed: false,
        });
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            sync,
            state: RwLock::new(state),
            sync_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
            progress,
        })
    }
}
