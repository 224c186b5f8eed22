//! The keyspace in sled: the current value of every key, every version of every key until compacted (MVCC),
//! the session table and the applied log id, in one sled tree, so that one sled batch writes an entry's
//! changes and the applied log id together.
//!
//! Layout of the tree (every key starts with a one-byte prefix):
//! - `c` key: the current record, `[create u64][version u64][mod u64][lease i64][value]` (big-endian
//!   numbers; lease 0: none). Deleted keys have none.
//! - `h` escaped-key `00 00` revision: one version, `[1][create u64][version u64][value]` for a value with no
//!   lease, `[2][create u64][version u64][lease i64][value]` for one with a lease, `[0]` for a deletion (a
//!   tombstone). The key is escaped (`00` becomes `00 FF`) and ended by `00 00`, so the
//!   versions of a key lie together in revision order and keys keep their order: a range or prefix of keys is
//!   a range of the tree.
//! - `s` client-id: a session record (postcard). Their eviction order (by each one's `last_index`) is kept in
//!   memory, rebuilt from the records at open: one write per session touched, not three.
//! - `l` lease-id: a lease (postcard `LeaseRecord`: its TTL and number of keys); `k` lease-id key: a key
//!   attached to the lease (empty value), so a revoke finds its keys in order. Leases have no history.
//! - `m` name: the store revision with the applied log id (one key, written with every entry), the compaction
//!   point, the membership.
//!
//! Reads at the current revision use `c`; reads at an older one find, for each key, its last version at or
//! below the revision in `h`. Compaction to revision C (`Command::Compact`) is logical at once: reads below C
//! are refused. Physically, `compact_history` later deletes the versions no read at C or later can see (for
//! each key, every version at or below C but the last, and that one too if it is a tombstone).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::ops::Bound;

use serde::{de::DeserializeOwned, Serialize};

use crate::kv::changes::{ChangeSet, HistoryEntry, KeyspaceRead, ReadFailure};
use crate::kv::state_machine::{
    apply_batch, Batch, BatchResponse, KeySpan, KeyValue, LeaseRecord, Record, ScanRange,
    ScanResult, SessionRecord, Span,
};
use crate::raft::types::{LogId, StoredMembership};

const CURRENT: u8 = b'c';
const HISTORY: u8 = b'h';
const SESSION: u8 = b's';
/// The revision of an empty store.
pub const INITIAL_REVISION: u64 = 1;
const LEASE: u8 = b'l';
const LEASE_KEY: u8 = b'k';
// Meta keys start with `m`.
/// (applied log id, store revision), postcard: one write per entry for both.
const META_STATE: &[u8] = b"mstate";
const META_COMPACT: &[u8] = b"mcompact";
const META_MEMBERSHIP: &[u8] = b"mmembership";
/// Key bytes that end an escaped key in a history key.
const KEY_END: [u8; 2] = [0x00, 0x00];
/// Versions examined per sled batch by the physical compaction: bounds how long one step holds the
/// maintenance lock (and so delays a snapshot or an install).
pub const COMPACTION_STEP_VERSIONS: usize = 10_000;
/// Tree entries per sled batch when a snapshot is loaded.
const IMPORT_BATCH_ENTRIES: usize = 10_000;
/// Marks the end of the entries of a snapshot body.
const BODY_END: u32 = u32::MAX;
/// Longest key or value in a snapshot body: a session record holds a cas response (a key, a value) and framing.
const BODY_FIELD_BYTES_MAX: usize = 1024 * 1024;

/// A raw tree entry.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// A read that could not be served at the revision it named, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("revision {requested} has been compacted: the oldest revision still readable is {compact_revision}")]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    #[error("revision {requested} is a future revision: the store is at revision {current}")]
    FutureRevision { requested: u64, current: u64 },
    #[error("reading the keyspace failed: {0}")]
    Storage(String),
}

impl From<sled::Error> for ReadError {
    fn from(error: sled::Error) -> Self {
        ReadError::Storage(error.to_string())
    }
}

fn failure(error: impl std::fmt::Display) -> ReadFailure {
    ReadFailure(error.to_string())
}

fn prefixed(prefix: u8, bytes: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + bytes.len());
    key.push(prefix);
    key.extend_from_slice(bytes);
    key
}

/// Appends `key` escaped: every `00` becomes `00 FF`.
fn push_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &byte in key {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
}

/// `h` + escaped key + `00 00`: every history key of `key` starts with it.
fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 11);
    out.push(HISTORY);
    push_escaped(&mut out, key);
    out.extend_from_slice(&KEY_END);
    out
}

