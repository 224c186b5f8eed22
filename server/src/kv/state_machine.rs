//! The replicated state machine: the key-value map, per-key revisions and the exactly-once session table.
//!
//! It is pure and deterministic: no I/O, no clock, no randomness. Every node applies the same committed
//! commands at the same log indexes and so reaches the same state and produces the same responses, which is
//! what lets a retried write be answered from the session table on whichever node is leader by then.
//! Durability is someone else's job: the log store persists the commands and snapshots persist the state.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes. Longer keys are refused before proposal (`InvalidArgument`).
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value accepted, in bytes. Larger values are refused before proposal (`InvalidArgument`). Together
/// with the AppendEntries batch size it bounds a peer message (see `network::PEER_MESSAGE_BYTES_MAX`).
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most key and value bytes one write carries: a cas with a key, an expected value and a new value.
pub const WRITE_BYTES_MAX: usize = KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX;
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
/// Most keys one scan returns; a scan asking for more is refused (`OutOfRange`).
pub const SCAN_LIMIT_MAX: usize = 10_000;
/// Keys a scan returns when it does not say.
pub const SCAN_LIMIT_DEFAULT: usize = 1_000;
/// Client sessions remembered for duplicate suppression. At the limit the session used least recently (by
/// revision, so deterministically on every node) is forgotten; a retry on a forgotten session is applied
/// again, so clients must not keep more than this many sessions busy at once. Each remembers its last
/// response (a cas response holds the key's value), so the table holds at most this many values.
pub const SESSIONS_MAX: usize = 10_000;

/// A key's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// A key with its record, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl KeyValue {
    fn new(key: &[u8], record: &Record) -> Self {
        KeyValue {
            key: key.to_vec(),
            value: record.value.clone(),
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
        }
    }
}

/// What a cas compares against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key must exist with exactly this value.
    Value(Vec<u8>),
    /// The key's `mod_revision` must equal this; 0 means the key must not exist.
    Revision(u64),
    /// The key must not exist.
    Absent,
}

/// A write, as carried in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expected: Expected,
        value: Vec<u8>,
    },
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

/// The application data of a log entry: the writes the leader packed into it (see `write_batch`). Every write
/// of a batch gets the entry's log index as its revision, like the operations of one etcd transaction. The
/// leader never puts two writes to the same key in one batch, so a key's `mod_revision` still names exactly
/// one of its values.
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

/// The outcome of applying one write.
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
}

/// Why a committed command changed nothing. These are decided deterministically from the command and state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The session already applied a later sequence number; this request is older than the one it remembers.
    SequenceTooOld { last_sequence: u64 },
    /// The command breaks a limit (only reachable if a proposer skipped validation).
    Invalid(String),
}

/// What the session table remembers of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    last_sequence: u64,
    last_response: Response,
    /// Revision of the entry that last touched the session: the eviction order.
    last_revision: u64,
}

/// The state every node holds, identical across nodes at the same applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    kv: BTreeMap<Vec<u8>, Record>,
    sessions: BTreeMap<u64, SessionRecord>,
    /// (last_revision, client_id) of every session: the least recently used one is first.
    session_order: BTreeMap<(u64, u64), ()>,
}

/// Checks a key against the limits; the one place both the API (before proposal) and apply use.
pub fn validate_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".to_string());
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "key is {} bytes, over the limit of {KEY_BYTES_MAX}",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a value against the limits.
pub fn validate_value(value: &[u8]) -> Result<(), String> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(format!(
            "value is {} bytes, over the limit of {VALUE_BYTES_MAX}",
            value.len()
        ));
    }
    Ok(())
}

impl Command {
    /// The key the command writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
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
        }
    }
}

