//! The staleness checker: how far behind envelope-carrying reads were, and whether bounded reads kept their bound.
//!
//! Reads whose envelope (`"envelope": {"millis_since_leader": M, "applied_index": N, ...}`) reports how long ago
//! the serving node heard from a leader are measured two ways: milliseconds since the leader, and revisions
//! behind: the highest revision of any `ok` write that returned before the read was invoked (what the history
//! proves was committed by then), minus the read's applied index (zero if not behind). A read with an extra field
//! `"max_staleness_ms": B` asked for a bound; serving it with `millis_since_leader > B` breaks the bound and makes
//! the verdict invalid. The distributions are figures for the report, not verdicts.

use serde::Serialize;
use serde_json::Value;

use super::session::{applied_index, revision};
use super::Verdict;
use crate::history::{Function, History, Operation, Status};

/// Bound violations listed in the report (the count is always exact).
pub const REPORTED_EXCEEDED_MAX: usize = 100;

/// Min, median, 99th percentile and max of a sample (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Distribution {
    /// Summarizes `samples`; `None` when empty.
    pub fn of(mut samples: Vec<u64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let count = samples.len();
        let rank = |percent: usize| samples[(count * percent).div_ceil(100).max(1) - 1];
        Some(Self {
            count,
            min: samples[0],
            p50: rank(50),
            p99: rank(99),
            max: samples[count - 1],
        })
    }
}

/// A bounded read served beyond its bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BoundExceeded {
    pub read_op: usize,
    pub millis_since_leader: u64,
    pub max_staleness_ms: u64,
}

/// The staleness verdict and figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StalenessReport {
    pub verdict: Verdict,
    /// `ok` reads whose envelope has `millis_since_leader`.
    pub reads_measured: usize,
    /// Milliseconds since the serving node heard from a leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis_since_leader: Option<Distribution>,
    /// Revisions behind the latest write known committed at the read's invoke (reads with an applied index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revisions_behind: Option<Distribution>,
    /// Reads that carried `max_staleness_ms`.
    pub bounded_reads: usize,
    /// Bounded reads served beyond their bound.
    pub bounded_reads_exceeded: usize,
    /// Up to [`REPORTED_EXCEEDED_MAX`] of them.
    pub exceeded: Vec<BoundExceeded>,
}

fn millis_since_leader(operation: &Operation) -> Option<u64> {
    operation
        .extra
        .get("envelope")?
        .get("millis_since_leader")?
        .as_u64()
}

/// Measures the staleness of every envelope-carrying `ok` read.
pub fn check(history: &History) -> StalenessReport {
    // (return time, revision) of every ok write with a revision, by return time, with a running maximum.
    let mut committed: Vec<(u64, u64)> = history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok && op.f != Function::Read)
        .filter_map(|op| Some((op.complete_time?, revision(op)?)))
        .collect();
    committed.sort_unstable();
    let mut running_max = 0;
    for (_, revision) in committed.iter_mut() {
        running_max = running_max.max(*revision);
        *revision = running_max;
    }
    let latest_committed_before = |time: u64| {
        let returned_before = committed.partition_point(|&(returned, _)| returned < time);
        returned_before
            .checked_sub(1)
            .map(|position| committed[position].1)
    };

    let mut millis = Vec::new();
    let mut behind = Vec::new();
    let mut report = StalenessReport {
        verdict: Verdict::Valid,
        reads_measured: 0,
        millis_since_leader: None,
        revisions_behind: None,
        bounded_reads: 0,
        bounded_reads_exceeded: 0,
        exceeded: Vec::new(),
    };
    for read in history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok && op.f == Function::Read)
    {
        let Some(since_leader) = millis_since_leader(read) else {
            continue;
        };
        millis.push(since_leader);
        if let Some(applied) = applied_index(read) {
            let latest = latest_committed_before(read.invoke_time).unwrap_or(0);
            behind.push(latest.saturating_sub(applied));
        }
        if let Some(bound) = read.extra.get("max_staleness_ms").and_then(Value::as_u64) {
            report.bounded_reads += 1;
            if since_leader > bound {
                report.bounded_reads_exceeded += 1;
                if report.exceeded.len() < REPORTED_EXCEEDED_MAX {
                    report.exceeded.push(BoundExceeded {
                        read_op: read.index,
                        millis_since_leader: since_leader,
                        max_staleness_ms: bound,
                    });
                }
            }
        }
    }
    report.reads_measured = millis.len();
    report.millis_since_leader = Distribution::of(millis);
    report.revisions_behind = Distribution::of(behind);
    if report.bounded_reads_exceeded > 0 {
        report.verdict = Verdict::Invalid;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        // 1..=100: p50 is 50, p99 is 99; a single sample is every percentile.
        let distribution = Distribution::of((1..=100).collect()).unwrap();
        assert_eq!(
            (
                distribution.min,
                distribution.p50,
                distribution.p99,
                distribution.max
            ),
            (1, 50, 99, 100)
        );
        let single = Distribution::of(vec![7]).unwrap();
        assert_eq!(
            (single.min, single.p50, single.p99, single.max),
            (7, 7, 7, 7)
        );
        assert_eq!(Distribution::of(Vec::new()), None);
    }
}
