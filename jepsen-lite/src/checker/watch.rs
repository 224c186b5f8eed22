//! The watch checker: does every watcher see every change, once, in order, and the same as every other?
//!
//! The watch workload's clients `write` unique values on a few keys (an `ok` write carries its `revision`); each
//! watcher is one `watch` operation of key `watch` whose `ok` value is `{"from", "through", "events"}`, the
//! events as `[key, value, revision]` in the order the watcher got them (the workload adds a fourth element,
//! when it got each, which the report draws as lag and the rules here ignore). The rules, per watcher:
//!
//! - **Order**: revisions never go down, and no (key, revision) comes twice (no duplicate across resumes).
//! - **Gap**: every `ok` write with a revision in `[from, through]` is among the events.
//! - **Phantom**: every event is a write: an `ok` one with the same key, value and revision, or one whose
//!   outcome is unknown (`info`, never completed) with the same key and value.
//! - **Disagreement**: two watchers see the same events over the revisions both covered.
//!
//! Watchers that ended early (`info`) are not checked. Without any `ok` watcher: unknown.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::{CheckError, Verdict};
use crate::history::{Function, History, Operation, Status};

/// The key of the watchers' operations.
pub const WATCH_KEY: &str = "watch";
/// Anomalies listed in the report (the counts are always exact).
pub const REPORTED_ANOMALIES_MAX: usize = 100;

/// What a watcher got wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchAnomaly {
    /// An event's revision below the one before it.
    OutOfOrder {
        watch_op: usize,
        revision: u64,
        after: u64,
    },
    /// A (key, revision) seen twice.
    Duplicate {
        watch_op: usize,
        key: String,
        revision: u64,
    },
    /// An acknowledged write in the watcher's range that it never saw.
    Gap {
        watch_op: usize,
        key: String,
        revision: u64,
        write_op: usize,
    },
    /// An event no write explains.
    Phantom {
        watch_op: usize,
        key: String,
        value: Value,
        revision: u64,
    },
    /// Two watchers saw different events over the revisions both covered.
    Disagreement {
        first_op: usize,
        second_op: usize,
        from: u64,
        through: u64,
    },
}

/// One watcher, as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WatcherSummary {
    pub watch_op: usize,
    pub node: Value,
    pub from: u64,
    pub through: u64,
    pub events: usize,
}

/// The watch checker's verdict and figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WatchReport {
    pub verdict: Verdict,
    pub watchers_checked: usize,
    pub watchers_ended_early: usize,
    pub writes_ok: usize,
    pub anomalies_count: usize,
    pub anomalies: Vec<WatchAnomaly>,
    pub watchers: Vec<WatcherSummary>,
    pub explanation: String,
}

/// An event as `(key, value, revision)`.
type Seen = (String, Value, u64);

fn bad(operation: &Operation, problem: &str) -> CheckError {
    CheckError::BadOperation {
        index: operation.index,
        line: operation.invoke_line,
        problem: problem.to_string(),
    }
}

fn events_of(operation: &Operation) -> Result<(u64, u64, Vec<Seen>), CheckError> {
    let output = operation
        .output
        .as_ref()
        .ok_or_else(|| bad(operation, "no value"))?;
    let number = |name: &str| output.get(name).and_then(Value::as_u64);
    let (Some(from), Some(through)) = (number("from"), number("through")) else {
        return Err(bad(
            operation,
            "a watch's value needs `from` and `through` revisions",
        ));
    };
    let events = output
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(operation, "a watch's value needs an `events` array"))?
        .iter()
        .map(|event| match event.as_array().map(Vec::as_slice) {
            Some([key, value, revision]) => {
                Some((key.as_str()?.to_string(), value.clone(), revision.as_u64()?))
            }
            // The time the watcher got it: a non-negative integer, as every `time` is.
            Some([key, value, revision, seen]) => {
                seen.as_u64()?;
                Some((key.as_str()?.to_string(), value.clone(), revision.as_u64()?))
            }
            _ => None,
        })
        .collect::<Option<Vec<Seen>>>()
        .ok_or_else(|| {
            bad(
                operation,
                "each event must be [key, value, revision] or [key, value, revision, seen], seen a time in nanoseconds",
            )
        })?;
    Ok((from, through, events))
}

