//! Waiting for a condition: poll it every [`POLL_INTERVAL`] until it holds or a deadline passes, never a bare
//! sleep standing in for it. A wait is bounded in time (the deadline; an async check is cut off when it runs
//! into it) and so in count (at most `bound / POLL_INTERVAL + 1` checks). Its error says what it waited for,
//! how long, how many checks, and what the last check saw, which is usually the answer to why.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The bound of a test's wait unless it names another.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// A wait whose condition did not hold in time.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub struct TimedOut {
    /// The condition, in words ("a leader among [1, 2, 3] with term >= 1").
    pub what: String,
    pub bound: Duration,
    /// Checks made.
    pub attempts: u64,
    /// What the last check saw, if it said.
    pub last_seen: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} ({} checks) waiting until {}",
            self.bound, self.attempts, self.what
        )?;
        if let Some(last_seen) = &self.last_seen {
            write!(f, "; last seen: {last_seen}")?;
        }
        Ok(())
    }
}

/// The message itself, so `unwrap` and `expect` print it as it reads.
impl fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Most checks a wait of `bound` makes: one at the start and one per interval after it.
pub fn attempts_max(bound: Duration) -> u64 {
    (bound.as_millis() / POLL_INTERVAL.as_millis()) as u64 + 1
}

/// Polls `check` until it returns `Ok`, at most `bound`; an `Err` says what the check saw, and the last one
/// goes into the [`TimedOut`].
pub async fn poll_observing<T, F, Fut>(
    what: &str,
    bound: Duration,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + bound;
    let mut last_seen = None;
    let mut attempts = 0;
    while attempts < attempts_max(bound) {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        // The check is polled at least once even with no time left (tokio polls the future before the timer).
        match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last_seen = Some(seen),
            Err(_) => last_seen = Some("the last check ran into the deadline".to_string()),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL.min(remaining)).await;
    }
    Err(TimedOut {
        what: what.to_string(),
        bound,
        attempts,
        last_seen,
    })
}

/// Polls `check` until it returns `Some`, at most `bound`.
pub async fn poll_until<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_observing(what, bound, || {
        let checked = check();
        async move { checked.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
    .map_err(|timed_out| TimedOut {
        last_seen: None,
        ..timed_out
    })
}

/// [`poll_until`] for tests: panics with the [`TimedOut`] message if `check` never returns `Some`.
pub async fn wait_until<T, F, Fut>(what: &str, bound: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, bound, check)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// [`poll_until`] for code without a runtime: sleeps the thread between checks. A check cannot be cut off
/// here, so each must be quick (e.g. `Child::try_wait`).
pub fn poll_until_blocking<T>(
    what: &str,
    bound: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + bound;
    let mut attempts = 0;
    while attempts < attempts_max(bound) {
        attempts += 1;
        if let Some(value) = check() {
            return Ok(value);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        std::thread::sleep(POLL_INTERVAL.min(remaining));
    }
    Err(TimedOut {
        what: what.to_string(),
        bound,
        attempts,
        last_seen: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound of this many intervals.
    const INTERVALS: u32 = 4;

    #[tokio::test]
    async fn a_wait_that_times_out_says_what_it_waited_for_and_saw() {
        let bound = POLL_INTERVAL * INTERVALS;
        let mut checks = 0;
        let timed_out = poll_observing("the sky falls", bound, || {
            checks += 1;
            let seen = format!("check {checks}: blue");
            async move { Err::<(), _>(seen) }
        })
        .await
        .unwrap_err();
        assert!(timed_out.attempts >= 2 && timed_out.attempts <= attempts_max(bound));
        assert_eq!(timed_out.attempts, checks);
        let message = timed_out.to_string();
        assert!(message.contains("waiting until the sky falls"), "{message}");
        assert!(
            message.ends_with(&format!("last seen: check {checks}: blue")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let bound = POLL_INTERVAL * INTERVALS;
        let timed_out = poll_until("never", bound, std::future::pending::<Option<()>>)
            .await
            .unwrap_err();
        assert_eq!(timed_out.attempts, 1);
        assert!(started.elapsed() < bound * 2, "{:?}", started.elapsed());
    }

    #[test]
    fn a_blocking_wait_returns_the_value_once_the_condition_holds() {
        let mut checks = 0;
        let value = poll_until_blocking("the third check", WAIT_MAX, || {
            checks += 1;
            (checks == 3).then_some(checks)
        })
        .unwrap();
        assert_eq!(value, 3);
        let timed_out = poll_until_blocking("nothing", Duration::ZERO, || None::<()>).unwrap_err();
        assert_eq!(timed_out.attempts, 1);
    }
}
