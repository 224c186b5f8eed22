//! Storage tests: openraft's conformance suite on the store (WAL for the log, sled for the metadata), with
//! normal and with tiny WAL segments; reopening a store after writes to find every flushed vote, entry,
//! applied state and membership; and the WAL's recovery: torn tails cut, corruption refused, truncate and
//! purge across segments, the record size limit, the old sled log format refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};
use raftkv_server::kv::state_machine::{Batch, Command, Request};
use raftkv_server::raft::types::{Entry, LogId, Node, StorageError, TypeConfig, Vote};
use raftkv_server::storage::wal::{RECORD_BYTES_MAX, RECORD_HEADER_BYTES, WAL_DIR};
use raftkv_server::storage::{self, LogStore, OpenError, StateMachineStore, StoreOptions};
use tempfile::TempDir;

const CLUSTER_ID: &str = "test-cluster";
/// A WAL segment size that holds only a few entries, so that a handful of entries spans several segments.
const TINY_SEGMENT_BYTES: u64 = 100;

/// Builds stores for openraft's suite, with WAL segments of the given size.
struct Builder {
    wal_segment_bytes: u64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let options = StoreOptions {
            wal_segment_bytes: self.wal_segment_bytes,
            ..StoreOptions::default()
        };
        let (log, state_machine) =
            storage::open_with(dir.path(), 0, CLUSTER_ID, options).expect("open store");
        Ok((dir, log, state_machine))
    }
}

/// Runs openraft's storage conformance suite (it makes its own runtime, so this is a plain test).
#[test]
fn store_passes_openraft_suite() {
    Suite::test_all(Builder {
        wal_segment_bytes: raftkv_server::storage::wal::SEGMENT_BYTES,
    })
    .expect("openraft storage suite");
}

/// The suite again with segments of a few entries each: appends roll segments, truncate and purge cross
/// them.
#[test]
fn store_with_tiny_wal_segments_passes_openraft_suite() {
    Suite::test_all(Builder {
        wal_segment_bytes: TINY_SEGMENT_BYTES,
    })
    .expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put_entry(term: u64, index: u64, key: &str) -> Entry {
    let request = Request {
        session: None,
        command: Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
        },
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch::single(request)),
    }
}

async fn append_and_wait(log: &mut LogStore, entries: Vec<Entry>) {
    // Returns once the store has called openraft's flush callback.
    log.blocking_append(entries)
        .await
        .expect("append and flush");
}

/// Reopening a store after a vote, appends, applies and a membership change finds all of them again.
#[tokio::test]
async fn reopened_store_keeps_vote_log_state_and_membership() {
    let dir = TempDir::new().unwrap();
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: BTreeMap<u64, Node> = voters
        .iter()
        .map(|id| {
            (
                *id,
                Node {
                    addr: format!("127.0.0.1:{}", 9000 + id),
                },
            )
        })
        .collect();
    let membership = Membership::new(vec![voters.clone()], nodes);
    {
        let (mut log, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let mut entries = vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(membership.clone()),
        }];
        entries.extend((2..=10).map(|index| put_entry(1, index, &format!("key{index}"))));
        append_and_wait(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(1, 10))).await.unwrap();
        log.flush().unwrap();
        state_machine.apply(entries).await.unwrap();
        // Make the applied state durable the way a node does: a snapshot.
        let mut builder = state_machine.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        // Entries after the snapshot are durable in the log only.
        append_and_wait(&mut log, vec![put_entry(3, 11, "after-snapshot")]).await;
    }
    let (mut log, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3, 11)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 10)));
    let entries = log.try_get_log_entries(1..=11).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|entry| entry.log_id.index)
            .collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    let (applied, stored_membership) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 10)));
    assert_eq!(
        stored_membership
            .membership()
            .voter_ids()
            .collect::<BTreeSet<_>>(),
        voters
    );
    let key5 = state_machine
        .read(|applied| applied.keyspace.get(b"key5", 0).unwrap())
        .unwrap();
    // Entry 1 is the membership: key N is the (N-1)th write, which takes revision N (the first takes 2).
    assert_eq!(key5.expect("key5 applied before restart").mod_revision, 5);
    assert!(
        state_machine
            .read(|applied| applied.keyspace.get(b"after-snapshot", 0).unwrap())
            .unwrap()
            .is_none(),
        "not applied yet"
    );
}

/// A data dir refuses to open as another node or another cluster.
#[test]
fn data_dir_refuses_other_node_or_cluster() {
    let dir = TempDir::new().unwrap();
    drop(storage::open(dir.path(), 1, CLUSTER_ID).unwrap());
    match storage::open(dir.path(), 2, CLUSTER_ID) {
        Err(OpenError::WrongNode {
            found: 1,
            wanted: 2,
            ..
        }) => {}
        other => panic!("expected WrongNode, got {:?}", other.map(|_| ())),
    }
    match storage::open(dir.path(), 1, "another") {
        Err(OpenError::WrongCluster { .. }) => {}
        other => panic!("expected WrongCluster, got {:?}", other.map(|_| ())),
    }
}

