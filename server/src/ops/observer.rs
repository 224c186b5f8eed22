//! The observer: the one task that owns openraft's metrics watch and turns what it sees into the node's Raft
//! gauges, its lifecycle log lines (became leader / follower with the term, membership changed) and its gRPC
//! health status.
//!
//! It wakes when the server metrics change (role, vote, leader, membership: rare) and every
//! `OBSERVE_INTERVAL` (indexes move with every write, and time since leader contact moves by itself), never
//! once per applied entry. Elections are counted from the vote rather than from the candidate state, which a
//! watch can skip over: a term in which this node voted for itself is an election it started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use openraft::ServerState;
use tokio::sync::{watch, Semaphore};

use crate::kv::write_batch::PROPOSALS_PENDING_MAX;
use crate::ops::health::{assess, Health, HealthInputs, HealthPublisher};
use crate::ops::telemetry as names;
use crate::raft::types::{LogId, NodeId, Raft, RaftMetrics};
use crate::reads::LeaderContact;
use crate::storage::{LogStore, StorageStats};

/// How often gauges and health are refreshed when nothing else wakes the observer.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the slower figures are taken: the store's size on disk (a walk of its files) and the
/// recorder's upkeep.
pub const DISK_SIZE_INTERVAL: Duration = Duration::from_secs(5);

const ROLES: [(&str, ServerState); 5] = [
    ("leader", ServerState::Leader),
    ("follower", ServerState::Follower),
    ("candidate", ServerState::Candidate),
    ("learner", ServerState::Learner),
    ("shutdown", ServerState::Shutdown),
];

/// Everything the observer reads.
pub struct Observer {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub raft: Raft,
    pub log_store: LogStore,
    pub storage_stats: Arc<StorageStats>,
    pub proposals: Arc<Semaphore>,
    pub leader_contact: Arc<LeaderContact>,
    pub health: HealthPublisher,
    /// Longest silence from the leader that still counts as healthy.
    pub leader_silence_max: Duration,
    pub recorder: metrics_exporter_prometheus::PrometheusHandle,
}

/// What the last observation saw, to log and count only changes.
struct Seen {
    state: ServerState,
    term: u64,
    leader_id: Option<NodeId>,
    membership_log_id: Option<LogId>,
    /// The highest term whose vote has been looked at for elections.
    vote_term: u64,
}

