//! The state machine's data: commands and the batches that carry them, responses and sessions, with the
//! records and limits of `record` and the transactions of `txn` re-exported. Shared by the rules
//! (`state_machine`), the change set (`changes`) and the storage; `state_machine` re-exports all of it.

use serde::{Deserialize, Serialize};

pub use super::record::*;
pub use super::txn::*;

/// Most writes in one log entry (one `Batch`); the leader's write batcher fills entries up to these limits.
pub const WRITE_BATCH_WRITES_MAX: usize = 512;
/// Most key and value bytes in one log entry, unless the entry holds a single write (which may carry up to
/// `WRITE_BYTES_MAX`). Bounds the size of an entry, and so of an AppendEntries message.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;
/// Framing one write adds to an entry, at most: its session (two varints), the command's tag and its length
/// prefixes.
pub const WRITE_FRAMING_BYTES_MAX: usize = 64;
/// Largest encoded log entry of client writes: a full batch (or one write, if that is larger) with framing.
/// The WAL's record limit and the peer message limit are checked against it at compile time.
pub const ENTRY_BYTES_MAX: usize = {
    let payload = if WRITE_BATCH_BYTES_MAX > WRITE_BYTES_MAX {
        WRITE_BATCH_BYTES_MAX
    } else {
        WRITE_BYTES_MAX
    };
    payload + WRITE_BATCH_WRITES_MAX * WRITE_FRAMING_BYTES_MAX
};
/// Client sessions remembered for duplicate suppression. At the limit the session used least recently (by
/// revision, so deterministically on every node) is forgotten; a retry on a forgotten session is applied
/// again, so clients must not keep more than this many sessions busy at once. Each remembers its last
/// response (a cas response holds the key's value), so the table holds at most this many values.
pub const SESSIONS_MAX: usize = 10_000;

/// What a cas compares against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key must exist with exactly this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's `mod_revision` must equal this; 0 means the key must not exist.
    Revision(u64),
    /// The key must not exist.
    Absent,
}

/// A write, as carried in a log entry. New variants go at the end: the WAL holds entries encoded by
/// earlier versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: Expected,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Discards the history before `revision`: reads at a lower revision are refused from then on. The
    /// same point on every node, because it is a log entry.
    Compact { revision: u64 },
    /// Compares, then the operations of one branch, at one revision (`txn`).
    Txn(Txn),
    /// Grants lease `id` (chosen by the proposer, unused) with a time to live of `ttl` seconds. Leases are
    /// replicated state; when one expires is decided by the leader alone (`lease::Lessor`).
    LeaseGrant { id: i64, ttl: i64 },
    /// Ends lease `id` and deletes every key attached to it, all at one revision: a client's revoke, or the
    /// leader's when the lease expired.
    LeaseRevoke { id: i64 },
}

/// Longest time to live a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_MAX: i64 = 9_000_000_000;
/// Most keys attached to one lease: a revoke deletes them all in one entry, so it stays within what one
/// write may change (`RANGE_KEYS_IN_WRITE_MAX`). A put that would attach one more is refused.
pub const LEASE_KEYS_MAX: u64 = RANGE_KEYS_IN_WRITE_MAX as u64;

/// A lease as the state holds it. When it expires is not replicated: only the leader's clock decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The time to live it was granted, in seconds: what a keep-alive renews it to.
    pub ttl: i64,
    /// Keys attached to it now.
    pub keys: u64,
}

/// Identifies one write of one client session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub client_id: u64,
    pub sequence: u64,
}

/// One client write with the session it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub session: Option<SessionRef>,
    pub command: Command,
}

/// The application data of a log entry: the writes the leader packed into it (see `write_batch`). They are
/// applied in order and take consecutive revisions. The leader never puts two writes to the same key in one
/// batch, so a cas sees every write to its key proposed before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub writes: Vec<Request>,
}

impl Batch {
    /// A batch of one write.
    pub fn single(request: Request) -> Self {
        Batch {
            writes: vec![request],
        }
    }
}

/// The outcome of applying one log entry: one response per write of its batch, in order (none for a blank or
/// membership entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub responses: Vec<Response>,
}

/// The outcome of applying one write. `revision` is the write's own revision if it changed the store, else
/// the store's revision when it was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Put {
        revision: u64,
    },
    Delete {
        revision: u64,
        deleted: bool,
    },
    Cas {
        revision: u64,
        swapped: bool,
        current: Option<KeyValue>,
    },
    /// The command was not applied; nothing changed.
    Rejected(Rejection),
    /// History before `compact_revision` is discarded; `revision` is the store's revision.
    Compact {
        revision: u64,
        compact_revision: u64,
    },
    /// `revision` is the transaction's own if it changed the store, else the store's.
    Txn {
        revision: u64,
        result: TxnResult,
    },
    /// The lease exists from now on; `revision` is the store's (a grant changes no key).
    LeaseGrant {
        revision: u64,
        id: i64,
        ttl: i64,
    },
    /// The lease is gone with its `deleted` keys; `revision` is the deletions' own if there were any.
    LeaseRevoke {
        revision: u64,
        deleted: u64,
    },
}

