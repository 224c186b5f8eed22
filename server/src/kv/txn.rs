//! Multi-operation transactions, as etcd defines them: compares, then the operations of one branch, all at one
//! revision. The types a `Command::Txn` carries and its response, their limits and validation, how a compare
//! judges a key, and how a range's keys are filtered, sorted and cut to a limit. Pure: the rules that apply a
//! transaction to the state are in `state_machine`; the etcd API translates its messages into these types.
//!
//! What etcd decides and raftkv follows (docs/design.md, "Transactions"):
//! - every compare and the branch of every nested transaction is decided on the state before the transaction,
//!   and a put that keeps the key's value (`ignore_value`) needs the key to exist then; a range inside the
//!   transaction sees the writes made before it in the transaction;
//! - a transaction that changes the store takes one revision for all its changes, whatever their number;
//! - within one branch no key is put twice or both put and deleted (nested transactions included), so each
//!   key changes at most once per transaction.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::record::{validate_key, validate_value, KeyValue, ScanRange, WRITE_BYTES_MAX};

/// Most compares, and most operations per branch, at any level of one transaction: the hard cap, checked
/// when applying. The etcd API refuses more than `--max-txn-ops` (etcd's default of 128) before proposing.
pub const TXN_OPS_MAX: usize = 1_024;
/// Deepest nesting of transactions inside transactions.
pub const TXN_DEPTH_MAX: usize = 8;
/// Most keys one range inside a write may cover: a delete range, a compare over a range, a range inside a
/// transaction. Bounds what one log entry may change and what its response may hold; a write over more is
/// refused as a whole.
pub const RANGE_KEYS_IN_WRITE_MAX: usize = 10_000;
/// Most key and value bytes the reads of one transaction may return (ranges, and deletes asked for what
/// they delete); more refuses the transaction when it is applied, nothing changed.
pub const TXN_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest transaction, encoded as a log entry carries it: that of the largest single write, so a
/// transaction fits every bound an entry has (etcd's own `--max-request-bytes` default is 1.5 MiB).
pub const TXN_BYTES_MAX: usize = WRITE_BYTES_MAX;

/// Keys a request names: one key, or a range in etcd's form (`range_end` empty: just `key`; `range_end` a
/// single zero byte: every key from `key` on; otherwise `[key, range_end)`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpan {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// A `KeySpan` resolved: a single key or a range of keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span<'a> {
    Key(&'a [u8]),
    Range(ScanRange),
}

impl KeySpan {
    pub fn key(key: &[u8]) -> Self {
        KeySpan {
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }

    pub fn resolve(&self) -> Span<'_> {
        match self.range_end.as_slice() {
            [] => Span::Key(&self.key),
            [0] => Span::Range(ScanRange::Range {
                start: self.key.clone(),
                end: None,
            }),
            end => Span::Range(ScanRange::Range {
                start: self.key.clone(),
                end: Some(end.to_vec()),
            }),
        }
    }

    /// Whether `key` is in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => key == self.key.as_slice(),
            [0] => key >= self.key.as_slice(),
            end => key >= self.key.as_slice() && key < end,
        }
    }

    /// Checks the key and that a range's end (other than "every key from here") comes after its start: etcd
    /// answers an inverted range as empty, raftkv refuses it in words.
    pub fn validate(&self) -> Result<(), TxnInvalid> {
        validate_key(&self.key).map_err(TxnInvalid::Key)?;
        let open_ended = self.range_end.is_empty() || self.range_end == [0];
        if !open_ended && self.range_end <= self.key {
            return Err(TxnInvalid::Key(
                "a range's end must come after its start key".to_string(),
            ));
        }
        Ok(())
    }
}

/// How a compare relates the key's field to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field a compare reads, with the value it is compared against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's lease (0: none).
    Lease(i64),
}

