//! The workloads: which operations the clients of a run issue, how each goes through the raftkv client library,
//! and how its outcome is written to the history.
//!
//! - `register`: reads, writes and compare-and-sets of small integers over a few keys, each key an independent
//!   register (stored under `register/KEY`). Checked for linearizability.
//! - `set`: adds of unique integers to one set (each element its own key under `set/`), then a final read of the
//!   whole set from every node. Checked for lost and phantom elements.
//!
//! Each client is a Jepsen-style process: one operation at a time, with its own client session (exactly-once
//! writes, read-your-writes). Reads are pinned to the client's own node, so clients of a minority node see what
//! that node serves; writes go to the leader, wherever it is. The outcome rules are the history's:
//! `ok` (happened), `fail` (definitely did not happen: refused before proposal, cas mismatch, or any failed
//! read, which has no effect), `info` (a write that may have happened: a timeout or a lost connection after it
//! was sent). After an `info` the client goes on as a new process with a new session, since the old process may
//! still have a write in flight.

use std::time::Duration;

use raftkv_client::names::{consistency_name, role_name};
use raftkv_client::{
    Client, ClientError, Consistency, Expected, GetResult, ReadEnvelope, ReadOptions, ScanRange,
    Session,
};
use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::{Map, Value};

use crate::history::{EventType, Function};

/// Where register values live in the store.
pub const REGISTER_PREFIX: &str = "register/";
/// Where set elements live in the store.
pub const SET_PREFIX: &str = "set/";
/// The history key of the set workload's one set.
pub const SET_KEY: &str = "set";
/// Register values are drawn from `0..REGISTER_VALUES` (few values make cas succeed often).
pub const REGISTER_VALUES: i64 = 5;
/// The `error` of a cas completion that failed because the register held another value: the cluster answered,
/// so availability counts it as served.
pub const CAS_MISMATCH: &str = "cas_mismatch";
/// Elements read per page by the set's final read.
pub const SET_READ_PAGE: u32 = 1000;
/// Most pages one final set read may take (bounds the loop: far more elements than a run adds).
pub const SET_READ_PAGES_MAX: usize = 1000;

/// The workload of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Register,
    Set,
}

/// One operation a client is about to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        key: String,
    },
    Write {
        key: String,
        value: i64,
    },
    Cas {
        key: String,
        expected: i64,
        new: i64,
    },
    Add {
        element: u64,
    },
}

impl Op {
    /// The history's function name.
    pub fn function(&self) -> Function {
        match self {
            Op::Read { .. } => Function::Read,
            Op::Write { .. } => Function::Write,
            Op::Cas { .. } => Function::Cas,
            Op::Add { .. } => Function::Add,
        }
    }

    /// The history key.
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key } | Op::Write { key, .. } | Op::Cas { key, .. } => key,
            Op::Add { .. } => SET_KEY,
        }
    }

    /// The invoke's value.
    pub fn invoke_value(&self) -> Value {
        match self {
            Op::Read { .. } => Value::Null,
            Op::Write { value, .. } => Value::from(*value),
            Op::Cas { expected, new, .. } => Value::from(vec![*expected, *new]),
            Op::Add { element } => Value::from(*element),
        }
    }
}

/// The history key of register `index`.
pub fn register_key(index: usize) -> String {
    format!("k{index}")
}

/// Draws the next operation: registers read half the time, write or cas a quarter each; the set only adds
/// (`next_element` gives a fresh, unique element).
pub fn generate(
    kind: WorkloadKind,
    keys: usize,
    rng: &mut StdRng,
    next_element: impl FnOnce() -> u64,
) -> Op {
    match kind {
        WorkloadKind::Register => {
            let key = register_key(rng.random_range(0..keys.max(1)));
            match rng.random_range(0..4) {
                0 | 1 => Op::Read { key },
                2 => Op::Write {
                    key,
                    value: rng.random_range(0..REGISTER_VALUES),
                },
                _ => Op::Cas {
                    key,
                    expected: rng.random_range(0..REGISTER_VALUES),
                    new: rng.random_range(0..REGISTER_VALUES),
                },
            }
        }
        WorkloadKind::Set => Op::Add {
            element: next_element(),
        },
    }
}