/// A node's own committed vote (it was leader) is read back uncommitted, so openraft restarts it as a
/// follower that campaigns in a new term instead of resuming leadership in the old one; a committed vote for
/// another node and an uncommitted vote read back unchanged.
#[tokio::test]
async fn own_committed_vote_is_read_back_uncommitted() {
    let cases = [
        (Vote::new_committed(4, 1), Vote::new(4, 1)),
        (Vote::new_committed(4, 2), Vote::new_committed(4, 2)),
        (Vote::new(5, 1), Vote::new(5, 1)),
    ];
    for (saved, expected) in cases {
        let dir = TempDir::new().unwrap();
        {
            let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
            log.save_vote(&saved).await.unwrap();
        }
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(expected),
            "saved {saved}"
        );
    }
}

// ---- the WAL ----

fn open_tiny(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    storage::open_with(
        dir,
        1,
        CLUSTER_ID,
        StoreOptions {
            wal_segment_bytes: TINY_SEGMENT_BYTES,
            ..StoreOptions::default()
        },
    )
}

/// The WAL's segment files, by first index.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir.join(WAL_DIR))
        .unwrap()
        .map(|item| {
            let path = item.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let first = name.strip_suffix(".wal").unwrap().parse().unwrap();
            (first, path)
        })
        .collect();
    segments.sort();
    segments
}

/// Start offsets of the records in a segment's bytes, read by their length headers up to the preallocated
/// tail (a zero length), and where the last one ends. The fuzz tests use it too.
pub fn record_layout(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        offsets.push(at as u64);
        at += RECORD_HEADER_BYTES + len;
    }
    (offsets, at.min(bytes.len()))
}

fn record_offsets(path: &Path) -> Vec<u64> {
    record_layout(&fs::read(path).unwrap()).0
}

/// Where a segment's records end and its preallocated zeros begin.
fn data_len(path: &Path) -> u64 {
    record_layout(&fs::read(path).unwrap()).1 as u64
}

/// A segment's records without the preallocated tail.
fn records_only(path: &Path) -> Vec<u8> {
    let mut bytes = fs::read(path).unwrap();
    let (_, end) = record_layout(&bytes);
    bytes.truncate(end);
    bytes
}

/// One record as the WAL writes it.
fn record(entry: &Entry) -> Vec<u8> {
    let payload = postcard::to_stdvec(entry).unwrap();
    let mut record = (payload.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

fn put_entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|index| put_entry(term, index, &format!("key{index}")))
        .collect()
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(0..).await.unwrap()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

/// Every appended entry, in batches of different sizes over many segments, is read back unchanged after
/// the store is dropped and reopened; and the reopened WAL takes the next index.
#[tokio::test]
async fn reopened_wal_keeps_every_entry() {
    let dir = TempDir::new().unwrap();
    let mut written = Vec::new();
    {
        let (mut log, _) = open_tiny(dir.path()).unwrap();
        let mut next = 1;
        for batch in [1, 3, 1, 7, 2, 12, 1, 5] {
            let entries = put_entries(2, next..=next + batch - 1);
            append_and_wait(&mut log, entries.clone()).await;
            written.extend(entries);
            next += batch;
        }
        assert_eq!(all_entries(&mut log).await, written);
    }
    assert!(
        segments(dir.path()).len() >= 5,
        "entries span many segments"
    );
    let (mut log, _) = open_tiny(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, written);
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 32))
    );
    assert_eq!(
        log.try_get_log_entries(10..=12).await.unwrap(),
        written[9..12].to_vec()
    );
    append_and_wait(&mut log, vec![put_entry(3, 33, "more")]).await;
    drop(log);
    let (mut log, _) = open_tiny(dir.path()).unwrap();
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (1..=33).collect::<Vec<_>>()
    );
}

/// A torn tail of the last segment (what a crash during an append leaves) is cut on reopen: half a record,
/// garbage after the last record, a zero-filled tail. Every earlier entry survives, and entries appended
/// after the cut survive the next reopen (so the cut really removed the damage).
#[tokio::test]
async fn torn_wal_tail_is_cut_on_reopen() {
    // (what, whether the last record survives it, the damage)
    type Damage = fn(&Path);
    let damages: [(&str, bool, Damage); 4] = [
        ("the last record cut in half", false, |path| {
            let offsets = record_offsets(path);
            let last = *offsets.last().unwrap();
            let len = data_len(path);
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(last + (len - last) / 2).unwrap();
        }),
        ("the last record's header cut short", false, |path| {
            let last = *record_offsets(path).last().unwrap();
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(last + 5).unwrap();
        }),
        ("garbage after the last record", true, |path| {
            let mut bytes = records_only(path);
            bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7]);
            fs::write(path, bytes).unwrap();
        }),
        (
            "the last record's payload zeroed, zeros after it",
            false,
            |path| {
                let last = *record_offsets(path).last().unwrap() as usize;
                let mut bytes = records_only(path);
                for byte in &mut bytes[last + RECORD_HEADER_BYTES..] {
                    *byte = 0;
                }
                bytes.extend_from_slice(&[0; 64]);
                fs::write(path, bytes).unwrap();
            },
        ),
    ];
    for (damage, last_survives, apply) in damages {
        let dir = TempDir::new().unwrap();
        {
            let (mut log, _) = open_tiny(dir.path()).unwrap();
            append_and_wait(&mut log, put_entries(1, 1..=10)).await;
        }
        let (last_first, last_path) = segments(dir.path()).pop().unwrap();
        assert!(last_first > 1, "several segments");
        let whole = data_len(&last_path);
        let last_record = *record_offsets(&last_path).last().unwrap();
        apply(&last_path);
        let (survivors, cut_at) = match last_survives {
            true => (10, whole),
            false => (9, last_record),
        };
        let (mut log, _) =
            open_tiny(dir.path()).unwrap_or_else(|error| panic!("{damage}: {error}"));
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            (1..=survivors).collect::<Vec<_>>(),
            "{damage}"
        );
        match cut_at {
            // The damaged record was the segment's only one: the segment is gone.
            0 => assert!(!last_path.exists(), "{damage}"),
            _ => assert_eq!(data_len(&last_path), cut_at, "{damage}"),
        }
        let next = survivors + 1;
        append_and_wait(&mut log, put_entries(2, next..=next + 2)).await;
        drop(log);
        let (mut log, _) =
            open_tiny(dir.path()).unwrap_or_else(|error| panic!("{damage}: {error}"));
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            (1..=next + 2).collect::<Vec<_>>(),
            "{damage}"
        );
    }
}

