//! The split-brain checker: Raft's election safety, never two distinct leaders in one term, as observed.
//!
//! The harness polls every node's status and writes what it saw as an observation event in the history:
//!
//! ```json
//! {"process":"observer","type":"observation","node":2,"role":"leader","term":5,"leader":2,"time":1234567}
//! ```
//!
//! `node` is the observed node's id, `role` one of `leader`, `follower`, `candidate`, `learner`, `term` its
//! current term, `leader` the leader it knows of (null if none), `time` nanoseconds on the history's clock. Extra
//! fields are allowed. [`Observation`] writes exactly this shape. Only events with `"type": "observation"` are
//! read; other non-client events (nemesis) are ignored.
//!
//! The rules:
//!
//! - **One leader per term**: for every term, at most one distinct node is ever observed with role `leader`. The
//!   `leader` field of followers is reported in the timeline but not used here, because a follower's leader hint
//!   can lag its term by one poll and would raise false alarms. Without observations this rule holds vacuously;
//!   the report's `observations` count says so.
//! - **No write acknowledged without a quorum**: a revision is a store-wide counter that every committed change
//!   increments, assigned by the state machine in log order, so it names one change forever. So two different
//!   acknowledged writes to one register (`ok` write or cas with a `"revision"` extra field) with the same
//!   revision mean one of them was acknowledged by a leader whose entry a quorum never kept: it was later
//!   overwritten. This catches a leader acknowledging without a quorum even when the lost write is later hidden
//!   by overwrites the register checker cannot tell apart. Set adds each write their own key, so the rule has
//!   nothing to compare among them. (A failed cas reports the store's revision, not one of its own: only `ok`
//!   writes count.)

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::session::revision;
use super::{CheckError, Verdict};
use crate::history::{Function, History, Status};

/// The `process` of observation events.
pub const OBSERVER_PROCESS: &str = "observer";
/// The `type` of observation events.
pub const OBSERVATION_TYPE: &str = "observation";

/// One observation of one node's Raft status, as the harness writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The observed node.
    pub node: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The node's current term.
    pub term: u64,
    /// The leader the node knows of.
    pub leader: Option<u64>,
    /// Nanoseconds on the history's clock.
    pub time: u64,
}

impl Observation {
    /// The observation as one JSONL line (without the newline), in the shape documented above.
    pub fn to_line(&self) -> String {
        serde_json::json!({
            "process": OBSERVER_PROCESS,
            "type": OBSERVATION_TYPE,
            "node": self.node,
            "role": self.role,
            "term": self.term,
            "leader": self.leader,
            "time": self.time,
        })
        .to_string()
    }

    /// Reads an observation from a non-client event; `Ok(None)` if the event is not an observation.
    pub fn from_event(line: usize, event: &Map<String, Value>) -> Result<Option<Self>, CheckError> {
        if event.get("type").and_then(Value::as_str) != Some(OBSERVATION_TYPE) {
            return Ok(None);
        }
        let bad = |problem: String| CheckError::BadObservation { line, problem };
        let number = |field: &str| {
            event
                .get(field)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("`{field}` must be a non-negative integer")))
        };
        let role = event
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`role` must be a string".to_string()))?
            .to_string();
        let leader = match event.get("leader") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .ok_or_else(|| bad("`leader` must be a node id or null".to_string()))?,
            ),
        };
        Ok(Some(Self {
            node: number("node")?,
            role,
            term: number("term")?,
            leader,
            time: number("time")?,
        }))
    }
}

/// Two or more nodes observed as leader in the same term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TermConflict {
    pub term: u64,
    /// The distinct nodes observed as leader, ascending.
    pub leaders: Vec<u64>,
    /// For each of `leaders`, the line of its first observation as leader of this term.
    pub lines: Vec<usize>,
}

/// The split-brain verdict and figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SplitBrainReport {
    pub verdict: Verdict,
    /// Observation events read.
    pub observations: usize,
    /// Distinct terms in which some node was observed as leader.
    pub terms_with_leader: usize,
    /// The highest term observed.
    pub max_term: u64,
    /// Every term with more than one leader, ascending.
    pub conflicts: Vec<TermConflict>,
    /// Acknowledged writes that carried a revision.
    pub acknowledged_writes_with_revision: usize,
    /// (key, revision) pairs claimed by more than one acknowledged write, ascending (at most
    /// `REPORTED_CONFLICTS_MAX`).
    pub revision_conflicts: Vec<RevisionConflict>,
}

/// Revision conflicts listed in the report.
pub const REPORTED_CONFLICTS_MAX: usize = 100;

/// Two or more acknowledged writes to one key that claim the same revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevisionConflict {
    pub key: String,
    pub revision: u64,
    /// The operations (indexes into the history's operations), ascending.
    pub ops: Vec<usize>,
}

