//! The session checker: per client process, monotonic reads and read-your-writes, exactly, from revisions.
//!
//! Every committed write has a revision (the store-wide counter of changes) and every read reports, in its
//! envelope, the store revision it was served at. The history carries them as extra fields: an `ok` write (or cas, or add)
//! has `"revision": N`; an `ok` read has `"envelope": {"revision": N, ...}`. A client process runs one
//! operation at a time, so its operations are ordered, and each read must be served at a store revision at least
//! as high as every revision the same process wrote before (read-your-writes) or read before (monotonic reads).
//! Operations without these fields are skipped and counted; `info` and `fail` operations carry no revision the
//! process could have relied on and are ignored.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::Verdict;
use crate::history::{Function, History, Operation, Status};

/// Violations listed in the report (the count is always exact).
pub const REPORTED_VIOLATIONS_MAX: usize = 100;

/// Which session guarantee a read broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionGuarantee {
    /// The read was served before the process's own earlier write.
    ReadYourWrites,
    /// The read was served at an older revision than an earlier read of the process.
    MonotonicReads,
}

/// One read served too far in the past for its process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionViolation {
    pub guarantee: SessionGuarantee,
    pub process: u64,
    /// The offending read.
    pub read_op: usize,
    /// Where it was served.
    pub served_revision: u64,
    /// The revision the process had already written or read.
    pub required_revision: u64,
    /// The earlier write or read that established `required_revision`.
    pub source_op: usize,
}

/// The session verdict and figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionReport {
    pub verdict: Verdict,
    /// Reads with an envelope served revision, checked.
    pub reads_checked: usize,
    /// `ok` reads without an envelope served revision, skipped.
    pub reads_without_envelope: usize,
    /// `ok` writes, cas and adds with a revision.
    pub writes_with_revision: usize,
    pub violations_count: usize,
    /// Up to [`REPORTED_VIOLATIONS_MAX`] violations, in history order.
    pub violations: Vec<SessionViolation>,
}

/// The served revision an `ok` read was served at, if its envelope says.
pub fn served_revision(operation: &Operation) -> Option<u64> {
    operation.extra.get("envelope")?.get("revision")?.as_u64()
}

/// The revision an `ok` write got, if recorded.
pub fn revision(operation: &Operation) -> Option<u64> {
    operation.extra.get("revision").and_then(Value::as_u64)
}

/// The highest revision a process has relied on so far, and where it came from.
#[derive(Clone, Copy)]
struct Floor {
    revision: u64,
    source_op: usize,
    guarantee: SessionGuarantee,
}

/// Checks every process's reads against its own earlier writes and reads.
pub fn check(history: &History) -> SessionReport {
    let mut report = SessionReport {
        verdict: Verdict::Valid,
        reads_checked: 0,
        reads_without_envelope: 0,
        writes_with_revision: 0,
        violations_count: 0,
        violations: Vec::new(),
    };
    let mut floors: HashMap<u64, Floor> = HashMap::new();
    // Operations are in invoke order, and a process's operations do not overlap, so this is each process's order.
    for operation in history
        .operations
        .iter()
        .filter(|op| op.status == Status::Ok)
    {
        let (observed, guarantee) = if operation.f == Function::Read {
            let Some(applied) = served_revision(operation) else {
                report.reads_without_envelope += 1;
                continue;
            };
            report.reads_checked += 1;
            if let Some(floor) = floors.get(&operation.process) {
                if applied < floor.revision {
                    report.violations_count += 1;
                    if report.violations.len() < REPORTED_VIOLATIONS_MAX {
                        report.violations.push(SessionViolation {
                            guarantee: floor.guarantee,
                            process: operation.process,
                            read_op: operation.index,
                            served_revision: applied,
                            required_revision: floor.revision,
                            source_op: floor.source_op,
                        });
                    }
                }
            }
            (applied, SessionGuarantee::MonotonicReads)
        } else {
            let Some(revision) = revision(operation) else {
                continue;
            };
            report.writes_with_revision += 1;
            (revision, SessionGuarantee::ReadYourWrites)
        };
        let floor = floors.entry(operation.process).or_insert(Floor {
            revision: observed,
            source_op: operation.index,
            guarantee,
        });
        if observed > floor.revision {
            *floor = Floor {
                revision: observed,
                source_op: operation.index,
                guarantee,
            };
        }
    }
    if report.violations_count > 0 {
        report.verdict = Verdict::Invalid;
    }
    report
}
