//! A key's record and what clients see of it, the limits every key and value is checked against, and the
//! range a scan covers: the leaf the commands (`types`) and transactions (`txn`) are both built on.

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes. Longer keys are refused before proposal (`InvalidArgument`).
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value accepted, in bytes. Larger values are refused before proposal (`InvalidArgument`). Together
/// with the AppendEntries batch size it bounds a peer message (see `network::PEER_MESSAGE_BYTES_MAX`).
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

/// Most key and value bytes one write carries: a cas with a key, an expected value and a new value.
pub const WRITE_BYTES_MAX: usize = KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX;

/// Most keys one scan returns; a scan asking for more is refused (`OutOfRange`).
pub const SCAN_LIMIT_MAX: usize = 10_000;
/// Keys a scan returns when it does not say.
pub const SCAN_LIMIT_DEFAULT: usize = 1_000;

/// A key's stored record: its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key since it last did not exist.
    pub create_revision: u64,
    /// Revision of the write that set this value.
    pub mod_revision: u64,
    /// Writes to the key since it was created (1 after the creating write).
    pub version: u64,
    /// The lease the key is attached to (0: none): the key is deleted when the lease ends.
    pub lease: i64,
}

/// A key with its record, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: i64,
}

impl KeyValue {
    pub fn new(key: &[u8], record: &Record) -> Self {
        KeyValue {
            key: key.to_vec(),
            value: record.value.clone(),
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
            lease: record.lease,
        }
    }
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
