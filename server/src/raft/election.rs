//! When this node campaigns: the election timer, drawn afresh for every attempt, and the pre-vote round that
//! must pass before it asks for real votes.
//!
//! openraft 0.9's own timer is off (`enable_elect: false`); the `Elector` task replaces it, because openraft's
//! made failover slow and could get stuck:
//! - a follower campaigned only after `election_timeout_max` (its leader lease) *plus* its election timeout of
//!   silence, 3-4 s at the default flags;
//! - the election timeout was drawn once per process, so two survivors with close draws could split their
//!   votes again and again (openraft #1838);
//! - there was no pre-vote, so a node back from a partition deposed a healthy leader with its higher term.
//!
//! The rule here is Raft's (and etcd's): a voter that has heard nothing from a leader for a random time in
//! `[election_timeout_min, election_timeout_max)`, drawn again for every term and every attempt, asks every voter for a
//! pre-vote (`pre_vote`), and campaigns (`Raft::trigger().elect()`) only if a quorum of every voter set would
//! grant it. openraft's voters refuse real votes for `voter_lease` = `election_timeout_min` after they last
//! accepted a leader message (openraft derives that lease from the `election_timeout_max` it is given, see
//! `node::raft_config`), the same span etcd's check-quorum lease has. A single voter campaigns at once.
//!
//! A node its leader asked to take over (`TakeoverRequest`, see `transfer`) campaigns sooner: as soon as the
//! voter lease has passed since it last heard from the leader (`ElectionTiming::takeover_timeout`).
//!
//! Silence is measured by openraft's own clock of the vote (`vote_last_modified`: refreshed by every leader
//! message the node accepts, by a vote it grants and by its own campaign), the same clock openraft's voters
//! use, so the timer and the voters agree on when a leader went quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::raft::handover::TakeoverRequest;
use crate::raft::network::PeerChannels;
use crate::raft::pre_vote::{PreVoteReply, PreVoteRequest};
use crate::raft::types::{LogId, NodeId, Raft};

/// Orders a campaign against the leader messages this node accepts. The peer service holds a read guard
/// while openraft handles an AppendEntries or snapshot chunk (each refreshes the vote's clock); the elector
/// holds the write guard while it checks the silence one last time and starts the campaign. Without it, a
/// leader message accepted between that check and the campaign would let this node vote for itself right after
/// acknowledging a leader's quorum round, which the leader's lease read counts on it not doing.
#[derive(Default)]
pub struct ElectionGate(tokio::sync::RwLock<()>);

impl ElectionGate {
    /// Held while openraft handles one leader message.
    pub async fn leader_message(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.0.read().await
    }
}

/// How much later than the voters' lease a node asked to take over campaigns: the voters received the
/// leader's last message at slightly different moments, and a vote asked a moment too early is refused.
pub const TAKEOVER_MARGIN: Duration = Duration::from_millis(50);

/// How often the elector looks again when it has nothing to wait for (a leader, a learner, a node not yet
/// initialized): it then learns of a change of role within this.
pub const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The election timing of a node, from its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTiming {
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl ElectionTiming {
    /// How long a voter refuses to vote after it last accepted a leader message: what openraft calls the
    /// leader lease on its voters. It bounds the lease read (`read_index`: a quorum round started at `t`
    /// proves no other leader can be elected before `t + voter_lease` by any voter's clock).
    pub fn voter_lease(&self) -> Duration {
        self.election_timeout_min
    }

    /// A fresh election timeout: uniform in `[election_timeout_min, election_timeout_max)`.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> Duration {
        let span = self
            .election_timeout_max
            .saturating_sub(self.election_timeout_min);
        self.election_timeout_min + span.mul_f64(rng.random_range(0.0..1.0))
    }

    /// How long a leader that no quorum acknowledges goes on sending to its followers before it falls silent
    /// (`quorum::QuorumClock::silent_for`): twice the longest election timeout, by when the voters on
    /// the other side of any partition have had time to elect a leader of their own.
    pub fn leader_silent_after(&self) -> Duration {
        self.election_timeout_max * 2
    }

    /// How long a leader handing over waits for the target to take over (`transfer`): the voters' lease
    /// after its last message, then a pre-vote and a vote round, with room for one more attempt.
    pub fn transfer_timeout(&self) -> Duration {
        self.voter_lease() + self.election_timeout_max * 2
    }

    /// When a node asked to take over (`TakeoverRequest`) campaigns: once the voters' lease has run out
    /// since it last heard from the leader, a little later than any voter could refuse it.
    pub fn takeover_timeout(&self) -> Duration {
        self.voter_lease() + TAKEOVER_MARGIN
    }

    /// Deadline of a pre-vote round: half the shortest election timeout, so a peer that does not answer (cut
    /// off, paused) delays the next attempt by less than a timeout.
    pub fn pre_vote_timeout(&self) -> Duration {
        self.election_timeout_min / 2
    }
}

