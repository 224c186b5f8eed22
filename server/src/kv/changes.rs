//! What the state machine reads and what it writes: the `KeyspaceRead` view of the applied state, and the
//! `ChangeSet` that log entries make, read back through `Pending` while later entries are applied.
//!
//! The storage implements `KeyspaceRead` over sled and writes a `ChangeSet` (of one entry or of several)
//! in one atomic sled batch together with the last applied log id; tests implement it over maps. Keeping the rules on this side of the trait is what
//! keeps them pure.

use std::collections::{BTreeMap, BTreeSet};

use super::types::{LeaseRecord, Record, ScanRange, SessionRecord, SESSIONS_MAX};

/// A read of the applied state failed (the storage could not read its own data). Applying stops there: the
/// node cannot go on without its state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("reading the applied state failed: {0}")]
pub struct ReadFailure(pub String);

/// The applied state, as the state machine reads it.
pub trait KeyspaceRead {
    /// The store's revision: that of the last write that changed it, 1 for an empty store (as etcd's).
    fn revision(&self) -> u64;
    /// The oldest revision still readable; 0 or 1 when nothing was ever compacted.
    fn compact_revision(&self) -> u64;
    /// The key's current record, if it exists.
    fn current(&self, key: &[u8]) -> Result<Option<Record>, ReadFailure>;
    /// The current records of the first `limit` keys in `range`, in key order.
    fn current_range(
        &self,
        range: &ScanRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, ReadFailure>;
    /// What the session table remembers of a client.
    fn session(&self, client_id: u64) -> Result<Option<SessionRecord>, ReadFailure>;
    /// Number of sessions remembered.
    fn session_count(&self) -> usize;
    /// The least recently used sessions, oldest first, as (`last_index`, client id): at most `count` of them.
    fn oldest_sessions(&self, count: usize) -> Result<Vec<(u64, u64)>, ReadFailure>;
    /// The lease, if it exists.
    fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, ReadFailure>;
    /// The keys attached to the lease, in key order, at most `limit`.
    fn lease_keys(&self, id: i64, limit: usize) -> Result<Vec<Vec<u8>>, ReadFailure>;
}

/// One version of a key written to the history: `record` is `None` for a deletion (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub key: Vec<u8>,
    pub revision: u64,
    pub record: Option<Record>,
}

/// Everything one log entry changes. Written as a whole or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The store's revision after the entry (unchanged if nothing changed).
    pub revision: u64,
    /// The new compaction point, if the entry compacted.
    pub compact_revision: Option<u64>,
    /// Keys whose current record changed: the new record, or `None` if deleted.
    pub current: BTreeMap<Vec<u8>, Option<Record>>,
    /// Versions written, in revision order.
    pub history: Vec<HistoryEntry>,
    /// Sessions that changed: the new record, or `None` if evicted.
    pub sessions: BTreeMap<u64, Option<SessionRecord>>,
    /// Eviction-order entries (`last_index`, client id) removed.
    pub order_removed: BTreeSet<(u64, u64)>,
    /// Eviction-order entries added.
    pub order_added: BTreeSet<(u64, u64)>,
    /// Sessions remembered after the entry.
    pub session_count: usize,
    /// Leases that changed: the new record, or `None` if revoked.
    pub leases: BTreeMap<i64, Option<LeaseRecord>>,
    /// Keys attached to a lease (`true`) or detached from it (`false`).
    pub lease_keys: BTreeMap<(i64, Vec<u8>), bool>,
}

impl ChangeSet {
    /// The change set of an entry that changes nothing (a blank or membership entry).
    pub fn unchanged(base: &impl KeyspaceRead) -> ChangeSet {
        ChangeSet {
            revision: base.revision(),
            session_count: base.session_count(),
            ..ChangeSet::default()
        }
    }
}

/// The state as the entry being applied sees it: `base` with the entry's changes so far on top.
pub struct Pending<'a, V: KeyspaceRead> {
    base: &'a V,
    changes: ChangeSet,
}

impl<'a, V: KeyspaceRead> Pending<'a, V> {
    pub fn new(base: &'a V) -> Self {
        Pending {
            base,
            changes: ChangeSet::unchanged(base),
        }
    }

    /// Goes on from `changes`, made on top of `base` by earlier entries and not yet written: `base` must not
    /// have changed since.
    pub fn resume(base: &'a V, changes: ChangeSet) -> Self {
        Pending { base, changes }
    }

    pub fn into_changes(self) -> ChangeSet {
        self.changes
    }

    /// Keys the changes so far write: current records, versions, sessions and leases.
    pub fn writes(&self) -> usize {
        self.changes.current.len()
            + self.changes.history.len()
            + self.changes.sessions.len()
            + self.changes.leases.len()
            + self.changes.lease_keys.len()
    }

    pub fn revision(&self) -> u64 {
        self.changes.revision
    }

    /// Takes the next revision for a write that changes the store.
    pub fn next_revision(&mut self) -> u64 {
        self.changes.revision += 1;
        self.changes.revision
    }

    pub fn compact_revision(&self) -> u64 {
        self.changes
            .compact_revision
            .unwrap_or_else(|| self.base.compact_revision())
    }