fn expect_corrupt(
    result: Result<(LogStore, StateMachineStore), OpenError>,
    file: &Path,
    offset: u64,
) -> String {
    match result {
        Err(error @ OpenError::WalCorrupt { .. }) => {
            let OpenError::WalCorrupt {
                file: found_file,
                offset: found_offset,
                ..
            } = &error
            else {
                unreachable!()
            };
            assert_eq!(
                (found_file.as_path(), *found_offset),
                (file, offset),
                "{error}"
            );
            let message = error.to_string();
            assert!(message.contains(&file.display().to_string()), "{message}");
            message
        }
        Err(other) => panic!("expected WalCorrupt, got {other}"),
        Ok(_) => panic!("expected WalCorrupt, the store opened"),
    }
}

/// A damaged record that is not the torn tail is corruption and the store refuses to open, naming the
/// file and offset: a flipped payload byte or a flipped length byte in a middle record of the last segment,
/// a flipped byte in the last record of an earlier segment, a missing segment.
#[tokio::test]
async fn corrupt_wal_refuses_to_open() {
    // One big segment: the middle record is in the last segment, with whole records after it.
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=10)).await;
    }
    let (_, path) = segments(dir.path()).pop().unwrap();
    let middle = record_offsets(&path)[5];
    let pristine = fs::read(&path).unwrap();
    // A payload byte: the crc fails.
    flip_byte(&path, middle + RECORD_HEADER_BYTES as u64 + 3);
    let message = expect_corrupt(storage::open(dir.path(), 1, CLUSTER_ID), &path, middle);
    assert!(message.contains("crc"), "{message}");
    // The high byte of the length: the record seems to run past the end of the file.
    fs::write(&path, &pristine).unwrap();
    flip_byte(&path, middle + 2);
    expect_corrupt(storage::open(dir.path(), 1, CLUSTER_ID), &path, middle);
    // The crc itself.
    fs::write(&path, &pristine).unwrap();
    flip_byte(&path, middle + 4);
    expect_corrupt(storage::open(dir.path(), 1, CLUSTER_ID), &path, middle);
    fs::write(&path, &pristine).unwrap();
    drop(storage::open(dir.path(), 1, CLUSTER_ID).expect("undamaged again"));

    // Tiny segments: the last record of an earlier segment is not a tail, however it is damaged.
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = open_tiny(dir.path()).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=10)).await;
    }
    let all = segments(dir.path());
    assert!(all.len() >= 3, "several segments");
    let (_, earlier) = &all[1];
    let last = *record_offsets(earlier).last().unwrap();
    let pristine = fs::read(earlier).unwrap();
    flip_byte(earlier, last + RECORD_HEADER_BYTES as u64);
    expect_corrupt(open_tiny(dir.path()), earlier, last);
    fs::write(earlier, &pristine).unwrap();
    let file = fs::OpenOptions::new().write(true).open(earlier).unwrap();
    file.set_len(data_len(earlier) - 3).unwrap();
    expect_corrupt(open_tiny(dir.path()), earlier, last);
    fs::write(earlier, &pristine).unwrap();

    // A missing segment leaves a gap between the ones around it.
    fs::rename(earlier, dir.path().join("moved-away")).unwrap();
    let (_, after) = &all[2];
    match open_tiny(dir.path()) {
        Err(error @ OpenError::WalCorrupt { .. }) => {
            assert!(
                error.to_string().contains(&after.display().to_string()),
                "{error}"
            )
        }
        other => panic!("expected WalCorrupt, got {:?}", other.err()),
    }
    fs::rename(dir.path().join("moved-away"), earlier).unwrap();
    let (mut log, _) = open_tiny(dir.path()).expect("whole again");
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (1..=10).collect::<Vec<_>>()
    );
}

