//! The lock checker: is the lock a lock, and do the fenced writes keep the order of the holders?
//!
//! The lock workload's clients `acquire` (key `lock`; an `ok` value `{"token", "lease", ...}`, the token being
//! the holder key's create revision), `write` key `fenced` with the token (a transaction that puts only while
//! that hold lasts) and `release` (key `lock`). The rules:
//!
//! - **Overlap**: a hold lasts from its `ok` acquire's completion to the invoke of the same process's next
//!   release, or, if it never released, to the end of the process's last operation (a process that got an
//!   `info` stops acting as the holder and goes on as another): while it lasts the holder believes it holds the
//!   lock. No two holds may overlap in time (equal times are not an overlap).
//! - **Fencing**: the `ok` fenced writes, ordered by their `revision`, carry tokens that never go down: a
//!   holder that lost the lock without knowing it must be refused, not allowed to write over a newer holder.
//!
//! Without any `ok` acquire there is nothing to check: unknown.

use serde::Serialize;
use serde_json::Value;

use super::{CheckError, Verdict};
use crate::history::{Function, History, Operation, Status};

/// The key of the acquires and releases.
pub const LOCK_KEY: &str = "lock";
/// The key of the fenced writes.
pub const FENCED_KEY: &str = "fenced";
/// Anomalies listed in the report (the counts are always exact).
pub const REPORTED_ANOMALIES_MAX: usize = 100;

/// One hold of the lock, as the history shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub acquire_op: usize,
    pub process: u64,
    pub token: u64,
    /// When the acquire returned `ok`.
    pub start: u64,
    /// When the release was invoked (or the history's last time, if none).
    pub end: u64,
}

/// What the holds or the fenced writes got wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LockAnomaly {
    /// Two holds overlapped in time.
    Overlap { first: Hold, second: Hold },
    /// A fenced write went through with a token below one already written at an earlier revision.
    FenceBackwards {
        write_op: usize,
        token: u64,
        revision: u64,
        after_token: u64,
    },
}

/// The lock checker's verdict and figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LockReport {
    pub verdict: Verdict,
    pub holds: usize,
    pub fenced_writes_ok: usize,
    pub fenced_writes_refused: usize,
    pub anomalies_count: usize,
    pub anomalies: Vec<LockAnomaly>,
    /// Every hold, in time order (the report draws them as a timeline).
    pub timeline: Vec<Hold>,
    pub explanation: String,
}

fn token_of(operation: &Operation, value: &Value) -> Result<u64, CheckError> {
    value
        .get("token")
        .and_then(Value::as_u64)
        .or_else(|| value.as_u64())
        .ok_or_else(|| CheckError::BadOperation {
            index: operation.index,
            line: operation.invoke_line,
            problem: format!("a lock operation needs a numeric token, found {value}"),
        })
}

/// Checks the lock operations of `history`.
pub fn check(history: &History) -> Result<LockReport, CheckError> {
    let last_time = history
        .operations
        .iter()
        .filter_map(|operation| operation.end_time.or(Some(operation.invoke_time)))
        .max()
        .unwrap_or(0);
    let mut holds: Vec<Hold> = Vec::new();
    for operation in &history.operations {
        if operation.key != LOCK_KEY
            || operation.f != Function::Acquire
            || operation.status != Status::Ok
        {
            continue;
        }
        let output = operation.output.as_ref().unwrap_or(&Value::Null);
        let token = token_of(operation, output)?;
        let start = operation.complete_time.unwrap_or(operation.invoke_time);
        let later: Vec<&Operation> = history
            .operations
            .iter()
            .filter(|later| later.process == operation.process && later.invoke_time >= start)
            .collect();
        let end = later
            .iter()
            .filter(|later| later.f == Function::Release)
            .map(|release| release.invoke_time)
            .min()
            .or_else(|| {
                later
                    .iter()
                    .map(|later| later.end_time.unwrap_or(last_time))
                    .max()
            })
            .unwrap_or(last_time);
        holds.push(Hold {
            acquire_op: operation.index,
            process: operation.process,
            token,
            start,
            end,
        });
    }
    holds.sort_by_key(|hold| (hold.start, hold.acquire_op));
    let mut anomalies = Vec::new();
    // The hold that ends last among those started so far.
    let mut latest: Option<&Hold> = None;
    for hold in &holds {
        if let Some(before) = latest {
            if hold.start < before.end {
                anomalies.push(LockAnomaly::Overlap {
                    first: before.clone(),
                    second: hold.clone(),
                });
            }
        }
        if latest.is_none_or(|before| hold.end > before.end) {
            latest = Some(hold);
        }
    }
    let mut fenced: Vec<(u64, u64, usize)> = Vec::new();
    let mut refused = 0;
    for operation in &history.operations {
        if operation.key != FENCED_KEY || operation.f != Function::Write {
            continue;
        }
        match operation.status {
            Status::Ok => {
                let token = token_of(operation, &operation.input)?;
                let revision = operation
                    .extra
                    .get("revision")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| CheckError::BadOperation {
                        index: operation.index,
                        line: operation.invoke_line,
                        problem: "an ok fenced write needs its revision".to_string(),
                    })?;
                fenced.push((revision, token, operation.index));
            }
            Status::Fail => refused += 1,
            _ => {}
        }
    }
    fenced.sort();
    let mut highest = 0;
    for (revision, token, index) in &fenced {
        if *token < highest {
            anomalies.push(LockAnomaly::FenceBackwards {
                write_op: *index,
                token: *token,
                revision: *revision,
                after_token: highest,
            });
        }
        highest = highest.max(*token);
    }
    let anomalies_count = anomalies.len();
    let (verdict, explanation) = if anomalies_count > 0 {
        (
            Verdict::Invalid,
            format!("{anomalies_count} anomalies: holds that overlapped, or fenced writes whose tokens went backwards"),
        )
    } else if holds.is_empty() {
        (
            Verdict::Unknown,
            "no successful acquire: nothing to check".to_string(),
        )
    } else {
        (
            Verdict::Valid,
            format!(
                "{} holds never overlapped; {} fenced writes kept the holders' order",
                holds.len(),
                fenced.len()
            ),
        )
    };
    anomalies.truncate(REPORTED_ANOMALIES_MAX);
    Ok(LockReport {
        verdict,
        holds: holds.len(),
        fenced_writes_ok: fenced.len(),
        fenced_writes_refused: refused,
        anomalies_count,
        anomalies,
        timeline: holds,
        explanation,
    })
}
