//! The workloads: which operations the clients of a run issue, how each goes through the raftkv client library,
//! and how its outcome is written to the history.
//!
//! - `register`: reads, writes and compare-and-sets of small integers over a few keys, each key an independent
//!   register (stored under `register/KEY`). Checked for linearizability.
//! - `set`: adds of unique integers to one set (each element its own key under `set/`), then a final read of the
//!   whole set from every node. Checked for lost and phantom elements.
//! - `bank`: accounts (`bank/a0`, ...) opened with `BANK_INITIAL_BALANCE` each, transfers between two of them
//!   (read both, then one transaction that puts both only if neither changed since: compares on their mod
//!   revisions) and reads of every balance. Checked: every read sees the total, no balance below zero, the
//!   final balances account for every acknowledged transfer. `--bank-blind-writes` drops the compares (the
//!   negative control: concurrent transfers then lose updates, and money appears or vanishes).
//! - `lock`: each client in turn grants a lease, takes the lock `LOCK_NAME` with it (the client library's
//!   recipe), writes `FENCED_KEY` fenced by its token (a transaction that puts only if the lock key still has
//!   the token as its create revision), holds the lock `LOCK_HOLD`, and releases it by revoking the lease.
//!   Checked: no two holds overlap in real time, and the fenced writes' tokens never go backwards.
//!   `--lock-holder-pause` makes a share of the holders stall past their lease's TTL right after taking the
//!   lock (as a process pause or a long garbage collection would): the lease expires, another client takes the
//!   lock, and the stalled one wakes still believing it holds it. The holds then overlap (the check must say
//!   so: a lease-based lock cannot stop that), while the fenced writes stay in order (the token refuses the
//!   stalled holder's write).
//! - `watch`: clients put unique values on `--keys` keys (stored under `watched/`) while one watcher per node
//!   (the client library's watch, which resumes on another node when its node goes) records every event it
//!   sees. Checked: each watcher's events in revision order, no duplicates, no gaps against the acknowledged
//!   writes, nothing that was not written, and every watcher agreeing with every other.
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
use raftkv_client::txn::{compare_create_revision, compare_mod_revision, put, CompareOp, Txn};
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
/// Where bank accounts live in the store.
pub const BANK_PREFIX: &str = "bank/";
/// The history key of the bank workload's operations.
pub const BANK_KEY: &str = "bank";
/// Every account's balance when the accounts are opened.
pub const BANK_INITIAL_BALANCE: i64 = 100;
/// A transfer moves 1 to this many units.
pub const BANK_TRANSFER_MAX: i64 = 5;
/// The `error` of a transfer refused because an account changed between its read and its transaction.
pub const TRANSFER_CONFLICT: &str = "conflict";
/// The `error` of a transfer refused because the source account held less than the amount.
pub const TRANSFER_INSUFFICIENT: &str = "insufficient";
/// The lock of the lock workload.
pub const LOCK_NAME: &str = "jepsen-lock";
/// The history key of the lock workload's acquires and releases.
pub const LOCK_KEY: &str = "lock";
/// The history (and store) key of the writes fenced by the lock's token.
pub const FENCED_KEY: &str = "fenced";
/// TTL of the lease each hold takes, in seconds.
pub const LOCK_LEASE_TTL: i64 = 10;
/// With `--lock-holder-pause`: the TTL of each hold's lease, in seconds (short, so that a stalled holder
/// outlives it within a run; the cluster raises it to its minimum if need be).
pub const LOCK_PAUSE_LEASE_TTL: i64 = 2;
/// With `--lock-holder-pause`: the share of holds whose holder stalls after taking the lock.
pub const LOCK_PAUSE_SHARE: f64 = 0.25;
/// With `--lock-holder-pause`: how long past its lease's TTL a stalled holder sleeps before its fenced write.
pub const LOCK_PAUSE_PAST_TTL: Duration = Duration::from_secs(1);
/// How long an acquire waits for the lock before it gives up (`fail`, `lock_wait`).
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(3);
/// How long a holder keeps the lock after its fenced write.
pub const LOCK_HOLD: Duration = Duration::from_millis(50);
/// The `error` of a fenced write refused because the lock key no longer has the writer's token.
pub const FENCE_REFUSED: &str = "fenced_out";
/// Where the watch workload's keys live in the store.
pub const WATCHED_PREFIX: &str = "watched/";
/// Events one watcher records at most; past it the watcher stops and says so (`truncated`).
pub const WATCH_EVENTS_RECORDED_MAX: usize = 50_000;
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
    Bank,
    Lock,
    Watch,
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
    /// Opens the bank's `accounts` accounts with `BANK_INITIAL_BALANCE` each (once, before the clients start).
    Open {
        accounts: usize,
    },
    /// Moves `amount` from account `from` to account `to`.
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
    },
    /// Reads every account's balance.
    Balances,
    /// Grants a lease of `ttl` seconds and takes the lock with it.
    Acquire {
        ttl: i64,
    },
    /// A write of `FENCED_KEY` that happens only while the hold with `token` (its lock key `key`) lasts.
    Fenced {
        token: u64,
        key: Vec<u8>,
    },
    /// Gives the lock up by revoking the hold's lease.
    Release {
        token: u64,
        lease: i64,
    },
    /// Puts a unique `value` on watched key `key`.
    Emit {
        key: String,
        value: u64,
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
            Op::Open { .. } => Function::Write,
            Op::Transfer { .. } => Function::Transfer,
            Op::Balances => Function::Read,
            Op::Acquire { .. } => Function::Acquire,
            Op::Fenced { .. } => Function::Write,
            Op::Release { .. } => Function::Release,
            Op::Emit { .. } => Function::Write,
        }
    }

    /// The history key.
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key }
            | Op::Write { key, .. }
            | Op::Cas { key, .. }
            | Op::Emit { key, .. } => key,
            Op::Add { .. } => SET_KEY,
            Op::Open { .. } | Op::Transfer { .. } | Op::Balances => BANK_KEY,
            Op::Acquire { .. } | Op::Release { .. } => LOCK_KEY,
            Op::Fenced { .. } => FENCED_KEY,
        }
    }

    /// The invoke's value.
    pub fn invoke_value(&self) -> Value {
        match self {
            Op::Read { .. } => Value::Null,
            Op::Write { value, .. } => Value::from(*value),
            Op::Cas { expected, new, .. } => Value::from(vec![*expected, *new]),
            Op::Add { element } => Value::from(*element),
            Op::Open { accounts } => Value::Object(
                (0..*accounts)
                    .map(|index| (account_name(index), Value::from(BANK_INITIAL_BALANCE)))
                    .collect(),
            ),
            Op::Transfer { from, to, amount } => serde_json::json!({
                "from": account_name(*from), "to": account_name(*to), "amount": amount,
            }),
            Op::Balances | Op::Acquire { .. } => Value::Null,
            Op::Fenced { token, .. } => Value::from(*token),
            Op::Emit { value, .. } => Value::from(*value),
            Op::Release { token, lease } => {
                serde_json::json!({"token": token, "lease": format!("{lease:016x}")})
            }
        }
    }
}

