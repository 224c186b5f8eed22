//! Pre-vote: the question a node asks its peers before it campaigns ("would you vote for me if I did?"), and
//! the pure rule a peer answers it by.
//!
//! openraft 0.9 has no pre-vote: a node that campaigns first raises its term, and a higher term seen anywhere
//! deposes the leader, even a healthy one. A follower cut off for a while kept campaigning in higher and higher
//! terms and, when the partition healed, its term knocked over the leader (a write outage although nothing was
//! wrong with it). So raftkv turns openraft's own election timer off and campaigns from `election`, only after a
//! quorum of voters (this node included) granted a pre-vote. A pre-vote changes nothing on the peer: no term,
//! no vote, nothing written. The real vote that follows is still openraft's and decides alone; a pre-vote
//! only keeps a node that cannot win from trying.
//!
//! The rule mirrors what openraft's real vote would say, so that a granted pre-vote means a real vote can win:
//! - a leader refuses while a quorum acknowledged it within the voter lease (it is alive and reachable);
//! - a follower refuses while it accepted a leader message within the voter lease (openraft's own vote would
//!   refuse the same, see `ElectionTiming::voter_lease`);
//! - anyone refuses a candidate whose log is behind its own (the real vote would, too);
//! - a node that is not a voter is not asked, and a request from a non-voter is refused;
//! - while a leadership transfer names a target (on the leader handing over and on the target itself, see
//!   `transfer`), only the target is granted, and it is granted whatever the lease (the leader fell silent
//!   for it), still only if its log is not behind.
//!
//! There is no term check: a candidate with a stale term learns the higher term from the real vote's refusal
//! and campaigns above it next time; refusing it here would leave it unable to learn it at all.

use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::raft::types::{LogId, NodeId};

/// What a would-be candidate sends each voter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The term it would campaign in: its current term plus one (for logs; the rule does not use it).
    pub term: u64,
    /// The last entry of its log.
    pub last_log_id: Option<LogId>,
}

/// A voter's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreVoteReply {
    Granted,
    Refused(PreVoteRefusal),
}

/// Why a voter would not vote for the candidate now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PreVoteRefusal {
    #[error("node {node_id} is not a voter")]
    NotAVoter { node_id: NodeId },
    #[error(
        "node {node_id} leads term {term} and a quorum acknowledged it {quorum_age_ms} ms ago"
    )]
    Leading {
        node_id: NodeId,
        term: u64,
        quorum_age_ms: u64,
    },
    #[error("node {node_id} heard from the leader of term {term} {millis_ago} ms ago")]
    HeardFromLeader {
        node_id: NodeId,
        term: u64,
        millis_ago: u64,
    },
    #[error("node {node_id} is handing leadership to node {target}, not to this candidate")]
    Transferring { node_id: NodeId, target: NodeId },
    #[error("node {node_id} has a longer log (last entry {mine}, the candidate's {candidate})")]
    LogBehind {
        node_id: NodeId,
        mine: String,
        candidate: String,
    },
}

/// What a voter knows about itself when a pre-vote arrives.
#[derive(Clone, Debug)]
pub struct VoterView {
    pub node_id: NodeId,
    pub state: ServerState,
    pub term: u64,
    /// Whether its vote is for an established leader (openraft's committed vote).
    pub vote_committed: bool,
    /// Time since its vote was last refreshed: the last message it accepted from a leader, or the vote it
    /// last granted or cast. `None` when it never was (a node just started).
    pub since_vote_refreshed: Option<Duration>,
    pub last_log_id: Option<LogId>,
    /// On a leader: time since a quorum last acknowledged it; `None` before the first acknowledgement.
    pub leader_quorum_age: Option<Duration>,
    /// The target of a leadership transfer under way: set on the leader handing over and on the target.
    pub transfer_target: Option<NodeId>,
}

/// The pre-vote rule (see the module documentation). `candidate` sent the request; `candidate_is_voter` says
/// whether it is a voter of this node's membership; `voter_lease` is `ElectionTiming::voter_lease`.
pub fn decide(
    view: &VoterView,
    candidate: NodeId,
    request: &PreVoteRequest,
    candidate_is_voter: bool,
    voter_lease: Duration,
) -> PreVoteReply {
    match refusal(view, candidate, request, candidate_is_voter, voter_lease) {
        None => PreVoteReply::Granted,
        Some(refusal) => PreVoteReply::Refused(refusal),
    }
}

