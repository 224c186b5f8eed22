//! The replicated state machine's rules: what a command does to the keyspace, its revisions and history, and
//! the exactly-once session table.
//!
//! It is pure and deterministic: no I/O, no clock, no randomness. It reads the state through
//! `changes::KeyspaceRead` and returns what an entry changes as a `changes::ChangeSet`, which the storage
//! writes to sled in one atomic batch with the applied log id (several entries' changes may share one). Every node applies the same committed entries
//! in the same order and so reaches the same state, revisions and responses, which is what lets a retried
//! write be answered from the session table on whichever node is leader by then.
//!
//! Revisions are etcd's: a store-wide counter, 0 for an empty store, that grows by one for every write that
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
                last_response: response.clone(),
                last_index: log_index,
            },
        )?;
    }
    Ok(response)
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
            if state.current(key)?.is_some() {
                let revision = state.next_revision();
                state.set_current(key, None);
                state.record_history(HistoryEntry {
                    key: key.clone(),
                    revision,
                    record: None,
                });
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

/// Sets `key` to `value` at the next revision and returns that revision.
fn write<V: KeyspaceRead>(
    state: &mut Pending<'_, V>,
    key: &[u8],
    value: &[u8],
) -> Result<u64, ReadFailure> {
    let revision = state.next_revision();
    let record = match state.current(key)? {
        Some(old) => Record {
            value: value.to_vec(),
            create_revision: old.create_revision,
            mod_revision: revision,
            version: old.version + 1,
        },
        None => Record {
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        },
    };
    state.record_history(HistoryEntry {
        key: key.to_vec(),
        revision,
        record: Some(record.clone()),
    });
    state.set_current(key, Some(record));
    Ok(revision)
}
