//! Leadership transfer (etcd's `MoveLeader`), which openraft 0.9 does not have, built from what it does.
//!
//! Raft's transfer (the thesis, section 3.10) is: the leader stops taking writes, brings the target's log up
//! to its own, and tells the target to campaign at once. openraft's voters refuse any vote for
//! `ElectionTiming::voter_lease` after they last accepted a leader message, and raftkv's lease reads count on
//! that refusal, so the target cannot simply campaign at once. Here:
//! 1. the leader refuses writes (`ApiError::LeaderTransfer`: clients retry, as after any change of leader);
//! 2. it waits until the target has matched its whole log (`TRANSFER_CATCH_UP_TIMEOUT`);
//! 3. it falls silent (no AppendEntries, no heartbeats: `PeerChannels` asks `Handover::is_silent`) and sends
//!    the target a `TimeoutNow`;
//! 4. the target's elector campaigns as soon as the voters' lease has run out since it last heard from the
//!    leader (`TakeoverRequest`: `ElectionTiming::takeover_timeout`, the lease plus a margin, where a voter otherwise waits a random
//!    election timeout of at least the lease), with a pre-vote that the leader and the target grant only to
//!    the target while the transfer lasts (`pre_vote::decide`);
//! 5. the leader waits until it has heard from the target as the new leader (`ElectionTiming::transfer_timeout`)
//!    and otherwise speaks again and reports that the transfer failed.
//!
//! No safety rule is bent: the new leader wins an ordinary election after the voters' leases ran out, so a
//! lease read on the old leader stays correct, and an entry the old leader appended after step 2 is, as ever,
//! either committed by the new leader or never acknowledged. A transfer costs about one voter lease of write
//! unavailability, where etcd's (which tells voters to ignore their lease) costs one round trip.

use std::time::Duration;

use openraft::ServerState;

use crate::raft::election::ElectionTiming;
use crate::raft::handover::{Handover, TimeoutNow};
use crate::raft::network::{PeerCallError, PeerChannels};
use crate::raft::types::{NodeId, Raft, RaftMetrics};

/// How long the leader waits for the target to match its log before it gives up the transfer (writes are
/// refused meanwhile, so the log stops growing; a target this far behind should be left to catch up first).
pub const TRANSFER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the `TimeoutNow` call to the target.
pub const TIMEOUT_NOW_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a transfer did not happen or did not finish. The leader speaks again before any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("node {target} cannot lead: it is not a voter of this cluster (a learner or not a member); promote it first or name a voter")]
    BadTarget { target: NodeId },
    #[error("leadership is already moving to node {target}; wait for that transfer to end")]
    AlreadyMoving { target: NodeId },
    #[error("node {target} did not catch up with the leader's log within {waited:?} (it has {matched}, the leader {last}); leadership stays here, retry once it has caught up")]
    NotCaughtUp {
        target: NodeId,
        matched: u64,
        last: u64,
        waited: Duration,
    },
    #[error("could not tell node {target} to take over ({reason}); leadership stays here")]
    Unreachable { target: NodeId, reason: String },
    #[error("node {target} did not take over within {waited:?}; {}", after.describe())]
    NoTakeover {
        target: NodeId,
        waited: Duration,
        after: Outcome,
    },
}

/// Who leads once a transfer stopped waiting, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This node still leads and speaks again.
    StillLeading,
    /// Another node than the target won.
    Elsewhere(NodeId),
    /// No leader is known yet.
    Unknown,
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::StillLeading => "this node leads again".to_string(),
            Outcome::Elsewhere(leader) => format!("node {leader} was elected instead"),
            Outcome::Unknown => "an election is under way; retry once it is over".to_string(),
        }
    }
}

/// Moves leadership from this node to `target` (the steps in the module documentation). Returns once this
/// node has heard from `target` as leader; `Ok` at once when `target` is this node and it leads.
pub async fn transfer(
    raft: &Raft,
    peers: &PeerChannels,
    handover: &Handover,
    timing: ElectionTiming,
    target: NodeId,
) -> Result<(), TransferError> {
    let mut metrics = raft.metrics();
    let (term, target_address) = {
        let now = metrics.borrow();
        let membership = now.membership_config.membership();
        let is_voter = membership
            .get_joint_config()
            .iter()
            .all(|set| set.contains(&target));
        let address = membership.get_node(&target).map(|node| node.addr.clone());
        match address {
            Some(address) if is_voter => (now.current_term, address),
            _ => return Err(TransferError::BadTarget { target }),
        }
    };
    let _handing = handover
        .begin(target)
        .map_err(|target| TransferError::AlreadyMoving { target })?;
    let caught_up = wait_for(&mut metrics, TRANSFER_CATCH_UP_TIMEOUT, |now| {
        now.state == ServerState::Leader
            && matched(now, target).is_some_and(|matched| Some(matched) >= now.last_log_index)
    })
    .await;
    if !caught_up {
        let now = metrics.borrow();
        return Err(TransferError::NotCaughtUp {
            target,
            matched: matched(&now, target).unwrap_or(0),
            last: now.last_log_index.unwrap_or(0),
            waited: TRANSFER_CATCH_UP_TIMEOUT,
        });
    }
    handover.fall_silent();
    let within = timing.transfer_timeout();
    let request = TimeoutNow {
        term,
        within_ms: within.as_millis() as u64,
    };
    peers
        .timeout_now(target, &target_address, &request, TIMEOUT_NOW_CALL_TIMEOUT)
        .await
        .map_err(|error| TransferError::Unreachable {
            target,
            reason: match error {
                PeerCallError::Refused { status, .. } => status.message().to_string(),
                error => error.to_string(),
            },
        })?;
    tracing::info!(
        target,
        term,
        "leadership transfer: the target matched the log and was told to take over"
    );
    let took_over = wait_for(&mut metrics, within, |now| {
        now.current_leader == Some(target) && now.current_term > term
    })
    .await;
    if took_over {
        return Ok(());
    }
    let now = metrics.borrow();
    let after = match (now.state, now.current_leader) {
        (ServerState::Leader, _) => Outcome::StillLeading,
        (_, Some(leader)) if leader != target => Outcome::Elsewhere(leader),
        _ => Outcome::Unknown,
    };
    Err(TransferError::NoTakeover {
        target,
        waited: within,
        after,
    })
}

/// The last log index the leader knows `target` holds.
fn matched(metrics: &RaftMetrics, target: NodeId) -> Option<u64> {
    metrics
        .replication
        .as_ref()?
        .get(&target)?
        .as_ref()
        .map(|log_id| log_id.index)
}

/// Waits until `done` holds for openraft's metrics, at most `timeout`; false if it did not.
async fn wait_for(
    metrics: &mut tokio::sync::watch::Receiver<RaftMetrics>,
    timeout: Duration,
    done: impl Fn(&RaftMetrics) -> bool,
) -> bool {
    tokio::time::timeout(timeout, metrics.wait_for(|now| done(now)))
        .await
        .is_ok_and(|seen| seen.is_ok())
}
