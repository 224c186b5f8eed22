//! The checkers: what jepsen-lite concludes from a history, and the report it writes to `results.json`.
//!
//! This module owns the verdict vocabulary ([`Verdict`], merged invalid > unknown > valid), the workload models
//! ([`Model`]) and the one entry point that runs every applicable checker over a history ([`check_history`],
//! [`check_file`]). Each checker lives in its own submodule and sees only the parsed [`History`]: no clock, no
//! network, no process, so every checker can be driven by a hand-written history in a test.
//!
//! - [`linearizable`]: register histories, key by key (Wing & Gong with Lowe's memoisation).
//! - [`set`]: set histories: lost acknowledged adds, elements that were never (successfully) attempted.
//! - [`bank`]: bank histories: every read sees the opening total, no negative balance, no lost transfer.
//! - [`lock`]: lock histories: no two holds overlap, fenced writes never go back to an older holder.
//! - [`watch`]: watch histories: every watcher sees every acknowledged write once, in order, as the others do.
//! - [`split_brain`]: observation events: never two leaders in one term.
//! - [`session`]: per client, monotonic reads and read-your-writes from revisions and read envelopes.
//! - [`staleness`]: how stale envelope-carrying reads were, and whether bounded reads kept their bound.

pub mod bank;
pub mod linearizable;
pub mod lock;
pub mod session;
pub mod set;
pub mod split_brain;
pub mod staleness;
pub mod watch;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{Function, History, HistoryError, Status};

pub use linearizable::SearchBudget;

/// What a checker concluded. Ordered so that merging is `max`: invalid > unknown > valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The history satisfies the property.
    Valid,
    /// The checker could not decide (budget exhausted, nothing to check against).
    Unknown,
    /// The history violates the property; the report says where.
    Invalid,
}

impl Verdict {
    /// The combined verdict of two checks: invalid > unknown > valid.
    pub fn merge(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

/// The workload a history came from, which decides the main checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// read / write / cas on registers: checked for linearizability.
    Register,
    /// add / read on sets: checked for lost and unexpected elements.
    Set,
    /// open / transfer / read of bank accounts: checked for the total, negative balances, lost transfers.
    Bank,
    /// acquire / fenced write / release of a lock: checked for overlapping holds and fencing.
    Lock,
    /// writes and watchers: checked for order, gaps, duplicates, phantoms and agreement.
    Watch,
}

impl std::str::FromStr for Model {
    type Err = CheckError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "register" => Ok(Model::Register),
            "set" => Ok(Model::Set),
            "bank" => Ok(Model::Bank),
            "lock" => Ok(Model::Lock),
            "watch" => Ok(Model::Watch),
            other => Err(CheckError::UnknownModel(other.to_string())),
        }
    }
}

/// Why a history could not be checked at all (as opposed to a verdict).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("unknown model `{0}` (expected register, set, bank, lock or watch)")]
    UnknownModel(String),
    #[error("line {line}: op {index} is a `{f}`, which the {model} model does not have; check with the other model")]
    ModelMismatch {
        index: usize,
        line: usize,
        f: Function,
        model: &'static str,
    },
    #[error("line {line}: op {index}: {problem}")]
    BadOperation {
        index: usize,
        line: usize,
        problem: String,
    },
    #[error("line {line}: observation event: {problem}")]
    BadObservation { line: usize, problem: String },
}

/// Counts describing the history itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistorySummary {
    /// Client operations.
    pub operations: usize,
    /// Completed `ok`.
    pub ok: usize,
    /// Completed `fail`.
    pub fail: usize,
    /// Completed `info`.
    pub info: usize,
    /// Never completed.
    pub pending: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Nemesis and observation events.
    pub other_events: usize,
}