/// What the elector reads of its own node before deciding.
#[derive(Clone, Debug)]
struct SelfView {
    state: ServerState,
    term: u64,
    since_vote_refreshed: Option<Duration>,
    /// Voter sets of the effective membership (two during a joint change).
    voter_sets: Vec<BTreeSet<NodeId>>,
    /// Every member's advertised address.
    addresses: BTreeMap<NodeId, String>,
}

impl SelfView {
    fn is_voter(&self, node_id: NodeId) -> bool {
        self.voter_sets.iter().any(|set| set.contains(&node_id))
    }

    fn is_only_voter(&self, node_id: NodeId) -> bool {
        self.voter_sets
            .iter()
            .all(|set| set.len() == 1 && set.contains(&node_id))
    }
}

/// What the elector does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Wait(Duration),
    Campaign,
}

/// The timer's rule. `since_quiet` is the time since the elector started or last attempted, whichever is
/// later: silence is the shorter of that and the time since the vote was refreshed, so attempts are at least
/// a timeout apart and a node that never heard of a leader counts from its start.
fn next_step(node_id: NodeId, view: &SelfView, timeout: Duration, since_quiet: Duration) -> Step {
    if view.state == ServerState::Leader || !view.is_voter(node_id) {
        return Step::Wait(IDLE_CHECK_INTERVAL);
    }
    if view.is_only_voter(node_id) {
        // Nobody else can lead and nobody needs asking; look again after a while if it did not take.
        return if since_quiet >= IDLE_CHECK_INTERVAL {
            Step::Campaign
        } else {
            Step::Wait(IDLE_CHECK_INTERVAL - since_quiet)
        };
    }
    let silence = view
        .since_vote_refreshed
        .map_or(since_quiet, |since| since.min(since_quiet));
    if silence >= timeout {
        Step::Campaign
    } else {
        Step::Wait(timeout - silence)
    }
}

/// True when `granted` holds a majority of every voter set.
pub fn is_quorum(voter_sets: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !voter_sets.is_empty()
        && voter_sets
            .iter()
            .all(|set| set.intersection(granted).count() * 2 > set.len())
}

/// The task that decides when this node campaigns. Owned by `node`, stopped with the other tasks.
pub struct Elector {
    pub node_id: NodeId,
    pub raft: Raft,
    pub peers: Arc<PeerChannels>,
    pub timing: ElectionTiming,
    pub gate: Arc<ElectionGate>,
    /// A leader's request that this node take over (`transfer`): it then campaigns as soon as the voters
    /// allow, instead of after its drawn timeout.
    pub takeover: Arc<TakeoverRequest>,
}