/// One condition of a transaction, over one key or every key of a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub span: KeySpan,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// Whether the compare holds for `kvs`, the keys of its span that exist. A missing key counts as one with
    /// every number 0, except that a compare on a value never holds for it (etcd's rule: a missing value and
    /// an empty one cannot be told apart on the wire).
    pub fn holds(&self, kvs: &[KeyValue]) -> bool {
        if kvs.is_empty() {
            return match self.target {
                CompareTarget::Value(_) => false,
                _ => self.holds_for(&KeyValue {
                    key: Vec::new(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: 0,
                    version: 0,
                    lease: 0,
                }),
            };
        }
        kvs.iter().all(|kv| self.holds_for(kv))
    }

    fn holds_for(&self, kv: &KeyValue) -> bool {
        let as_i64 = |number: u64| i64::try_from(number).unwrap_or(i64::MAX);
        let ordering = match &self.target {
            CompareTarget::Version(target) => as_i64(kv.version).cmp(target),
            CompareTarget::Create(target) => as_i64(kv.create_revision).cmp(target),
            CompareTarget::Mod(target) => as_i64(kv.mod_revision).cmp(target),
            CompareTarget::Value(target) => kv.value.as_slice().cmp(target.as_slice()),
            CompareTarget::Lease(target) => kv.lease.cmp(target),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A range read with etcd's options. `revision` 0 reads the current state (inside a transaction it must be 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub span: KeySpan,
    /// At most this many keys (0: no limit); `more` says whether more were in the range.
    pub limit: u64,
    pub revision: u64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    /// Keep only keys whose mod / create revision is at least the min and at most the max (0: no bound).
    pub min_mod_revision: u64,
    pub max_mod_revision: u64,
    pub min_create_revision: u64,
    pub max_create_revision: u64,
}

impl RangeSpec {
    /// How many keys of the range to fetch before `finish`: every key when the result is sorted or filtered
    /// (the limit applies after), one past the limit otherwise (to tell whether there are more). `None`: all.
    pub fn fetch_limit(&self) -> Option<usize> {
        let filtered = self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0;
        if self.sort_order != SortOrder::None || filtered || self.limit == 0 {
            None
        } else {
            Some(
                usize::try_from(self.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            )
        }
    }

    /// Filters, sorts and cuts `kvs` (the range's keys in key order, as many as `fetch_limit` asked for) as
    /// etcd does; `count` is the number of keys in the whole range.
    pub fn finish(&self, mut kvs: Vec<KeyValue>, count: u64) -> RangeResult {
        let within = |value: u64, min: u64, max: u64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        kvs.retain(|kv| {
            within(
                kv.mod_revision,
                self.min_mod_revision,
                self.max_mod_revision,
            ) && within(
                kv.create_revision,
                self.min_create_revision,
                self.max_create_revision,
            )
        });
        let order = match (self.sort_order, self.sort_target) {
            // Keys come in ascending key order already; another target with no order sorts ascending.
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        if order != SortOrder::None {
            let target = self.sort_target;
            kvs.sort_by(|a, b| {
                let ordering = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = self.limit > 0 && kvs.len() > limit;
        if more {
            kvs.truncate(limit);
        }
        if self.count_only {
            kvs.clear();
        } else if self.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResult { kvs, more, count }
    }
}

/// A put inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutSpec {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Answer with the key as it was before the put.
    pub prev_kv: bool,
    /// Keep the key's current value (the key must exist).
    pub ignore_value: bool,
    /// Attach the key to this lease (0: none, and the key leaves any lease it had); the lease must exist.
    pub lease: i64,
    /// Keep the key's current lease (the key must exist); `lease` must then be 0.
    pub ignore_lease: bool,
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeSpec),
    Put(PutSpec),
    DeleteRange { span: KeySpan, prev_kv: bool },
    Txn(Txn),
}

/// A transaction: if every compare holds, the `success` operations run, else the `failure` ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// The keys of a range read and whether it stopped at its limit; `count` is every key in the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: u64,
}

/// What one operation of a transaction returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn(TxnResult),
}

/// Which branch ran and what each of its operations returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
}

/// Why a transaction is refused before it is proposed, in the terms etcd clients match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnInvalid {
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("transactions nest deeper than {TXN_DEPTH_MAX} levels")]
    TooDeep,
    #[error("request is too large")]
    TooLarge,
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Value(String),
    #[error("reading at a past revision inside a transaction is not supported; read it in its own request")]
    RevisionInTxn,
    /// etcd's message for a put that both keeps its lease and names one.
    #[error("lease is provided")]
    LeaseProvided,
    #[error("lease id {0} is negative: lease ids are positive, 0 for no lease")]
    NegativeLease(i64),
}

impl Txn {
    /// Checks the limits and etcd's rule that a branch changes each key at most once. The etcd API calls it
    /// before proposing; `Command::validate` calls it again when applying.
    pub fn validate(&self) -> Result<(), TxnInvalid> {
        self.validate_at(1)?;
        if self.bytes() > TXN_BYTES_MAX {
            return Err(TxnInvalid::TooLarge);
        }
        check_branch(&self.success)?;
        check_branch(&self.failure)?;
        Ok(())
    }