/// The name of bank account `index` (its store key is `BANK_PREFIX` + the name).
pub fn account_name(index: usize) -> String {
    format!("a{index}")
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
        // A lock client's operations follow from each other (`runner`); alone, it acquires.
        WorkloadKind::Lock => Op::Acquire {
            ttl: LOCK_LEASE_TTL,
        },
        WorkloadKind::Watch => Op::Emit {
            key: register_key(rng.random_range(0..keys.max(1))),
            value: next_element(),
        },
        WorkloadKind::Bank => {
            let accounts = keys.max(2);
            if rng.random_bool(0.5) {
                Op::Balances
            } else {
                let from = rng.random_range(0..accounts);
                let to = (from + rng.random_range(1..accounts)) % accounts;
                Op::Transfer {
                    from,
                    to,
                    amount: rng.random_range(1..=BANK_TRANSFER_MAX),
                }
            }
        }
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
    /// Bank transfers write without comparing revisions (`--bank-blind-writes`, the negative control).
    pub blind_transfers: bool,
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
        Op::Open { .. } | Op::Transfer { .. } | Op::Balances => BANK_PREFIX.as_bytes().to_vec(),
        Op::Acquire { .. } | Op::Release { .. } => LOCK_NAME.as_bytes().to_vec(),
        Op::Fenced { .. } => FENCED_KEY.as_bytes().to_vec(),
        Op::Emit { key, .. } => format!("{WATCHED_PREFIX}{key}").into_bytes(),
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
            let options = read_options(policy, read_endpoint);
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
        Op::Emit { value, .. } => match session.put(key, value.to_string()).await {
            Ok(revision) => {
                Outcome::new(EventType::Ok, Value::from(*value)).with("revision", revision)
            }
            Err(error) => write_error(&error, Value::from(*value)),
        },
        Op::Add { element } => match session.put(key, Vec::new()).await {
            Ok(revision) => {
                Outcome::new(EventType::Ok, Value::from(*element)).with("revision", revision)
            }
            Err(error) => write_error(&error, Value::from(*element)),
        },
        Op::Open { accounts } => open_accounts(*accounts, session, op.invoke_value()).await,
        Op::Transfer { from, to, amount } => {
            let options = read_options(policy, read_endpoint);
            transfer(
                *from,
                *to,
                *amount,
                session,
                client,
                &options,
                policy,
                op.invoke_value(),
            )
            .await
        }
        Op::Balances => read_balances(client, &read_options(policy, read_endpoint)).await,
        Op::Acquire { ttl } => acquire(client, *ttl).await,
        Op::Fenced {
            token,
            key: lock_key,
        } => {
            let txn = Txn::default()
                .when(compare_create_revision(
                    lock_key.clone(),
                    CompareOp::Equal,
                    *token,
                ))
                .and_then(put(key, token.to_string()));
            match session.txn(txn).await {
                Ok(response) if response.succeeded => {
                    Outcome::new(EventType::Ok, Value::from(*token))
                        .with("revision", response.revision)
                }
                Ok(_) => {
                    Outcome::new(EventType::Fail, Value::from(*token)).with("error", FENCE_REFUSED)
                }
                Err(error) => write_error(&error, Value::from(*token)),
            }
        }
        Op::Release { lease, .. } => match client.lease_revoke(*lease).await {
            Ok(revision) => {
                Outcome::new(EventType::Ok, op.invoke_value()).with("revision", revision)
            }
            // Gone already (expired): nothing held any more, which is what a release wants.
            Err(ClientError::LeaseNotFound(_)) => Outcome::new(EventType::Ok, op.invoke_value()),
            Err(error) => write_error(&error, op.invoke_value()),
        },
    }
}