impl Observer {
    /// Runs until `stop` turns true or Raft stops.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut server_metrics = self.raft.server_metrics();
        let first = self.raft.metrics().borrow().clone();
        tracing::info!(
            term = first.current_term,
            role = role_name(first.state),
            leader_id = first.current_leader,
            "raft started"
        );
        let mut seen = Seen {
            state: first.state,
            term: first.current_term,
            leader_id: first.current_leader,
            membership_log_id: first.membership_config.log_id().as_ref().copied(),
            vote_term: first.vote.leader_id.get_term(),
        };
        counter!(names::ELECTIONS_STARTED).absolute(0);
        let mut tick = tokio::time::interval(OBSERVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut slow_at = Instant::now();
        loop {
            let Some(metrics) = self.observe(&mut seen).await else {
                break;
            };
            if slow_at <= Instant::now() {
                gauge!(names::STORAGE_DISK_BYTES).set(self.log_store.size_on_disk() as f64);
                self.recorder.run_upkeep();
                slow_at = Instant::now() + DISK_SIZE_INTERVAL;
            }
            if metrics.state == ServerState::Shutdown {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|stopping| *stopping) => break,
                changed = server_metrics.changed() => if changed.is_err() { break },
                _ = tick.tick() => {}
            }
        }
        self.health
            .publish(&Health::NotServing("shutting down".to_string()))
            .await;
    }

    /// Takes one observation: logs and counts what changed, sets the gauges, publishes health. `None` once
    /// Raft has stopped.
    async fn observe(&mut self, seen: &mut Seen) -> Option<RaftMetrics> {
        let metrics = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |log_id| log_id.index))
            .await
            .ok()?;
        self.log_changes(seen, &metrics);

        gauge!(names::NODE_INFO, "node_id" => self.node_id.to_string(), "cluster_id" => self.cluster_id.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let applied_index = metrics.last_applied.map_or(0, |log_id| log_id.index);
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        gauge!(names::TERM).set(metrics.current_term as f64);
        for (name, state) in ROLES {
            let value = if state == metrics.state { 1.0 } else { 0.0 };
            gauge!(names::ROLE, "role" => name).set(value);
        }
        gauge!(names::LEADER_ID).set(metrics.current_leader.unwrap_or(0) as f64);
        gauge!(names::COMMIT_INDEX).set(commit_index as f64);
        gauge!(names::APPLIED_INDEX).set(applied_index as f64);
        gauge!(names::LAST_LOG_INDEX).set(last_log_index as f64);
        gauge!(names::SNAPSHOT_INDEX).set(metrics.snapshot.map_or(0, |log_id| log_id.index) as f64);
        let since_leader = if metrics.state == ServerState::Leader {
            metrics.millis_since_quorum_ack.map(Duration::from_millis)
        } else {
            self.leader_contact.elapsed()
        };
        gauge!(names::MILLIS_SINCE_LEADER)
            .set(since_leader.map_or(-1.0, |since| since.as_millis() as f64));
        if let Some(replication) = &metrics.replication {
            for (follower, matched) in replication.iter() {
                if *follower == self.node_id {
                    continue;
                }
                let matched = matched.map_or(0, |log_id| log_id.index);
                gauge!(names::REPLICATION_LAG_ENTRIES, "follower" => follower.to_string())
                    .set(last_log_index.saturating_sub(matched) as f64);
            }
        }
        let pending = PROPOSALS_PENDING_MAX.saturating_sub(self.proposals.available_permits());
        gauge!(names::PROPOSALS_PENDING).set(pending as f64);

        let stats = &self.storage_stats;
        let load =
            |value: &std::sync::atomic::AtomicU64| value.load(std::sync::atomic::Ordering::Relaxed);
        counter!(names::STORAGE_FLUSHES).absolute(load(&stats.flushes));
        counter!(names::STORAGE_FLUSHED_APPENDS).absolute(load(&stats.flushed_appends));
        counter!(names::STORAGE_FLUSHED_ENTRIES).absolute(load(&stats.flushed_entries));
        counter!(names::STORAGE_FLUSH_MICROSECONDS).absolute(load(&stats.flush_micros_total));
        counter!(names::SNAPSHOTS_BUILT).absolute(load(&stats.snapshots_built));
        counter!(names::SNAPSHOTS_INSTALLED).absolute(load(&stats.snapshots_installed));
        gauge!(names::SNAPSHOT_BYTES).set(load(&stats.snapshot_bytes) as f64);

        let leader_commit_index = if metrics.state == ServerState::Leader {
            commit_index
        } else {
            commit_index.max(self.leader_contact.leader_commit())
        };
        let health = assess(
            &HealthInputs {
                leader_id: metrics.current_leader,
                since_leader,
                applied_index,
                leader_commit_index,
            },
            self.leader_silence_max,
        );
        self.health.publish(&health).await;
        Some(metrics)
    }

    /// Logs role, leader and membership changes, and counts elections this node started.
    fn log_changes(&self, seen: &mut Seen, metrics: &RaftMetrics) {
        let vote_term = metrics.vote.leader_id.get_term();
        if vote_term > seen.vote_term {
            if metrics.vote.leader_id.voted_for() == Some(self.node_id) {
                counter!(names::ELECTIONS_STARTED).increment(1);
            }
            seen.vote_term = vote_term;
        }
        let term = metrics.current_term;
        if metrics.state != seen.state
            || term != seen.term
            || metrics.current_leader != seen.leader_id
        {
            match (metrics.state, metrics.current_leader) {
                (ServerState::Leader, _) => tracing::info!(term, "became leader"),
                (ServerState::Candidate, _) => {
                    tracing::info!(term, "became candidate: election started")
                }
                (ServerState::Shutdown, _) => tracing::info!(term, "raft stopped"),
                (state, Some(leader_id)) => {
                    tracing::info!(term, leader_id, role = role_name(state), "following leader")
                }
                (state, None) => {
                    tracing::info!(term, role = role_name(state), "no leader known")
                }
            }
            seen.state = metrics.state;
            seen.term = term;
            seen.leader_id = metrics.current_leader;
        }
        let membership_log_id = metrics.membership_config.log_id().as_ref().copied();
        if membership_log_id != seen.membership_log_id {
            let membership = metrics.membership_config.membership();
            tracing::info!(
                log_index = membership_log_id.map_or(0, |log_id| log_id.index),
                voters = ?membership.voter_ids().collect::<Vec<_>>(),
                learners = ?membership.learner_ids().collect::<Vec<_>>(),
                "membership changed"
            );
            seen.membership_log_id = membership_log_id;
        }
    }
}

fn role_name(state: ServerState) -> &'static str {
    ROLES
        .iter()
        .find(|(_, role)| *role == state)
        .map_or("unknown", |(name, _)| name)
}
