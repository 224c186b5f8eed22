//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): on the leader, proposes
//! `Command::Compact` through Raft so that history stays bounded, as etcd's compactors do.
//!
//! - `revision`: every `REVISION_MODE_CHECK`, compact to the current revision minus the retention.
//! - `periodic`: every tenth of the retention (at least `PERIODIC_STEP_MIN`), note the current revision;
//!   compact to the newest revision noted at least the retention ago. A node samples whether it leads or not,
//!   so a new leader can compact as soon as it is elected.
//!
//! A compaction that fails (leadership moved, a compaction raced it) is simply tried at the next check.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::config::AutoCompaction;
use crate::kv::state_machine::{Command, Request, Response};
use crate::kv::write_batch::WriteBatcher;
use crate::raft::types::Raft;
use crate::storage::StateMachineStore;

/// How often `revision` mode checks (etcd checks every 5 minutes; a minute keeps history closer to the bound).
pub const REVISION_MODE_CHECK: Duration = Duration::from_secs(60);
/// Shortest step of `periodic` mode.
pub const PERIODIC_STEP_MIN: Duration = Duration::from_secs(1);
/// Revisions noted by `periodic` mode: a tenth of the retention apart, so eleven cover it.
const PERIODIC_SAMPLES_MAX: usize = 11;

/// The revision to compact to now, from the samples (time, revision) noted so far, or `None`.
pub fn periodic_target(
    samples: &VecDeque<(Instant, u64)>,
    now: Instant,
    retention: Duration,
) -> Option<u64> {
    samples
        .iter()
        .rev()
        .find(|(at, _)| now.saturating_duration_since(*at) >= retention)
        .map(|(_, revision)| *revision)
}

/// Runs automatic compaction until `stopped` turns true.
pub async fn run(
    policy: AutoCompaction,
    raft: Raft,
    state_machine: StateMachineStore,
    writes: WriteBatcher,
    mut stopped: watch::Receiver<bool>,
) {
    let step = match policy {
        AutoCompaction::Revision(_) => REVISION_MODE_CHECK,
        AutoCompaction::Periodic(retention) => (retention / 10).max(PERIODIC_STEP_MIN),
    };
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut ticker = tokio::time::interval(step);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let (revision, compacted) = state_machine.revisions();
        let target = match policy {
            AutoCompaction::Revision(keep) => revision.saturating_sub(keep),
            AutoCompaction::Periodic(retention) => {
                let now = Instant::now();
                samples.push_back((now, revision));
                while samples.len() > PERIODIC_SAMPLES_MAX {
                    samples.pop_front();
                }
                periodic_target(&samples, now, retention).unwrap_or(0)
            }
        };
        let leads = raft.metrics().borrow().state == ServerState::Leader;
        if !leads || target <= compacted {
            continue;
        }
        let request = Request {
            session: None,
            command: Command::Compact { revision: target },
        };
        match writes.write(request).await {
            Ok(Response::Compact { revision, .. }) => {
                tracing::info!(compact_revision = target, revision, "automatic compaction")
            }
            // Refused (another compaction got there first) or not committed: the next check tries again.
            Ok(response) => tracing::debug!(target, ?response, "automatic compaction refused"),
            Err(error) => tracing::debug!(target, %error, "automatic compaction not done"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_to_the_newest_revision_at_least_the_retention_old() {
        let start = Instant::now();
        let retention = Duration::from_secs(10);
        let samples: VecDeque<(Instant, u64)> = (0..=10)
            .map(|second| (start + Duration::from_secs(second), second * 100))
            .collect();
        assert_eq!(
            periodic_target(&samples, start + Duration::from_secs(9), retention),
            None
        );
        assert_eq!(
            periodic_target(&samples, start + Duration::from_secs(10), retention),
            Some(0)
        );
        assert_eq!(
            periodic_target(&samples, start + Duration::from_secs(13), retention),
            Some(300)
        );
    }
}