/// The range a scan covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanRange {
    /// Every key starting with this prefix (an empty prefix is every key).
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`; `None` means no upper bound.
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

/// Keys returned by a scan, and whether more were in range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
}

impl StateMachine {
    /// Applies every write of the batch carried by the entry at `revision` (its log index), in order.
    pub fn apply_batch(&mut self, revision: u64, batch: &Batch) -> BatchResponse {
        BatchResponse {
            responses: batch
                .writes
                .iter()
                .map(|request| self.apply(revision, request))
                .collect(),
        }
    }

    /// Applies one write carried by the entry at `revision` (its log index) and returns its response.
    pub fn apply(&mut self, revision: u64, request: &Request) -> Response {
        if let Some(session) = request.session {
            if let Some(record) = self.sessions.get(&session.client_id) {
                if session.sequence == record.last_sequence {
                    // A retry of a write this session already applied: answer as the first time.
                    return record.last_response.clone();
                }
                if session.sequence < record.last_sequence {
                    return Response::Rejected(Rejection::SequenceTooOld {
                        last_sequence: record.last_sequence,
                    });
                }
            }
        }
        let response = match request.command.validate() {
            Ok(()) => self.apply_command(revision, &request.command),
            Err(reason) => Response::Rejected(Rejection::Invalid(reason)),
        };
        if let Some(session) = request.session {
            self.remember(session, revision, response.clone());
        }
        response
    }

    fn apply_command(&mut self, revision: u64, command: &Command) -> Response {
        match command {
            Command::Put { key, value } => {
                self.write(key, value, revision);
                Response::Put { revision }
            }
            Command::Delete { key } => Response::Delete {
                revision,
                deleted: self.kv.remove(key).is_some(),
            },
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.kv.get(key);
                let matches = match (expected, current) {
                    (Expected::Value(old), Some(record)) => record.value == *old,
                    (Expected::Value(_), None) => false,
                    (Expected::Revision(0) | Expected::Absent, current) => current.is_none(),
                    (Expected::Revision(wanted), Some(record)) => record.mod_revision == *wanted,
                    (Expected::Revision(_), None) => false,
                };
                if matches {
                    self.write(key, value, revision);
                }
                let current = self.kv.get(key).map(|record| KeyValue::new(key, record));
                Response::Cas {
                    revision,
                    swapped: matches,
                    current,
                }
            }
        }
    }

    fn write(&mut self, key: &[u8], value: &[u8], revision: u64) {
        match self.kv.get_mut(key) {
            Some(record) => {
                record.value = value.to_vec();
                record.mod_revision = revision;
                record.version += 1;
            }
            None => {
                let record = Record {
                    value: value.to_vec(),
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                };
                self.kv.insert(key.to_vec(), record);
            }
        }
    }

    fn remember(&mut self, session: SessionRef, revision: u64, response: Response) {
        if let Some(old) = self.sessions.get(&session.client_id) {
            self.session_order
                .remove(&(old.last_revision, session.client_id));
        } else if self.sessions.len() >= SESSIONS_MAX {
            if let Some(((_, evicted), ())) = self.session_order.pop_first() {
                self.sessions.remove(&evicted);
            }
        }
        let record = SessionRecord {
            last_sequence: session.sequence,
            last_response: response,
            last_revision: revision,
        };
        self.sessions.insert(session.client_id, record);
        self.session_order.insert((revision, session.client_id), ());
        debug_assert_eq!(self.sessions.len(), self.session_order.len());
    }

    /// The key's current value and revisions, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kv.get(key).map(|record| KeyValue::new(key, record))
    }

    /// Keys in the range, in key order, at most `limit` of them.
    pub fn scan(&self, range: &ScanRange, limit: usize) -> ScanResult {
        let mut kvs = Vec::new();
        let mut more = false;
        let (start, end): (Bound<&[u8]>, Option<&[u8]>) = match range {
            ScanRange::Prefix(prefix) => (Bound::Included(prefix.as_slice()), None),
            ScanRange::Range { start, end } => (Bound::Included(start.as_slice()), end.as_deref()),
        };
        for (key, record) in self.kv.range::<[u8], _>((start, Bound::Unbounded)) {
            let in_range = match range {
                ScanRange::Prefix(prefix) => key.starts_with(prefix),
                ScanRange::Range { .. } => end.is_none_or(|end| key.as_slice() < end),
            };
            if !in_range {
                break;
            }
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(KeyValue::new(key, record));
        }
        ScanResult { kvs, more }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Number of sessions remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Encodes the whole state for a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding a state machine into memory cannot fail")
    }

    /// Decodes a snapshot made by `encode`, checking the invariants a well-formed state keeps.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let state: StateMachine = postcard::from_bytes(bytes)
            .map_err(|error| format!("snapshot is malformed: {error}"))?;
        if state.sessions.len() != state.session_order.len()
            || state.sessions.iter().any(|(id, record)| {
                !state
                    .session_order
                    .contains_key(&(record.last_revision, *id))
            })
        {
            return Err("snapshot is malformed: session table and its order disagree".to_string());
        }
        Ok(state)
    }
}
