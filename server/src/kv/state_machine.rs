//! The replicated state machine's rules: what a command does to the keyspace, its revisions and history, and
//! the exactly-once session table.
//!
//! It is pure and deterministic: no I/O, no clock, no randomness. It reads the state through
//! `changes::KeyspaceRead` and returns what an entry changes as a `changes::ChangeSet`, which the storage
//! writes to sled in one atomic batch with the applied log id (several entries' changes may share one). Every node applies the same committed entries
//! in the same order and so reaches the same state, revisions and responses, which is what lets a retried
//! write be answered from the session table on whichever node is leader by then.
//!
//! Revisions are etcd's: a store-wide counter, 1 for an empty store, that grows by one for every write that
//! changes the store (a put, a delete of an existing key, a cas that swapped). Writes the leader packed into
//! one log entry take consecutive revisions in the order of the entry. A write that changes nothing (a delete
//! of a missing key, a cas that did not swap, a compaction) answers with the current revision.

use super::changes::{ChangeSet, HistoryEntry, KeyspaceRead, Pending, ReadFailure};
pub use super::types::*;

/// Applies every write of the batch carried by the entry at `log_index`, in order, to the state `base` shows,
/// and returns the responses with what they change. `base` must not change until the change set is written.
pub fn apply_batch<V: KeyspaceRead>(
    base: &V,
    log_index: u64,
    batch: &Batch,
) -> Result<(BatchResponse, ChangeSet), ReadFailure> {
    let mut pending = Pending::new(base);
    let response = apply_batch_onto(&mut pending, log_index, batch)?;
    Ok((response, pending.into_changes()))
}

/// `apply_batch` on top of the changes of earlier entries not yet written: several entries then reach the
/// storage as one change set, exactly as if each had been written before the next was applied.
pub fn apply_batch_onto<V: KeyspaceRead>(
    pending: &mut Pending<'_, V>,
    log_index: u64,
    batch: &Batch,
) -> Result<BatchResponse, ReadFailure> {
    let mut responses = Vec::with_capacity(batch.writes.len());
    for request in &batch.writes {
        responses.push(apply(pending, log_index, request)?);
    }
    Ok(BatchResponse { responses })
}

/// Applies one write on top of what the entry changed so far.
fn apply<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    log_index: u64,
    request: &Request,
) -> Result<Response, ReadFailure> {
    if let Some(session) = request.session {
        if let Some(record) = state.session(session.client_id)? {
            if session.sequence == record.last_sequence {
                // A retry of a write this session already applied: answer as the first time.
                return Ok(record.last_response);
            }
            if session.sequence < record.last_sequence {
                return Ok(Response::Rejected(Rejection::SequenceTooOld {
                    last_sequence: record.last_sequence,
                }));
            }
        }
    }
    let response = match request.command.validate() {
        Ok(()) => apply_command(state, &request.command)?,
        Err(reason) => Response::Rejected(Rejection::Invalid(reason)),
    };
    if let Some(session) = request.session {
        state.remember(
            session.client_id,
            SessionRecord {
                last_sequence: session.sequence,
                last_response: remembered(&response),
                last_index: log_index,
            },
        )?;
    }
    Ok(response)
}

/// What the session table keeps of a response: all of it, except a transaction's results (the values it
/// read or deleted, up to `TXN_RESPONSE_BYTES_MAX`), which would make session records, and with them
/// snapshots, as large. A retried transaction gets its outcome and revision, with no results.
fn remembered(response: &Response) -> Response {
    match response {
        Response::Txn { revision, result } => Response::Txn {
            revision: *revision,
            result: TxnResult {
                succeeded: result.succeeded,
                results: Vec::new(),
            },
        },
        other => other.clone(),
    }
}

