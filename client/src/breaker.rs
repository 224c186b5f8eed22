//! A circuit breaker per endpoint: a node that refused a connection or did not answer is skipped for a
//! cool-down instead of being tried again on every attempt, and is then probed by one request (half-open)
//! before it gets traffic again.
//!
//! Why: when the leader dies, every call that tried it first paid a failed dial (and a call that tried it
//! while it was merely cut off paid its whole request deadline) before going to a node that could answer.
//! With the breaker a client tries the dead node once per cool-down. The breaker is pure: time comes in as an
//! argument, so its rules are tested without clocks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// First cool-down after an endpoint fails.
pub const ENDPOINT_COOLDOWN_INITIAL: Duration = Duration::from_millis(500);
/// Longest cool-down: it doubles each time a probe fails, up to this.
pub const ENDPOINT_COOLDOWN_MAX: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Failed: skipped until `until`.
    Open { until: Instant, cooldown: Duration },
    /// The cool-down is over and one request is probing it; others skip it until the probe ends, or until
    /// `until` if its outcome never comes back (the caller gave up on it): then another probe may go.
    HalfOpen { until: Instant, cooldown: Duration },
}

/// The breakers of every endpoint a client knows; an endpoint without one is healthy (closed).
#[derive(Clone, Debug, Default)]
pub struct Breakers {
    states: HashMap<String, State>,
}

impl Breakers {
    /// Whether a request may go to `endpoint` now. An open breaker whose cool-down is over lets this one
    /// request through as its probe (and no other until the probe ends).
    pub fn admit(&mut self, endpoint: &str, now: Instant) -> bool {
        let Some(state) = self.states.get_mut(endpoint) else {
            return true;
        };
        match *state {
            State::Open { until, cooldown } | State::HalfOpen { until, cooldown }
                if now >= until =>
            {
                *state = State::HalfOpen {
                    until: now + cooldown,
                    cooldown,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// When the first of `endpoints` stops cooling down: `now` if one is not cooling down.
    pub fn next_admission(&self, endpoints: &[String], now: Instant) -> Instant {
        endpoints
            .iter()
            .map(|endpoint| match self.states.get(endpoint) {
                None => now,
                Some(State::Open { until, .. } | State::HalfOpen { until, .. }) => {
                    (*until).max(now)
                }
            })
            .min()
            .unwrap_or(now)
    }

    /// `endpoint` answered (whatever it said): it is alive.
    pub fn succeeded(&mut self, endpoint: &str) {
        self.states.remove(endpoint);
    }

    /// `endpoint` refused a connection or did not answer: skip it for a cool-down, longer each time a probe
    /// fails.
    pub fn failed(&mut self, endpoint: &str, now: Instant) {
        let cooldown = match self.states.get(endpoint) {
            Some(State::HalfOpen { cooldown, .. }) => (*cooldown * 2).min(ENDPOINT_COOLDOWN_MAX),
            Some(State::Open { cooldown, .. }) => *cooldown,
            None => ENDPOINT_COOLDOWN_INITIAL,
        };
        self.states.insert(
            endpoint.to_string(),
            State::Open {
                until: now + cooldown,
                cooldown,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:1";

    /// Whether a request could go to `A` at `now`, without taking a probe's turn.
    fn admissible(breakers: &Breakers, now: Instant) -> bool {
        breakers.clone().admit(A, now)
    }

    #[test]
    fn an_endpoint_that_failed_is_skipped_for_its_cooldown_then_probed_once() {
        let start = Instant::now();
        let mut breakers = Breakers::default();
        assert!(breakers.admit(A, start), "healthy at first");
        breakers.failed(A, start);
        assert!(!breakers.admit(A, start + Duration::from_millis(499)));
        assert!(!admissible(&breakers, start + Duration::from_millis(499)));
        let after = start + ENDPOINT_COOLDOWN_INITIAL;
        assert!(admissible(&breakers, after));
        assert!(breakers.admit(A, after), "the probe goes through");
        assert!(
            !breakers.admit(A, after),
            "a second request waits for the probe"
        );
        breakers.succeeded(A);
        assert!(
            breakers.admit(A, after),
            "closed again after the probe answered"
        );
        assert!(breakers.admit(A, after));
    }

    #[test]
    fn a_probe_whose_outcome_never_comes_back_lets_another_through_later() {
        let start = Instant::now();
        let mut breakers = Breakers::default();
        breakers.failed(A, start);
        let after = start + ENDPOINT_COOLDOWN_INITIAL;
        assert!(breakers.admit(A, after), "the probe goes through");
        // Its caller gave up: neither succeeded nor failed is recorded.
        assert!(!admissible(
            &breakers,
            after + ENDPOINT_COOLDOWN_INITIAL / 2
        ));
        assert!(admissible(&breakers, after + ENDPOINT_COOLDOWN_INITIAL));
        assert_eq!(
            breakers.next_admission(&[A.to_string()], after),
            after + ENDPOINT_COOLDOWN_INITIAL
        );
        assert_eq!(
            breakers.next_admission(&["127.0.0.1:2".to_string()], after),
            after
        );
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let mut now = Instant::now();
        let mut breakers = Breakers::default();
        breakers.failed(A, now);
        let mut cooldowns = Vec::new();
        for _ in 0..8 {
            // Find when it opens again: the cool-down in force.
            let mut waited = Duration::ZERO;
            while !admissible(&breakers, now + waited) {
                waited += Duration::from_millis(100);
            }
            cooldowns.push(waited);
            now += waited;
            assert!(breakers.admit(A, now));
            breakers.failed(A, now);
        }
        let expected: Vec<Duration> = [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        assert_eq!(cooldowns, expected);
    }

    #[test]
    fn a_failure_while_open_keeps_the_cooldown() {
        let now = Instant::now();
        let mut breakers = Breakers::default();
        breakers.failed(A, now);
        breakers.failed(A, now + Duration::from_millis(100));
        assert!(!admissible(&breakers, now + Duration::from_millis(599)));
        assert!(admissible(&breakers, now + Duration::from_millis(600)));
    }
}
