//! The staleness checker: how far behind envelope-carrying reads were, and whether bounded reads kept their bound.
//!
//! Reads whose envelope (`"envelope": {"millis_since_leader": M, "revision": N, ...}`) reports how long ago
//! the serving node heard from a leader are measured two ways: milliseconds since the leader, and revisions
//! behind: the highest revision of any `ok` write that returned before the read was invoked (what the history
//! proves was committed by then), minus the read's served revision (zero if not behind). A read with an extra field
//! `"max_staleness_ms": B` asked for a bound; serving it with `millis_since_leader > B` breaks the bound and makes
//! the verdict invalid. The distributions are figures for the report, not verdicts.
//!
//! **Honest envelopes.** A read is exactly as stale as its envelope says when the value it returned is the key's
//! value as of the served revision it reports. With the read's `"value_revision": V` (the revision of the value
//! returned; absent for a missing key) and served revision `A`: V must not exceed A, and no acknowledged write to
//! the same key may have a revision R with V < R <= A (the node claims to have applied R but returned an older
//! value). Either is a misreported envelope and makes the verdict invalid.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::session::{revision, served_revision};
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
    /// Revisions behind the latest write known committed at the read's invoke (reads with a served revision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revisions_behind: Option<Distribution>,
    /// Reads that carried `max_staleness_ms`.
    pub bounded_reads: usize,
    /// Bounded reads served beyond their bound.
    pub bounded_reads_exceeded: usize,
    /// Up to [`REPORTED_EXCEEDED_MAX`] of them.
    pub exceeded: Vec<BoundExceeded>,
    /// Reads whose envelope could be checked against the writes (a served revision and a known value revision).
    pub envelopes_checked: usize,
    /// Reads whose value was not the key's value at the served revision they reported.
    pub envelopes_misreported: usize,
    /// Up to [`REPORTED_EXCEEDED_MAX`] of them.
    pub misreported: Vec<MisreportedEnvelope>,
}

/// A read whose value is not the key's value at the served revision its envelope reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MisreportedEnvelope {
    pub read_op: usize,
    pub served_revision: u64,
    /// The revision of the value returned (`None`: the key was absent).
    pub value_revision: Option<u64>,
    /// An acknowledged write to the key that the node should have shown (`None` when the value revision itself
    /// is beyond the served revision).
    pub hidden_write_op: Option<usize>,
    pub hidden_write_revision: Option<u64>,
}

/// Checks every `ok` read with a served revision against the acknowledged writes to its key.
fn check_envelopes(history: &History, report: &mut StalenessReport) {
    // key -> sorted (revision, op) of acknowledged writes
    let mut writes: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
    for op in history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok && op.f != Function::Read)
    {
        if let Some(revision) = revision(op) {
            writes
                .entry(op.key.as_str())
                .or_default()
                .push((revision, op.index));
        }
    }
    for list in writes.values_mut() {
        list.sort_unstable();
    }
    for read in history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok && op.f == Function::Read)
    {
        let Some(applied) = served_revision(read) else {
            continue;
        };
        let value_revision = read.extra.get("value_revision").and_then(Value::as_u64);
        if value_revision.is_none() && !read.output.as_ref().is_some_and(Value::is_null) {
            // A value without its revision cannot be placed.
            continue;
        }
        report.envelopes_checked += 1;
        let floor = value_revision.unwrap_or(0);
        let hidden = writes.get(read.key.as_str()).and_then(|list| {
            list.iter()
                .find(|&&(revision, _)| floor < revision && revision <= applied)
                .copied()
        });
        let misreported = if floor > applied {
            Some(MisreportedEnvelope {
                read_op: read.index,
                served_revision: applied,
                value_revision,
                hidden_write_op: None,
                hidden_write_revision: None,
            })
        } else {
            hidden.map(|(revision, op)| MisreportedEnvelope {
                read_op: read.index,
                served_revision: applied,
                value_revision,
                hidden_write_op: Some(op),
                hidden_write_revision: Some(revision),
            })
        };
        if let Some(misreported) = misreported {
            report.envelopes_misreported += 1;
            if report.misreported.len() < REPORTED_EXCEEDED_MAX {
                report.misreported.push(misreported);
            }
        }
    }
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
        envelopes_checked: 0,
        envelopes_misreported: 0,
        misreported: Vec::new(),
    };
    check_envelopes(history, &mut report);
    for read in history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok && op.f == Function::Read)
    {
        let Some(since_leader) = millis_since_leader(read) else {
            continue;
        };
        millis.push(since_leader);
        if let Some(applied) = served_revision(read) {
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
    if report.bounded_reads_exceeded > 0 || report.envelopes_misreported > 0 {
        report.verdict = Verdict::Invalid;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(lines: &[&str]) -> History {
        History::parse(&lines.join("\n")).unwrap()
    }

    const WRITE_3_AT_10: [&str; 2] = [
        r#"{"process":0,"type":"invoke","f":"write","key":"a","value":3,"time":1}"#,
        r#"{"process":0,"type":"ok","f":"write","key":"a","value":3,"time":2,"revision":10}"#,
    ];

    #[test]
    fn a_stale_read_that_says_so_is_honest() {
        // Applied index 9 < the write's revision 10: the absent value is what the node had; stale but honest.
        let mut lines = WRITE_3_AT_10.to_vec();
        lines.push(r#"{"process":1,"type":"invoke","f":"read","key":"a","value":null,"time":3}"#);
        lines.push(r#"{"process":1,"type":"ok","f":"read","key":"a","value":null,"time":4,"envelope":{"revision":9,"millis_since_leader":400}}"#);
        let report = check(&history(&lines));
        assert_eq!(report.verdict, Verdict::Valid);
        assert_eq!(report.envelopes_checked, 1);
        assert_eq!(report.revisions_behind.unwrap().max, 1);
    }

    #[test]
    fn a_read_hiding_a_write_it_claims_to_have_applied_is_misreported() {
        // Applied index 12 >= revision 10, yet the read returned the absent value: the envelope lies.
        let mut lines = WRITE_3_AT_10.to_vec();
        lines.push(r#"{"process":1,"type":"invoke","f":"read","key":"a","value":null,"time":3}"#);
        lines.push(r#"{"process":1,"type":"ok","f":"read","key":"a","value":null,"time":4,"envelope":{"revision":12,"millis_since_leader":0}}"#);
        let report = check(&history(&lines));
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(
            report.misreported,
            vec![MisreportedEnvelope {
                read_op: 1,
                served_revision: 12,
                value_revision: None,
                hidden_write_op: Some(0),
                hidden_write_revision: Some(10),
            }]
        );
        // A value newer than the served revision is misreported too.
        let mut lines = WRITE_3_AT_10.to_vec();
        lines.push(r#"{"process":1,"type":"invoke","f":"read","key":"a","value":null,"time":3}"#);
        lines.push(r#"{"process":1,"type":"ok","f":"read","key":"a","value":3,"time":4,"value_revision":10,"envelope":{"revision":8,"millis_since_leader":0}}"#);
        assert_eq!(check(&history(&lines)).envelopes_misreported, 1);
    }

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