    fn validate_at(&self, depth: usize) -> Result<(), TxnInvalid> {
        if depth > TXN_DEPTH_MAX {
            return Err(TxnInvalid::TooDeep);
        }
        if self.compares.len() > TXN_OPS_MAX
            || self.success.len() > TXN_OPS_MAX
            || self.failure.len() > TXN_OPS_MAX
        {
            return Err(TxnInvalid::TooManyOps);
        }
        for compare in &self.compares {
            compare.span.validate()?;
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Range(range) => {
                    range.span.validate()?;
                    if range.revision != 0 {
                        return Err(TxnInvalid::RevisionInTxn);
                    }
                }
                TxnOp::Put(put) => {
                    validate_key(&put.key).map_err(TxnInvalid::Key)?;
                    validate_value(&put.value).map_err(TxnInvalid::Value)?;
                    if put.ignore_lease && put.lease != 0 {
                        return Err(TxnInvalid::LeaseProvided);
                    }
                    if put.lease < 0 {
                        return Err(TxnInvalid::NegativeLease(put.lease));
                    }
                }
                TxnOp::DeleteRange { span, .. } => span.validate()?,
                TxnOp::Txn(txn) => txn.validate_at(depth + 1)?,
            }
        }
        Ok(())
    }

    /// Bytes the transaction takes in a log entry: its encoding, framing included.
    pub fn bytes(&self) -> usize {
        postcard::to_stdvec(self).map_or(usize::MAX, |encoded| encoded.len())
    }

    /// The most compares, or operations of one branch, at any level: what `--max-txn-ops` bounds.
    pub fn widest(&self) -> usize {
        let nested = self
            .success
            .iter()
            .chain(&self.failure)
            .filter_map(|op| match op {
                TxnOp::Txn(txn) => Some(txn.widest()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        self.compares
            .len()
            .max(self.success.len())
            .max(self.failure.len())
            .max(nested)
    }

    /// Puts anywhere in the transaction, either branch.
    pub fn puts(&self) -> usize {
        self.success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                TxnOp::Put(_) => 1,
                TxnOp::Txn(txn) => txn.puts(),
                TxnOp::Range(_) | TxnOp::DeleteRange { .. } => 0,
            })
            .sum()
    }

    /// Whether the transaction may change the store (it holds a put or a delete somewhere).
    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            TxnOp::Range(_) => false,
            TxnOp::Put(_) | TxnOp::DeleteRange { .. } => true,
            TxnOp::Txn(txn) => txn.writes(),
        })
    }
}