impl Elector {
    /// Runs until `stopping` turns true or Raft stops.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        let mut timeout = self.timing.draw(&mut rand::rng());
        let mut quiet_since = Instant::now();
        let mut term_seen = None;
        loop {
            let Some(view) = self.view().await else {
                return;
            };
            // A new term is a new election: draw again, as etcd does when it resets its timer for a term. A
            // node that never campaigns would otherwise keep one draw for ever, and when its leader dies only
            // the other survivors' fresh draws would race (a survivor that drew long loses every race).
            if term_seen.replace(view.term) != Some(view.term) {
                timeout = self.timing.draw(&mut rand::rng());
            }
            let timeout_now = if self.takeover.holds_for(view.term) {
                timeout.min(self.timing.takeover_timeout())
            } else {
                timeout
            };
            match next_step(self.node_id, &view, timeout_now, quiet_since.elapsed()) {
                Step::Campaign => {
                    self.attempt(&view, timeout_now).await;
                    quiet_since = Instant::now();
                    timeout = self.timing.draw(&mut rand::rng());
                }
                Step::Wait(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.takeover.arrived() => {}
                        _ = stopping.wait_for(|stopping| *stopping) => return,
                    }
                }
            }
        }
    }

    /// Reads this node's state from openraft; `None` once Raft has stopped.
    async fn view(&self) -> Option<SelfView> {
        let raft_view = self
            .raft
            .with_raft_state(|state| {
                let membership = state.membership_state.effective().membership();
                let voter_sets: Vec<BTreeSet<NodeId>> = membership.get_joint_config().clone();
                let addresses = membership
                    .nodes()
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect();
                (
                    state.server_state,
                    state.vote_ref().leader_id().term,
                    state
                        .vote_last_modified()
                        .map(|at| Instant::now().saturating_duration_since(at)),
                    voter_sets,
                    addresses,
                )
            })
            .await
            .ok()?;
        let (state, term, since_vote_refreshed, voter_sets, addresses) = raft_view;
        Some(SelfView {
            state,
            term,
            since_vote_refreshed,
            voter_sets,
            addresses,
        })
    }

    /// One attempt: a pre-vote round, then a real campaign if a quorum would grant it and this node is still
    /// silent for `timeout` once no leader message can come in between (`ElectionGate`).
    async fn attempt(&self, view: &SelfView, timeout: Duration) {
        let last_log_id: Option<LogId> = self.raft.data_metrics().borrow().last_log;
        let request = PreVoteRequest {
            term: view.term + 1,
            last_log_id,
        };
        let granted = self.pre_vote_round(view, &request).await;
        if !is_quorum(&view.voter_sets, &granted) {
            tracing::debug!(term = request.term, granted = ?granted, "pre-vote did not reach a quorum; not campaigning");
            return;
        }
        let _no_leader_messages = self.gate.0.write().await;
        let Some(now) = self.view().await else {
            return;
        };
        // The pre-vote round took time: a leader may have been heard since.
        let silence = now.since_vote_refreshed.unwrap_or(Duration::MAX);
        let heard_from_leader = !now.is_only_voter(self.node_id)
            && silence < timeout.min(self.timing.election_timeout_min);
        if now.state == ServerState::Leader || now.term != view.term || heard_from_leader {
            tracing::debug!(
                ?silence,
                "heard from a leader during the pre-vote; not campaigning"
            );
            return;
        }
        tracing::info!(term = request.term, granted = ?granted, "pre-vote granted by a quorum; campaigning");
        if let Err(error) = self.raft.trigger().elect().await {
            tracing::debug!(%error, "cannot start a campaign: raft stopped");
            return;
        }
        // openraft takes requests in order: once this read is answered the campaign has started, and the gate
        // may let leader messages in again.
        let _ = self.view().await;
    }

    /// Asks every other voter for a pre-vote, concurrently, until a quorum granted, all answered or the
    /// round's deadline passed; returns who granted (this node included).
    async fn pre_vote_round(&self, view: &SelfView, request: &PreVoteRequest) -> BTreeSet<NodeId> {
        let mut granted = BTreeSet::from([self.node_id]);
        let deadline = Instant::now() + self.timing.pre_vote_timeout();
        let voters: BTreeSet<NodeId> = view.voter_sets.iter().flatten().copied().collect();
        let mut calls: FuturesUnordered<_> = voters
            .into_iter()
            .filter(|id| *id != self.node_id)
            .filter_map(|id| {
                let advertised = view.addresses.get(&id)?.clone();
                let peers = self.peers.clone();
                let request = request.clone();
                Some(async move {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    (id, peers.pre_vote(id, &advertised, &request, timeout).await)
                })
            })
            .collect();
        while let Some((id, reply)) = calls.next().await {
            match reply {
                Ok(PreVoteReply::Granted) => {
                    granted.insert(id);
                    if is_quorum(&view.voter_sets, &granted) {
                        break;
                    }
                }
                Ok(PreVoteReply::Refused(refusal)) => {
                    tracing::debug!(peer = id, %refusal, "pre-vote refused");
                }
                Err(error) => tracing::debug!(peer = id, %error, "pre-vote not answered"),
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: ElectionTiming = ElectionTiming {
        election_timeout_min: Duration::from_millis(1000),
        election_timeout_max: Duration::from_millis(2000),
    };

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn view(
        state: ServerState,
        voters: &[NodeId],
        since_vote_refreshed_ms: Option<u64>,
    ) -> SelfView {
        SelfView {
            state,
            term: 3,
            since_vote_refreshed: since_vote_refreshed_ms.map(Duration::from_millis),
            voter_sets: vec![set(voters)],
            addresses: BTreeMap::new(),
        }
    }

    #[test]
    fn quorum_is_a_majority_of_every_voter_set() {
        let rows: Vec<(Vec<Vec<NodeId>>, Vec<NodeId>, bool)> = vec![
            (vec![vec![1, 2, 3]], vec![1], false),
            (vec![vec![1, 2, 3]], vec![1, 2], true),
            (vec![vec![1, 2, 3, 4]], vec![1, 2], false),
            (vec![vec![1, 2, 3, 4]], vec![1, 2, 3], true),
            (vec![vec![1, 2, 3, 4, 5]], vec![1, 4, 5], true),
            (vec![vec![1]], vec![1], true),
            // A joint change: a majority of the old and of the new set.
            (vec![vec![1, 2, 3], vec![3, 4, 5]], vec![1, 2, 3], false),
            (vec![vec![1, 2, 3], vec![3, 4, 5]], vec![1, 3, 4], true),
            // Grants from non-voters count for nothing.
            (vec![vec![1, 2, 3]], vec![1, 7, 8], false),
            (vec![], vec![1], false),
        ];
        for (sets, granted, expected) in rows {
            let sets: Vec<BTreeSet<NodeId>> = sets.iter().map(|ids| set(ids)).collect();
            assert_eq!(
                is_quorum(&sets, &set(&granted)),
                expected,
                "sets {sets:?}, granted {granted:?}"
            );
        }
    }

    #[test]
    fn draws_cover_the_range_and_stay_in_it() {
        let mut rng = rand::rng();
        let draws: Vec<Duration> = (0..1000).map(|_| TIMING.draw(&mut rng)).collect();
        assert!(draws.iter().all(
            |draw| *draw >= TIMING.election_timeout_min && *draw < TIMING.election_timeout_max
        ));
        let low = draws
            .iter()
            .filter(|draw| **draw < Duration::from_millis(1250))
            .count();
        let high = draws
            .iter()
            .filter(|draw| **draw >= Duration::from_millis(1750))
            .count();
        // A fresh draw per attempt, spread over the range: two survivors rarely pick close timeouts twice.
        assert!(low > 100 && high > 100, "low {low}, high {high} of 1000");
    }

    /// Each row: the node's view, its current timeout, time since it started or last attempted, and what it
    /// should do.
    #[test]
    fn timer_rule_table() {
        let ms = Duration::from_millis;
        let rows: Vec<(&str, SelfView, u64, u64, Step)> = vec![
            (
                "a leader never campaigns",
                view(ServerState::Leader, &[1, 2, 3], Some(9000)),
                1500,
                9000,
                Step::Wait(IDLE_CHECK_INTERVAL),
            ),
            (
                "a learner never campaigns",
                view(ServerState::Learner, &[2, 3, 4], Some(9000)),
                1500,
                9000,
                Step::Wait(IDLE_CHECK_INTERVAL),
            ),
            (
                "not initialized: no voters",
                view(ServerState::Learner, &[], None),
                1500,
                9000,
                Step::Wait(IDLE_CHECK_INTERVAL),
            ),
            (
                "heard from the leader recently: wait the rest",
                view(ServerState::Follower, &[1, 2, 3], Some(400)),
                1500,
                9000,
                Step::Wait(ms(1100)),
            ),
            (
                "silent for the timeout: campaign",
                view(ServerState::Follower, &[1, 2, 3], Some(1500)),
                1500,
                9000,
                Step::Campaign,
            ),
            (
                "silent, but attempted recently: wait a timeout from the attempt",
                view(ServerState::Candidate, &[1, 2, 3], Some(5000)),
                1500,
                200,
                Step::Wait(ms(1300)),
            ),
            (
                "never heard of a leader: count from the start",
                view(ServerState::Follower, &[1, 2, 3], None),
                1500,
                300,
                Step::Wait(ms(1200)),
            ),
            (
                "never heard of a leader, started long ago",
                view(ServerState::Follower, &[1, 2, 3], None),
                1500,
                1600,
                Step::Campaign,
            ),
            (
                "the only voter campaigns at once",
                view(ServerState::Follower, &[1], None),
                1500,
                100,
                Step::Campaign,
            ),
            (
                "the only voter, just attempted",
                view(ServerState::Candidate, &[1], Some(10)),
                1500,
                30,
                Step::Wait(ms(70)),
            ),
        ];
        for (name, view, timeout_ms, since_quiet_ms, expected) in rows {
            assert_eq!(
                next_step(1, &view, ms(timeout_ms), ms(since_quiet_ms)),
                expected,
                "{name}"
            );
        }
    }
}