/// A new segment is preallocated to its full size (appends then never grow the file), and the zeros after
/// its last record read back as the end of the log, not as damage, across reopens.
#[tokio::test]
async fn wal_segments_are_preallocated_and_their_zero_tail_is_the_end() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=3)).await;
    }
    let (_, path) = segments(dir.path()).pop().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        raftkv_server::storage::wal::SEGMENT_BYTES
    );
    let records_end = data_len(&path);
    assert!(records_end > 0 && records_end < raftkv_server::storage::wal::SEGMENT_BYTES);
    {
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).expect("reopen");
        assert_eq!(indexes(&all_entries(&mut log).await), vec![1, 2, 3]);
        append_and_wait(&mut log, put_entries(1, 4..=6)).await;
    }
    assert!(data_len(&path) > records_end, "appended inside the file");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        raftkv_server::storage::wal::SEGMENT_BYTES
    );
    let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).expect("reopen");
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (1..=6).collect::<Vec<_>>()
    );
}

/// Whole, checksummed records in the wrong place are corruption, even at the end of the last segment: a
/// repeated index, a skipped index, a segment whose name is not its first entry's index.
#[tokio::test]
async fn wal_entries_out_of_place_refuse_to_open() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=3)).await;
    }
    let (first, path) = segments(dir.path()).pop().unwrap();
    assert_eq!(first, 1);
    let pristine = records_only(&path);
    for (what, tail) in [("a repeated index", 3), ("a skipped index", 5)] {
        let mut bytes = pristine.clone();
        bytes.extend(record(&put_entry(1, tail, "misplaced")));
        fs::write(&path, bytes).unwrap();
        let message = expect_corrupt(
            storage::open(dir.path(), 1, CLUSTER_ID),
            &path,
            pristine.len() as u64,
        );
        assert!(
            message.contains(&format!("index {tail}")),
            "{what}: {message}"
        );
    }
    fs::write(&path, &pristine).unwrap();
    let renamed = path.with_file_name("00000000000000000002.wal");
    fs::rename(&path, &renamed).unwrap();
    expect_corrupt(storage::open(dir.path(), 1, CLUSTER_ID), &renamed, 0);
}

/// Truncate and purge across tiny segments, then reopen: exactly the expected entries, with their terms,
/// and no segment left that holds only purged entries.
#[tokio::test]
async fn wal_truncate_and_purge_across_segments_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let mut expected: Vec<Entry>;
    {
        let (mut log, _) = open_tiny(dir.path()).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=20)).await;
        append_and_wait(&mut log, put_entries(1, 21..=40)).await;
        let before = segments(dir.path());
        assert!(before.len() >= 8, "many segments: {before:?}");

        // Truncate in the middle of a segment, several segments back from the end.
        let (boundary, _) = before[before.len() - 4];
        let cut = boundary + 1;
        log.truncate(log_id(1, cut)).await.unwrap();
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            (1..cut).collect::<Vec<_>>()
        );
        assert_eq!(segments(dir.path()).last().unwrap().0, boundary);
        // Truncate exactly at a segment's first entry: that segment goes too.
        let (boundary, _) = before[before.len() - 6];
        log.truncate(log_id(1, boundary)).await.unwrap();
        assert!(segments(dir.path())
            .iter()
            .all(|(first, _)| *first < boundary));
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, boundary - 1))
        );

        // New entries of a later term continue the log.
        append_and_wait(&mut log, put_entries(2, boundary..=boundary + 9)).await;
        let last = boundary + 9;

        // Purge into the middle of the third segment.
        let third = segments(dir.path())[2].0;
        let purge_to = third + 1;
        log.purge(log_id(1, purge_to)).await.unwrap();
        assert_eq!(
            segments(dir.path())[0].0,
            third,
            "segments wholly purged are deleted, the one holding the purge point is kept"
        );
        expected = put_entries(1, purge_to + 1..=boundary - 1);
        expected.extend(put_entries(2, boundary..=last));
        assert_eq!(all_entries(&mut log).await, expected);
        assert_eq!(
            log.try_get_log_entries(0..=purge_to).await.unwrap(),
            vec![],
            "purged entries still on disk are never returned"
        );
    }
    let (mut log, _) = open_tiny(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, expected);
    let state = log.get_log_state().await.unwrap();
    let purge_to = expected[0].log_id.index - 1;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, purge_to)));
    assert_eq!(state.last_log_id, expected.last().map(|entry| entry.log_id));

    // Purge past the end: every segment goes, and the log continues after the purge point.
    let beyond = state.last_log_id.unwrap().index + 5;
    log.purge(log_id(2, beyond)).await.unwrap();
    assert!(segments(dir.path()).is_empty());
    append_and_wait(&mut log, put_entries(3, beyond + 1..=beyond + 3)).await;
    drop(log);
    let (mut log, _) = open_tiny(dir.path()).unwrap();
    assert_eq!(
        all_entries(&mut log).await,
        put_entries(3, beyond + 1..=beyond + 3)
    );
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(2, beyond))
    );
}