    pub fn set_compact_revision(&mut self, revision: u64) {
        self.changes.compact_revision = Some(revision);
    }

    pub fn current(&self, key: &[u8]) -> Result<Option<Record>, ReadFailure> {
        match self.changes.current.get(key) {
            Some(record) => Ok(record.clone()),
            None => self.base.current(key),
        }
    }

    /// The current records of the first `limit` keys in `range`, in key order, the changes so far included.
    pub fn current_range(
        &self,
        range: &ScanRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, ReadFailure> {
        let changed: Vec<(&Vec<u8>, &Option<Record>)> = self
            .changes
            .current
            .range(range_start(range).to_vec()..)
            .take_while(|(key, _)| before_end(range, key))
            .collect();
        // Each change removes at most one of the base's keys: asking for that many more is enough.
        let mut merged: BTreeMap<Vec<u8>, Record> = self
            .base
            .current_range(range, limit.saturating_add(changed.len()))?
            .into_iter()
            .collect();
        let fetched_all = merged.len() < limit.saturating_add(changed.len());
        let last_fetched = merged.keys().next_back().cloned();
        for (key, record) in changed {
            // A key past the base's last one may be preceded by base keys not fetched.
            if !fetched_all && last_fetched.as_ref().is_some_and(|last| key > last) {
                break;
            }
            match record {
                Some(record) => merged.insert(key.clone(), record.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    pub fn set_current(&mut self, key: &[u8], record: Option<Record>) {
        self.changes.current.insert(key.to_vec(), record);
    }

    pub fn record_history(&mut self, entry: HistoryEntry) {
        self.changes.history.push(entry);
    }

    pub fn session(&self, client_id: u64) -> Result<Option<SessionRecord>, ReadFailure> {
        match self.changes.sessions.get(&client_id) {
            Some(record) => Ok(record.clone()),
            None => self.base.session(client_id),
        }
    }

    /// Remembers `record` as the client's last write. A new client beyond `SESSIONS_MAX` evicts the least
    /// recently used session, which is the same one on every node.
    pub fn remember(&mut self, client_id: u64, record: SessionRecord) -> Result<(), ReadFailure> {
        match self.session(client_id)? {
            Some(old) => self.unorder(old.last_index, client_id),
            None => {
                if self.changes.session_count >= SESSIONS_MAX {
                    if let Some((index, evicted)) = self.least_recent()? {
                        self.unorder(index, evicted);
                        self.changes.sessions.insert(evicted, None);
                        self.changes.session_count -= 1;
                    }
                }
                self.changes.session_count += 1;
            }
        }
        self.changes
            .order_added
            .insert((record.last_index, client_id));
        self.changes.sessions.insert(client_id, Some(record));
        Ok(())
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, ReadFailure> {
        match self.changes.leases.get(&id) {
            Some(record) => Ok(*record),
            None => self.base.lease(id),
        }
    }

    pub fn set_lease(&mut self, id: i64, record: Option<LeaseRecord>) {
        self.changes.leases.insert(id, record);
    }

    /// Attaches `key` to lease `id` (which exists) or detaches it, counting the lease's keys.
    pub fn attach(&mut self, id: i64, key: &[u8], attached: bool) -> Result<(), ReadFailure> {
        if let Some(mut record) = self.lease(id)? {
            record.keys = if attached {
                record.keys + 1
            } else {
                record.keys.saturating_sub(1)
            };
            self.set_lease(id, Some(record));
        }
        self.changes.lease_keys.insert((id, key.to_vec()), attached);
        Ok(())
    }

    /// The keys attached to lease `id` now, the changes so far included, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, ReadFailure> {
        let mut keys: BTreeSet<Vec<u8>> =
            self.base.lease_keys(id, usize::MAX)?.into_iter().collect();
        for ((lease, key), attached) in self.changes.lease_keys.range((id, Vec::new())..) {
            if *lease != id {
                break;
            }
            if *attached {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn unorder(&mut self, index: u64, client_id: u64) {
        if !self.changes.order_added.remove(&(index, client_id)) {
            self.changes.order_removed.insert((index, client_id));
        }
    }

    /// The least recently used session now. Entries this entry added are newer than any in `base`, so the
    /// oldest is the first of `base` this entry did not remove, or else the first it added.
    fn least_recent(&self) -> Result<Option<(u64, u64)>, ReadFailure> {
        let skip = self.changes.order_removed.len();
        let from_base = self
            .base
            .oldest_sessions(skip + 1)?
            .into_iter()
            .find(|order| !self.changes.order_removed.contains(order));
        Ok(from_base.or_else(|| self.changes.order_added.first().copied()))
    }
}

/// The first key `range` may hold.
fn range_start(range: &ScanRange) -> &[u8] {
    match range {
        ScanRange::Prefix(prefix) => prefix,
        ScanRange::Range { start, .. } => start,
    }
}

/// Whether `key`, at or after the range's start, is still inside it.
fn before_end(range: &ScanRange, key: &[u8]) -> bool {
    match range {
        ScanRange::Prefix(prefix) => key.starts_with(prefix),
        ScanRange::Range { end: None, .. } => true,
        ScanRange::Range { end: Some(end), .. } => key < end.as_slice(),
    }
}