/// Grants a lease of `ttl` seconds and takes the lock with it; `ok` with `{"token", "lease", "key", "ttl"}`
/// (`ttl`: the TTL granted, which the cluster may have raised to its minimum). A lease left behind by a failed
/// wait is revoked (or expires).
async fn acquire(client: &Client, ttl: i64) -> Outcome {
    let (lease, granted_ttl) = match client.lease_grant(ttl, 0).await {
        Ok(granted) => granted,
        Err(error) => return write_error(&error, Value::Null),
    };
    match client.lock(LOCK_NAME, lease, Some(LOCK_WAIT_MAX)).await {
        Ok(hold) => Outcome::new(
            EventType::Ok,
            serde_json::json!({
                "token": hold.revision,
                "lease": format!("{lease:016x}"),
                "key": String::from_utf8_lossy(&hold.key),
                "ttl": granted_ttl,
            }),
        ),
        Err(error) => {
            let _ = client.lease_revoke(lease).await;
            let kind = match error {
                // The wait ran out: nothing is held (the key went with the lease).
                ClientError::DeadlineExceeded { .. } => "lock_wait".to_string(),
                other => other.kind().to_string(),
            };
            Outcome::new(EventType::Fail, Value::Null).with("error", kind)
        }
    }
}

/// The read options of `policy`, pinned to `endpoint`.
fn read_options(policy: &ReadPolicy, endpoint: &str) -> ReadOptions {
    ReadOptions {
        consistency: policy.consistency,
        max_staleness: policy
            .max_staleness
            .filter(|_| policy.consistency == Consistency::Stale),
        min_revision: 0,
        revision: 0,
        endpoint: Some(endpoint.to_string()),
    }
}

