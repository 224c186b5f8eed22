//! Transactions as the client library builds them: compares on keys (or ranges), then the operations of the
//! branch that runs, atomically at one revision (docs/design.md, "Transactions"). `Session::txn` and
//! `Client::txn` send them exactly once.
//!
//! ```no_run
//! # async fn transfer(client: &raftkv_client::Client) -> Result<(), raftkv_client::ClientError> {
//! use raftkv_client::txn::{compare_value, get, put, CompareOp, Txn};
//! let outcome = client
//!     .txn(
//!         Txn::default()
//!             .when(compare_value("lock", CompareOp::Equal, "free"))
//!             .and_then(put("lock", "mine"))
//!             .or_else(get("lock")),
//!     )
//!     .await?;
//! println!("took the lock: {}", outcome.succeeded);
//! # Ok(())
//! # }
//! ```

use raftkv_proto::kv;
pub use raftkv_proto::kv::{
    compare::Target as CompareTarget, txn_op_result::Result as TxnOpResult, Compare, CompareOp,
    TxnOp, TxnResponse,
};

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Adds a compare (all must hold for `success` to run).
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds an operation to the branch that runs if every compare holds.
    pub fn and_then(mut self, op: TxnOp) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an operation to the branch that runs otherwise.
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.failure.push(op);
        self
    }

    pub(crate) fn into_request(self, session: Option<kv::Session>) -> kv::TxnRequest {
        kv::TxnRequest {
            compares: self.compares,
            success: self.success,
            failure: self.failure,
            session,
        }
    }
}

/// A compare of `key` against `target`.
pub fn compare(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        range_end: Vec::new(),
        op: op as i32,
        target: Some(target),
    }
}

/// The value of `key` compared with `value` (never holds for a missing key).
pub fn compare_value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
    compare(key, op, CompareTarget::Value(value.into()))
}

/// The mod revision of `key` compared with `revision` (0 for a missing key).
pub fn compare_mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Compare {
    compare(key, op, CompareTarget::ModRevision(revision))
}

/// The version of `key` compared with `version` (0 for a missing key).
pub fn compare_version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Compare {
    compare(key, op, CompareTarget::Version(version))
}

/// Writes `value` under `key`.
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
    put_with_lease(key, value, 0)
}

/// Writes `value` under `key`, attached to lease `lease` (0: none).
pub fn put_with_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> TxnOp {
    TxnOp {
        op: Some(kv::txn_op::Op::Put(kv::TxnPut {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease,
        })),
    }
}

/// The create revision of `key` compared with `revision` (0 for a missing key).
pub fn compare_create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Compare {
    compare(key, op, CompareTarget::CreateRevision(revision))
}

/// Reads `key`.
pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
    get_range(key, Vec::new(), 0)
}

/// Reads the keys in `[key, range_end)` (a single zero byte: every key from `key` on), at most `limit`
/// (0: no limit).
pub fn get_range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>, limit: u32) -> TxnOp {
    TxnOp {
        op: Some(kv::txn_op::Op::Get(kv::TxnGet {
            key: key.into(),
            range_end: range_end.into(),
            limit,
        })),
    }
}

/// Deletes `key`.
pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
    delete_range(key, Vec::new())
}

/// Deletes the keys in `[key, range_end)`.
pub fn delete_range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp {
        op: Some(kv::txn_op::Op::Delete(kv::TxnDelete {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        })),
    }
}

/// The end of the range of keys starting with `prefix`: `prefix` with its last byte below 0xff raised by one
/// (a single zero byte, "every key", if there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"app/"), b"app0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
