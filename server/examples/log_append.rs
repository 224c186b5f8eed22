//! Measures what power-loss durability costs: Raft log append throughput of the real `LogStore` (the WAL plus
//! the group-commit flusher) with `SyncMode::Device` (`fdatasync` of the WAL per flush, what nodes use)
//! against `SyncMode::Process` (the WAL's writes alone: survives kill -9, not a power failure).
//!
//! Each writer appends single entries and waits for the durable callback before its next append, as a
//! leader does for one client at a time; with many writers the flusher serves many appends per flush.
//! The log takes entries in index order only, so a writer takes its index and appends under one lock and
//! waits for the flush outside it.
//!
//! `cargo run --release -p raftkv-server --example log_append -- [ENTRIES_PER_WRITER] [VALUE_BYTES]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};
use raftkv_server::kv::state_machine::{Batch, Command, Request};
use raftkv_server::raft::types::{Entry, LogId};
use raftkv_server::storage::{self, StoreOptions, SyncMode};

/// Entries each writer appends unless the first argument says otherwise.
const ENTRIES_PER_WRITER_DEFAULT: u64 = 2_000;
/// Value size unless the second argument says otherwise.
const VALUE_BYTES_DEFAULT: usize = 256;
/// Writer counts measured, one row each.
const WRITER_COUNTS: [u64; 3] = [1, 16, 64];

fn entry(index: u64, value_bytes: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch::single(Request {
            session: None,
            command: Command::Put {
                key: format!("key-{index}").into_bytes(),
                value: vec![b'v'; value_bytes],
            },
        })),
    }
}

/// Appends `writers * per_writer` entries from `writers` concurrent tasks; returns the elapsed time and the
/// number of flushes the store made.
async fn run(mode: SyncMode, writers: u64, per_writer: u64, value_bytes: usize) -> (Duration, u64) {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let options = StoreOptions {
        sync_mode: mode,
        ..StoreOptions::default()
    };
    let (log, _state_machine) =
        storage::open_with(dir.path(), 1, "bench", options).expect("open store");
    let next_index = Arc::new(tokio::sync::Mutex::new(1u64));
    let stats = log.stats();
    let flushes_before = stats.flushes.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let mut log = log.clone();
        let next_index = next_index.clone();
        tasks.spawn(async move {
            for _ in 0..per_writer {
                let mut next = next_index.lock().await;
                let mut append = Box::pin(log.blocking_append([entry(*next, value_bytes)]));
                // The store's `append` does not await, so the first poll appends (in index order, under the
                // lock) and hands the callback to the flusher; the rest of the future waits for the flush.
                let first_poll = futures::poll!(append.as_mut());
                *next += 1;
                drop(next);
                match first_poll {
                    std::task::Poll::Ready(result) => result.expect("append"),
                    std::task::Poll::Pending => append.await.expect("append"),
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("writer task");
    }
    let elapsed = started.elapsed();
    let flushes = stats.flushes.load(std::sync::atomic::Ordering::Relaxed) - flushes_before;
    (elapsed, flushes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let per_writer: u64 = args
        .next()
        .map(|text| text.parse().expect("ENTRIES_PER_WRITER must be a number"))
        .unwrap_or(ENTRIES_PER_WRITER_DEFAULT);
    let value_bytes: usize = args
        .next()
        .map(|text| text.parse().expect("VALUE_BYTES must be a number"))
        .unwrap_or(VALUE_BYTES_DEFAULT);
    println!("| sync mode | writers | entries | value bytes | entries/s | entries per flush |");
    println!("|---|---|---|---|---|---|");
    for writers in WRITER_COUNTS {
        for mode in [SyncMode::Process, SyncMode::Device] {
            let (elapsed, flushes) = run(mode, writers, per_writer, value_bytes).await;
            let entries = writers * per_writer;
            println!(
                "| {mode:?} | {writers} | {entries} | {value_bytes} | {:.0} | {:.1} |",
                entries as f64 / elapsed.as_secs_f64(),
                entries as f64 / flushes.max(1) as f64,
            );
        }
    }
}
