//! The set checker: acknowledged adds must not be lost, and reads must not contain what was never added.
//!
//! The set workload `add`s unique values to a set (one per key) and reads the whole set (`read` completes with a
//! JSON array of every element; null means the empty set). The rules, per key:
//!
//! - **Lost**: an add that completed `ok` must appear in every `ok` read invoked after the add returned (strictly
//!   after: equal times are concurrent).
//! - **Unexpected**: every element a read returns must come from an add that was invoked before the read returned
//!   and did not `fail` (a failed add did not happen; an element nobody tried to add is a phantom).
//! - `info` and never-completed adds may or may not appear; those that do are counted as recovered.
//!
//! With adds but no successful read there is nothing to check them against: the verdict is unknown.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::{CheckError, Verdict};
use crate::history::{Function, History, Operation, Status};

/// Lost adds and unexpected elements listed in the report (the counts are always exact).
pub const REPORTED_ANOMALIES_MAX: usize = 100;

/// An acknowledged add missing from a later read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LostAdd {
    pub key: String,
    pub value: Value,
    /// The `ok` add.
    pub add_op: usize,
    /// The first read invoked after the add returned that does not contain the value.
    pub read_op: usize,
}

/// Why an element should not have been in a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnexpectedReason {
    /// No add of this value was ever invoked.
    NeverAttempted,
    /// Every add of this value failed, so none happened.
    AddFailed,
    /// The read returned before any add of this value was invoked.
    ReadBeforeAdd,
}

/// An element a read returned that no add explains.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnexpectedElement {
    pub key: String,
    pub value: Value,
    /// The first read that returned it.
    pub read_op: usize,
    pub reason: UnexpectedReason,
}

/// The set checker's verdict and figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetReport {
    pub verdict: Verdict,
    /// Sets (keys) checked.
    pub keys: usize,
    /// Add invokes.
    pub adds_attempted: usize,
    /// Adds completed `ok`.
    pub adds_ok: usize,
    /// Adds completed `fail`.
    pub adds_failed: usize,
    /// Adds completed `info` or never completed.
    pub adds_indeterminate: usize,
    /// Indeterminate adds whose value some read returned (they happened after all).
    pub adds_indeterminate_recovered: usize,
    /// `ok` adds that no successful read was invoked after, so nothing confirms or refutes them.
    pub adds_ok_unverified: usize,
    /// Reads completed `ok`.
    pub reads_ok: usize,
    /// Distinct `ok` add values missing from a later read.
    pub lost_count: usize,
    /// Distinct elements returned by reads that no add explains.
    pub unexpected_count: usize,
    /// Add values used by more than one add (the workload promises unique values).
    pub duplicate_add_values: usize,
    /// Up to [`REPORTED_ANOMALIES_MAX`] lost adds.
    pub lost: Vec<LostAdd>,
    /// Up to [`REPORTED_ANOMALIES_MAX`] unexpected elements.
    pub unexpected: Vec<UnexpectedElement>,
    /// Why the verdict is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Checks a set history.
pub fn check(history: &History) -> Result<SetReport, CheckError> {
    let mut report = SetReport {
        verdict: Verdict::Valid,
        keys: 0,
        adds_attempted: 0,
        adds_ok: 0,
        adds_failed: 0,
        adds_indeterminate: 0,
        adds_indeterminate_recovered: 0,
        adds_ok_unverified: 0,
        reads_ok: 0,
        lost_count: 0,
        unexpected_count: 0,
        duplicate_add_values: 0,
        lost: Vec::new(),
        unexpected: Vec::new(),
        reason: None,
    };
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in &history.operations {
        if matches!(operation.f, Function::Write | Function::Cas) {
            return Err(CheckError::ModelMismatch {
                index: operation.index,
                line: operation.invoke_line,
                f: operation.f,
                model: "set",
            });
        }
        by_key
            .entry(operation.key.as_str())
            .or_default()
            .push(operation);
    }
    report.keys = by_key.len();
    for (key, operations) in by_key {
        check_key(key, &operations, &mut report)?;
    }
    report.verdict = if report.lost_count > 0 || report.unexpected_count > 0 {
        Verdict::Invalid
    } else if report.adds_attempted > 0 && report.reads_ok == 0 {
        report.reason = Some("no successful read: nothing to check the adds against".to_string());
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    Ok(report)
}

/// A successful read and its elements, by canonical JSON text.
struct SetRead<'a> {
    operation: &'a Operation,
    elements: HashMap<String, &'a Value>,
}