impl HistorySummary {
    /// Counts the operations and events of `history`.
    pub fn of(history: &History) -> Self {
        let mut summary = HistorySummary {
            operations: history.operations.len(),
            other_events: history.other_events.len(),
            ..Default::default()
        };
        let mut keys = std::collections::HashSet::new();
        for operation in &history.operations {
            keys.insert(operation.key.as_str());
            match operation.status {
                Status::Ok => summary.ok += 1,
                Status::Fail => summary.fail += 1,
                Status::Info => summary.info += 1,
                Status::Pending => summary.pending += 1,
            }
        }
        summary.keys = keys.len();
        summary
    }
}

/// Everything the checkers concluded about one history: the `checks` part of `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The model the history was checked against.
    pub model: Model,
    /// The merged verdict of every checker below.
    pub verdict: Verdict,
    /// What the history holds.
    pub summary: HistorySummary,
    /// Register model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linearizable: Option<linearizable::LinearizableReport>,
    /// Set model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<set::SetReport>,
    /// Bank model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<bank::BankReport>,
    /// Lock model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<lock::LockReport>,
    /// Watch model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<watch::WatchReport>,
    /// From observation events (valid and vacuous when there are none).
    pub split_brain: split_brain::SplitBrainReport,
    /// From revisions and read envelopes (valid and vacuous when there are none).
    pub session: session::SessionReport,
    /// From read envelopes carrying `millis_since_leader`.
    pub staleness: staleness::StalenessReport,
}

/// Runs every checker that applies to `model` over `history`, with the default search budget.
pub fn check_history(history: &History, model: Model) -> Result<Report, CheckError> {
    check_history_with_budget(history, model, &SearchBudget::default())
}

/// Runs every checker that applies to `model` over `history`, with the given linearizability search budget.
pub fn check_history_with_budget(
    history: &History,
    model: Model,
    budget: &SearchBudget,
) -> Result<Report, CheckError> {
    let (mut linearizable, mut set, mut bank, mut lock, mut watch) = (None, None, None, None, None);
    match model {
        Model::Register => linearizable = Some(linearizable::check_with_budget(history, budget)?),
        Model::Set => set = Some(set::check(history)?),
        Model::Bank => bank = Some(bank::check(history)?),
        Model::Lock => lock = Some(lock::check(history)?),
        Model::Watch => watch = Some(watch::check(history)?),
    }
    let split_brain = split_brain::check(history)?;
    let session = session::check(history);
    let staleness = staleness::check(history);
    let verdict = [
        linearizable.as_ref().map(|report| report.verdict),
        set.as_ref().map(|report| report.verdict),
        bank.as_ref().map(|report| report.verdict),
        lock.as_ref().map(|report| report.verdict),
        watch.as_ref().map(|report| report.verdict),
        Some(split_brain.verdict),
        Some(session.verdict),
        Some(staleness.verdict),
    ]
    .into_iter()
    .flatten()
    .fold(Verdict::Valid, Verdict::merge);
    Ok(Report {
        model,
        verdict,
        summary: HistorySummary::of(history),
        linearizable,
        set,
        bank,
        lock,
        watch,
        split_brain,
        session,
        staleness,
    })
}

/// Reads a JSONL history file and checks it: what `jepsen-lite check --model register|set FILE` runs.
pub fn check_file(path: &Path, model: Model) -> Result<Report, CheckError> {
    let history = History::read_file(path)?;
    check_history(&history, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_merge_invalid_over_unknown_over_valid() {
        // merge is commutative and invalid dominates.
        use Verdict::*;
        assert_eq!(Valid.merge(Valid), Valid);
        assert_eq!(Valid.merge(Unknown), Unknown);
        assert_eq!(Unknown.merge(Valid), Unknown);
        assert_eq!(Unknown.merge(Invalid), Invalid);
        assert_eq!(Invalid.merge(Valid), Invalid);
        assert_eq!(serde_json::to_string(&Invalid).unwrap(), "\"invalid\"");
    }

    #[test]
    fn models_parse_from_their_cli_names() {
        // The CLI passes --model through FromStr.
        assert_eq!("register".parse::<Model>().unwrap(), Model::Register);
        assert_eq!("set".parse::<Model>().unwrap(), Model::Set);
        assert!("queue".parse::<Model>().is_err());
    }
}