fn history_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// Splits a history key into the user key and the revision; `None` if it is not one.
fn parse_history_key(raw: &[u8]) -> Option<(Vec<u8>, u64)> {
    let body = raw.strip_prefix(&[HISTORY])?;
    let mut key = Vec::with_capacity(body.len());
    let mut at = 0;
    while at + 1 < body.len() {
        match (body[at], body[at + 1]) {
            (0, 0xFF) => {
                key.push(0);
                at += 2;
            }
            (0, 0) => {
                let revision = body
                    .get(at + 2..)?
                    .try_into()
                    .ok()
                    .map(u64::from_be_bytes)?;
                return Some((key, revision));
            }
            (0, _) => return None,
            (byte, _) => {
                key.push(byte);
                at += 1;
            }
        }
    }
    None
}

/// The part of a history key before its revision (prefix, escaped key, end mark): the same for every version
/// of a key.
fn history_group(raw: &[u8]) -> &[u8] {
    &raw[..raw.len().saturating_sub(8)]
}

/// One version as the history holds it.
struct Version {
    /// The history key (prefix, escaped key, end mark, revision).
    raw: sled::IVec,
    value: sled::IVec,
    revision: u64,
}

impl Version {
    fn is_tombstone(&self) -> bool {
        self.value.first() == Some(&0)
    }

    fn key(&self) -> Result<Vec<u8>, String> {
        parse_history_key(&self.raw)
            .map(|(key, _)| key)
            .ok_or_else(|| "a history key is malformed".to_string())
    }

    /// The record this version set, or `None` for a deletion.
    fn record(&self) -> Result<Option<Record>, String> {
        decode_version(&self.value, self.revision)
    }
}

/// The history entries of a tree range, a key at a time: each item holds every version of one key in the
/// range, in revision order.
struct KeyHistories {
    entries: std::iter::Peekable<sled::Iter>,
}

impl KeyHistories {
    fn new(entries: sled::Iter) -> Self {
        KeyHistories {
            entries: entries.peekable(),
        }
    }
}

impl Iterator for KeyHistories {
    type Item = Result<Vec<Version>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut versions: Vec<Version> = Vec::new();
        loop {
            let Some(peeked) = self.entries.peek() else {
                return (!versions.is_empty()).then_some(Ok(versions));
            };
            let same_key = match peeked {
                Err(_) => versions.is_empty(),
                Ok((raw, _)) => versions
                    .first()
                    .is_none_or(|first| history_group(&first.raw) == history_group(raw)),
            };
            if !same_key {
                return Some(Ok(versions));
            }
            match self.entries.next()? {
                Err(error) => return Some(Err(error.to_string())),
                Ok((raw, value)) => match u64_at(&raw, raw.len().saturating_sub(8)) {
                    Some(revision) if raw.len() > 8 => versions.push(Version {
                        raw,
                        value,
                        revision,
                    }),
                    _ => return Some(Err("a history key is malformed".to_string())),
                },
            }
        }
    }
}

/// Every history entry of the tree from `start`.
fn history_from(tree: &sled::Tree, start: Vec<u8>) -> KeyHistories {
    KeyHistories::new(tree.range(start..vec![HISTORY + 1]))
}

fn encode_current(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + record.value.len());
    out.extend_from_slice(&record.create_revision.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.mod_revision.to_be_bytes());
    out.extend_from_slice(&record.lease.to_be_bytes());
    out.extend_from_slice(&record.value);
    out
}

/// `l` + the lease id.
fn lease_key(id: i64) -> Vec<u8> {
    prefixed(LEASE, &id.to_be_bytes())
}

/// `k` + the lease id + the key: every key of a lease starts with `k` + its id.
fn lease_key_entry(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(LEASE_KEY);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|slice| slice.try_into().ok())
        .map(u64::from_be_bytes)
}

fn decode_current(bytes: &[u8]) -> Result<Record, String> {
    match (
        u64_at(bytes, 0),
        u64_at(bytes, 8),
        u64_at(bytes, 16),
        u64_at(bytes, 24),
    ) {
        (Some(create_revision), Some(version), Some(mod_revision), Some(lease)) => Ok(Record {
            value: bytes[32..].to_vec(),
            create_revision,
            mod_revision,
            version,
            lease: lease as i64,
        }),
        _ => Err(format!(
            "a current record of {} bytes is too short",
            bytes.len()
        )),
    }
}

