//! The group-commit flusher: one thread that takes every append callback queued, syncs the WAL once for
//! all of them, and completes them. openraft is told an append is durable only from here.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::LogFlushed;

use super::wal::Wal;
use super::StorageStats;
use crate::raft::types::TypeConfig;

/// One append waiting for its flush. It carries the WAL handle so that the idle flusher holds none: once the
/// last `LogStore` is dropped after its appends are acknowledged, every WAL file is closed (and sled, which
/// the flusher never touches, released its lock), so the store can be reopened at once.
pub(super) struct FlushRequest {
    pub(super) wal: Arc<Wal>,
    /// openraft's callback, completed after the flush; `None` when it was completed at the append (the
    /// leader's own entries, see `LogStore::append`).
    pub(super) callback: Option<LogFlushed<TypeConfig>>,
    /// Entries in the append, for the entries-per-flush figure.
    pub(super) entries: u64,
}

/// The flusher thread: waits for append callbacks, drains all that are queued, syncs the WAL once, completes
/// them. It ends when every `LogStore` handle is gone.
pub(super) fn run_flusher(receiver: Receiver<FlushRequest>, stats: Arc<StorageStats>) {
    while let Ok(FlushRequest {
        wal,
        callback: first,
        entries,
    }) = receiver.recv()
    {
        let mut appends = 1;
        let mut batch: Vec<_> = first.into_iter().collect();
        let mut batch_entries = entries;
        while let Ok(next) = receiver.try_recv() {
            appends += 1;
            batch.extend(next.callback);
            batch_entries += next.entries;
        }
        let started = Instant::now();
        let result = wal.sync();
        // Let go of the WAL before completing the callbacks (see `FlushRequest`).
        drop(wal);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.flushed_appends.fetch_add(appends, Ordering::Relaxed);
        stats
            .flushed_entries
            .fetch_add(batch_entries, Ordering::Relaxed);
        stats
            .flush_micros_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Err(error) = &result {
            // A leader's early-acknowledged entries have no callback left to fail: the WAL is now marked
            // failed, so they are never applied nor reported committed, and the next log call fails.
            tracing::error!(%error, "syncing the Raft log failed; this node must restart");
        }
        for callback in batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}
