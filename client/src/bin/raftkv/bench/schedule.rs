//! When each operation of a benchmark is due: the open-loop scheduler and its closed-loop degenerate case.
//!
//! Operations are numbered 0, 1, 2, ... in the order workers claim them. With a rate, operation `i` is due
//! `i / rate` seconds after the start, whatever happened to the ones before it: a worker that is late starts
//! at once, and the operation's latency is measured from when it was *due*, not from when it started. That is
//! what keeps a slow response from hiding the requests that would have queued behind it (coordinated
//! omission). Without a rate every operation is due when a worker is free (closed loop).
//!
//! The schedule is pure (the caller passes the elapsed time), so it is tested without a clock.

use std::time::Duration;

/// How many operations, for how long, at what rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Operations per second across every worker; `None`: closed loop.
    pub rate_per_second: Option<f64>,
    /// Stop after this many operations.
    pub total: Option<u64>,
    /// Stop issuing operations due this long after the start or later.
    pub duration: Option<Duration>,
}

/// What the worker that claimed an operation number does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The run is over: this number is not to be run.
    Stop,
    /// Run it now; its latency counts from now (closed loop).
    Now,
    /// Run it at this offset from the start (at once if that is past); its latency counts from that offset.
    Due(Duration),
}

impl Schedule {
    /// The slot of operation `index`, claimed `elapsed` after the start.
    pub fn slot(&self, index: u64, elapsed: Duration) -> Slot {
        if self.total.is_some_and(|total| index >= total) {
            return Slot::Stop;
        }
        match self.rate_per_second {
            Some(rate) => {
                let due = Duration::from_secs_f64(index as f64 / rate);
                if self.duration.is_some_and(|duration| due >= duration) {
                    Slot::Stop
                } else {
                    Slot::Due(due)
                }
            }
            None => {
                if self.duration.is_some_and(|duration| elapsed >= duration) {
                    Slot::Stop
                } else {
                    Slot::Now
                }
            }
        }
    }

    /// How many operations the run will issue, when that is known in advance (for the progress bar).
    pub fn planned(&self) -> Option<u64> {
        let by_rate = match (self.rate_per_second, self.duration) {
            (Some(rate), Some(duration)) => Some((rate * duration.as_secs_f64()).ceil() as u64),
            _ => None,
        };
        match (self.total, by_rate) {
            (Some(total), Some(by_rate)) => Some(total.min(by_rate)),
            (total, by_rate) => total.or(by_rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schedule: Schedule, cases: &[(u64, u64, Slot)]) {
        for &(index, elapsed_ms, expected) in cases {
            assert_eq!(
                schedule.slot(index, Duration::from_millis(elapsed_ms)),
                expected,
                "operation {index} claimed at {elapsed_ms} ms under {schedule:?}"
            );
        }
    }

    #[test]
    fn open_loop_operations_are_due_at_index_over_rate_however_late_they_are_claimed() {
        let schedule = Schedule {
            rate_per_second: Some(1000.0),
            total: None,
            duration: Some(Duration::from_secs(1)),
        };
        check(
            schedule,
            &[
                (0, 0, Slot::Due(Duration::ZERO)),
                (1, 0, Slot::Due(Duration::from_millis(1))),
                // Claimed late (the worker was stuck behind a slow response): still due at 0.5 s, so the
                // wait behind the slow response counts in its latency.
                (500, 900, Slot::Due(Duration::from_millis(500))),
                (999, 2000, Slot::Due(Duration::from_millis(999))),
                // Due at or after the duration: not run, however early it is claimed.
                (1000, 0, Slot::Stop),
            ],
        );
        assert_eq!(schedule.planned(), Some(1000));
    }

    #[test]
    fn closed_loop_runs_now_until_the_duration_has_passed() {
        let schedule = Schedule {
            rate_per_second: None,
            total: None,
            duration: Some(Duration::from_secs(2)),
        };
        check(
            schedule,
            &[
                (0, 0, Slot::Now),
                (1_000_000, 1999, Slot::Now),
                (5, 2000, Slot::Stop),
            ],
        );
        assert_eq!(schedule.planned(), None);
    }

    #[test]
    fn total_bounds_the_operation_count_in_either_loop() {
        for rate_per_second in [None, Some(10.0)] {
            let schedule = Schedule {
                rate_per_second,
                total: Some(3),
                duration: None,
            };
            assert_ne!(schedule.slot(2, Duration::from_secs(100)), Slot::Stop);
            assert_eq!(schedule.slot(3, Duration::ZERO), Slot::Stop);
            assert_eq!(schedule.planned(), Some(3));
        }
        let both = Schedule {
            rate_per_second: Some(10.0),
            total: Some(1000),
            duration: Some(Duration::from_secs(1)),
        };
        assert_eq!(both.planned(), Some(10));
        assert_eq!(both.slot(10, Duration::ZERO), Slot::Stop);
    }
}