fn account_key(index: usize) -> Vec<u8> {
    format!("{BANK_PREFIX}{}", account_name(index)).into_bytes()
}

/// Puts every account with its initial balance, in one transaction, unless the first exists already.
async fn open_accounts(accounts: usize, session: &mut Session, value: Value) -> Outcome {
    let mut txn = Txn::default().when(compare_create_revision(account_key(0), CompareOp::Equal, 0));
    for index in 0..accounts {
        txn = txn.and_then(put(account_key(index), BANK_INITIAL_BALANCE.to_string()));
    }
    match session.txn(txn).await {
        Ok(response) if response.succeeded => {
            Outcome::new(EventType::Ok, value).with("revision", response.revision)
        }
        Ok(_) => Outcome::new(EventType::Fail, value).with("error", "accounts already open"),
        Err(error) => write_error(&error, value),
    }
}

/// One transfer: both balances read as the policy says, then one transaction putting both new balances, only
/// if neither account changed since it was read (unless `blind_transfers`).
#[allow(clippy::too_many_arguments)]
async fn transfer(
    from: usize,
    to: usize,
    amount: i64,
    session: &mut Session,
    client: &Client,
    options: &ReadOptions,
    policy: &ReadPolicy,
    value: Value,
) -> Outcome {
    let mut read = Vec::with_capacity(2);
    for account in [from, to] {
        match client.get(account_key(account), options).await {
            Ok(GetResult { kv: Some(kv), .. }) => {
                let balance = String::from_utf8_lossy(&kv.value).parse::<i64>().ok();
                match balance {
                    Some(balance) => read.push((balance, kv.mod_revision)),
                    None => {
                        return Outcome::new(EventType::Fail, value)
                            .with("error", "unreadable balance")
                    }
                }
            }
            // A read has no effect: the transfer definitely did not happen.
            Ok(_) => return Outcome::new(EventType::Fail, value).with("error", "no account"),
            Err(error) => {
                return Outcome::new(EventType::Fail, value)
                    .with("error", error.kind())
                    .with("message", error.to_string())
            }
        }
    }
    let [(from_balance, from_revision), (to_balance, to_revision)] = [read[0], read[1]];
    if from_balance < amount {
        return Outcome::new(EventType::Fail, value).with("error", TRANSFER_INSUFFICIENT);
    }
    let mut txn = Txn::default();
    if !policy.blind_transfers {
        txn = txn
            .when(compare_mod_revision(
                account_key(from),
                CompareOp::Equal,
                from_revision,
            ))
            .when(compare_mod_revision(
                account_key(to),
                CompareOp::Equal,
                to_revision,
            ));
    }
    let txn = txn
        .and_then(put(account_key(from), (from_balance - amount).to_string()))
        .and_then(put(account_key(to), (to_balance + amount).to_string()));
    match session.txn(txn).await {
        Ok(response) if response.succeeded => {
            Outcome::new(EventType::Ok, value).with("revision", response.revision)
        }
        Ok(_) => Outcome::new(EventType::Fail, value).with("error", TRANSFER_CONFLICT),
        Err(error) => write_error(&error, value),
    }
}

