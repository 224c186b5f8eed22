//! The leader's read-index rounds, shared by concurrent reads, the leader lease they maintain, and the
//! follower's forwarder, which shares one read-index call to the leader among its concurrent reads.
//!
//! A linearizable read needs the leader to confirm, with a quorum round that starts after the read arrived,
//! that it is still the leader; the read may then be served once the node has applied up to the commit index
//! the round returned. One round serves every read that arrived before it started: the batcher task drains
//! all waiting reads, starts one `get_read_log_id` round with a deadline for them, and answers them all when it
//! ends. Reads may not use a round that began before they arrived, so reads arriving while a round is in flight
//! start the next round at once rather than waiting for the first to end: up to `READ_INDEX_ROUNDS_IN_FLIGHT_MAX`
//! rounds overlap. A read then waits about one round, not one and a half; beyond the cap, reads queue and share
//! the next round, so a burst still costs few rounds.
//!
//! Lease: a successful round that *started* at `t` proves no other leader can be elected before
//! `t + election_timeout_min`: every follower that acknowledged it refuses real votes for
//! `election::ElectionTiming::voter_lease` (= `election_timeout_min`, openraft's voter lease as
//! `node::raft_config` sets it) after it accepted the round's message, and does not campaign itself before that
//! much silence (`election`); any new leader needs one of them. The lease therefore holds until
//! `t + election_timeout_min - drift_margin`; `drift_margin` covers the clock-rate difference between nodes.
//!
//! Follower reads: `ReadIndexForwarder` runs the same loop (`run_rounds`) with a peer call to the leader as
//! its round, so a read on a follower also only uses a call sent after it arrived.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::ops::telemetry;
use crate::raft::network::PeerChannels;
use crate::raft::types::{NodeId, Raft};

/// Reads that may wait for the next round at once; beyond it a read is refused (`ResourceExhausted`).
pub const READ_WAITERS_MAX: usize = 65_536;
/// Read-index rounds that may be in flight at once. Each round is one heartbeat to every follower, so the cap
/// bounds the extra peer traffic reads can cause, while still letting a read start its own round instead of
/// waiting for one that began before it.
pub const READ_INDEX_ROUNDS_IN_FLIGHT_MAX: usize = 4;
/// Longest a read-index round may take before its reads fail as unable to reach a quorum.
pub const READ_INDEX_ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of a successful round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadIndex {
    /// Serve once applied >= this index.
    pub index: u64,
    pub term: u64,
    pub leader_id: NodeId,
}

/// Why a round did not give a read index.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadIndexError {
    #[error("this node is not the leader")]
    NotLeader { leader_id: Option<NodeId> },
    #[error("could not confirm leadership with a quorum: {0}")]
    NoQuorum(String),
    #[error("too many reads waiting for a read-index round")]
    Busy,
    #[error("the node is shutting down")]
    ShuttingDown,
}

type Waiter = oneshot::Sender<Result<ReadIndex, ReadIndexError>>;

/// Handle to the batcher task; cheap to clone.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    sender: mpsc::Sender<Waiter>,
    lease: Arc<Lease>,
    /// Rounds run since start: how many quorum rounds the reads actually cost.
    rounds: Arc<AtomicU64>,
}

/// When the current lease ends, if any. A std mutex: held for a copy, never across await.
pub struct Lease {
    until: Mutex<Option<(Instant, ReadIndexLease)>>,
    duration: Duration,
}

/// What a lease read needs besides the lease itself.
#[derive(Clone, Copy, Debug)]
pub struct ReadIndexLease {
    pub term: u64,
    pub leader_id: NodeId,
}

impl Lease {
    /// The term and leader of a lease still valid at `now`.
    pub fn valid_at(&self, now: Instant) -> Option<ReadIndexLease> {
        let until = self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *until {
            Some((end, lease)) if now < end => Some(lease),
            _ => None,
        }
    }

    fn extend(&self, round_started: Instant, lease: ReadIndexLease) {
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let end = round_started + self.duration;
        match *until {
            Some((current, current_lease))
                if current >= end && current_lease.term == lease.term => {}
            _ => *until = Some((end, lease)),
        }
    }

