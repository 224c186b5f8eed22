//! Watches: the changes to a key or range from a start revision, in revision order, each exactly once, with
//! no gaps, served by any node from what it has applied.
//!
//! A `Watcher` subscribes to the versions every `apply` writes (`StateMachineStore::subscribe_changes`)
//! before it reads the store's revision; it replays the history in sled from its start revision up to that
//! revision, then follows the applied changes. A watcher that falls more than `APPLIED_CHANGES_QUEUED`
//! batches behind reads the history from sled again, from the revision after the last one it gave out. A
//! start revision below the compaction point ends the watch (`WatchEnd::Compacted`): versions before it may
//! be gone.

use std::collections::VecDeque;

use tokio::sync::broadcast;

use crate::kv::changes::{HistoryEntry, KeyspaceRead};
use crate::kv::state_machine::{KeySpan, KeyValue};
use crate::storage::{AppliedChanges, ReadError, StateMachineStore};

/// Most versions one replay from sled reads; a watch whose start is further behind than this is ended
/// (`WatchEnd::TooFarBehind`) and may be started again from a later revision.
pub const WATCH_REPLAY_CHANGES_MAX: usize = 100_000;
/// Most changes handed out at once (one etcd `WatchResponse`), unless one revision (a transaction) holds more:
/// a revision is never split.
pub const WATCH_BATCH_CHANGES_MAX: usize = 1_000;

/// Why a watch ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    #[error("the history before revision {compact_revision} was compacted")]
    Compacted { compact_revision: u64 },
    #[error("more than {WATCH_REPLAY_CHANGES_MAX} changes to replay from revision {from}; watch from a later revision")]
    TooFarBehind { from: u64 },
    #[error("the node is shutting down")]
    Closed,
    #[error("reading the history failed: {0}")]
    Failed(String),
}

/// One watch's position in the stream of changes.
pub struct Watcher {
    store: StateMachineStore,
    span: KeySpan,
    changes: broadcast::Receiver<AppliedChanges>,
    /// The first revision not yet handed out.
    next: u64,
    /// Changes read but not yet handed out.
    ready: VecDeque<HistoryEntry>,
    /// Whether to read the history from sled before following the channel again.
    replay: bool,
}

impl Watcher {
    /// A watch of `span` from `start` (0: from the revision after the current one). The revision it starts
    /// after is the store's now; a `start` below the compaction point is refused.
    pub fn start(store: StateMachineStore, span: KeySpan, start: u64) -> Result<Watcher, WatchEnd> {
        // Subscribe first, then read the revision under apply's lock: every change after it comes through
        // the channel (see `StateMachineStore::apply`).
        let changes = store.subscribe_changes();
        let current = store.applied_revision();
        let (_, compact_revision) = store.revisions();
        let next = if start == 0 { current + 1 } else { start };
        if next < compact_revision {
            return Err(WatchEnd::Compacted { compact_revision });
        }
        Ok(Watcher {
            store,
            span,
            changes,
            next,
            ready: VecDeque::new(),
            replay: next <= current,
        })
    }

    /// The revision through which every change of this watch has been handed out.
    pub fn delivered_through(&self) -> u64 {
        match self.ready.front() {
            Some(change) => change.revision - 1,
            None => self.next - 1,
        }
    }

    /// The next changes, at most `WATCH_BATCH_CHANGES_MAX`, in revision order; waits for them. Empty when
    /// the store changed with nothing for this watch (`delivered_through` moved on).
    pub async fn next_batch(&mut self) -> Result<Vec<HistoryEntry>, WatchEnd> {
        loop {
            if !self.ready.is_empty() {
                // Never cut inside a revision: etcd's clients resume from the revision after a response's.
                let mut count = self.ready.len().min(WATCH_BATCH_CHANGES_MAX);
                while count < self.ready.len()
                    && self.ready[count].revision == self.ready[count - 1].revision
                {
                    count += 1;
                }
                return Ok(self.ready.drain(..count).collect());
            }
            if self.replay {
                self.replay_from_sled().await?;
                continue;
            }
            match self.changes.recv().await {
                Ok(batch) => {
                    self.take(&batch);
                    if self.ready.is_empty() {
                        // Nothing for this watch, but it has seen further: say so (progress).
                        return Ok(Vec::new());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(
                        missed,
                        from = self.next,
                        "a watch fell behind the applied changes; reading them from the history"
                    );
                    self.replay = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Closed),
            }
        }
    }

    /// Keeps the changes of an applied batch that this watch wants and has not handed out.
    fn take(&mut self, batch: &[HistoryEntry]) {
        let mut last = None;
        for entry in batch {
            if entry.revision >= self.next && self.span.contains(&entry.key) {
                self.ready.push_back(entry.clone());
            }
            last = Some(entry.revision);
        }
        if let Some(last) = last {
            self.next = self.next.max(last + 1);
        }
    }

    /// Reads the history from `next` up to the store's revision now; the channel goes on from there.
    async fn replay_from_sled(&mut self) -> Result<(), WatchEnd> {
        let store = self.store.clone();
        let span = self.span.clone();
        let from = self.next;
        let read = tokio::task::spawn_blocking(move || {
            store.read(|applied| {
                let upto = applied.keyspace.revision();
                applied
                    .keyspace
                    .history_since(&span, from, WATCH_REPLAY_CHANGES_MAX)
                    .map(|changes| (changes, upto))
            })
        })
        .await
        .map_err(|error| WatchEnd::Failed(error.to_string()))?
        .map_err(|error| WatchEnd::Failed(error.to_string()))?;
        let (changes, upto) = match read {
            Ok((Some(changes), upto)) => (changes, upto),
            Ok((None, _)) => return Err(WatchEnd::TooFarBehind { from }),
            Err(ReadError::Compacted {
                compact_revision, ..
            }) => return Err(WatchEnd::Compacted { compact_revision }),
            Err(error) => return Err(WatchEnd::Failed(error.to_string())),
        };
        self.ready.extend(changes);
        self.next = self.next.max(upto + 1);
        self.replay = false;
        Ok(())
    }
}

/// A change as clients see it: whether it deleted the key, and the key after it (for a deletion only the key
/// and, as `mod_revision`, the deletion's revision).
pub fn changed_kv(change: HistoryEntry) -> (bool, KeyValue) {
    match change.record {
        Some(record) => (false, KeyValue::new(&change.key, &record)),
        None => (
            true,
            KeyValue {
                key: change.key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: change.revision,
                version: 0,
                lease: 0,
            },
        ),
    }
}

/// Each change's key as it was just before it (`None` for a new key, or one whose earlier versions were
/// compacted away), read from the history. Blocking: sled reads.
pub fn previous_versions(
    store: &StateMachineStore,
    changes: &[HistoryEntry],
) -> Result<Vec<Option<KeyValue>>, String> {
    store
        .read(|applied| {
            changes
                .iter()
                .map(|change| match change.revision {
                    0 | 1 => None,
                    revision => applied
                        .keyspace
                        .get(&change.key, revision - 1)
                        .ok()
                        .flatten(),
                })
                .collect()
        })
        .map_err(|error| error.to_string())
}
