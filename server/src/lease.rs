//! When leases expire: decided by the leader alone, by its own clock, and carried out through Raft.
//!
//! Leases are replicated state (`Command::LeaseGrant`, the keys attached in the keyspace); their deadlines are
//! not. The `Lessor` of the leader holds a deadline per lease, renewed by keep-alives, and proposes
//! `Command::LeaseRevoke` for a lease whose deadline passed: every node then deletes the lease's keys at one
//! revision, and watchers see the deletions. As etcd does:
//! - only a leader that a quorum acknowledged within the voter lease expires anything or renews anything (a
//!   leader cut off could not commit a revoke anyway, and a keep-alive it accepted might count for nothing);
//! - when a node becomes leader, or a leader gets its quorum back, it renews every lease to its full TTL
//!   first: a crash, a partition or a change of leader never makes a lease expire early, at the cost of
//!   keeping it up to one TTL longer;
//! - a TTL below `min_ttl` (1.5 election timeouts, rounded up to a second) is raised to it, so that a lease
//!   outlives the failover that renews it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kv::state_machine::{Command, Request, Response};
use crate::kv::write_batch::WriteBatcher;
use crate::raft::quorum::QuorumClock;
use crate::raft::types::Raft;
use crate::storage::StateMachineStore;

/// How often the leader's lessor looks for expired leases (etcd looks every 500 ms).
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Leases the lessor tracks at most: a leader with more reads the first this many (a grant beyond it is
/// refused, see `api`).
pub const LEASES_MAX: usize = 100_000;
/// Revokes of expired leases in flight at once; the rest wait for the next check.
pub const EXPIRY_REVOKES_IN_FLIGHT_MAX: usize = 64;

/// The leader's lease deadlines (empty on other nodes).
pub struct Lessor {
    /// The shortest TTL granted, in seconds.
    min_ttl: i64,
    /// Past this quorum age a leader neither renews nor expires.
    quorum_lapse_max: Duration,
    state: Mutex<Deadlines>,
}

#[derive(Default)]
struct Deadlines {
    /// The term this node leads with a quorum, once every lease was renewed in it; `None` otherwise.
    leading: Option<u64>,
    /// `StateMachineStore::lease_generation` when the leases were last read.
    generation: u64,
    deadlines: HashMap<i64, Instant>,
    /// Expired leases whose revoke is proposed and not answered yet.
    revoking: HashSet<i64>,
}

/// Why a keep-alive renewed nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum RenewRefusal {
    /// This node does not lead, or leads without a quorum.
    NotLeading,
    /// The lease is past its deadline (its revoke may be on its way): too late to renew.
    Expired,
}

impl Lessor {
    /// `election_timeout_max` sets the shortest TTL; `quorum_lapse_max` is the voter lease.
    pub fn new(election_timeout_max: Duration, quorum_lapse_max: Duration) -> Lessor {
        Lessor {
            min_ttl: min_ttl(election_timeout_max),
            quorum_lapse_max,
            state: Mutex::default(),
        }
    }

    /// The TTL a grant asking for `asked` seconds gets.
    pub fn grant_ttl(&self, asked: i64) -> i64 {
        asked.max(self.min_ttl)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leases this leader tracks now.
    pub fn tracked(&self) -> usize {
        self.lock().deadlines.len()
    }

    /// A lease just granted here, as leader: its deadline starts now.
    pub fn granted(&self, id: i64, ttl: i64) {
        let mut state = self.lock();
        if state.leading.is_some() {
            state
                .deadlines
                .insert(id, Instant::now() + ttl_duration(ttl));
        }
    }

    /// A keep-alive of lease `id`, which exists with `ttl`: its deadline moves to `ttl` from now, unless the
    /// deadline has passed (an expired lease is not brought back: its revoke may already be proposed).
    pub fn renew(&self, id: i64, ttl: i64) -> Result<(), RenewRefusal> {
        let mut state = self.lock();
        if state.leading.is_none() {
            return Err(RenewRefusal::NotLeading);
        }
        let now = Instant::now();
        let expired = state.revoking.contains(&id)
            || state
                .deadlines
                .get(&id)
                .is_some_and(|deadline| *deadline <= now);
        if expired {
            return Err(RenewRefusal::Expired);
        }
        state.deadlines.insert(id, now + ttl_duration(ttl));
        Ok(())
    }

    /// Seconds left before lease `id` expires, as this leader counts (`None` off the leader or for a lease it
    /// does not track yet).
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let state = self.lock();
        state.leading?;
        let deadline = state.deadlines.get(&id)?;
        Some(deadline.saturating_duration_since(Instant::now()).as_secs() as i64)
    }

    /// A lease revoked by a client.
    pub fn forget(&self, id: i64) {
        let mut state = self.lock();
        state.deadlines.remove(&id);
    }