fn apply_command<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    command: &Command,
) -> Result<Response, ReadFailure> {
    Ok(match command {
        Command::Put { key, value } => {
            let revision = write(state, key, value)?;
            Response::Put { revision }
        }
        Command::Delete { key } => {
            if let Some(record) = state.current(key)? {
                let revision = state.next_revision();
                delete_at(state, key, record.lease, revision)?;
                Response::Delete {
                    revision,
                    deleted: true,
                }
            } else {
                Response::Delete {
                    revision: state.revision(),
                    deleted: false,
                }
            }
        }
        Command::Cas {
            key,
            expected,
            value,
        } => {
            let current = state.current(key)?;
            let matches = match (expected, &current) {
                (Expected::Value(old), Some(record)) => record.value == *old,
                (Expected::Value(_), None) => false,
                (Expected::Revision(0) | Expected::Absent, current) => current.is_none(),
                (Expected::Revision(wanted), Some(record)) => record.mod_revision == *wanted,
                (Expected::Revision(_), None) => false,
            };
            if matches {
                let revision = write(state, key, value)?;
                Response::Cas {
                    revision,
                    swapped: true,
                    current: state
                        .current(key)?
                        .map(|record| KeyValue::new(key, &record)),
                }
            } else {
                Response::Cas {
                    revision: state.revision(),
                    swapped: false,
                    current: current.map(|record| KeyValue::new(key, &record)),
                }
            }
        }
        Command::Txn(txn) => apply_txn(state, txn)?,
        Command::LeaseGrant { id, ttl } => {
            if state.lease(*id)?.is_some() {
                Response::Rejected(Rejection::LeaseExists { id: *id })
            } else {
                state.set_lease(*id, Some(LeaseRecord { ttl: *ttl, keys: 0 }));
                Response::LeaseGrant {
                    revision: state.revision(),
                    id: *id,
                    ttl: *ttl,
                }
            }
        }
        Command::LeaseRevoke { id } => {
            if state.lease(*id)?.is_none() {
                Response::Rejected(Rejection::LeaseNotFound { id: *id })
            } else {
                let keys = state.lease_keys(*id)?;
                let revision = if keys.is_empty() {
                    state.revision()
                } else {
                    state.next_revision()
                };
                for key in &keys {
                    delete_at(state, key, *id, revision)?;
                }
                state.set_lease(*id, None);
                Response::LeaseRevoke {
                    revision,
                    deleted: keys.len() as u64,
                }
            }
        }
        Command::Compact { revision } => {
            let (current, compact_revision) = (state.revision(), state.compact_revision());
            if *revision <= compact_revision {
                Response::Rejected(Rejection::Compacted {
                    requested: *revision,
                    compact_revision,
                })
            } else if *revision > current {
                Response::Rejected(Rejection::FutureRevision {
                    requested: *revision,
                    current,
                })
            } else {
                state.set_compact_revision(*revision);
                Response::Compact {
                    revision: current,
                    compact_revision: *revision,
                }
            }
        }
    })
}

/// Sets `key` to `value`, with no lease, at the next revision and returns that revision.
fn write<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    key: &[u8],
    value: &[u8],
) -> Result<u64, ReadFailure> {
    let revision = state.next_revision();
    write_at(state, key, value, 0, revision)?;
    Ok(revision)
}

/// Sets `key` to `value` at `revision`, already taken, attached to `lease` (0: none; it must exist): the key
/// leaves the lease it had, if another.
fn write_at<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    key: &[u8],
    value: &[u8],
    lease: i64,
    revision: u64,
) -> Result<(), ReadFailure> {
    let old = state.current(key)?;
    let old_lease = old.as_ref().map_or(0, |old| old.lease);
    if old_lease != lease {
        if old_lease != 0 {
            state.attach(old_lease, key, false)?;
        }
        if lease != 0 {
            state.attach(lease, key, true)?;
        }
    }
    let record = match old {
        Some(old) => Record {
            value: value.to_vec(),
            create_revision: old.create_revision,
            mod_revision: revision,
            version: old.version + 1,
            lease,
        },
        None => Record {
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease,
        },
    };
    state.record_history(HistoryEntry {
        key: key.to_vec(),
        revision,
        record: Some(record.clone()),
    });
    state.set_current(key, Some(record));
    Ok(())
}