fn encode_version(record: Option<&Record>) -> Vec<u8> {
    match record {
        None => vec![0],
        Some(record) => {
            let mut out = Vec::with_capacity(25 + record.value.len());
            out.push(if record.lease == 0 { 1 } else { 2 });
            out.extend_from_slice(&record.create_revision.to_be_bytes());
            out.extend_from_slice(&record.version.to_be_bytes());
            if record.lease != 0 {
                out.extend_from_slice(&record.lease.to_be_bytes());
            }
            out.extend_from_slice(&record.value);
            out
        }
    }
}

/// Decodes a version written at `revision`: `None` for a tombstone.
fn decode_version(bytes: &[u8], revision: u64) -> Result<Option<Record>, String> {
    match bytes.first() {
        Some(0) => Ok(None),
        Some(1) => match (u64_at(bytes, 1), u64_at(bytes, 9)) {
            (Some(create_revision), Some(version)) => Ok(Some(Record {
                value: bytes[17..].to_vec(),
                create_revision,
                mod_revision: revision,
                version,
                lease: 0,
            })),
            _ => Err(format!("a version of {} bytes is too short", bytes.len())),
        },
        Some(2) => match (u64_at(bytes, 1), u64_at(bytes, 9), u64_at(bytes, 17)) {
            (Some(create_revision), Some(version), Some(lease)) => Ok(Some(Record {
                value: bytes[25..].to_vec(),
                create_revision,
                mod_revision: revision,
                version,
                lease: lease as i64,
            })),
            _ => Err(format!("a version of {} bytes is too short", bytes.len())),
        },
        _ => Err("a version has an unknown kind".to_string()),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into memory cannot fail")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("stored {what} is malformed: {error}"))
}

fn meta_u64(tree: &sled::Tree, name: &[u8]) -> Result<u64, String> {
    match tree.get(name).map_err(|error| error.to_string())? {
        None => Ok(0),
        Some(bytes) => {
            u64_at(&bytes, 0).ok_or_else(|| "a stored revision is malformed".to_string())
        }
    }
}

/// What a range read has gathered: the keys it returns and how many it has seen.
struct Collected {
    kvs: Vec<KeyValue>,
    found: u64,
    fetch: usize,
    count_all: bool,
}

impl Collected {
    fn wants_record(&self) -> bool {
        self.kvs.len() < self.fetch
    }

    /// Counts a key of the range (and keeps it, while more are wanted); false once nothing more is needed.
    fn visit(&mut self, key: &[u8], record: Option<Record>) -> bool {
        self.found += 1;
        if let Some(record) = record.filter(|_| self.wants_record()) {
            self.kvs.push(KeyValue::new(key, &record));
        }
        self.count_all || self.found <= self.fetch as u64
    }
}

/// The keyspace of one node, in one sled tree. Readers share it behind the state machine store's lock;
/// `write` needs it exclusively.
pub struct Keyspace {
    tree: sled::Tree,
    revision: u64,
    applied: Option<LogId>,
    compact_revision: u64,
    /// (`last_index`, client id) of every session, least recently used first.
    session_order: BTreeSet<(u64, u64)>,
}

impl Keyspace {
    /// Opens the keyspace a tree holds (an empty tree is an empty keyspace).
    pub fn open(tree: sled::Tree) -> Result<Self, String> {
        let (applied, revision) = match tree.get(META_STATE).map_err(|e| e.to_string())? {
            Some(bytes) => decode(&bytes, "applied state")?,
            // etcd's: an empty store is at revision 1, so the first write takes 2 and every revision a write
            // takes is at least 2 (etcd's recipes wait on `revision - 1` as an upper bound, where 0 is none).
            None => (None, INITIAL_REVISION),
        };
        let compact_revision = meta_u64(&tree, META_COMPACT)?;
        let mut session_order = BTreeSet::new();
        for item in tree.scan_prefix([SESSION]) {
            let (key, value) = item.map_err(|error| error.to_string())?;
            let client_id =
                u64_at(&key, 1).ok_or_else(|| "a session key is malformed".to_string())?;
            let record: SessionRecord = decode(&value, "session")?;
            session_order.insert((record.last_index, client_id));
        }
        Ok(Keyspace {
            tree,
            revision,
            applied,
            compact_revision,
            session_order,
        })
    }

    /// The tree the keyspace lives in.
    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The last log id written to this keyspace.
    pub(super) fn applied_log_id(&self) -> Option<LogId> {
        self.applied
    }

    /// The last log id applied to this keyspace and the membership it holds.
    pub(super) fn applied(&self) -> Result<(Option<LogId>, StoredMembership), String> {
        let membership = match self.tree.get(META_MEMBERSHIP).map_err(|e| e.to_string())? {
            Some(bytes) => decode(&bytes, "membership")?,
            None => StoredMembership::default(),
        };
        Ok((self.applied, membership))
    }

    /// Writes what an entry changed, with the entry's log id (and the membership, if it changed), in one
    /// atomic sled batch. Not flushed: the WAL holds the entry, and the log is purged only up to what a
    /// flush has made durable (see the storage module).
    pub fn write(
        &mut self,
        changes: &ChangeSet,
        applied: Option<LogId>,
        membership: Option<&StoredMembership>,
    ) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (key, record) in &changes.current {
            match record {
                Some(record) => batch.insert(prefixed(CURRENT, key), encode_current(record)),
                None => batch.remove(prefixed(CURRENT, key)),
            }
        }
        for entry in &changes.history {
            batch.insert(
                history_key(&entry.key, entry.revision),
                encode_version(entry.record.as_ref()),
            );
        }
        for (client_id, record) in &changes.sessions {
            let key = prefixed(SESSION, &client_id.to_be_bytes());
            match record {
                Some(record) => batch.insert(key, encode(record)),
                None => batch.remove(key),
            }
        }
        for (id, record) in &changes.leases {
            match record {
                Some(record) => batch.insert(lease_key(*id), encode(record)),
                None => batch.remove(lease_key(*id)),
            }
        }
        for ((id, key), attached) in &changes.lease_keys {
            match attached {
                true => batch.insert(lease_key_entry(*id, key), &[]),
                false => batch.remove(lease_key_entry(*id, key)),
            }
        }
        let applied = applied.or(self.applied);
        if changes.revision != self.revision || applied != self.applied {
            batch.insert(META_STATE, encode(&(applied, changes.revision)));
        }
        if let Some(compact_revision) = changes.compact_revision {
            batch.insert(META_COMPACT, &compact_revision.to_be_bytes());
        }
        if let Some(membership) = membership {
            batch.insert(META_MEMBERSHIP, encode(membership));
        }
        self.tree.apply_batch(batch)?;
        self.revision = changes.revision;
        self.applied = applied;
        if let Some(compact_revision) = changes.compact_revision {
            self.compact_revision = compact_revision;
        }
        for order in &changes.order_removed {
            self.session_order.remove(order);
        }
        self.session_order
            .extend(changes.order_added.iter().copied());
        debug_assert_eq!(self.session_order.len(), changes.session_count);
        Ok(())
    }

    /// Checks that `revision` (0: the current one) can be read and returns it.
    fn readable(&self, revision: u64) -> Result<u64, ReadError> {
        if revision == 0 {
            return Ok(self.revision);
        }
        if revision > self.revision {
            return Err(ReadError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision < self.compact_revision {
            return Err(ReadError::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        Ok(revision)
    }

    /// The key as it was at `revision` (0: now).
    pub fn get(&self, key: &[u8], revision: u64) -> Result<Option<KeyValue>, ReadError> {
        let at = self.readable(revision)?;
        if at == self.revision {
            return Ok(self
                .current(key)
                .map_err(|error| ReadError::Storage(error.0))?
                .map(|record| KeyValue::new(key, &record)));
        }
        let mut versions = self.tree.range(history_key(key, 0)..=history_key(key, at));
        match versions.next_back().transpose()? {
            None => Ok(None),
            Some((raw, bytes)) => {
                let (_, version_revision) = parse_history_key(&raw)
                    .ok_or_else(|| ReadError::Storage("a history key is malformed".to_string()))?;
                Ok(decode_version(&bytes, version_revision)
                    .map_err(ReadError::Storage)?
                    .map(|record| KeyValue::new(key, &record)))
            }
        }
    }

    /// The keys in `range` as they were at `revision` (0: now), in key order, at most `limit`.
    pub fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        revision: u64,
    ) -> Result<ScanResult, ReadError> {
        let (kvs, found) = self.collect(range, limit, false, revision)?;
        Ok(ScanResult {
            more: found > kvs.len() as u64,
            kvs,
        })
    }

    /// The first `fetch` keys in `range` as they were at `revision` (0: now), in key order, and how many keys
    /// the range held then in all (etcd's `count`: every key is visited).
    pub fn range_count(
        &self,
        range: &ScanRange,
        fetch: usize,
        revision: u64,
    ) -> Result<(Vec<KeyValue>, u64), ReadError> {
        self.collect(range, fetch, true, revision)
    }

    /// The first `fetch` keys of `range` at `revision`, and the number of keys seen: all of the range's with
    /// `count_all`, else at most one past `fetch`.
    fn collect(
        &self,
        range: &ScanRange,
        fetch: usize,
        count_all: bool,
        revision: u64,
    ) -> Result<(Vec<KeyValue>, u64), ReadError> {
        let at = self.readable(revision)?;
        let mut seen = Collected {
            kvs: Vec::new(),
            found: 0,
            fetch,
            count_all,
        };
        if at == self.revision {
            for item in self.current_entries(range) {
                let (raw, bytes) = item?;
                // Decoding is needed only for the keys returned.
                let record = match seen.wants_record() {
                    true => Some(decode_current(&bytes).map_err(ReadError::Storage)?),
                    false => None,
                };
                if !seen.visit(&raw[1..], record) {
                    break;
                }
            }
        } else {
            for versions in self.history_entries(range) {
                let versions = versions.map_err(ReadError::Storage)?;
                let Some(last) = versions.iter().rev().find(|version| version.revision <= at)
                else {
                    continue;
                };
                if last.is_tombstone() {
                    continue;
                }
                let record = match seen.wants_record() {
                    true => last.record().map_err(ReadError::Storage)?,
                    false => None,
                };
                if !seen.visit(&last.key().map_err(ReadError::Storage)?, record) {
                    break;
                }
            }
        }
        Ok((seen.kvs, seen.found))
    }

    /// Every version of the keys in `span` written at `from` or later, deletions included, in revision order
    /// (by key within a revision), at most `limit`; `None` if there are more. `from` below the compaction
    /// point is refused as compacted: versions before it may be gone.
    pub fn history_since(
        &self,
        span: &KeySpan,
        from: u64,
        limit: usize,
    ) -> Result<Option<Vec<HistoryEntry>>, ReadError> {
        if from < self.compact_revision {
            return Err(ReadError::Compacted {
                requested: from,
                compact_revision: self.compact_revision,
            });
        }
        let histories = match span.resolve() {
            Span::Key(key) => KeyHistories::new(
                self.tree
                    .range(history_key(key, from)..=history_key(key, u64::MAX)),
            ),
            Span::Range(range) => self.history_entries(&range),
        };
        let mut changes = Vec::new();
        for versions in histories {
            let versions = versions.map_err(ReadError::Storage)?;
            for version in versions.iter().filter(|version| version.revision >= from) {
                if changes.len() == limit {
                    return Ok(None);
                }
                changes.push(HistoryEntry {
                    key: version.key().map_err(ReadError::Storage)?,
                    revision: version.revision,
                    record: version.record().map_err(ReadError::Storage)?,
                });
            }
        }
        changes.sort_by(|a, b| (a.revision, &a.key).cmp(&(b.revision, &b.key)));
        Ok(Some(changes))
    }

    /// The current records of `range`, in key order.
    fn current_entries<'a>(
        &'a self,
        range: &'a ScanRange,
    ) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a {
        let (start, end) = match range {
            ScanRange::Prefix(prefix) => (prefixed(CURRENT, prefix), None),
            ScanRange::Range { start, end } => (
                prefixed(CURRENT, start),
                end.as_ref().map(|end| prefixed(CURRENT, end)),
            ),
        };
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Excluded(vec![CURRENT + 1]),
        };
        self.tree
            .range((Bound::Included(start), upper))
            .take_while(move |item| match (range, item) {
                (ScanRange::Prefix(prefix), Ok((raw, _))) => raw[1..].starts_with(prefix),
                _ => true,
            })
    }

    /// The history of `range`, a key at a time.
    fn history_entries(&self, range: &ScanRange) -> KeyHistories {
        let escaped = |prefix: &[u8]| {
            let mut out = vec![HISTORY];
            push_escaped(&mut out, prefix);
            out
        };
        KeyHistories::new(match range {
            ScanRange::Prefix(prefix) => self.tree.scan_prefix(escaped(prefix)),
            ScanRange::Range {
                start,
                end: Some(end),
            } => self.tree.range(escaped(start)..escaped(end)),
            ScanRange::Range { start, end: None } => {
                self.tree.range(escaped(start)..vec![HISTORY + 1])
            }
        })
    }

    /// A keyspace in a temporary sled database, removed when dropped: for tests and tools.
    pub fn temporary() -> Result<Keyspace, String> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|error| error.to_string())?;
        let tree = db
            .open_tree("keyspace-0")
            .map_err(|error| error.to_string())?;
        Keyspace::open(tree)
    }

    /// Applies the batch of the entry at `log_index` and writes what it changes, without a log id: the
    /// state machine store's `apply`, for tests and tools.
    pub fn apply(&mut self, log_index: u64, batch: &Batch) -> Result<BatchResponse, String> {
        let (response, changes) =
            apply_batch(self, log_index, batch).map_err(|error| error.to_string())?;
        self.write(&changes, None, None)
            .map_err(|error| error.to_string())?;
        Ok(response)
    }

    /// Deletes every version no read can see any more, at once (the compaction thread does it in steps).
    pub fn compact_all(&self) -> Result<(), String> {
        let mut resume = Vec::new();
        while let Some(next) = compact_history(&self.tree, self.compact_revision, &resume)? {
            resume = next;
        }
        Ok(())
    }

    /// The keyspace as a snapshot body now, loaded into a new temporary keyspace: a snapshot's round trip,
    /// for tests and tools.
    pub fn snapshot_copy(&self) -> Result<Keyspace, String> {
        Keyspace::from_snapshot_body(&self.snapshot_body()?)
    }

    /// The keyspace now as a snapshot body (what a snapshot file holds after its header).
    pub fn snapshot_body(&self) -> Result<Vec<u8>, String> {
        let sessions = self
            .unversioned_entries()
            .map_err(|error| error.to_string())?;
        let mut body = Vec::new();
        export_body(
            &self.tree,
            self.revision,
            self.compact_revision,
            &sessions,
            &mut body,
        )
        .map_err(|error| error.to_string())?;
        Ok(body)
    }

    /// A temporary keyspace loaded from a snapshot body; a malformed body is refused.
    pub fn from_snapshot_body(mut body: &[u8]) -> Result<Keyspace, String> {
        let copy = Keyspace::temporary()?;
        import_body(&copy.tree, &mut body, None, &StoredMembership::default())
            .map_err(|error| error.to_string())?;
        Keyspace::open(copy.tree)
    }

    /// Every entry of the tree but the applied state (log id and revision) and membership, in order: two
    /// replicas that applied the same entries (and compacted as far) hold the same.
    pub fn dump(&self) -> Result<Vec<RawEntry>, String> {
        self.tree
            .iter()
            .filter(|item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key != META_STATE && key != META_MEMBERSHIP)
            })
            .map(|item| {
                item.map(|(key, value)| (key.to_vec(), value.to_vec()))
                    .map_err(|error| error.to_string())
            })
            .collect()
    }

    /// Deletes every session of `tree` (a restored backup: its sessions' eviction order counts log indexes of
    /// another cluster's log, which a new log would contradict).
    pub(super) fn clear_sessions(tree: &sled::Tree) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix([SESSION]) {
            let (key, _) = item?;
            batch.remove(key);
        }
        tree.apply_batch(batch)
    }

    /// The raw entries with no history (sessions, leases and their keys): copied when a snapshot or backup
    /// is started, since no revision of theirs can be read later.
    pub(super) fn unversioned_entries(&self) -> Result<Vec<(sled::IVec, sled::IVec)>, sled::Error> {
        [SESSION, LEASE, LEASE_KEY]
            .into_iter()
            .flat_map(|prefix| self.tree.scan_prefix([prefix]))
            .collect()
    }

    /// Every lease, by id, with at most `limit` of them.
    pub fn leases(&self, limit: usize) -> Result<Vec<(i64, LeaseRecord)>, ReadError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([LEASE]).take(limit) {
            let (raw, bytes) = item?;
            let id = u64_at(&raw, 1)
                .ok_or_else(|| ReadError::Storage("a lease key is malformed".to_string()))?;
            out.push((
                id as i64,
                decode(&bytes, "lease").map_err(ReadError::Storage)?,
            ));
        }
        Ok(out)
    }
}