    /// Ends the lease at once (on losing leadership).
    pub fn revoke(&self) {
        *self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

impl ReadIndexBatcher {
    /// Starts the batcher task for `raft`. `lease_duration` is election_timeout_min minus the drift margin
    /// (zero disables leases). The task ends when every handle is dropped.
    pub fn start(
        raft: Raft,
        node_id: NodeId,
        lease_duration: Duration,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::channel(READ_WAITERS_MAX);
        let lease = Arc::new(Lease {
            until: Mutex::new(None),
            duration: lease_duration,
        });
        let rounds = Arc::new(AtomicU64::new(0));
        let task = {
            let (lease, rounds) = (lease.clone(), rounds.clone());
            run_rounds(receiver, move |waiters: Vec<Waiter>| {
                rounds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::READ_INDEX_ROUNDS).increment(1);
                metrics::counter!(telemetry::READ_INDEX_ROUND_READS)
                    .increment(waiters.len() as u64);
                round(raft.clone(), node_id, waiters, lease.clone())
            })
        };
        (
            ReadIndexBatcher {
                sender,
                lease,
                rounds,
            },
            task,
        )
    }

    /// Waits for the next round to finish and returns its read index.
    pub async fn read_index(&self) -> Result<ReadIndex, ReadIndexError> {
        let (sender, receiver) = oneshot::channel();
        self.sender.try_send(sender).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ReadIndexError::Busy,
            mpsc::error::TrySendError::Closed(_) => ReadIndexError::ShuttingDown,
        })?;
        receiver.await.unwrap_or(Err(ReadIndexError::ShuttingDown))
    }

    /// Quorum rounds run since start.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// The leader lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// Runs rounds for the waiters `receiver` delivers: each round takes every waiter queued when it starts (so it