/// The keys a branch puts and the spans it deletes, nested transactions included (etcd's `checkIntervals`):
/// a put key may not be put again or fall in a deleted span, except that the two branches of one nested
/// transaction may put the same key (only one of them runs).
fn check_branch(ops: &[TxnOp]) -> Result<(Vec<Vec<u8>>, Vec<KeySpan>), TxnInvalid> {
    let mut deletes: Vec<KeySpan> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::DeleteRange { span, .. } => Some(span.clone()),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let deleted = |deletes: &[KeySpan], key: &[u8]| deletes.iter().any(|span| span.contains(key));
    for op in ops {
        let TxnOp::Txn(txn) = op else { continue };
        let (puts_then, deletes_then) = check_branch(&txn.success)?;
        let (puts_else, deletes_else) = check_branch(&txn.failure)?;
        // A nested delete may not cover a key put before it in this branch (etcd's own check misses this).
        if deletes_then
            .iter()
            .chain(&deletes_else)
            .any(|span| puts.iter().any(|key| span.contains(key)))
        {
            return Err(TxnInvalid::DuplicateKey);
        }
        for key in puts_then.iter() {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(TxnInvalid::DuplicateKey);
            }
            puts.push(key.clone());
        }
        for key in puts_else {
            if (puts.contains(&key) && !puts_then.contains(&key)) || deleted(&deletes, &key) {
                return Err(TxnInvalid::DuplicateKey);
            }
            if !puts.contains(&key) {
                puts.push(key);
            }
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let TxnOp::Put(put) = op else { continue };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(TxnInvalid::DuplicateKey);
        }
        puts.push(put.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> TxnOp {
        TxnOp::Put(PutSpec {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
            ignore_value: false,
            lease: 0,
            ignore_lease: false,
        })
    }

    fn delete(key: &str, range_end: &str) -> TxnOp {
        TxnOp::DeleteRange {
            span: KeySpan {
                key: key.as_bytes().to_vec(),
                range_end: range_end.as_bytes().to_vec(),
            },
            prev_kv: false,
        }
    }

    fn kv(key: &str, value: &str, mod_revision: u64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn a_branch_may_not_change_a_key_twice() {
        let txn = |success: Vec<TxnOp>| Txn {
            success,
            ..Txn::default()
        };
        assert_eq!(
            txn(vec![put("a"), put("a")]).validate(),
            Err(TxnInvalid::DuplicateKey)
        );
        assert_eq!(
            txn(vec![put("b"), delete("a", "c")]).validate(),
            Err(TxnInvalid::DuplicateKey)
        );
        assert_eq!(txn(vec![put("c"), delete("a", "c")]).validate(), Ok(()));
        // The two branches of a nested transaction may put one key; a put beside them may not.
        let nested = TxnOp::Txn(Txn {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Txn::default()
        });
        assert_eq!(txn(vec![nested.clone()]).validate(), Ok(()));
        assert_eq!(
            txn(vec![nested, put("a")]).validate(),
            Err(TxnInvalid::DuplicateKey)
        );
        // A put, then a nested transaction deleting it: the key would change twice at one revision.
        let nested_delete = TxnOp::Txn(Txn {
            success: vec![delete("a", "b")],
            ..Txn::default()
        });
        let nested_put = TxnOp::Txn(Txn {
            success: vec![put("a")],
            ..Txn::default()
        });
        assert_eq!(
            txn(vec![nested_put, nested_delete.clone()]).validate(),
            Err(TxnInvalid::DuplicateKey)
        );
        assert_eq!(
            txn(vec![put("a"), nested_delete]).validate(),
            Err(TxnInvalid::DuplicateKey)
        );
        // Different branches of the outer transaction are separate.
        let outer = Txn {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Txn::default()
        };
        assert_eq!(outer.validate(), Ok(()));
    }

    #[test]
    fn limits_are_checked() {
        let many = Txn {
            success: (0..=TXN_OPS_MAX).map(|i| put(&format!("k{i}"))).collect(),
            ..Txn::default()
        };
        assert_eq!(many.validate(), Err(TxnInvalid::TooManyOps));
        let mut deep = Txn::default();
        for _ in 0..TXN_DEPTH_MAX {
            deep = Txn {
                success: vec![TxnOp::Txn(deep)],
                ..Txn::default()
            };
        }
        assert_eq!(deep.validate(), Err(TxnInvalid::TooDeep));
        let backwards = Txn {
            success: vec![delete("b", "a")],
            ..Txn::default()
        };
        assert!(matches!(backwards.validate(), Err(TxnInvalid::Key(_))));
    }

    #[test]
    fn compares_follow_etcds_rules_for_missing_keys_and_ranges() {
        let compare = |target, op| Compare {
            span: KeySpan::key(b"k"),
            op,
            target,
        };
        // A missing key has version 0 but no value, not even an empty one.
        assert!(compare(CompareTarget::Version(0), CompareOp::Equal).holds(&[]));
        assert!(!compare(CompareTarget::Value(Vec::new()), CompareOp::Equal).holds(&[]));
        assert!(!compare(CompareTarget::Value(Vec::new()), CompareOp::NotEqual).holds(&[]));
        let kvs = [kv("a", "x", 5), kv("b", "y", 7)];
        assert!(compare(CompareTarget::Mod(4), CompareOp::Greater).holds(&kvs));
        assert!(!compare(CompareTarget::Mod(6), CompareOp::Greater).holds(&kvs));
        assert!(compare(CompareTarget::Value(b"z".to_vec()), CompareOp::Less).holds(&kvs));
        assert!(compare(CompareTarget::Lease(0), CompareOp::Equal).holds(&kvs));
    }

    #[test]
    fn a_range_filters_then_sorts_then_cuts() {
        let kvs = vec![kv("a", "3", 5), kv("b", "1", 9), kv("c", "2", 7)];
        let spec = RangeSpec {
            limit: 2,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            min_mod_revision: 6,
            ..RangeSpec::default()
        };
        assert_eq!(spec.fetch_limit(), None);
        let result = spec.finish(kvs.clone(), 3);
        let keys: Vec<&[u8]> = result.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [b"b".as_slice(), b"c"]);
        assert!(!result.more);
        assert_eq!(result.count, 3);

        let spec = RangeSpec {
            limit: 1,
            keys_only: true,
            ..RangeSpec::default()
        };
        assert_eq!(spec.fetch_limit(), Some(2));
        let result = spec.finish(kvs[..2].to_vec(), 3);
        assert_eq!(result.kvs.len(), 1);
        assert!(result.more);
        assert!(result.kvs[0].value.is_empty());

        let by_value = RangeSpec {
            sort_target: SortTarget::Value,
            ..RangeSpec::default()
        };
        let values: Vec<Vec<u8>> = by_value
            .finish(kvs, 3)
            .kvs
            .into_iter()
            .map(|kv| kv.value)
            .collect();
        assert_eq!(values, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    }
}