    /// Runs until `stopping`: every `LEASE_CHECK_INTERVAL`, brings the deadlines in line with the leases of
    /// the applied state and proposes a revoke for every lease past its deadline.
    pub async fn run(
        self: Arc<Self>,
        raft: Raft,
        store: StateMachineStore,
        writes: WriteBatcher,
        quorum: Arc<QuorumClock>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(LEASE_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
            let (is_leader, term) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state == ServerState::Leader, metrics.current_term)
            };
            let with_quorum = is_leader
                && quorum
                    .leader_quorum_age()
                    .is_some_and(|age| age <= self.quorum_lapse_max);
            if !with_quorum {
                let mut state = self.lock();
                if state.leading.take().is_some() {
                    tracing::info!(
                        "no longer a leader with a quorum: lease deadlines dropped (the next leader renews every lease)"
                    );
                }
                state.deadlines.clear();
                continue;
            }
            if let Err(error) = self.refresh(&store, term) {
                tracing::warn!(%error, "cannot read the leases; expiring nothing until it can");
                continue;
            }
            // While leadership moves, keep-alives may not reach a leader for a while: expire nothing (the
            // next leader renews every lease anyway).
            if quorum.handover.target().is_some() {
                continue;
            }
            for id in self.expired() {
                let writes = writes.clone();
                let lessor = self.clone();
                tokio::spawn(async move { lessor.revoke_expired(&writes, id).await });
            }
        }
    }

    /// Reads the leases again if leadership began or the leases changed since the last read: new leases get
    /// a full TTL from now, and so does every lease when this node just began to lead with a quorum.
    fn refresh(&self, store: &StateMachineStore, term: u64) -> Result<(), String> {
        let generation = store.lease_generation();
        let renew_all = self.lock().leading != Some(term);
        if !renew_all && self.lock().generation == generation {
            return Ok(());
        }
        let leases = store.leases(LEASES_MAX)?;
        let now = Instant::now();
        let mut state = self.lock();
        if renew_all {
            state.deadlines.clear();
            state.revoking.clear();
            tracing::info!(
                leases = leases.len(),
                term,
                "leading with a quorum: every lease renewed to its full TTL"
            );
        }
        let live: HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        state.deadlines.retain(|id, _| live.contains(id));
        state.revoking.retain(|id| live.contains(id));
        for (id, lease) in leases {
            state
                .deadlines
                .entry(id)
                .or_insert_with(|| now + ttl_duration(lease.ttl));
        }
        state.leading = Some(term);
        state.generation = generation;
        Ok(())
    }

    /// Leases past their deadline with no revoke in flight, at most as many as may be in flight; marked as
    /// being revoked.
    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.lock();
        let room = EXPIRY_REVOKES_IN_FLIGHT_MAX.saturating_sub(state.revoking.len());
        let expired: Vec<i64> = state
            .deadlines
            .iter()
            .filter(|(id, deadline)| **deadline <= now && !state.revoking.contains(id))
            .map(|(id, _)| *id)
            .take(room)
            .collect();
        state.revoking.extend(expired.iter().copied());
        expired
    }

    /// Proposes the revoke of an expired lease; a failure leaves it expired, for the next check to retry.
    async fn revoke_expired(&self, writes: &WriteBatcher, id: i64) {
        let request = Request {
            session: None,
            command: Command::LeaseRevoke { id },
        };
        let outcome = writes.write(request).await;
        let mut state = self.lock();
        state.revoking.remove(&id);
        match outcome {
            Ok(Response::LeaseRevoke { revision, deleted }) => {
                state.deadlines.remove(&id);
                tracing::info!(lease = id, revision, deleted, "lease expired: revoked");
            }
            // Revoked meanwhile (by its holder): nothing left to do.
            Ok(Response::Rejected(_)) => {
                state.deadlines.remove(&id);
            }
            Ok(other) => {
                tracing::warn!(
                    lease = id,
                    ?other,
                    "an expiry revoke got an unexpected answer"
                )
            }
            Err(error) => {
                tracing::warn!(lease = id, %error, "could not revoke an expired lease; retrying")
            }
        }
    }
}

/// etcd's minimum TTL: one and a half election timeouts, in whole seconds, rounded up.
pub fn min_ttl(election_timeout_max: Duration) -> i64 {
    let millis = election_timeout_max.as_millis() as i64 * 3 / 2;
    ((millis + 999) / 1000).max(1)
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_outlives_a_failover() {
        assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl(Duration::from_millis(150)), 1);
        let lessor = Lessor::new(Duration::from_millis(2000), Duration::from_secs(2));
        assert_eq!(lessor.grant_ttl(1), 3);
        assert_eq!(lessor.grant_ttl(60), 60);
    }

    #[test]
    fn only_a_leader_renews() {
        let lessor = Lessor::new(Duration::from_millis(1000), Duration::from_secs(1));
        assert_eq!(lessor.renew(7, 10), Err(RenewRefusal::NotLeading));
        assert_eq!(lessor.remaining(7), None);
        lessor.lock().leading = Some(3);
        lessor.renew(7, 10).expect("a leader renews");
        assert!(matches!(lessor.remaining(7), Some(9 | 10)));
        lessor.forget(7);
        assert_eq!(lessor.remaining(7), None);
    }

    #[test]
    fn an_expired_lease_is_not_brought_back() {
        let lessor = Lessor::new(Duration::from_millis(1000), Duration::from_secs(1));
        {
            let mut state = lessor.lock();
            state.leading = Some(1);
            state.deadlines.insert(3, Instant::now());
        }
        assert_eq!(lessor.renew(3, 10), Err(RenewRefusal::Expired));
        assert_eq!(lessor.expired(), vec![3], "still handed out for its revoke");
        assert_eq!(
            lessor.renew(3, 10),
            Err(RenewRefusal::Expired),
            "its revoke is on its way"
        );
    }

    #[test]
    fn expired_leases_are_handed_out_once() {
        let lessor = Lessor::new(Duration::from_millis(1000), Duration::from_secs(1));
        {
            let mut state = lessor.lock();
            state.leading = Some(1);
            state.deadlines.insert(1, Instant::now());
            state
                .deadlines
                .insert(2, Instant::now() + Duration::from_secs(60));
        }
        assert_eq!(lessor.expired(), vec![1]);
        assert!(lessor.expired().is_empty(), "a revoke is in flight");
    }
}
