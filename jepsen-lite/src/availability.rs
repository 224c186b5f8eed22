//! Availability: service-level indicators per fault window, computed from the history alone, and judged against
//! a service-level objective. These are figures about how the cluster served clients under each fault, not
//! safety verdicts: a CP store is expected to refuse some operations during a partition.
//!
//! Fault windows are read by [`crate::faults`] (a `start` event and the next `stop` of the same fault; a start
//! without a stop lasts to the end of the history). For each window:
//! - `served_fraction`: of the operations invoked in the window, the fraction the cluster served: completed
//!   `ok`, or a cas answered with a mismatch (an answer, not an outage: the cas was decided by the leader);
//! - `longest_unavailability_ms`: the longest stretch of the window in which no operation was served;
//! - `recovery_ms`: from the window's end (the heal) to the first served write (write, cas or add) invoked
//!   after it: how long the cluster took to accept writes again;
//! - `slo_met`: `served_fraction >= slo.served_fraction_min` and `recovery_ms <= slo.recovery_ms_max`.

use serde::Serialize;
use serde_json::Value;

use crate::faults::{self, FaultWindow};
use crate::history::{Function, History, Operation, Status};
use crate::workload::CAS_MISMATCH;

/// What a run promises its clients under faults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Slo {
    /// Least fraction of operations invoked in a fault window that must be served.
    pub served_fraction_min: f64,
    /// Longest time from a heal until writes succeed again.
    pub recovery_ms_max: u64,
}

/// The indicators of one fault window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowIndicators {
    pub fault: String,
    pub description: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub operations: usize,
    pub served: usize,
    pub served_fraction: f64,
    pub longest_unavailability_ms: u64,
    /// `None` when no write succeeded after the heal.
    pub recovery_ms: Option<u64>,
    pub slo_met: bool,
}

/// The availability part of `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AvailabilityReport {
    pub slo: Slo,
    /// True when every window met the SLO.
    pub slo_met: bool,
    /// Operations invoked outside every fault window, and the fraction of them that were served.
    pub calm_operations: usize,
    pub calm_served_fraction: Option<f64>,
    pub windows: Vec<WindowIndicators>,
}

/// The fault windows of a history, in time order; a window never stopped lasts to the history's last event.
pub fn fault_windows(history: &History) -> Vec<FaultWindow> {
    let history_end = history
        .operations
        .iter()
        .map(|op| op.end_time.unwrap_or(op.invoke_time))
        .chain(
            history
                .other_events
                .iter()
                .filter_map(|event| event.value.get("time").and_then(Value::as_u64)),
        )
        .max()
        .unwrap_or(0);
    faults::fault_windows(history, history_end)
}

/// Whether the cluster served `op`: it completed `ok`, or it is a cas the cluster answered with a mismatch.
pub fn served(op: &Operation) -> bool {
    match op.status {
        Status::Ok => true,
        Status::Fail => {
            op.f == Function::Cas
                && op.extra.get("error").and_then(Value::as_str) == Some(CAS_MISMATCH)
        }
        _ => false,
    }
}