/// Checks the watchers of `history` against its writes.
pub fn check(history: &History) -> Result<WatchReport, CheckError> {
    // Acknowledged writes by (key, revision), and the (key, value) of writes of unknown outcome.
    let mut acknowledged: HashMap<(String, u64), (Value, usize)> = HashMap::new();
    let mut maybe: HashSet<(String, String)> = HashSet::new();
    for operation in &history.operations {
        if operation.f != Function::Write || operation.key == WATCH_KEY {
            continue;
        }
        match operation.status {
            Status::Ok => {
                let revision = operation
                    .extra
                    .get("revision")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(operation, "an ok write needs its revision"))?;
                acknowledged.insert(
                    (operation.key.clone(), revision),
                    (operation.input.clone(), operation.index),
                );
            }
            Status::Info | Status::Pending => {
                maybe.insert((operation.key.clone(), operation.input.to_string()));
            }
            Status::Fail => {}
        }
    }
    let mut anomalies = Vec::new();
    let mut checked: Vec<(usize, u64, u64, Vec<Seen>)> = Vec::new();
    let mut summaries = Vec::new();
    let mut ended_early = 0;
    for operation in &history.operations {
        if operation.f != Function::Watch {
            continue;
        }
        if operation.status != Status::Ok {
            ended_early += 1;
            continue;
        }
        let (from, through, events) = events_of(operation)?;
        let watch_op = operation.index;
        let mut last = 0;
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        for (key, value, revision) in &events {
            if *revision < last {
                anomalies.push(WatchAnomaly::OutOfOrder {
                    watch_op,
                    revision: *revision,
                    after: last,
                });
            }
            last = last.max(*revision);
            if !seen.insert((key.clone(), *revision)) {
                anomalies.push(WatchAnomaly::Duplicate {
                    watch_op,
                    key: key.clone(),
                    revision: *revision,
                });
            }
            let explained = match acknowledged.get(&(key.clone(), *revision)) {
                Some((written, _)) => written == value,
                None => maybe.contains(&(key.clone(), value.to_string())),
            };
            if !explained {
                anomalies.push(WatchAnomaly::Phantom {
                    watch_op,
                    key: key.clone(),
                    value: value.clone(),
                    revision: *revision,
                });
            }
        }
        let mut missing: Vec<(&(String, u64), usize)> = acknowledged
            .iter()
            .filter(|((_, revision), _)| (from..=through).contains(revision))
            .filter(|(written, _)| !seen.contains(*written))
            .map(|(written, (_, index))| (written, *index))
            .collect();
        missing.sort();
        for ((key, revision), write_op) in missing {
            anomalies.push(WatchAnomaly::Gap {
                watch_op,
                key: key.clone(),
                revision: *revision,
                write_op,
            });
        }
        summaries.push(WatcherSummary {
            watch_op,
            node: operation.input.get("node").cloned().unwrap_or(Value::Null),
            from,
            through,
            events: events.len(),
        });
        checked.push((watch_op, from, through, events));
    }
    for (index, (first_op, first_from, first_through, first)) in checked.iter().enumerate() {
        for (second_op, second_from, second_through, second) in &checked[index + 1..] {
            let (from, through) = (
                (*first_from).max(*second_from),
                (*first_through).min(*second_through),
            );
            if from > through {
                continue;
            }
            let within = |events: &Vec<Seen>| -> BTreeSet<(u64, String)> {
                events
                    .iter()
                    .filter(|(_, _, revision)| (from..=through).contains(revision))
                    .map(|(key, _, revision)| (*revision, key.clone()))
                    .collect()
            };
            if within(first) != within(second) {
                anomalies.push(WatchAnomaly::Disagreement {
                    first_op: *first_op,
                    second_op: *second_op,
                    from,
                    through,
                });
            }
        }
    }
    let anomalies_count = anomalies.len();
    let (verdict, explanation) = if anomalies_count > 0 {
        (
            Verdict::Invalid,
            format!("{anomalies_count} anomalies: events out of order, repeated, missing, unexplained, or watchers disagreeing"),
        )
    } else if checked.is_empty() {
        (
            Verdict::Unknown,
            "no watcher ran to the end: nothing to check".to_string(),
        )
    } else {
        (
            Verdict::Valid,
            format!(
                "{} watchers saw every acknowledged write in their range once, in order, and agreed",
                checked.len()
            ),
        )
    };
    anomalies.truncate(REPORTED_ANOMALIES_MAX);
    Ok(WatchReport {
        verdict,
        watchers_checked: checked.len(),
        watchers_ended_early: ended_early,
        writes_ok: acknowledged.len(),
        anomalies_count,
        anomalies,
        watchers: summaries,
        explanation,
    })
}
