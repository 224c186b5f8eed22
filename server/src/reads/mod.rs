//! Serving reads at the consistency each one asks for, and the read envelope that says what it got.
//!
//! - `linearizable`: on the leader, a shared read-index round (`read_index`); on a follower, the read index
//!   is asked of the leader over the peer API; either way the node waits (bounded) until it has applied up to
//!   that index, then reads locally.
//! - `lease`: on the leader, served locally while the lease holds, otherwise a read-index round (which renews
//!   it); refused on any other node.
//! - `stale`: local state on any node, also with no leader; with `max_staleness` refused when the node has
//!   not heard from a leader within the bound (monotonic clock).
//! - `min_revision` (any mode): wait (bounded) until the store's revision here is at least min_revision.
//! - `revision` (any mode): once the mode is satisfied, read the store as it was at that revision (refused
//!   if compacted or in the future).

pub mod read_index;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::error::ApiError;
use crate::kv::changes::KeyspaceRead;
use crate::raft::types::{NodeId, Raft};
use crate::storage::{Applied, ReadError, StateMachineStore};
use read_index::{ReadIndexBatcher, ReadIndexError, ReadIndexForwarder};

/// Longest a read waits for this node to apply up to its read index, or to reach its `min_revision`.
pub const APPLY_WAIT_MAX: Duration = Duration::from_secs(2);
/// Deadline of a follower's read-index call to the leader.
pub const FOLLOWER_READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a linearizable read on a node that knows no leader waits to hear of one before it is refused.
/// Long enough for a new leader's first heartbeat to reach a follower whose connection is still being set
/// up; with the read-index call's deadline it stays within the client's default request timeout.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(1);

/// How a read wants to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

/// A read's options, validated.
#[derive(Clone, Copy, Debug)]
pub struct ReadRequest {
    pub consistency: Consistency,
    pub max_staleness: Option<Duration>,
    pub min_revision: u64,
    /// Read the store as it was at this revision; 0 for the current one.
    pub revision: u64,
}

/// This node's role as a reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// What a read got: who served it, how, and how stale it may be.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub node_id: NodeId,
    pub role: Role,
    pub consistency: Consistency,
    pub applied_index: u64,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub millis_since_leader: Option<u64>,
    /// The store revision the node had reached when it served the read.
    pub revision: u64,
    /// The oldest revision still readable on the node.
    pub compact_revision: u64,
}

/// When this node last heard from a leader that it accepted: updated by the peer service on every accepted
/// AppendEntries or snapshot chunk. Monotonic clock; microseconds since `origin`, 0 meaning never.
pub struct LeaderContact {
    origin: Instant,
    last_micros: AtomicU64,
    /// Highest commit index a leader has sent this node (health compares the applied index with it).
    leader_commit: AtomicU64,
}

impl LeaderContact {
    pub fn new() -> Arc<Self> {
        Arc::new(LeaderContact {
            origin: Instant::now(),
            last_micros: AtomicU64::new(0),
            leader_commit: AtomicU64::new(0),
        })
    }

    /// Records the commit index an accepted AppendEntries carried.
    pub fn record_leader_commit(&self, index: u64) {
        self.leader_commit.fetch_max(index, Ordering::Relaxed);
    }

    /// The highest commit index a leader has sent, 0 if none.
    pub fn leader_commit(&self) -> u64 {
        self.leader_commit.load(Ordering::Relaxed)
    }

    /// Records a message accepted from a leader now. The leader said a quorum last acknowledged it
    /// `quorum_age_ms` ago, so the contact counts as that long ago: what a follower serves is only as fresh as its
    /// leader's last proof of leadership. A leader that did not say (it has no quorum acknowledgement yet) does
    /// not count as contact.
    pub fn touch(&self, quorum_age_ms: Option<u64>) {
        let Some(age_ms) = quorum_age_ms else {
            return;
        };
        let at = self
            .origin
            .elapsed()
            .saturating_sub(Duration::from_millis(age_ms));
        self.last_micros
            .fetch_max((at.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    /// Time since the last contact, if any.
    pub fn elapsed(&self) -> Option<Duration> {
        match self.last_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_micros(micros)),
            ),
        }
    }
}

/// Serves reads for one node.
#[derive(Clone)]
pub struct Reader {
    pub node_id: NodeId,
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    pub batcher: ReadIndexBatcher,
    pub forwarder: ReadIndexForwarder,
    pub leader_contact: Arc<LeaderContact>,
}

/// A snapshot of the Raft facts a read needs.
struct RaftView {
    role: Role,
    term: u64,
    leader_id: Option<NodeId>,
    leader_addr: Option<String>,
    millis_since_quorum_ack: Option<u64>,
}