/// Deletes `key`, which exists attached to `lease` (0: none), at `revision`, already taken.
fn delete_at<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    key: &[u8],
    lease: i64,
    revision: u64,
) -> Result<(), ReadFailure> {
    if lease != 0 {
        state.attach(lease, key, false)?;
    }
    state.set_current(key, None);
    state.record_history(HistoryEntry {
        key: key.to_vec(),
        revision,
        record: None,
    });
    Ok(())
}

/// Applies a transaction: every branch decided on the state before it (`plan`), then the operations of the
/// branches taken (`execute`), every change at one revision.
fn apply_txn<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    txn: &Txn,
) -> Result<Response, ReadFailure> {
    let mut path = Vec::new();
    let mut returned = Returned::default();
    if let Err(rejection) = plan(state, txn, &mut path, &mut returned)? {
        return Ok(Response::Rejected(rejection));
    }
    // Ranges during `execute` may also see the transaction's own puts, at most this many more keys.
    let puts = txn.puts();
    let mut revision = None;
    let result = execute(state, txn, &mut path.into_iter(), &mut revision, puts)?;
    Ok(Response::Txn {
        revision: revision.unwrap_or_else(|| state.revision()),
        result,
    })
}

/// What a transaction's reads (ranges, and deletes that return what they delete) would hand back, counted
/// on the state before it: bounded, so that no entry makes every node build a response it cannot hold.
#[derive(Default)]
struct Returned {
    keys: usize,
    bytes: usize,
}

impl Returned {
    fn add(&mut self, kvs: &[KeyValue]) -> Result<(), Rejection> {
        self.keys += kvs.len();
        self.bytes += kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum::<usize>();
        if self.keys > RANGE_KEYS_IN_WRITE_MAX || self.bytes > TXN_RESPONSE_BYTES_MAX {
            return Err(Rejection::RangeTooLarge {
                limit: RANGE_KEYS_IN_WRITE_MAX,
            });
        }
        Ok(())
    }
}

/// The existing keys of `span` now, the changes so far included; more than `RANGE_KEYS_IN_WRITE_MAX` (plus
/// `extra`) is refused.
fn span_kvs<V: KeyspaceRead>(
    state: &Pending<'_, V>,
    span: &KeySpan,
    extra: usize,
) -> Result<Result<Vec<KeyValue>, Rejection>, ReadFailure> {
    let limit = RANGE_KEYS_IN_WRITE_MAX + extra;
    Ok(match span.resolve() {
        Span::Key(key) => Ok(state
            .current(key)?
            .map(|record| KeyValue::new(key, &record))
            .into_iter()
            .collect()),
        Span::Range(range) => {
            let records = state.current_range(&range, limit + 1)?;
            if records.len() > limit {
                Err(Rejection::RangeTooLarge {
                    limit: RANGE_KEYS_IN_WRITE_MAX,
                })
            } else {
                Ok(records
                    .iter()
                    .map(|(key, record)| KeyValue::new(key, record))
                    .collect())
            }
        }
    })
}