/// How a run's reads are served.
#[derive(Clone, Debug)]
pub struct ReadPolicy {
    pub consistency: Consistency,
    /// With stale reads: refuse beyond this bound.
    pub max_staleness: Option<Duration>,
    /// Reads carry the session's highest seen revision (`min_revision`): read-your-writes and monotonic reads
    /// on any node, at the price of waiting on a node that is behind. Without it a stale read shows the node's
    /// state as it is.
    pub sessions: bool,
}

/// How one operation ended, ready for the history.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub kind: EventType,
    pub value: Value,
    pub extra: Map<String, Value>,
}

impl Outcome {
    fn new(kind: EventType, value: Value) -> Self {
        Outcome {
            kind,
            value,
            extra: Map::new(),
        }
    }

    fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(field.to_string(), value.into());
        self
    }
}

/// The read envelope as the history's `envelope` extra field.
pub fn envelope_json(envelope: &ReadEnvelope) -> Value {
    serde_json::json!({
        "node_id": envelope.node_id,
        "role": role_name(envelope.role),
        "consistency": consistency_name(envelope.consistency),
        "revision": envelope.revision,
        "applied_index": envelope.applied_index,
        "term": envelope.term,
        "leader_id": envelope.leader_id,
        "millis_since_leader": envelope.millis_since_leader,
    })
}

/// Whether a failed write definitely did not happen. Everything else (timeouts, lost connections, unknown
/// errors) may have happened.
fn write_definitely_failed(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unavailable { .. }
            | ClientError::InvalidArgument(_)
            | ClientError::OutOfRange(_)
            | ClientError::Busy(_)
            | ClientError::FailedPrecondition(_)
            // Refused in the TLS handshake or before any handler: nothing was sent to Raft.
            | ClientError::Tls { .. }
            | ClientError::TlsConfig(_)
            | ClientError::Unauthenticated(_)
    )
}

fn write_error(error: &ClientError, value: Value) -> Outcome {
    let kind = if write_definitely_failed(error) {
        EventType::Fail
    } else {
        EventType::Info
    };
    Outcome::new(kind, value)
        .with("error", error.kind())
        .with("message", error.to_string())
}

/// The register value stored in the store, as JSON: an integer, or the raw text if it is not one.
fn register_value(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    text.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(text.into_owned()))
}

fn read_outcome(result: Result<GetResult, ClientError>, policy: &ReadPolicy) -> Outcome {
    let outcome = match result {
        Ok(result) => {
            let value = result
                .kv
                .as_ref()
                .map_or(Value::Null, |kv| register_value(&kv.value));
            let mut outcome = Outcome::new(EventType::Ok, value)
                .with("envelope", envelope_json(&result.envelope));
            if let Some(kv) = &result.kv {
                outcome = outcome.with("value_revision", kv.mod_revision);
            }
            outcome
        }
        // A read has no effect, so a failed one definitely did not happen.
        Err(error) => Outcome::new(EventType::Fail, Value::Null)
            .with("error", error.kind())
            .with("message", error.to_string()),
    };
    match policy.max_staleness {
        Some(bound) if policy.consistency == Consistency::Stale => {
            outcome.with("max_staleness_ms", bound.as_millis() as u64)
        }
        _ => outcome,
    }
}

/// The store key of a history key.
fn store_key(op: &Op) -> Vec<u8> {
    match op {
        Op::Add { element } => format!("{SET_PREFIX}{element:020}").into_bytes(),
        other => format!("{REGISTER_PREFIX}{}", other.key()).into_bytes(),
    }
}

/// Runs one operation: writes through `session` (exactly once), reads on `read_endpoint` only, through the
/// session if the policy says so.
pub async fn execute(
    op: &Op,
    session: &mut Session,
    client: &Client,
    read_endpoint: &str,
    policy: &ReadPolicy,
) -> Outcome {
    let key = store_key(op);
    match op {
        Op::Read { .. } => {
            let options = ReadOptions {
                consistency: policy.consistency,
                max_staleness: policy
                    .max_staleness
                    .filter(|_| policy.consistency == Consistency::Stale),
                min_revision: 0,
                revision: 0,
                endpoint: Some(read_endpoint.to_string()),
            };
            let result = if policy.sessions {
                session.get(key, &options).await
            } else {
                client.get(key, &options).await
            };
            read_outcome(result, policy)
        }
        Op::Write { value, .. } => match session.put(key, value.to_string()).await {
            Ok(revision) => {
                Outcome::new(EventType::Ok, Value::from(*value)).with("revision", revision)
            }
            Err(error) => write_error(&error, Value::from(*value)),
        },
        Op::Cas { expected, new, .. } => {
            let value = op.invoke_value();
            let expected = Expected::Value(expected.to_string().into_bytes());
            match session.cas(key, expected, new.to_string()).await {
                Ok(result) if result.swapped => {
                    Outcome::new(EventType::Ok, value).with("revision", result.revision)
                }
                Ok(result) => Outcome::new(EventType::Fail, value)
                    .with("error", CAS_MISMATCH)
                    .with(
                        "current",
                        result
                            .current
                            .as_ref()
                            .map_or(Value::Null, |kv| register_value(&kv.value)),
                    ),
                Err(error) => write_error(&error, value),
            }
        }
        Op::Add { element } => match session.put(key, Vec::new()).await {
            Ok(revision) => {
                Outcome::new(EventType::Ok, Value::from(*element)).with("revision", revision)
            }
            Err(error) => write_error(&error, Value::from(*element)),
        },
    }
}