/// An entry whose record would exceed `RECORD_BYTES_MAX` is refused and nothing is written; a record over
/// the limit found on disk is refused too (here one with a valid crc, followed by a valid record).
#[tokio::test]
async fn wal_record_over_the_limit_is_refused() {
    let dir = TempDir::new().unwrap();
    let huge = Entry {
        log_id: log_id(1, 2),
        payload: EntryPayload::Normal(Batch::single(Request {
            session: None,
            command: Command::Put {
                key: b"huge".to_vec(),
                value: vec![b'v'; RECORD_BYTES_MAX],
            },
        })),
    };
    {
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        append_and_wait(&mut log, vec![put_entry(1, 1, "small")]).await;
        let refused = log
            .blocking_append(vec![huge.clone(), put_entry(1, 3, "after")])
            .await;
        let error = refused.expect_err("a record over the limit is refused");
        assert!(error.to_string().contains("RECORD_BYTES_MAX"), "{error}");
        assert_eq!(indexes(&all_entries(&mut log).await), vec![1]);
        append_and_wait(&mut log, vec![put_entry(1, 2, "fits")]).await;
    }
    let (_, path) = segments(dir.path()).pop().unwrap();
    // Written by hand: entry 1, the oversized entry 2 (whole, crc right), entry 3.
    let mut bytes = record(&put_entry(1, 1, "small"));
    let oversized_at = bytes.len() as u64;
    bytes.extend(record(&huge));
    bytes.extend(record(&put_entry(1, 3, "after")));
    fs::write(&path, bytes).unwrap();
    let message = expect_corrupt(
        storage::open(dir.path(), 1, CLUSTER_ID),
        &path,
        oversized_at,
    );
    assert!(message.contains("RECORD_BYTES_MAX"), "{message}");
}

/// A data dir whose Raft log is in sled (the format before the WAL) is refused, not opened without it.
#[test]
fn old_sled_log_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(storage::open(dir.path(), 1, CLUSTER_ID).unwrap());
    {
        let db = open_raw_sled(dir.path());
        let old_log = db.open_tree("log").unwrap();
        old_log
            .insert(
                1u64.to_be_bytes(),
                postcard::to_stdvec(&put_entry(1, 1, "old")).unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    match storage::open(dir.path(), 1, CLUSTER_ID) {
        Err(error @ OpenError::OldLogFormat { .. }) => {
            assert!(error.to_string().contains("cannot read"), "{error}")
        }
        other => panic!("expected OldLogFormat, got {:?}", other.err()),
    }
}

/// A data dir from before the format key (log ids that name a node as well as a term) is refused, not misread;
/// one made by this version opens again.
#[test]
fn data_dir_of_another_format_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(storage::open(dir.path(), 1, CLUSTER_ID).unwrap());
    drop(storage::open(dir.path(), 1, CLUSTER_ID).expect("a dir of this format reopens"));
    {
        let db = open_raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        assert!(
            meta.remove("data_format").unwrap().is_some(),
            "no format key written"
        );
        db.flush().unwrap();
    }
    match storage::open(dir.path(), 1, CLUSTER_ID) {
        Err(error @ OpenError::OldDataFormat { found: 1, .. }) => {
            assert!(error.to_string().contains("format 1"), "{error}")
        }
        other => panic!("expected OldDataFormat, got {:?}", other.err()),
    }
}

/// Once the last handle of a store is dropped after its appends were acknowledged, no WAL file is open any
/// more (the flusher keeps none while idle), so the store can be reopened at once.
#[tokio::test]
async fn dropped_store_keeps_no_wal_file_open() {
    let dir = TempDir::new().unwrap();
    let wal_dir = dir.path().join(WAL_DIR);
    let open_wal_files = || {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|item| fs::read_link(item.ok()?.path()).ok())
            .filter(|target| target.starts_with(&wal_dir))
            .count()
    };
    {
        let (mut log, _) = open_tiny(dir.path()).unwrap();
        append_and_wait(&mut log, put_entries(1, 1..=10)).await;
        assert!(open_wal_files() > 0, "the store holds its segments open");
    }
    assert_eq!(open_wal_files(), 0);
    let (mut log, _) = open_tiny(dir.path()).unwrap();
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (1..=10).collect::<Vec<_>>()
    );
}

/// Entries 1..=count, each a put of `key<index>` = `value`, in term 1.
/// How long `open_raw_sled` waits for the lock of a store dropped a moment ago (sled releases it after its
/// background threads stop), as `storage::open` does.
const RAW_SLED_LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a data dir's sled directly, to look at or damage what the store wrote.
fn open_raw_sled(dir: &Path) -> sled::Db {
    let started = std::time::Instant::now();
    loop {
        match sled::open(dir.join("raft")) {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && started.elapsed() < RAW_SLED_LOCK_WAIT_MAX =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result.expect("open sled"),
        }
    }
}

fn puts(count: u64, value: &str) -> Vec<Entry> {
    (1..=count)
        .map(|index| {
            let request = Request {
                session: None,
                command: Command::Put {
                    key: format!("key{index}").into_bytes(),
                    value: value.as_bytes().to_vec(),
                },
            };
            Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Normal(Batch::single(request)),
            }
        })
        .collect()
}

fn value_of(state_machine: &StateMachineStore, key: &str) -> Option<Vec<u8>> {
    state_machine
        .read(|applied| {
            applied
                .keyspace
                .get(key.as_bytes(), 0)
                .unwrap()
                .map(|kv| kv.value)
        })
        .unwrap()
}