impl KeyspaceRead for Keyspace {
    fn revision(&self) -> u64 {
        self.revision
    }

    fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    fn current(&self, key: &[u8]) -> Result<Option<Record>, ReadFailure> {
        match self.tree.get(prefixed(CURRENT, key)).map_err(failure)? {
            Some(bytes) => decode_current(&bytes).map(Some).map_err(ReadFailure),
            None => Ok(None),
        }
    }

    fn current_range(
        &self,
        range: &ScanRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, ReadFailure> {
        let mut out = Vec::new();
        for item in self.current_entries(range).take(limit) {
            let (raw, bytes) = item.map_err(failure)?;
            out.push((
                raw[1..].to_vec(),
                decode_current(&bytes).map_err(ReadFailure)?,
            ));
        }
        Ok(out)
    }

    fn session(&self, client_id: u64) -> Result<Option<SessionRecord>, ReadFailure> {
        match self
            .tree
            .get(prefixed(SESSION, &client_id.to_be_bytes()))
            .map_err(failure)?
        {
            Some(bytes) => decode(&bytes, "session").map(Some).map_err(ReadFailure),
            None => Ok(None),
        }
    }

    fn session_count(&self) -> usize {
        self.session_order.len()
    }

    fn oldest_sessions(&self, count: usize) -> Result<Vec<(u64, u64)>, ReadFailure> {
        Ok(self.session_order.iter().take(count).copied().collect())
    }

    fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, ReadFailure> {
        match self.tree.get(lease_key(id)).map_err(failure)? {
            Some(bytes) => decode(&bytes, "lease").map(Some).map_err(ReadFailure),
            None => Ok(None),
        }
    }

    fn lease_keys(&self, id: i64, limit: usize) -> Result<Vec<Vec<u8>>, ReadFailure> {
        let prefix = lease_key_entry(id, &[]);
        self.tree
            .scan_prefix(&prefix)
            .take(limit)
            .map(|item| {
                item.map(|(raw, _)| raw[prefix.len()..].to_vec())
                    .map_err(failure)
            })
            .collect()
    }
}

/// Which of one key's versions (in revision order) a read at `compact_revision` or later cannot see: every
/// version at or below it but the last, and that one too if it is a tombstone.
fn obsolete_versions(versions: &[Version], compact_revision: u64) -> Vec<bool> {
    let mut obsolete: Vec<bool> = versions
        .iter()
        .map(|version| version.revision <= compact_revision)
        .collect();
    if let Some(last) = obsolete.iter().rposition(|&below| below) {
        obsolete[last] = versions[last].is_tombstone();
    }
    obsolete
}

/// One step of the physical compaction of `tree` to `compact_revision`: examines the versions of the keys
/// from `resume` (a history key; empty to start) until about `COMPACTION_STEP_VERSIONS`, and deletes the
/// obsolete ones in one batch. Returns where the next step starts, or `None` when the whole history was
/// examined. Safe while entries are applied: they only add versions above the compaction point.
pub fn compact_history(
    tree: &sled::Tree,
    compact_revision: u64,
    resume: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    let start = if resume.is_empty() {
        vec![HISTORY]
    } else {
        resume.to_vec()
    };
    let mut batch = sled::Batch::default();
    let mut examined = 0;
    let mut next = None;
    for versions in history_from(tree, start) {
        let versions = versions?;
        if examined >= COMPACTION_STEP_VERSIONS {
            next = Some(history_group(&versions[0].raw).to_vec());
            break;
        }
        examined += versions.len();
        let obsolete = obsolete_versions(&versions, compact_revision);
        for (version, obsolete) in versions.iter().zip(obsolete) {
            if obsolete {
                batch.remove(version.raw.clone());
            }
        }
    }
    tree.apply_batch(batch).map_err(|error| error.to_string())?;
    Ok(next)
}

/// Bytes of a snapshot body, streamed: the revision and compaction point, the session entries, then every
/// history version at or below the revision that a read at the compaction point or later can see, each as
/// `[u32 length][tree key][u32 length][value]`; then `BODY_END` and the count of entries.
pub fn export_body(
    tree: &sled::Tree,
    revision: u64,
    compact_revision: u64,
    sessions: &[(sled::IVec, sled::IVec)],
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut count = 0u64;
    out.write_all(&revision.to_be_bytes())?;
    out.write_all(&compact_revision.to_be_bytes())?;
    let mut put = |out: &mut dyn Write, key: &[u8], value: &[u8]| -> io::Result<()> {
        out.write_all(&(key.len() as u32).to_be_bytes())?;
        out.write_all(key)?;
        out.write_all(&(value.len() as u32).to_be_bytes())?;
        out.write_all(value)?;
        count += 1;
        Ok(())
    };
    for (key, value) in sessions {
        put(out, key, value)?;
    }
    for versions in history_from(tree, vec![HISTORY]) {
        let mut versions = versions.map_err(io::Error::other)?;
        versions.retain(|version| version.revision <= revision);
        let obsolete = obsolete_versions(&versions, compact_revision);
        for (version, obsolete) in versions.iter().zip(obsolete) {
            if !obsolete {
                put(out, &version.raw, &version.value)?;
            }
        }
    }
    out.write_all(&BODY_END.to_be_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    Ok(count)
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_be_bytes(bytes))
}

fn read_field(input: &mut impl Read, length: u32) -> io::Result<Vec<u8>> {
    let length = length as usize;
    if length > BODY_FIELD_BYTES_MAX {
        return Err(io::Error::other(format!(
            "a snapshot field of {length} bytes is over the limit of {BODY_FIELD_BYTES_MAX}"
        )));
    }
    let mut bytes = vec![0; length];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Loads a snapshot body written by `export_body` into `tree` (which must be empty), rebuilding the current
/// records from the history, and records `applied` and `membership` with it. Not flushed.
pub fn import_body(
    tree: &sled::Tree,
    input: &mut impl Read,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> io::Result<()> {
    let revision = read_u64(input)?;
    let compact_revision = read_u64(input)?;
    let mut count = 0u64;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    // The last version read of the key being loaded: its current record, if a value.
    let mut last: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    let current_of = |last: Option<(Vec<u8>, u64, Vec<u8>)>,
                      batch: &mut sled::Batch|
     -> io::Result<()> {
        if let Some((raw, version_revision, value)) = last {
            let (key, _) = parse_history_key(&raw)
                .ok_or_else(|| io::Error::other("a history key in the snapshot is malformed"))?;
            if let Some(record) =
                decode_version(&value, version_revision).map_err(io::Error::other)?
            {
                batch.insert(prefixed(CURRENT, &key), encode_current(&record));
            }
        }
        Ok(())
    };
    loop {
        let key_length = read_u32(input)?;
        if key_length == BODY_END {
            break;
        }
        let key = read_field(input, key_length)?;
        let value_length = read_u32(input)?;
        let value = read_field(input, value_length)?;
        count += 1;
        match key.first() {
            Some(&HISTORY) => {
                let (_, version_revision) = parse_history_key(&key).ok_or_else(|| {
                    io::Error::other("a history key in the snapshot is malformed")
                })?;
                if version_revision > revision {
                    return Err(io::Error::other("a snapshot version is past its revision"));
                }
                let same = last
                    .as_ref()
                    .is_some_and(|(raw, _, _)| history_group(raw) == history_group(&key));
                if !same {
                    current_of(last.take(), &mut batch)?;
                }
                last = Some((key.clone(), version_revision, value.clone()));
            }
            Some(&SESSION | &LEASE | &LEASE_KEY) => {}
            _ => return Err(io::Error::other("a snapshot entry has an unknown kind")),
        }
        batch.insert(key, value);
        in_batch += 1;
        if in_batch >= IMPORT_BATCH_ENTRIES {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
            in_batch = 0;
        }
    }
    current_of(last.take(), &mut batch)?;
    let expected = read_u64(input)?;
    if expected != count {
        return Err(io::Error::other(format!(
            "the snapshot holds {count} entries but says {expected}"
        )));
    }
    // Written as `write` writes them: only once they are above 0 (the state: once anything was applied).
    if revision > 0 || applied.is_some() {
        batch.insert(META_STATE, encode(&(applied, revision)));
    }
    if compact_revision > 0 {
        batch.insert(META_COMPACT, &compact_revision.to_be_bytes());
    }
    batch.insert(META_MEMBERSHIP, encode(membership));
    tree.apply_batch(batch).map_err(io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_keep_key_order_and_round_trip() {
        let keys: [&[u8]; 6] = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00b"];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|key| history_key(key, 7)).collect();
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "escaped keys sort as the keys do");
        for key in keys {
            assert_eq!(
                parse_history_key(&history_key(key, 42)),
                Some((key.to_vec(), 42))
            );
        }
        assert!(history_key(b"a", u64::MAX) < history_key(b"a\x00", 0));
        assert!(history_key(b"a", u64::MAX) < history_key(b"ab", 0));
    }

    #[test]
    fn obsolete_versions_keep_the_last_value_at_or_below_the_point() {
        let version = |revision: u64, tombstone: bool| Version {
            raw: history_key(b"k", revision).into(),
            value: if tombstone { vec![0] } else { vec![1] }.into(),
            revision,
        };
        let versions = |revisions: [u64; 4]| {
            let tombstones = [false, true, false, false];
            revisions
                .iter()
                .zip(tombstones)
                .map(|(revision, tombstone)| version(*revision, tombstone))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            obsolete_versions(&versions([1, 2, 3, 9]), 5),
            vec![true, true, false, false]
        );
        assert_eq!(
            obsolete_versions(&versions([1, 2, 3, 9])[..2], 5),
            vec![true, true]
        );
        assert_eq!(
            obsolete_versions(&versions([6, 7, 8, 9]), 5),
            vec![false; 4]
        );
    }
}