fn refusal(
    view: &VoterView,
    candidate: NodeId,
    request: &PreVoteRequest,
    candidate_is_voter: bool,
    voter_lease: Duration,
) -> Option<PreVoteRefusal> {
    if !candidate_is_voter {
        return Some(PreVoteRefusal::NotAVoter {
            node_id: view.node_id,
        });
    }
    match view.transfer_target {
        Some(target) if target != candidate => {
            return Some(PreVoteRefusal::Transferring {
                node_id: view.node_id,
                target,
            })
        }
        Some(_) => {}
        None if view.state == ServerState::Leader => {
            // A leader without a first acknowledgement has just won its election: it is as alive as can be.
            let quorum_age = view.leader_quorum_age.unwrap_or_default();
            if quorum_age <= voter_lease {
                return Some(PreVoteRefusal::Leading {
                    node_id: view.node_id,
                    term: view.term,
                    quorum_age_ms: quorum_age.as_millis() as u64,
                });
            }
        }
        None if view.vote_committed => {
            if let Some(since) = view
                .since_vote_refreshed
                .filter(|since| *since <= voter_lease)
            {
                return Some(PreVoteRefusal::HeardFromLeader {
                    node_id: view.node_id,
                    term: view.term,
                    millis_ago: since.as_millis() as u64,
                });
            }
        }
        None => {}
    }
    // openraft's comparison: log ids order by (leader term, leader node, index), partially; a candidate whose
    // last entry is not at least ours is refused, incomparable ones included (so not `<`).
    #[allow(clippy::nonminimal_bool)]
    if !(request.last_log_id.as_ref() >= view.last_log_id.as_ref()) {
        return Some(PreVoteRefusal::LogBehind {
            node_id: view.node_id,
            mine: describe(view.last_log_id.as_ref()),
            candidate: describe(request.last_log_id.as_ref()),
        });
    }
    None
}