/// The applied state lives in sled: a reopened store has every entry written there without a snapshot, and
/// says which entry that was, so openraft re-applies only what follows. Applied entries reach sled by the
/// next read (or snapshot, compaction, or a full batch); those that had not are applied again from the log.
#[tokio::test]
async fn applied_state_is_in_sled_without_a_snapshot() {
    let dir = TempDir::new().unwrap();
    {
        let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        let mut entries = puts(7, "v");
        let later = entries.split_off(5);
        state_machine.apply(entries).await.unwrap();
        assert_eq!(value_of(&state_machine, "key5"), Some(b"v".to_vec()));
        // Applied, answered, not read: not written to sled yet.
        state_machine.apply(later).await.unwrap();
        assert_eq!(state_machine.applied_index(), 7);
    }
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    let (applied, _) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)), "what the read wrote, no more");
    assert_eq!(value_of(&state_machine, "key5"), Some(b"v".to_vec()));
    assert_eq!(value_of(&state_machine, "key6"), None);
    // openraft applies 6 and 7 again from the log.
    state_machine
        .apply(puts(7, "v").split_off(5))
        .await
        .unwrap();
    assert_eq!(value_of(&state_machine, "key7"), Some(b"v".to_vec()));
    assert!(state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .is_none());
}

/// A keep-alive's lookup of a lease (`lease_record`) sees grants and revokes applied but not yet in sled, and
/// writes nothing to sled (a read through `read` would): a reopened store holds only what was written before.
#[tokio::test]
async fn a_lease_lookup_sees_unwritten_changes_without_writing_them() {
    let dir = TempDir::new().unwrap();
    {
        let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        state_machine
            .apply(vec![
                command_entry(1, Command::LeaseGrant { id: 7, ttl: 10 }),
                command_entry(2, Command::LeaseGrant { id: 8, ttl: 20 }),
            ])
            .await
            .unwrap();
        // Written by this read.
        assert_eq!(
            state_machine
                .lease(7, false)
                .unwrap()
                .map(|(lease, _)| lease.ttl),
            Some(10)
        );
        state_machine
            .apply(vec![
                command_entry(3, Command::LeaseGrant { id: 9, ttl: 30 }),
                command_entry(4, Command::LeaseRevoke { id: 8 }),
            ])
            .await
            .unwrap();
        let ttl = |id| {
            state_machine
                .lease_record(id)
                .unwrap()
                .map(|lease| lease.ttl)
        };
        assert_eq!(ttl(7), Some(10), "written before, unchanged since");
        assert_eq!(ttl(9), Some(30), "granted, not yet in sled");
        assert_eq!(ttl(8), None, "revoked, not yet in sled");
        assert_eq!(ttl(10), None, "never granted");
        assert_eq!(state_machine.applied_index(), 4);
    }
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    let (applied, _) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 2)), "the lookups wrote nothing");
    let ttl = |id| {
        state_machine
            .lease_record(id)
            .unwrap()
            .map(|lease| lease.ttl)
    };
    assert_eq!((ttl(8), ttl(9)), (Some(20), None));
}

/// Entries applied in many calls and written to sled as one batch leave exactly the keyspace that writing
/// each entry at once leaves: values, history, deletions, and sessions, past the session table's limit (so
/// evictions across entries that sled has not seen yet). One store is read after every entry (each read
/// writes what is pending); the other is read once at the end.
#[tokio::test]
async fn entries_written_together_leave_the_keyspace_of_entries_written_one_by_one() {
    use raftkv_server::kv::state_machine::{SessionRef, SESSIONS_MAX};
    let entries: Vec<Entry> = (1..=(SESSIONS_MAX as u64 + 40))
        .map(|index| {
            let key = format!("key{}", index % 7).into_bytes();
            let command = if index % 5 == 0 {
                Command::Delete { key }
            } else {
                Command::Put {
                    key,
                    value: format!("v{index}").into_bytes(),
                }
            };
            // Every client writes twice, a few entries apart, then never again: the oldest are evicted.
            let client_id = index / 2;
            let request = Request {
                session: Some(SessionRef {
                    client_id,
                    sequence: index % 2 + 1,
                }),
                command,
            };
            Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Normal(Batch::single(request)),
            }
        })
        .collect();
    let one_by_one_dir = TempDir::new().unwrap();
    let (_, mut one_by_one) = storage::open(one_by_one_dir.path(), 1, CLUSTER_ID).unwrap();
    let together_dir = TempDir::new().unwrap();
    let (_, mut together) = storage::open(together_dir.path(), 1, CLUSTER_ID).unwrap();
    for entry in entries.iter().cloned() {
        one_by_one.apply([entry]).await.unwrap();
        one_by_one.read(|_| ()).unwrap();
    }
    for chunk in entries.chunks(97) {
        together.apply(chunk.to_vec()).await.unwrap();
    }
    let dump = |store: &StateMachineStore| {
        store
            .read(|applied| (applied.keyspace.dump().unwrap(), applied.last_applied))
            .unwrap()
    };
    let (expected, expected_applied) = dump(&one_by_one);
    let (got, got_applied) = dump(&together);
    assert_eq!(got_applied, expected_applied);
    assert_eq!(got.len(), expected.len(), "different numbers of sled keys");
    assert!(got == expected, "the keyspaces differ");
}