/// Decides, on the state before the transaction, which branch of it and of every nested transaction runs (in
/// the order `execute` meets them), and whether anything refuses it: a put keeping the value of a missing key,
/// or a range over too many keys.
fn plan<V: KeyspaceRead>(
    state: &Pending<'_, V>,
    txn: &Txn,
    path: &mut Vec<bool>,
    returned: &mut Returned,
) -> Result<Result<(), Rejection>, ReadFailure> {
    let mut succeeded = true;
    for compare in &txn.compares {
        match span_kvs(state, &compare.span, 0)? {
            Ok(kvs) => succeeded &= compare.holds(&kvs),
            Err(rejection) => return Ok(Err(rejection)),
        }
    }
    path.push(succeeded);
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in ops {
        match op {
            TxnOp::Put(put)
                if (put.ignore_value || put.ignore_lease) && state.current(&put.key)?.is_none() =>
            {
                return Ok(Err(Rejection::KeyNotFound {
                    key: put.key.clone(),
                }))
            }
            TxnOp::Put(put) if put.lease != 0 => match state.lease(put.lease)? {
                None => return Ok(Err(Rejection::LeaseNotFound { id: put.lease })),
                // Counted on the state before the transaction: it may attach a few more.
                Some(lease) if lease.keys >= LEASE_KEYS_MAX => {
                    return Ok(Err(Rejection::LeaseFull {
                        id: put.lease,
                        limit: LEASE_KEYS_MAX,
                    }))
                }
                Some(_) => {}
            },
            TxnOp::Put(_) => {}
            TxnOp::Range(RangeSpec { span, .. }) | TxnOp::DeleteRange { span, .. } => {
                let kvs = match span_kvs(state, span, 0)? {
                    Ok(kvs) => kvs,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                let returns = matches!(op, TxnOp::Range(_))
                    || matches!(op, TxnOp::DeleteRange { prev_kv: true, .. });
                if returns {
                    if let Err(rejection) = returned.add(&kvs) {
                        return Ok(Err(rejection));
                    }
                }
            }
            TxnOp::Txn(nested) => {
                if let Err(rejection) = plan(state, nested, path, returned)? {
                    return Ok(Err(rejection));
                }
            }
        }
    }
    Ok(Ok(()))
}

/// Runs the branches `plan` chose. The first change takes the transaction's revision; later ones share it
/// (a branch changes each key at most once: `Txn::validate`).
fn execute<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    txn: &Txn,
    path: &mut impl Iterator<Item = bool>,
    revision: &mut Option<u64>,
    puts: usize,
) -> Result<TxnResult, ReadFailure> {
    let succeeded = path.next().unwrap_or(false);
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Range(spec) => {
                // Puts earlier in the transaction may have added keys to what `plan` counted, at most `puts`,
                // so this is never refused.
                let kvs = span_kvs(state, &spec.span, puts)?.map_err(|rejection| {
                    ReadFailure(format!(
                        "a range planned within its limit was refused: {rejection:?}"
                    ))
                })?;
                let count = kvs.len() as u64;
                TxnOpResult::Range(spec.finish(kvs, count))
            }
            TxnOp::Put(put) => {
                let prev = state.current(&put.key)?;
                let value = match (&prev, put.ignore_value) {
                    (Some(prev), true) => prev.value.clone(),
                    _ => put.value.clone(),
                };
                let lease = match (&prev, put.ignore_lease) {
                    (Some(prev), true) => prev.lease,
                    _ => put.lease,
                };
                let at = *revision.get_or_insert_with(|| state.next_revision());
                write_at(state, &put.key, &value, lease, at)?;
                TxnOpResult::Put {
                    prev_kv: prev
                        .filter(|_| put.prev_kv)
                        .map(|record| KeyValue::new(&put.key, &record)),
                }
            }
            TxnOp::DeleteRange { span, prev_kv } => {
                let kvs = span_kvs(state, span, puts)?.map_err(|rejection| {
                    ReadFailure(format!(
                        "a delete planned within its limit was refused: {rejection:?}"
                    ))
                })?;
                for kv in &kvs {
                    let at = *revision.get_or_insert_with(|| state.next_revision());
                    delete_at(state, &kv.key, kv.lease, at)?;
                }
                TxnOpResult::DeleteRange {
                    deleted: kvs.len() as u64,
                    prev_kvs: if *prev_kv { kvs } else { Vec::new() },
                }
            }
            TxnOp::Txn(nested) => TxnOpResult::Txn(execute(state, nested, path, revision, puts)?),
        });
    }
    Ok(TxnResult { succeeded, results })
}