/// Every account's balance, from one scan: `{"a0": 100, ...}`.
pub async fn read_balances(client: &Client, options: &ReadOptions) -> Outcome {
    let result = client
        .scan(
            ScanRange::Prefix(BANK_PREFIX.as_bytes().to_vec()),
            SET_READ_PAGE,
            options,
        )
        .await;
    match result {
        Ok(scan) => {
            let balances: Map<String, Value> = scan
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key[BANK_PREFIX.len()..]).into_owned(),
                        register_value(&kv.value),
                    )
                })
                .collect();
            Outcome::new(EventType::Ok, Value::Object(balances))
                .with("envelope", envelope_json(&scan.envelope))
        }
        Err(error) => Outcome::new(EventType::Fail, Value::Null)
            .with("error", error.kind())
            .with("message", error.to_string()),
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

/// One watcher of the watch workload: every key under `WATCHED_PREFIX`, through `client` (whose first endpoint
/// serves it first; it resumes on the others), from the revision its node resolves.
pub struct Watcher {
    watch: raftkv_client::Watch,
    /// The first revision the watch reports.
    pub from: u64,
    /// `[key, value, revision, seen]` per event, in the order seen; `seen` is when the watcher got it, in
    /// nanoseconds of the history's clock.
    pub events: Vec<Value>,
    /// Why it stopped early, if it did.
    pub ended: Option<String>,
}

impl Watcher {
    pub async fn start(client: &Client) -> Result<Watcher, ClientError> {
        let options = raftkv_client::WatchOptions {
            range_end: raftkv_client::txn::prefix_end(WATCHED_PREFIX.as_bytes()),
            ..raftkv_client::WatchOptions::default()
        };
        let watch = client.watch(WATCHED_PREFIX, &options).await?;
        Ok(Watcher {
            from: watch.next_revision(),
            watch,
            events: Vec::new(),
            ended: None,
        })
    }

    /// The revision through which it has seen everything.
    pub fn through(&self) -> u64 {
        self.watch.next_revision().saturating_sub(1)
    }

    /// Takes the next batch of events (waits for it), stamping them with `now()` (the history's clock) when they
    /// arrive; false once the watch has ended.
    pub async fn take(&mut self, now: impl Fn() -> u64) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match self.watch.next().await {
            Ok(Some(response)) => {
                let seen = now();
                for event in response.events {
                    let Some(kv) = event.kv else { continue };
                    let key = String::from_utf8_lossy(&kv.key)
                        .trim_start_matches(WATCHED_PREFIX)
                        .to_string();
                    self.events.push(serde_json::json!([
                        key,
                        register_value(&kv.value),
                        kv.mod_revision,
                        seen
                    ]));
                }
                if self.events.len() > WATCH_EVENTS_RECORDED_MAX {
                    self.ended = Some("truncated".to_string());
                }
                self.ended.is_none()
            }
            Ok(None) => {
                self.ended = Some("the stream ended".to_string());
                false
            }
            Err(error) => {
                self.ended = Some(error.to_string());
                false
            }
        }
    }

    /// What the history records when it stops.
    pub fn record(&self) -> Value {
        serde_json::json!({"from": self.from, "through": self.through(), "events": self.events})
    }
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
    fn bank_ops_read_or_move_a_bounded_amount_between_two_accounts() {
        let mut rng = StdRng::seed_from_u64(7);
        let ops: Vec<Op> = (0..400)
            .map(|_| generate(WorkloadKind::Bank, 3, &mut rng, || unreachable!()))
            .collect();
        let transfers = ops
            .iter()
            .filter(|op| matches!(op, Op::Transfer { .. }))
            .count();
        assert!(
            (150..250).contains(&transfers),
            "{transfers} transfers of 400"
        );
        for op in &ops {
            assert_eq!(op.key(), BANK_KEY);
            if let Op::Transfer { from, to, amount } = op {
                assert!(from != to && *from < 3 && *to < 3, "{op:?}");
                assert!((1..=BANK_TRANSFER_MAX).contains(amount), "{op:?}");
            }
        }
        let open = Op::Open { accounts: 2 };
        assert_eq!(
            open.invoke_value(),
            serde_json::json!({"a0": 100, "a1": 100})
        );
        assert_eq!(open.function(), Function::Write);
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