/// Installing a snapshot replaces the keyspace atomically: a follower with other data installs a leader's
/// snapshot and holds exactly the leader's keys, also after a restart. An install that crashed before the
/// switch (a partial keyspace tree, a half-received file) is cleaned up at the next start, and the old
/// keyspace is in force.
#[tokio::test]
async fn snapshot_install_switches_atomically_and_a_crashed_install_is_recovered() {
    let leader_dir = TempDir::new().unwrap();
    let (_, mut leader) = storage::open(leader_dir.path(), 1, CLUSTER_ID).unwrap();
    leader.apply(puts(6, "leader")).await.unwrap();
    let mut builder = leader.get_snapshot_builder().await;
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();

    let dir = TempDir::new().unwrap();
    {
        let (_, mut follower) = storage::open(dir.path(), 2, CLUSTER_ID).unwrap();
        follower.apply(puts(3, "stale")).await.unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(value_of(&follower, "key6"), Some(b"leader".to_vec()));
        assert_eq!(value_of(&follower, "key1"), Some(b"leader".to_vec()));
    }
    {
        let (_, mut follower) = storage::open(dir.path(), 2, CLUSTER_ID).unwrap();
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 6)));
        assert_eq!(value_of(&follower, "key6"), Some(b"leader".to_vec()));
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 6)));
    }

    // A crash in the middle of the next install: a partial tree and a half-received file are left behind.
    {
        let db = open_raw_sled(dir.path());
        let names: Vec<String> = db
            .tree_names()
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        assert!(
            names.contains(&"keyspace-1".to_string()) && !names.contains(&"keyspace-0".to_string()),
            "the install switched to a new tree and dropped the old one: {names:?}"
        );
        let partial = db.open_tree("keyspace-2").unwrap();
        partial.insert(b"cgarbage", &b"not a record"[..]).unwrap();
        db.flush().unwrap();
    }
    fs::write(dir.path().join("snapshots/receiving.tmp"), b"half a snapsh").unwrap();
    let (_, mut follower) = storage::open(dir.path(), 2, CLUSTER_ID).unwrap();
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 6)), "the old keyspace is in force");
    assert_eq!(value_of(&follower, "garbage"), None);
    assert!(!dir.path().join("snapshots/receiving.tmp").exists());
    drop(follower);
    let db = open_raw_sled(dir.path());
    assert!(
        !db.tree_names()
            .iter()
            .any(|name| name.as_ref() == b"keyspace-2"),
        "the partial tree was dropped"
    );
}

/// An entry at `index` (term 1) carrying one command.
fn command_entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Batch::single(Request {
            session: None,
            command,
        })),
    }
}

/// A snapshot is a cut at the revision it was started at, even when a compaction past that revision is
/// applied, and physically carried out, while it is being built: the build pins its compaction point, and
/// the compaction catches up once the build is done.
#[tokio::test]
async fn a_snapshot_build_keeps_the_history_its_cut_needs_while_compaction_runs() {
    let put = |value: &str| Command::Put {
        key: b"k".to_vec(),
        value: value.as_bytes().to_vec(),
    };
    let dir = TempDir::new().unwrap();
    let (_, mut store) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    store
        .apply(vec![
            command_entry(1, put("one")),
            command_entry(2, put("two")),
        ])
        .await
        .unwrap();
    let mut builder = store.get_snapshot_builder().await;
    store
        .apply(vec![
            command_entry(3, put("three")),
            command_entry(4, Command::Compact { revision: 4 }),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.compact_now().unwrap(),
        0,
        "the build in progress pins the compaction at its cut's point"
    );
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);
    assert_eq!(
        store.compact_now().unwrap(),
        4,
        "caught up once the build is done"
    );

    let copy_dir = TempDir::new().unwrap();
    let (_, mut copy) = storage::open(copy_dir.path(), 2, CLUSTER_ID).unwrap();
    copy.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let at = |revision: u64| {
        copy.read(|applied| {
            applied
                .keyspace
                .get(b"k", revision)
                .unwrap()
                .map(|kv| kv.value)
        })
        .unwrap()
    };
    assert_eq!(at(2), Some(b"one".to_vec()));
    assert_eq!(at(3), Some(b"two".to_vec()));
}

/// A watcher that reads nothing while more entries are applied than the applied-changes channel holds falls
/// behind it, reads the history from sled instead, and still gives every change once, in revision order, then
/// follows live changes again.
#[tokio::test]
async fn a_watcher_that_falls_behind_reads_the_history_and_misses_nothing() {
    use raftkv_server::kv::state_machine::KeySpan;
    use raftkv_server::storage::APPLIED_CHANGES_QUEUED;
    use raftkv_server::watch::Watcher;

    let dir = TempDir::new().unwrap();
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    let every_key = KeySpan {
        key: b"k".to_vec(),
        range_end: vec![0],
    };
    let mut watcher = Watcher::start(state_machine.clone(), every_key, 2).unwrap();
    let total = APPLIED_CHANGES_QUEUED as u64 + 100;
    for index in 1..=total {
        let entry = put_entry(1, index, &format!("k{index:05}"));
        state_machine.apply([entry]).await.unwrap();
    }
    let mut revisions = Vec::new();
    while revisions.len() < total as usize + 1 {
        if revisions.len() == total as usize {
            let entry = put_entry(1, total + 1, "k-live");
            state_machine.apply([entry]).await.unwrap();
        }
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.next_batch())
            .await
            .expect("changes within the bound")
            .expect("the watch goes on");
        revisions.extend(batch.iter().map(|change| change.revision));
    }
    // The first write takes revision 2.
    assert_eq!(revisions, (2..=total + 2).collect::<Vec<_>>());
}

