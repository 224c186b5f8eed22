//! When this node builds a snapshot, and so purges its log behind it: by entries and by size, at a moment of
//! its own.
//!
//! openraft's policy (a snapshot every N entries, at the same index on every node) is off
//! (`SnapshotPolicy::Never`); this task triggers the builds instead. A snapshot is due once the log since the
//! last one holds either
//! - `--snapshot-after-entries` entries (etcd's snapshot count), or
//! - `--snapshot-after-mb` megabytes, or as many bytes as the last snapshot if that is larger: a snapshot then
//!   never writes more than the log it lets go, whatever the sizes of keys, values and keyspace.
//!
//! Each threshold is drawn anew for every snapshot, uniformly between `1 - SNAPSHOT_THRESHOLD_JITTER` times its
//! value and its value, so the nodes of a cluster build at different moments: a build on one node then costs
//! the writes nothing, since the other two still make a quorum (measured in BENCHMARKS.md, "Snapshots under
//! load"). A build already under way is waited for (at most `SNAPSHOT_WAIT_MAX`), and building takes at most
//! `SNAPSHOT_BUSY_SHARE_MAX` of the node's time, before the next draw.

use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::raft::types::Raft;
use crate::storage::{LogStore, StorageStats};

/// How far below its flag a threshold may be drawn (a fraction of it).
pub const SNAPSHOT_THRESHOLD_JITTER: f64 = 0.25;
/// The shortest time between two looks at the log; between them the task sleeps or waits for an apply.
pub const SCHEDULE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// The largest share of time a node spends building snapshots: after a build that took `d`, the next starts no
/// sooner than `d * (1 / SNAPSHOT_BUSY_SHARE_MAX - 1)` later, however small the thresholds. Without it, a log
/// that reaches the thresholds faster than a snapshot is written keeps every node building all the time, and
/// the disk they share stalls every write (BENCHMARKS.md: a p99 of 480 ms instead of 9 ms).
pub const SNAPSHOT_BUSY_SHARE_MAX: f64 = 0.25;
/// The longest wait for a triggered snapshot to be built before the log is looked at again (a build of a
/// large keyspace at `storage`'s paced write takes minutes, not hours).
pub const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(600);

/// The flags: the log since the last snapshot that makes the next one due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSchedule {
    pub after_entries: u64,
    pub after_bytes: u64,
}

/// The thresholds drawn for the next snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub entries: u64,
    pub bytes: u64,
}

/// The log since the last snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSince {
    pub entries: u64,
    pub bytes: u64,
}

impl SnapshotSchedule {
    /// Draws the thresholds of the next snapshot; `last_snapshot_bytes` is the size of the last one built
    /// here (0 if none). Each threshold is at least 1.
    pub fn draw(&self, last_snapshot_bytes: u64, rng: &mut impl Rng) -> Thresholds {
        let mut jittered = |value: u64| {
            let factor = 1.0 - rng.random_range(0.0..=SNAPSHOT_THRESHOLD_JITTER);
            ((value as f64 * factor) as u64).max(1)
        };
        Thresholds {
            entries: jittered(self.after_entries),
            bytes: jittered(self.after_bytes.max(last_snapshot_bytes)),
        }
    }
}

impl Thresholds {
    pub fn due(&self, since: LogSince) -> bool {
        since.entries >= self.entries || since.bytes >= self.bytes
    }
}

/// How long to wait after a build that took `build` before the next may start (`SNAPSHOT_BUSY_SHARE_MAX`).
pub fn rest_after(build: Duration) -> Duration {
    build.mul_f64(1.0 / SNAPSHOT_BUSY_SHARE_MAX - 1.0)
}

/// The applied log since this node's last snapshot, from openraft's metrics and the WAL.
fn log_since(raft: &Raft, log: &LogStore) -> LogSince {
    let metrics = raft.metrics().borrow().clone();
    let snapshot = metrics.snapshot.map(|log_id| log_id.index);
    let applied = metrics.last_applied.map(|log_id| log_id.index);
    let entries = match (applied, snapshot) {
        (Some(applied), Some(snapshot)) => applied.saturating_sub(snapshot),
        (Some(applied), None) => applied + 1,
        (None, _) => 0,
    };
    LogSince {
        entries,
        bytes: log.log_bytes_after(snapshot),
    }
}