/// Why a committed command changed nothing. These are decided deterministically from the command and state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The session already applied a later sequence number; this request is older than the one it remembers.
    SequenceTooOld { last_sequence: u64 },
    /// The command breaks a limit (only reachable if a proposer skipped validation).
    Invalid(String),
    /// A compaction to a revision the history was already compacted to (or past).
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    /// A compaction to a revision the store has not reached.
    FutureRevision { requested: u64, current: u64 },
    /// A put that keeps the key's value (`ignore_value`) found no such key.
    KeyNotFound { key: Vec<u8> },
    /// A range inside a write covers more than `RANGE_KEYS_IN_WRITE_MAX` keys.
    RangeTooLarge { limit: usize },
    /// A put names a lease, or a revoke one, that does not exist (never granted, revoked or expired).
    LeaseNotFound { id: i64 },
    /// A grant names a lease id already in use.
    LeaseExists { id: i64 },
    /// A put would attach more than `LEASE_KEYS_MAX` keys to the lease.
    LeaseFull { id: i64, limit: u64 },
}

/// What the session table remembers of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub last_sequence: u64,
    pub last_response: Response,
    /// Log index of the entry that last touched the session: the eviction order.
    pub last_index: u64,
}

impl Command {
    /// The key the command writes (empty for a compaction).
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
            Command::Compact { .. }
            | Command::Txn(_)
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. } => &[],
        }
    }

    /// Whether the command grants or revokes a lease.
    pub fn is_lease(&self) -> bool {
        matches!(
            self,
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. }
        )
    }

    /// Bytes of key and values the command carries: what it adds to a log entry, less framing. At most
    /// `WRITE_BYTES_MAX` for a valid command.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let expected = match expected {
                    Expected::Value(old) => old.len(),
                    Expected::Revision(_) | Expected::Absent => 0,
                };
                key.len() + expected + value.len()
            }
            Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 0,
            Command::Txn(txn) => txn.bytes(),
        }
    }

    /// Checks every key and value of the command against the limits.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::Put { key, value } | Command::Cas { key, value, .. } => {
                validate_key(key)?;
                validate_value(value)?;
                if let Command::Cas {
                    expected: Expected::Value(old),
                    ..
                } = self
                {
                    validate_value(old)?;
                }
                Ok(())
            }
            Command::Delete { key } => validate_key(key),
            Command::Compact { revision: 0 } => {
                Err("compaction revision must be at least 1".to_string())
            }
            Command::Compact { .. } => Ok(()),
            Command::Txn(txn) => txn.validate().map_err(|error| error.to_string()),
            Command::LeaseGrant { id, ttl } => {
                if *id <= 0 {
                    Err(format!("lease id {id} is not positive"))
                } else if !(1..=LEASE_TTL_MAX).contains(ttl) {
                    Err(format!(
                        "lease TTL {ttl} s is outside 1 to {LEASE_TTL_MAX} s"
                    ))
                } else {
                    Ok(())
                }
            }
            Command::LeaseRevoke { id } if *id <= 0 => {
                Err(format!("lease id {id} is not positive"))
            }
            Command::LeaseRevoke { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL and the peer messages hold batches in this form, and a node must read what an earlier
    /// version wrote: keys and values are a varint length and the bytes, as postcard writes a `Vec<u8>`
    /// (`serde_bytes` only changes how they are decoded, in one copy instead of byte by byte).
    #[test]
    fn a_batch_encodes_as_earlier_versions_wrote_it() {
        let batch = Batch {
            writes: vec![
                Request {
                    session: Some(SessionRef {
                        client_id: 7,
                        sequence: 300,
                    }),
                    command: Command::Put {
                        key: b"k".to_vec(),
                        value: vec![b'v'; 200],
                    },
                },
                Request {
                    session: None,
                    command: Command::Cas {
                        key: b"c".to_vec(),
                        expected: Expected::Value(b"old".to_vec()),
                        value: b"new".to_vec(),
                    },
                },
            ],
        };
        let mut expected = vec![2, 1, 7, 0xAC, 0x02, 0, 1, b'k', 0xC8, 0x01];
        expected.extend_from_slice(&[b'v'; 200]);
        expected.extend_from_slice(&[0, 2, 1, b'c', 0, 3, b'o', b'l', b'd', 3, b'n', b'e', b'w']);
        let encoded = postcard::to_stdvec(&batch).expect("encodes");
        assert_eq!(encoded, expected);
        let decoded: Batch = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(decoded, batch);
    }
}