impl Reader {
    fn view(&self) -> RaftView {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let role = match metrics.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
            ServerState::Follower => {
                let is_voter = metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == self.node_id);
                if is_voter {
                    Role::Follower
                } else {
                    Role::Learner
                }
            }
        };
        let leader_addr = metrics.current_leader.and_then(|leader| {
            metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|node| node.addr.clone())
        });
        RaftView {
            role,
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr,
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
        }
    }

    /// The leader known to this node and its client address, for hints.
    pub fn leader_hint(&self) -> (Option<NodeId>, Option<String>) {
        let view = self.view();
        (view.leader_id, view.leader_addr)
    }

    fn not_leader(view: &RaftView) -> ApiError {
        ApiError::NotLeader {
            leader_id: view.leader_id,
            leader_addr: view.leader_addr.clone(),
        }
    }

    fn millis_since_leader(&self, view: &RaftView) -> Option<u64> {
        if view.role == Role::Leader {
            return view.millis_since_quorum_ack;
        }
        self.leader_contact
            .elapsed()
            .map(|elapsed| elapsed.as_millis() as u64)
    }

    /// Waits until the node has applied `index`, at most `APPLY_WAIT_MAX`.
    async fn wait_applied(&self, index: u64) -> Result<(), ApiError> {
        let applied = self.state_machine.applied_index();
        if applied >= index {
            return Ok(());
        }
        match self
            .raft
            .wait(Some(APPLY_WAIT_MAX))
            .applied_index_at_least(Some(index), "read")
            .await
        {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(ApiError::ShuttingDown),
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                let applied = self.state_machine.applied_index();
                Err(ApiError::ApplyTimeout {
                    wanted: index,
                    applied,
                    waited: APPLY_WAIT_MAX,
                })
            }
        }
    }

    /// Waits until the store here has reached `revision`, at most `APPLY_WAIT_MAX`.
    async fn wait_revision(&self, revision: u64) -> Result<(), ApiError> {
        let mut published = self.state_machine.revision();
        let reached =
            tokio::time::timeout(APPLY_WAIT_MAX, published.wait_for(|now| *now >= revision))
                .await
                .map(|result| result.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::RevisionTimeout {
                wanted: revision,
                reached: *published.borrow(),
                waited: APPLY_WAIT_MAX,
            }),
        }
    }

    fn read_index_error(view: &RaftView, error: ReadIndexError) -> ApiError {
        match error {
            ReadIndexError::NotLeader { .. } => Self::not_leader(view),
            ReadIndexError::NoQuorum(reason) => ApiError::NoQuorum(reason),
            ReadIndexError::Busy => {
                ApiError::Busy("too many reads waiting for a read-index round".to_string())
            }
            ReadIndexError::ShuttingDown => ApiError::ShuttingDown,
        }
    }

    /// Makes this node ready to serve `request` and runs `read` on the applied state, returning its result
    /// with the envelope.
    pub async fn serve<T>(
        &self,
        request: ReadRequest,
        read: impl FnOnce(&Applied) -> Result<T, ReadError>,
    ) -> Result<(T, Envelope), ApiError> {
        let view = self.view();
        let mut applied_consistency = request.consistency;
        let mut confirmed_now = false;
        match request.consistency {
            Consistency::Linearizable => {
                let index = self.linearizable_index(&view).await?;
                confirmed_now = view.role == Role::Leader;
                self.wait_applied(index).await?;
            }
            Consistency::Lease => {
                if view.role != Role::Leader {
                    return Err(Self::not_leader(&view));
                }
                let lease_ok = self
                    .batcher
                    .lease()
                    .valid_at(Instant::now())
                    .is_some_and(|lease| lease.term == view.term);
                if !lease_ok {
                    // The lease lapsed: fall back to a quorum round, which also renews it.
                    let read_index = self
                        .batcher
                        .read_index()
                        .await
                        .map_err(|error| Self::read_index_error(&view, error))?;
                    self.wait_applied(read_index.index).await?;
                    applied_consistency = Consistency::Linearizable;
                    confirmed_now = true;
                }
            }
            Consistency::Stale => {
                if let Some(bound) = request.max_staleness {
                    let since = self.millis_since_leader(&view);
                    match since {
                        Some(millis) if Duration::from_millis(millis) <= bound => {}
                        _ => {
                            return Err(ApiError::TooStale {
                                millis_since_leader: since,
                                bound_millis: bound.as_millis() as u64,
                            })
                        }
                    }
                }
            }
        }
        if request.min_revision > 0 {
            self.wait_revision(request.min_revision).await?;
        }
        let (value, applied_index, revision, compact_revision) = self
            .state_machine
            .read(|applied| {
                (
                    read(applied),
                    applied.last_applied.map_or(0, |log_id| log_id.index),
                    applied.keyspace.revision(),
                    applied.keyspace.compact_revision(),
                )
            })
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        let value = value?;
        let view_after = self.view();
        let envelope = Envelope {
            node_id: self.node_id,
            role: view_after.role,
            consistency: applied_consistency,
            applied_index,
            term: view_after.term,
            leader_id: view_after.leader_id,
            millis_since_leader: if confirmed_now {
                Some(0)
            } else {
                self.millis_since_leader(&view_after)
            },
            revision,
            compact_revision,
        };
        Ok((value, envelope))
    }

    /// The index a linearizable read must wait for: from our own round on the leader, from the leader's on a
    /// follower. A node that knows no leader first waits up to `LEADER_WAIT_MAX` to hear of one: just after an
    /// election a follower may not have heard from the new leader yet, and etcd too waits rather than refuse.
    async fn linearizable_index(&self, view: &RaftView) -> Result<u64, ApiError> {
        let waited;
        let view = if view.role != Role::Leader && view.leader_addr.is_none() {
            match self
                .raft
                .wait(Some(LEADER_WAIT_MAX))
                .metrics(
                    |metrics| metrics.current_leader.is_some(),
                    "a leader is known",
                )
                .await
            {
                Ok(_) => {}
                Err(openraft::metrics::WaitError::ShuttingDown) => {
                    return Err(ApiError::ShuttingDown)
                }
                Err(openraft::metrics::WaitError::Timeout(..)) => return Err(ApiError::NoLeader),
            }
            waited = self.view();
            &waited
        } else {
            view
        };
        if view.role == Role::Leader {
            let read_index = self
                .batcher
                .read_index()
                .await
                .map_err(|error| Self::read_index_error(view, error))?;
            return Ok(read_index.index);
        }
        let (Some(leader_id), Some(leader_addr)) = (view.leader_id, view.leader_addr.as_deref())
        else {
            return Err(ApiError::NoLeader);
        };
        self.forwarder
            .read_index(leader_id, leader_addr.to_string())
            .await
            .map_err(|error| Self::read_index_error(view, error))
    }
}