/// Each `apply` publishes the versions it wrote and no others, also while earlier entries' changes are still
/// waiting in memory to be written to sled (watchers would filter repeats, but at a cost per entry).
#[tokio::test]
async fn each_apply_publishes_only_its_own_changes() {
    let dir = TempDir::new().unwrap();
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    let mut changes = state_machine.subscribe_changes();
    for index in 1..=5 {
        let entry = put_entry(1, index, &format!("k{index}"));
        state_machine.apply([entry]).await.unwrap();
        let published = changes.try_recv().expect("the apply published its change");
        let revisions: Vec<u64> = published.iter().map(|change| change.revision).collect();
        assert_eq!(revisions, [index + 1], "the first write takes revision 2");
    }
}

/// A transaction's changes share one revision, and a watcher hands a revision out whole, however many
/// changes it holds (etcd's clients resume from the revision after a response's).
#[tokio::test]
async fn a_watcher_never_splits_a_revision() {
    use raftkv_server::kv::state_machine::{KeySpan, Txn, TxnOp};
    use raftkv_server::watch::{Watcher, WATCH_BATCH_CHANGES_MAX};

    let dir = TempDir::new().unwrap();
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    let keys = WATCH_BATCH_CHANGES_MAX + 200;
    let writes = (0..keys)
        .map(|key| Request {
            session: None,
            command: Command::Put {
                key: format!("k{key:05}").into_bytes(),
                value: b"v".to_vec(),
            },
        })
        .collect::<Vec<_>>();
    for (chunk, index) in writes.chunks(400).zip(1..) {
        let entry = Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Batch {
                writes: chunk.to_vec(),
            }),
        };
        state_machine.apply([entry]).await.unwrap();
    }
    let every_key = KeySpan {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
    };
    // The puts took revisions 2 to keys + 1.
    let deletion = keys as u64 + 2;
    let mut watcher = Watcher::start(state_machine.clone(), every_key.clone(), deletion).unwrap();
    let delete_all = Txn {
        success: vec![TxnOp::DeleteRange {
            span: every_key,
            prev_kv: false,
        }],
        ..Txn::default()
    };
    let entry = Entry {
        log_id: log_id(1, 100),
        payload: EntryPayload::Normal(Batch::single(Request {
            session: None,
            command: Command::Txn(delete_all),
        })),
    };
    state_machine.apply([entry]).await.unwrap();
    let batch = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.next_batch())
        .await
        .expect("changes within the bound")
        .expect("the watch goes on");
    assert_eq!(batch.len(), keys, "one revision, one batch");
    assert!(batch
        .iter()
        .all(|change| change.revision == deletion && change.record.is_none()));
}

/// Writes a backup of a store holding `puts(count, value)` to `path`.
async fn backup_of(count: u64, value: &str, path: &Path) {
    let dir = TempDir::new().unwrap();
    let (_, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    state_machine.apply(puts(count, value)).await.unwrap();
    let cut = state_machine.backup_cut().unwrap();
    let mut file = fs::File::create(path).unwrap();
    cut.write_to(&mut file).unwrap();
}

/// A restore cut short by a crash is done again from the start with the same backup (what it had loaded
/// goes first), and refused with another one; a finished restore is left alone on the next start.
#[tokio::test]
async fn an_interrupted_restore_is_redone_only_with_its_own_backup() {
    let backups = TempDir::new().unwrap();
    let (first, second) = (backups.path().join("first"), backups.path().join("second"));
    backup_of(3, "first", &first).await;
    backup_of(2, "second", &second).await;
    let dir = TempDir::new().unwrap();
    let restore = |backup: &Path| {
        storage::restore(dir.path(), 1, CLUSTER_ID, StoreOptions::default(), backup)
    };
    assert_eq!(
        restore(&first),
        Ok(storage::Restored::Loaded { revision: 4 })
    );
    assert_eq!(restore(&first), Ok(storage::Restored::AlreadyLoaded));

    // As a crash in the middle of the load would leave it: the marker of the load, and a key the backup
    // does not hold.
    {
        let db = open_raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        let digest = meta.remove("restored_from").unwrap().expect("the digest");
        meta.insert("restoring", digest).unwrap();
        let tree_name = meta
            .get("keyspace_tree")
            .unwrap()
            .expect("the keyspace tree");
        let keyspace = db.open_tree(tree_name).unwrap();
        let mut stray = vec![0u8; 24];
        stray.extend_from_slice(b"stray");
        keyspace.insert(b"cstray", stray).unwrap();
        db.flush().unwrap();
    }
    let refused = restore(&second).expect_err("another backup over a cut-short restore");
    assert!(refused.contains("interrupted"), "{refused}");
    assert_eq!(
        restore(&first),
        Ok(storage::Restored::Loaded { revision: 4 })
    );
    let (_, state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    assert_eq!(
        value_of(&state_machine, "stray"),
        None,
        "what the cut-short load left is gone"
    );
    assert_eq!(value_of(&state_machine, "key3"), Some(b"first".to_vec()));
}
