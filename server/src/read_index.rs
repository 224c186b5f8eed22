//! The leader's read-index rounds, shared by concurrent reads, and the leader lease they maintain.
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
//! `t + election_timeout_min`, because every follower that acknowledged it refuses votes until an election
//! timeout has passed without hearing from the leader. The lease therefore holds until
//! `t + election_timeout_min - drift_margin`; `drift_margin` covers the clock-rate difference between nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::raft_types::{NodeId, Raft};
use crate::telemetry;

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
        let task = run(raft, node_id, receiver, lease.clone(), rounds.clone());
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

async fn run(
    raft: Raft,
    node_id: NodeId,
    mut receiver: mpsc::Receiver<Waiter>,
    lease: Arc<Lease>,
    rounds: Arc<AtomicU64>,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            waiter = receiver.recv(), if in_flight.len() < READ_INDEX_ROUNDS_IN_FLIGHT_MAX => {
                let Some(first) = waiter else { break };
                let mut waiters = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::READ_INDEX_ROUNDS).increment(1);
                metrics::counter!(telemetry::READ_INDEX_ROUND_READS).increment(waiters.len() as u64);
                in_flight.spawn(round(raft.clone(), node_id, waiters, lease.clone()));
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    // Every handle is gone: finish the rounds already started so their reads get an answer.
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
                openraft::error::RaftError::APIError(error) => {
                    ReadIndexError::NoQuorum(error.to_string())
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