/// Computes the indicators of every fault window of `history` and judges them against `slo`.
pub fn check(history: &History, slo: Slo) -> AvailabilityReport {
    let windows = fault_windows(history);
    let mut served_times: Vec<u64> = history
        .operations
        .iter()
        .filter(|op| served(op))
        .filter_map(|op| op.complete_time)
        .collect();
    served_times.sort_unstable();
    let in_any_window = |time: u64| {
        windows
            .iter()
            .any(|window| window.start_ns <= time && time < window.end_ns)
    };
    let calm: Vec<_> = history
        .operations
        .iter()
        .filter(|op| !in_any_window(op.invoke_time))
        .collect();
    let calm_served = calm.iter().filter(|op| served(op)).count();
    let indicators: Vec<WindowIndicators> = windows
        .iter()
        .map(|window| {
            let invoked: Vec<_> = history
                .operations
                .iter()
                .filter(|op| window.start_ns <= op.invoke_time && op.invoke_time < window.end_ns)
                .collect();
            let served_count = invoked.iter().filter(|op| served(op)).count();
            let served_fraction = if invoked.is_empty() {
                1.0
            } else {
                served_count as f64 / invoked.len() as f64
            };
            let mut longest = 0;
            let mut previous = window.start_ns;
            for &time in served_times
                .iter()
                .filter(|&&time| window.start_ns <= time && time <= window.end_ns)
            {
                longest = longest.max(time - previous);
                previous = time;
            }
            longest = longest.max(window.end_ns - previous);
            let recovery_ns = history
                .operations
                .iter()
                .filter(|op| {
                    matches!(op.f, Function::Write | Function::Cas | Function::Add)
                        && served(op)
                        && op.invoke_time >= window.end_ns
                })
                .filter_map(|op| op.complete_time)
                .min()
                .map(|time| time - window.end_ns);
            let recovery_ms = recovery_ns.map(|ns| ns / 1_000_000);
            let slo_met = served_fraction >= slo.served_fraction_min
                && recovery_ms.is_some_and(|ms| ms <= slo.recovery_ms_max);
            WindowIndicators {
                fault: window.fault.clone(),
                description: window.description.clone().unwrap_or_default(),
                start_ns: window.start_ns,
                end_ns: window.end_ns,
                operations: invoked.len(),
                served: served_count,
                served_fraction,
                longest_unavailability_ms: longest / 1_000_000,
                recovery_ms,
                slo_met,
            }
        })
        .collect();
    AvailabilityReport {
        slo,
        slo_met: indicators.iter().all(|window| window.slo_met),
        calm_operations: calm.len(),
        calm_served_fraction: (!calm.is_empty()).then(|| calm_served as f64 / calm.len() as f64),
        windows: indicators,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn history(lines: &[String]) -> History {
        History::parse(&lines.join("\n")).unwrap()
    }

    fn op(process: u64, f: &str, kind: &str, value: &str, time_ms: u64) -> String {
        format!(
            r#"{{"process":{process},"type":"{kind}","f":"{f}","key":"a","value":{value},"time":{}}}"#,
            time_ms * MS
        )
    }

    fn nemesis(f: &str, time_ms: u64) -> String {
        format!(
            r#"{{"process":"nemesis","type":"info","f":"{f}","fault":"kill","value":"killed node 1","time":{}}}"#,
            time_ms * MS
        )
    }

    #[test]
    fn window_indicators_follow_the_history() {
        // A window 100..300 ms: two ops in it (one ok at 150, one fail), a write after the heal completing at 340.
        let lines = vec![
            op(0, "write", "invoke", "1", 10),
            op(0, "write", "ok", "1", 20),
            nemesis("start", 100),
            op(0, "read", "invoke", "null", 140),
            op(0, "read", "ok", "1", 150),
            op(1, "write", "invoke", "2", 160),
            op(1, "write", "fail", "2", 290),
            nemesis("stop", 300),
            op(1, "write", "invoke", "3", 310),
            op(1, "write", "ok", "3", 340),
        ];
        let slo = Slo {
            served_fraction_min: 0.5,
            recovery_ms_max: 100,
        };
        let report = check(&history(&lines), slo);
        assert_eq!(report.windows.len(), 1);
        let window = &report.windows[0];
        assert_eq!(window.fault, "kill");
        assert_eq!(window.description, "killed node 1");
        assert_eq!(window.operations, 2);
        assert_eq!(window.served_fraction, 0.5);
        // No ok completion from 150 ms to the heal at 300 ms.
        assert_eq!(window.longest_unavailability_ms, 150);
        assert_eq!(window.recovery_ms, Some(40));
        assert!(window.slo_met);
        assert!(report.slo_met);
        assert_eq!(report.calm_operations, 2);
        let strict = check(
            &history(&lines),
            Slo {
                served_fraction_min: 0.9,
                recovery_ms_max: 100,
            },
        );
        assert!(!strict.slo_met);
    }

    /// A cas that did not match is an answer: it counts as served, for the fraction, the outage and the
    /// recovery; a failed write and a failed read do not.
    #[test]
    fn a_cas_answered_with_a_mismatch_is_served() {
        let cas = |process: u64, kind: &str, error: Option<&str>, time_ms: u64| {
            let error = error.map_or(String::new(), |error| format!(r#","error":"{error}""#));
            format!(
                r#"{{"process":{process},"type":"{kind}","f":"cas","key":"a","value":[1,2]{error},"time":{}}}"#,
                time_ms * MS
            )
        };
        let lines = vec![
            nemesis("start", 100),
            cas(0, "invoke", None, 110),
            cas(0, "fail", Some(CAS_MISMATCH), 120),
            cas(1, "invoke", None, 130),
            cas(1, "fail", Some("no_quorum"), 140),
            op(2, "read", "invoke", "null", 150),
            op(2, "read", "fail", "null", 160),
            nemesis("stop", 300),
            cas(0, "invoke", None, 310),
            cas(0, "fail", Some(CAS_MISMATCH), 330),
        ];
        let report = check(
            &history(&lines),
            Slo {
                served_fraction_min: 0.3,
                recovery_ms_max: 100,
            },
        );
        let window = &report.windows[0];
        assert_eq!((window.operations, window.served), (3, 1));
        // Served at 120 ms: the outage is from there to the heal.
        assert_eq!(window.longest_unavailability_ms, 180);
        assert_eq!(window.recovery_ms, Some(30));
        assert!(window.slo_met);
    }

    #[test]
    fn a_window_never_stopped_lasts_to_the_end() {
        let lines = vec![
            nemesis("start", 100),
            op(0, "write", "invoke", "1", 110),
            op(0, "write", "info", "1", 500),
        ];
        let windows = fault_windows(&history(&lines));
        assert_eq!(windows.len(), 1);
        assert!(windows[0].never_stopped);
        assert_eq!(windows[0].end_ns, 500 * MS);
        let report = check(
            &history(&lines),
            Slo {
                served_fraction_min: 0.0,
                recovery_ms_max: 1000,
            },
        );
        // Nothing recovered after a heal that never came.
        assert_eq!(report.windows[0].recovery_ms, None);
        assert!(!report.slo_met);
    }
}