/// began after they all arrived), up to `READ_INDEX_ROUNDS_IN_FLIGHT_MAX` rounds at once. Ends when every sender
/// is gone and the rounds already started have answered their waiters.
async fn run_rounds<W, F, Fut>(mut receiver: mpsc::Receiver<W>, round: F)
where
    F: Fn(Vec<W>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            waiter = receiver.recv(), if in_flight.len() < READ_INDEX_ROUNDS_IN_FLIGHT_MAX => {
                let Some(first) = waiter else { break };
                let mut waiters = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                in_flight.spawn(round(waiters));
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// One quorum round for `waiters`, all of which arrived before it started; answers them all.
async fn round(raft: Raft, node_id: NodeId, waiters: Vec<Waiter>, lease: Arc<Lease>) {
    let started = Instant::now();
    let result = match tokio::time::timeout(READ_INDEX_ROUND_TIMEOUT, raft.get_read_log_id()).await
    {
        Ok(Ok((read_log_id, _applied))) => {
            let term = raft.metrics().borrow().current_term;
            let read_index = ReadIndex {
                index: read_log_id.map_or(0, |log_id| log_id.index),
                term,
                leader_id: node_id,
            };
            if !lease.duration.is_zero() {
                lease.extend(
                    started,
                    ReadIndexLease {
                        term,
                        leader_id: node_id,
                    },
                );
            }
            Ok(read_index)
        }
        Ok(Err(error)) => {
            lease.revoke();
            Err(match error {
                openraft::error::RaftError::APIError(
                    openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
                ) => ReadIndexError::NotLeader {
                    leader_id: forward.leader_id,
                },
                openraft::error::RaftError::APIError(
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(error),
                ) => {
                    let voter_sets = raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_joint_config()
                        .clone();
                    ReadIndexError::NoQuorum(quorum_shortfall(&error.got, &voter_sets))
                }
                openraft::error::RaftError::Fatal(_) => ReadIndexError::ShuttingDown,
            })
        }
        Err(_) => {
            lease.revoke();
            Err(ReadIndexError::NoQuorum(format!(
                "no quorum answered within {READ_INDEX_ROUND_TIMEOUT:?}"
            )))
        }
    };
    tracing::trace!(
        reads = waiters.len(),
        ok = result.is_ok(),
        "read-index round"
    );
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

/// Why a round failed, in words: which nodes answered, of which, and how many a quorum needs (per voter set
/// during a joint membership change).
pub fn quorum_shortfall(reached: &BTreeSet<NodeId>, voter_sets: &[BTreeSet<NodeId>]) -> String {
    let sets: Vec<String> = voter_sets
        .iter()
        .map(|voters| {
            let answered: Vec<String> = voters
                .iter()
                .filter(|id| reached.contains(id))
                .map(ToString::to_string)
                .collect();
            let answered = match answered.as_slice() {
                [] => "none".to_string(),
                [one] => format!("only node {one}"),
                many => format!("nodes {}", many.join(", ")),
            };
            format!(
                "reached {answered} of voters {}, a quorum needs {}",
                voters
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                voters.len() / 2 + 1
            )
        })
        .collect();
    format!(
        "{} (this node may be cut off from the others; try another node)",
        sets.join("; and ")
    )
}

/// Why a follower could not get a read index from the leader.
#[derive(Clone, Debug, thiserror::Error)]
#[error("leader {leader_id} could not give a read index: {message}")]
pub struct ForwardError {
    pub leader_id: NodeId,
    pub message: String,
}

/// A follower's read waiting for the leader's read index, with the leader it knows of.
struct ForwardWaiter {
    leader_id: NodeId,
    leader_addr: String,
    reply: oneshot::Sender<Result<u64, ForwardError>>,
}

/// The follower half of linearizable reads: one ReadIndex call to the leader serves every read waiting when
/// it is sent, like the leader's rounds (a read never uses a call sent before it arrived). Without it every
/// follower read costs its own peer call. Cheap to clone; the task ends when every handle is dropped.
#[derive(Clone)]
pub struct ReadIndexForwarder {
    sender: mpsc::Sender<ForwardWaiter>,
}

impl ReadIndexForwarder {
    /// Starts the forwarder; each call to the leader is bounded by `timeout`.
    pub fn start(
        peers: Arc<PeerChannels>,
        timeout: Duration,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::channel(READ_WAITERS_MAX);
        let task = run_rounds(receiver, move |waiters: Vec<ForwardWaiter>| {
            metrics::counter!(telemetry::READ_INDEX_FORWARDS).increment(1);
            metrics::counter!(telemetry::READ_INDEX_FORWARDED_READS)
                .increment(waiters.len() as u64);
            forward(peers.clone(), waiters, timeout)
        });
        (ReadIndexForwarder { sender }, task)
    }

    /// Asks the leader (`leader_id` at `leader_addr`, as this node knows it) for a read index, in the next
    /// call that leaves after this one arrived.
    pub async fn read_index(
        &self,
        leader_id: NodeId,
        leader_addr: String,
    ) -> Result<u64, ReadIndexError> {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .try_send(ForwardWaiter {
                leader_id,
                leader_addr,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ReadIndexError::Busy,
                mpsc::error::TrySendError::Closed(_) => ReadIndexError::ShuttingDown,
            })?;
        match receiver.await {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(error)) => Err(ReadIndexError::NoQuorum(error.to_string())),
            Err(_) => Err(ReadIndexError::ShuttingDown),
        }
    }
}

/// One call to the leader for `waiters`. It goes to the leader the most recent of them knows of: any node that
/// is leader when it answers gives an index that is valid for all of them.
async fn forward(peers: Arc<PeerChannels>, waiters: Vec<ForwardWaiter>, timeout: Duration) {
    let Some(newest) = waiters.last() else {
        return;
    };
    let (leader_id, leader_addr) = (newest.leader_id, newest.leader_addr.clone());
    let result = peers
        .read_index(leader_id, &leader_addr, timeout)
        .await
        .map(|reply| reply.read_index)
        .map_err(|error| ForwardError {
            leader_id,
            message: error.to_string(),
        });
    for waiter in waiters {
        let _ = waiter.reply.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_of(duration_ms: u64) -> Lease {
        Lease {
            until: Mutex::new(None),
            duration: Duration::from_millis(duration_ms),
        }
    }

    const TERM_3: ReadIndexLease = ReadIndexLease {
        term: 3,
        leader_id: 1,
    };
    const TERM_4: ReadIndexLease = ReadIndexLease {
        term: 4,
        leader_id: 1,
    };

    /// The lease runs from the start of the round that earned it, never from its end; a later round extends
    /// it, an older one (a round that started earlier but ended later) never shortens it; a new term replaces
    /// it; a failed round revokes it.
    #[test]
    fn lease_validity_table() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let lease = lease_of(750);
        assert!(lease.valid_at(t0).is_none(), "no round yet");
        lease.extend(t0, TERM_3);
        let rows = [(0, true), (749, true), (750, false), (5_000, false)];
        for (at_ms, valid) in rows {
            assert_eq!(
                lease.valid_at(t0 + ms(at_ms)).is_some(),
                valid,
                "{at_ms} ms after the round started"
            );
        }
        lease.extend(t0 + ms(500), TERM_3);
        assert!(
            lease.valid_at(t0 + ms(1_249)).is_some(),
            "a later round extends it"
        );
        lease.extend(t0 + ms(100), TERM_3);
        assert!(
            lease.valid_at(t0 + ms(1_249)).is_some(),
            "an older round never shortens it"
        );
        lease.extend(t0 + ms(100), TERM_4);
        assert_eq!(
            lease.valid_at(t0 + ms(800)).map(|lease| lease.term),
            Some(4),
            "a new term replaces it"
        );
        assert!(lease.valid_at(t0 + ms(850)).is_none());
        lease.revoke();
        assert!(
            lease.valid_at(t0 + ms(200)).is_none(),
            "a failed round revokes it"
        );
        let off = lease_of(0);
        off.extend(t0, TERM_3);
        assert!(off.valid_at(t0).is_none(), "a zero lease is never valid");
    }

    #[test]
    fn a_failed_round_says_who_answered_and_how_many_were_needed() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(
            quorum_shortfall(&set(&[1, 5]), &[set(&[1, 2, 3, 4, 5])]),
            "reached nodes 1, 5 of voters 1, 2, 3, 4, 5, a quorum needs 3 (this node may be cut off from the others; try another node)"
        );
        assert_eq!(
            quorum_shortfall(&set(&[2]), &[set(&[1, 2, 3])]),
            "reached only node 2 of voters 1, 2, 3, a quorum needs 2 (this node may be cut off from the others; try another node)"
        );
        assert_eq!(
            quorum_shortfall(&set(&[]), &[set(&[1, 2, 3]), set(&[3, 4, 5])]),
            "reached none of voters 1, 2, 3, a quorum needs 2; and reached none of voters 3, 4, 5, a quorum needs 2 (this node may be cut off from the others; try another node)"
        );
    }
}