/// A log id as people read it: `term 3 index 17`, or `none`.
fn describe(log_id: Option<&LogId>) -> String {
    match log_id {
        Some(log_id) => format!("term {} index {}", log_id.leader_id.term, log_id.index),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);
    /// The candidate of every row; node 2 is the voter.
    const CANDIDATE: NodeId = 1;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(since_vote_refreshed_ms: Option<u64>, last_log_id: Option<LogId>) -> VoterView {
        VoterView {
            node_id: 2,
            state: ServerState::Follower,
            term: 3,
            vote_committed: true,
            since_vote_refreshed: since_vote_refreshed_ms.map(Duration::from_millis),
            last_log_id,
            leader_quorum_age: None,
            transfer_target: None,
        }
    }

    /// A row of the rule's table: its name, a voter's view, the candidate's last log id, whether the candidate
    /// is a voter, and the expected answer (`None` = granted, else the refusal's kind).
    type Row = (
        &'static str,
        VoterView,
        Option<LogId>,
        bool,
        Option<&'static str>,
    );

    #[test]
    fn pre_vote_rule_table() {
        let leader = |quorum_age_ms: Option<u64>| VoterView {
            state: ServerState::Leader,
            leader_quorum_age: quorum_age_ms.map(Duration::from_millis),
            ..follower(Some(60_000), log(3, 10))
        };
        let handing = |view: VoterView, target: NodeId| VoterView {
            transfer_target: Some(target),
            ..view
        };
        let candidate = |view: VoterView| VoterView {
            state: ServerState::Candidate,
            vote_committed: false,
            ..view
        };
        let rows: Vec<Row> = vec![
            (
                "heard from the leader just now",
                follower(Some(10), log(3, 10)),
                log(3, 10),
                true,
                Some("heard"),
            ),
            (
                "heard from the leader exactly a lease ago",
                follower(Some(1000), log(3, 10)),
                log(3, 10),
                true,
                Some("heard"),
            ),
            (
                "lease ran out",
                follower(Some(1001), log(3, 10)),
                log(3, 10),
                true,
                None,
            ),
            (
                "never heard from a leader",
                follower(None, log(3, 10)),
                log(3, 10),
                true,
                None,
            ),
            (
                "lease ran out, candidate's log is shorter",
                follower(Some(5000), log(3, 10)),
                log(3, 9),
                true,
                Some("log"),
            ),
            (
                "lease ran out, candidate's log is from an older term",
                follower(Some(5000), log(3, 10)),
                log(2, 50),
                true,
                Some("log"),
            ),
            (
                "lease ran out, candidate's log is longer",
                follower(Some(5000), log(3, 10)),
                log(3, 11),
                true,
                None,
            ),
            (
                "lease ran out, candidate's log is from a newer term",
                follower(Some(5000), log(3, 10)),
                log(4, 1),
                true,
                None,
            ),
            ("empty logs on both", follower(None, None), None, true, None),
            (
                "candidate has no log, voter has",
                follower(None, log(1, 1)),
                None,
                true,
                Some("log"),
            ),
            (
                "candidate is not a voter",
                follower(None, None),
                None,
                false,
                Some("voter"),
            ),
            (
                "a healthy leader",
                leader(Some(40)),
                log(3, 10),
                true,
                Some("leading"),
            ),
            (
                "a leader just elected, not yet acknowledged",
                leader(None),
                log(3, 10),
                true,
                Some("leading"),
            ),
            (
                "a leader that lost its quorum a lease ago",
                leader(Some(1001)),
                log(3, 10),
                true,
                None,
            ),
            (
                "a leader that lost its quorum, candidate behind",
                leader(Some(5000)),
                log(3, 9),
                true,
                Some("log"),
            ),
            (
                "a leader handing over to the candidate, acknowledged just now",
                handing(leader(Some(40)), CANDIDATE),
                log(3, 10),
                true,
                None,
            ),
            (
                "the transfer's target asked by another candidate",
                handing(follower(Some(5000), log(3, 10)), 2),
                log(3, 10),
                true,
                Some("transfer"),
            ),
            (
                "a leader handing over to another node",
                handing(leader(Some(5000)), 3),
                log(3, 10),
                true,
                Some("transfer"),
            ),
            (
                "handing over to the candidate, whose log is behind",
                handing(leader(Some(40)), CANDIDATE),
                log(3, 9),
                true,
                Some("log"),
            ),
            (
                "a transfer's target still needs to be a voter",
                handing(follower(Some(10), log(3, 10)), CANDIDATE),
                log(3, 10),
                false,
                Some("voter"),
            ),
            // A vote for a candidate (not committed) carries no lease: a split vote is retried at once.
            (
                "a candidate that just voted for itself",
                candidate(follower(Some(10), log(3, 10))),
                log(3, 10),
                true,
                None,
            ),
        ];
        for (name, view, candidate_log, candidate_is_voter, expected) in rows {
            let request = PreVoteRequest {
                term: view.term + 1,
                last_log_id: candidate_log,
            };
            let got = match decide(&view, CANDIDATE, &request, candidate_is_voter, LEASE) {
                PreVoteReply::Granted => None,
                PreVoteReply::Refused(PreVoteRefusal::HeardFromLeader { .. }) => Some("heard"),
                PreVoteReply::Refused(PreVoteRefusal::LogBehind { .. }) => Some("log"),
                PreVoteReply::Refused(PreVoteRefusal::NotAVoter { .. }) => Some("voter"),
                PreVoteReply::Refused(PreVoteRefusal::Leading { .. }) => Some("leading"),
                PreVoteReply::Refused(PreVoteRefusal::Transferring { .. }) => Some("transfer"),
            };
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn refusals_say_who_and_why_in_words() {
        let refused = decide(
            &follower(Some(120), log(3, 10)),
            CANDIDATE,
            &PreVoteRequest {
                term: 4,
                last_log_id: log(3, 10),
            },
            true,
            LEASE,
        );
        let PreVoteReply::Refused(refusal) = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        assert_eq!(
            refusal.to_string(),
            "node 2 heard from the leader of term 3 120 ms ago"
        );
        let refused = decide(
            &follower(Some(5000), log(3, 10)),
            CANDIDATE,
            &PreVoteRequest {
                term: 4,
                last_log_id: log(2, 4),
            },
            true,
            LEASE,
        );
        let PreVoteReply::Refused(refusal) = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        assert_eq!(
            refusal.to_string(),
            "node 2 has a longer log (last entry term 3 index 10, the candidate's term 2 index 4)"
        );
    }
}