/// Reads the whole set from one node (linearizably, page by page): the final read of the set workload.
pub async fn read_set(client: &Client, endpoint: &str) -> Outcome {
    let options = ReadOptions {
        consistency: Consistency::Linearizable,
        max_staleness: None,
        min_revision: 0,
        revision: 0,
        endpoint: Some(endpoint.to_string()),
    };
    let end = {
        let mut end = SET_PREFIX.as_bytes().to_vec();
        *end.last_mut().expect("prefix is not empty") += 1;
        end
    };
    let mut start = SET_PREFIX.as_bytes().to_vec();
    let mut elements = Vec::new();
    let mut envelope = Value::Null;
    for _ in 0..SET_READ_PAGES_MAX {
        let page = client
            .scan(
                ScanRange::Range {
                    start: start.clone(),
                    end: Some(end.clone()),
                },
                SET_READ_PAGE,
                &options,
            )
            .await;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                return Outcome::new(EventType::Fail, Value::Null)
                    .with("error", error.kind())
                    .with("message", error.to_string())
            }
        };
        if envelope.is_null() {
            envelope = envelope_json(&page.envelope);
        }
        for kv in &page.kvs {
            let text = String::from_utf8_lossy(&kv.key[SET_PREFIX.len()..]).into_owned();
            elements.push(
                text.parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(text)),
            );
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                start = last.key.clone();
                start.push(0);
            }
            _ => {
                return Outcome::new(EventType::Ok, Value::from(elements))
                    .with("envelope", envelope)
            }
        }
    }
    Outcome::new(EventType::Fail, Value::Null).with(
        "error",
        format!("more than {SET_READ_PAGES_MAX} pages of {SET_READ_PAGE}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn register_ops_are_reproducible_and_mixed() {
        // Same seed, same ops; reads about half, and every op on one of the configured keys.
        let ops = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..400)
                .map(|_| generate(WorkloadKind::Register, 3, &mut rng, || unreachable!()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ops(1), ops(1));
        let reads = ops(1)
            .iter()
            .filter(|op| matches!(op, Op::Read { .. }))
            .count();
        assert!((150..250).contains(&reads), "{reads} reads of 400");
        assert!(ops(1)
            .iter()
            .all(|op| ["k0", "k1", "k2"].contains(&op.key())));
    }

    #[test]
    fn set_adds_take_the_next_element() {
        let mut rng = StdRng::seed_from_u64(1);
        let op = generate(WorkloadKind::Set, 1, &mut rng, || 42);
        assert_eq!(op, Op::Add { element: 42 });
        assert_eq!(op.key(), SET_KEY);
        assert_eq!(op.invoke_value(), Value::from(42));
    }

    #[test]
    fn only_definite_write_errors_are_fail() {
        // A write that may have been applied must be info, never fail.
        let info = write_error(
            &ClientError::Indeterminate {
                message: "timeout".into(),
            },
            Value::from(1),
        );
        assert_eq!(info.kind, EventType::Info);
        let deadline = write_error(
            &ClientError::DeadlineExceeded {
                elapsed: Duration::from_secs(1),
                last_error: "x".into(),
            },
            Value::from(1),
        );
        assert_eq!(deadline.kind, EventType::Info);
        let refused = write_error(
            &ClientError::Unavailable {
                message: "no leader".into(),
                endpoints: vec![],
            },
            Value::from(1),
        );
        assert_eq!(refused.kind, EventType::Fail);
    }
}