/// Triggers this node's snapshots by `schedule` until `stopped` turns true.
pub async fn run(
    schedule: SnapshotSchedule,
    raft: Raft,
    log: LogStore,
    stats: std::sync::Arc<StorageStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        let last_bytes = stats
            .snapshot_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let thresholds = schedule.draw(last_bytes, &mut rand::rng());
        // Wait until a snapshot is due.
        loop {
            if *stopped.borrow() {
                return;
            }
            if thresholds.due(log_since(&raft, &log)) {
                break;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stopped.changed() => return,
            }
            tokio::time::sleep(SCHEDULE_CHECK_INTERVAL).await;
        }
        let before = raft.metrics().borrow().snapshot;
        let started = tokio::time::Instant::now();
        tracing::debug!(?thresholds, "snapshot due");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        // Wait for the build (this one, or one already under way) to move the snapshot on; if it is older
        // than due, the next look triggers again.
        let built = tokio::time::timeout(
            SNAPSHOT_WAIT_MAX,
            metrics.wait_for(|metrics| metrics.snapshot != before),
        );
        tokio::select! {
            result = built => match result {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => tracing::warn!(wait = ?SNAPSHOT_WAIT_MAX, "a snapshot was not built in time; trying again"),
            },
            _ = stopped.changed() => return,
        }
        let rest = rest_after(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    const SCHEDULE: SnapshotSchedule = SnapshotSchedule {
        after_entries: 1000,
        after_bytes: 64 << 20,
    };

    #[test]
    fn thresholds_are_drawn_below_the_flags_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<Thresholds> = (0..200).map(|_| SCHEDULE.draw(0, &mut rng)).collect();
        let lowest = (1000.0 * (1.0 - SNAPSHOT_THRESHOLD_JITTER)) as u64;
        assert!(draws
            .iter()
            .all(|drawn| (lowest..=1000).contains(&drawn.entries)));
        let distinct: std::collections::BTreeSet<u64> =
            draws.iter().map(|drawn| drawn.entries).collect();
        assert!(distinct.len() > 50, "draws barely differ: {distinct:?}");
    }

    #[test]
    fn the_size_threshold_grows_with_the_last_snapshot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let big = 1 << 30;
        let drawn = SCHEDULE.draw(big, &mut rng);
        assert!(drawn.bytes > (64 << 20) && drawn.bytes <= big, "{drawn:?}");
        let drawn = SCHEDULE.draw(1 << 20, &mut rng);
        assert!(
            drawn.bytes <= 64 << 20 && drawn.bytes > 32 << 20,
            "{drawn:?}"
        );
    }

    #[test]
    fn due_by_entries_or_by_bytes() {
        let thresholds = Thresholds {
            entries: 100,
            bytes: 1000,
        };
        assert!(!thresholds.due(LogSince {
            entries: 99,
            bytes: 999
        }));
        assert!(thresholds.due(LogSince {
            entries: 100,
            bytes: 0
        }));
        assert!(thresholds.due(LogSince {
            entries: 1,
            bytes: 1000
        }));
    }

    #[test]
    fn builds_take_at_most_their_share_of_time() {
        let build = Duration::from_millis(1000);
        let rest = rest_after(build);
        let share = build.as_secs_f64() / (build + rest).as_secs_f64();
        assert!((share - SNAPSHOT_BUSY_SHARE_MAX).abs() < 1e-9, "{share}");
        assert_eq!(rest_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn thresholds_are_never_zero() {
        let tiny = SnapshotSchedule {
            after_entries: 1,
            after_bytes: 1,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let drawn = tiny.draw(0, &mut rng);
            assert_eq!((drawn.entries, drawn.bytes), (1, 1));
        }
    }
}