fn check_key(
    key: &str,
    operations: &[&Operation],
    report: &mut SetReport,
) -> Result<(), CheckError> {
    // Canonical JSON text of the value -> every add of it.
    let mut adds: HashMap<String, Vec<&Operation>> = HashMap::new();
    let mut reads: Vec<SetRead> = Vec::new();
    for &operation in operations {
        match (operation.f, operation.status) {
            (Function::Add, status) => {
                report.adds_attempted += 1;
                match status {
                    Status::Ok => report.adds_ok += 1,
                    Status::Fail => report.adds_failed += 1,
                    Status::Info | Status::Pending => report.adds_indeterminate += 1,
                }
                adds.entry(operation.input.to_string())
                    .or_default()
                    .push(operation);
            }
            (Function::Read, Status::Ok) => {
                let elements = match operation.output.as_ref() {
                    None | Some(Value::Null) => HashMap::new(),
                    Some(Value::Array(elements)) => elements
                        .iter()
                        .map(|element| (element.to_string(), element))
                        .collect(),
                    Some(other) => {
                        return Err(CheckError::BadOperation {
                            index: operation.index,
                            line: operation.complete_line.unwrap_or(operation.invoke_line),
                            problem: format!(
                                "a set read must return an array of elements, found {other}"
                            ),
                        })
                    }
                };
                reads.push(SetRead {
                    operation,
                    elements,
                });
            }
            _ => {}
        }
    }
    report.reads_ok += reads.len();
    report.duplicate_add_values += adds.values().filter(|ops| ops.len() > 1).count();

    // Keep the list in history order so reports are stable.
    let mut values: Vec<(&String, &Vec<&Operation>)> = adds.iter().collect();
    values.sort_by_key(|(_, ops)| ops[0].index);
    for (text, ops) in values {
        let acknowledged = ops
            .iter()
            .filter(|op| op.status == Status::Ok)
            .min_by_key(|op| op.complete_time);
        if let Some(add) = acknowledged {
            let returned = add
                .complete_time
                .expect("ok operations have a completion time");
            let mut later_reads = reads
                .iter()
                .filter(|read| read.operation.invoke_time > returned)
                .peekable();
            if later_reads.peek().is_none() {
                report.adds_ok_unverified += 1;
            }
            if let Some(read) = later_reads.find(|read| !read.elements.contains_key(text)) {
                report.lost_count += 1;
                if report.lost.len() < REPORTED_ANOMALIES_MAX {
                    report.lost.push(LostAdd {
                        key: key.to_string(),
                        value: add.input.clone(),
                        add_op: add.index,
                        read_op: read.operation.index,
                    });
                }
            }
        } else if ops.iter().any(|op| op.status.is_indeterminate())
            && reads.iter().any(|read| read.elements.contains_key(text))
        {
            report.adds_indeterminate_recovered += 1;
        }
    }

    let mut reported: HashSet<&str> = HashSet::new();
    for read in &reads {
        let returned = read
            .operation
            .complete_time
            .expect("ok operations have a completion time");
        let mut elements: Vec<(&String, &&Value)> = read.elements.iter().collect();
        elements.sort_by_key(|(text, _)| text.as_str());
        for (text, value) in elements {
            let reason = match adds.get(text) {
                None => Some(UnexpectedReason::NeverAttempted),
                Some(ops) if ops.iter().all(|op| op.status == Status::Fail) => {
                    Some(UnexpectedReason::AddFailed)
                }
                Some(ops)
                    if ops
                        .iter()
                        .filter(|op| op.status != Status::Fail)
                        .all(|op| op.invoke_time > returned) =>
                {
                    Some(UnexpectedReason::ReadBeforeAdd)
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                if reported.insert(text.as_str()) {
                    report.unexpected_count += 1;
                    if report.unexpected.len() < REPORTED_ANOMALIES_MAX {
                        report.unexpected.push(UnexpectedElement {
                            key: key.to_string(),
                            value: (*value).clone(),
                            read_op: read.operation.index,
                            reason,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}