/// Every (key, revision) claimed by more than one acknowledged write to a register.
fn revision_conflicts(history: &History) -> (usize, Vec<RevisionConflict>) {
    let mut by_revision: BTreeMap<(&str, u64), Vec<usize>> = BTreeMap::new();
    let mut acknowledged = 0;
    for operation in &history.operations {
        let is_register_write = matches!(operation.f, Function::Write | Function::Cas);
        if !is_register_write || operation.status != Status::Ok {
            continue;
        }
        if let Some(revision) = revision(operation) {
            acknowledged += 1;
            by_revision
                .entry((operation.key.as_str(), revision))
                .or_default()
                .push(operation.index);
        }
    }
    let conflicts = by_revision
        .into_iter()
        .filter(|(_, ops)| ops.len() > 1)
        .map(|((key, revision), ops)| RevisionConflict {
            key: key.to_string(),
            revision,
            ops,
        })
        .take(REPORTED_CONFLICTS_MAX)
        .collect();
    (acknowledged, conflicts)
}

/// Checks the observation events of `history`.
pub fn check(history: &History) -> Result<SplitBrainReport, CheckError> {
    let mut observations = 0;
    let mut max_term = 0;
    // term -> leader node -> first line
    let mut leaders: BTreeMap<u64, BTreeMap<u64, usize>> = BTreeMap::new();
    for event in &history.other_events {
        let Some(observation) = Observation::from_event(event.line, &event.value)? else {
            continue;
        };
        observations += 1;
        max_term = max_term.max(observation.term);
        if observation.role == "leader" {
            leaders
                .entry(observation.term)
                .or_default()
                .entry(observation.node)
                .or_insert(event.line);
        }
    }
    let conflicts: Vec<TermConflict> = leaders
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(&term, nodes)| TermConflict {
            term,
            leaders: nodes.keys().copied().collect(),
            lines: nodes.values().copied().collect(),
        })
        .collect();
    let (acknowledged_writes_with_revision, revision_conflicts) = revision_conflicts(history);
    Ok(SplitBrainReport {
        verdict: if conflicts.is_empty() && revision_conflicts.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        observations,
        terms_with_leader: leaders.len(),
        max_term,
        conflicts,
        acknowledged_writes_with_revision,
        revision_conflicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_lines_round_trip() {
        // What the harness writes is what the checker reads.
        let observation = Observation {
            node: 3,
            role: "leader".into(),
            term: 7,
            leader: Some(3),
            time: 99,
        };
        let history = History::parse(&observation.to_line()).unwrap();
        let event = &history.other_events[0];
        assert_eq!(
            Observation::from_event(event.line, &event.value).unwrap(),
            Some(observation)
        );
    }

    #[test]
    fn two_acknowledged_writes_to_one_key_with_one_revision_are_split_brain() {
        // Two ok writes to one key claiming revision 5: one was acknowledged by a leader without a quorum. A
        // failed cas with the same revision (it reports the current revision), distinct revisions, and writes to
        // other keys in the same entry (revision 5 for key c: one batch) are fine.
        let text = [
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":1,"time":1}"#,
            r#"{"process":0,"type":"ok","f":"write","key":"a","value":1,"time":2,"revision":5}"#,
            r#"{"process":1,"type":"invoke","f":"cas","key":"a","value":[2,3],"time":3}"#,
            r#"{"process":1,"type":"fail","f":"cas","key":"a","value":[2,3],"time":4,"revision":5}"#,
            r#"{"process":2,"type":"invoke","f":"write","key":"b","value":1,"time":5}"#,
            r#"{"process":2,"type":"ok","f":"write","key":"b","value":1,"time":6,"revision":6}"#,
            r#"{"process":3,"type":"invoke","f":"write","key":"c","value":9,"time":7}"#,
            r#"{"process":3,"type":"ok","f":"write","key":"c","value":9,"time":8,"revision":5}"#,
        ];
        let valid = History::parse(&text.join("\n")).unwrap();
        let report = check(&valid).unwrap();
        assert_eq!(report.verdict, Verdict::Valid);
        assert_eq!(report.acknowledged_writes_with_revision, 3);
        let conflicting = format!(
            "{}\n{}\n{}",
            text.join("\n"),
            r#"{"process":4,"type":"invoke","f":"cas","key":"a","value":[1,7],"time":9}"#,
            r#"{"process":4,"type":"ok","f":"cas","key":"a","value":[1,7],"time":10,"revision":5}"#
        );
        let report = check(&History::parse(&conflicting).unwrap()).unwrap();
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(
            report.revision_conflicts,
            vec![RevisionConflict {
                key: "a".to_string(),
                revision: 5,
                ops: vec![0, 4]
            }]
        );
    }

    #[test]
    fn malformed_observation_names_its_line() {
        // A missing term is an error, not a silently skipped observation.
        let text = "\n{\"process\":\"observer\",\"type\":\"observation\",\"node\":1,\"role\":\"leader\",\"time\":1}";
        let history = History::parse(text).unwrap();
        let error = check(&history).unwrap_err();
        assert!(
            matches!(error, CheckError::BadObservation { line: 2, .. }),
            "{error}"
        );
    }
}
