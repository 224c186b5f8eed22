//! How long ago a quorum last vouched for this node as leader, and what a leader that lost its quorum does
//! (or one handing leadership over, `handover`).
//!
//! openraft 0.9 reports `millis_since_quorum_ack` only once a quorum acknowledged a message of the leader;
//! a leader cut off right after its election never gets one. Its election was a quorum's vote, so until the
//! first acknowledgement the age counts from when this node was first seen leading in its term.
//!
//! A leader that no quorum acknowledges for `ElectionTiming::leader_silent_after` stops sending
//! AppendEntries and snapshot chunks (`QuorumClock::silent_for`): openraft 0.9 has no check-quorum, so its
//! messages to the few voters it still reaches would keep their vote lease fresh, and a majority that can
//! talk among itself could not elect (openraft #2080, a "bridge" partition). It is silent in phases: silent
//! for `leader_silent_after`, then sending for `election_timeout_max` (long enough for openraft's 500 ms
//! retry backoff to try again), and so on, so that a quorum that comes back, or a follower whose log is
//! behind it and so cannot win an election, hears from it again; an acknowledgement ends the silence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::raft::handover::Handover;
use crate::raft::types::RaftMetrics;

/// When a leader without a quorum is silent (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SilencePolicy {
    /// Silent once no quorum has acknowledged it for this long, and then for this long in each cycle.
    pub silent_after: Duration,
    /// Then sending again for this long, to probe for a quorum.
    pub probe: Duration,
}

impl SilencePolicy {
    /// Whether a leader whose quorum last acknowledged it `quorum_age` ago is silent now (pure).
    pub fn is_silent(&self, quorum_age: Duration) -> bool {
        let Some(past) = quorum_age.checked_sub(self.silent_after) else {
            return false;
        };
        let cycle = self.silent_after + self.probe;
        let into_cycle = Duration::from_nanos((past.as_nanos() % cycle.as_nanos().max(1)) as u64);
        into_cycle < self.silent_after
    }
}

/// This node's quorum age as leader, from openraft's metrics. Shared by the network, the api and the
/// pre-vote handler.
pub struct QuorumClock {
    metrics: watch::Receiver<RaftMetrics>,
    /// The term this node was first seen leading, and when. A std mutex, held only to read or replace it.
    leading_since: Mutex<Option<(u64, Instant)>>,
    silence: SilencePolicy,
    /// Whether the last look found this node silent: a change is logged once.
    was_silent: Mutex<bool>,
    /// The node's span: the network calls this from openraft's tasks, outside it.
    span: tracing::Span,
    /// A leadership transfer this leader is making: it too makes the leader refuse writes and fall silent,
    /// and it is read by the same three (the api, the network, the pre-vote handler).
    pub handover: Handover,
}

impl QuorumClock {
    /// Made inside the node's span, which it keeps for its own log lines.
    pub fn new(metrics: watch::Receiver<RaftMetrics>, silence: SilencePolicy) -> QuorumClock {
        QuorumClock {
            metrics,
            leading_since: Mutex::new(None),
            silence,
            was_silent: Mutex::new(false),
            span: tracing::Span::current(),
            handover: Handover::default(),
        }
    }

    /// While this node leads: time since a quorum last acknowledged it, or, before the first acknowledgement,
    /// since it was first seen leading in its term. `None` when it does not lead.
    pub fn leader_quorum_age(&self) -> Option<Duration> {
        let (state, term, acked) = {
            let metrics = self.metrics.borrow();
            (
                metrics.state,
                metrics.current_term,
                metrics.millis_since_quorum_ack,
            )
        };
        let mut since = self
            .leading_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state != ServerState::Leader {
            *since = None;
            return None;
        }
        let leading_since = match *since {
            Some((seen_term, at)) if seen_term == term => at,
            _ => {
                let now = Instant::now();
                *since = Some((term, now));
                now
            }
        };
        Some(match acked {
            Some(millis) => Duration::from_millis(millis),
            None => leading_since.elapsed(),
        })
    }

    /// While this node leads without a quorum and is in a silent phase: how long no quorum acknowledged it.
    /// Logs the start and end of silence once each.
    pub fn silent_for(&self) -> Option<Duration> {
        let age = self.leader_quorum_age();
        let silent = age.is_some_and(|age| self.silence.is_silent(age));
        let mut was_silent = self
            .was_silent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if silent != *was_silent {
            *was_silent = silent;
            if silent {
                tracing::warn!(parent: &self.span, quorum_age = ?age, silent_after = ?self.silence.silent_after, "no quorum has acknowledged this leader for too long; it stops sending to its followers so that they can elect a leader that has one (it probes again every so often)");
            } else {
                tracing::info!(parent: &self.span, quorum_age = ?age, "this leader sends to its followers again");
            }
        }
        if silent {
            age
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_without_a_quorum_alternates_silence_and_probing() {
        let policy = SilencePolicy {
            silent_after: Duration::from_secs(4),
            probe: Duration::from_secs(2),
        };
        let rows = [
            (0, false),
            (3_999, false),
            (4_000, true),
            (7_999, true),
            (8_000, false),
            (9_999, false),
            (10_000, true),
            (13_999, true),
            (14_000, false),
        ];
        for (age_ms, silent) in rows {
            assert_eq!(
                policy.is_silent(Duration::from_millis(age_ms)),
                silent,
                "quorum age {age_ms} ms"
            );
        }
    }
}
