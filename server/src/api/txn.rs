//! Transactions in raftkv's own API: `raftkv.v1` messages to the state machine's `Txn` and its result back.
//! The semantics are etcd's (`kv::txn`); this API offers compares on value, version, create and mod revision,
//! and get, put and delete operations (no nesting; the etcd API has it).

use raftkv_proto::kv;

use super::{to_kv, ApiError};
use crate::kv::state_machine::{
    Compare, CompareOp, CompareTarget, KeySpan, PutSpec, RangeSpec, Txn, TxnOp, TxnOpResult,
    TxnResult,
};

fn compare(compare: kv::Compare) -> Result<Compare, ApiError> {
    let op = match kv::CompareOp::try_from(compare.op) {
        Ok(kv::CompareOp::Equal) => CompareOp::Equal,
        Ok(kv::CompareOp::Greater) => CompareOp::Greater,
        Ok(kv::CompareOp::Less) => CompareOp::Less,
        Ok(kv::CompareOp::NotEqual) => CompareOp::NotEqual,
        Ok(kv::CompareOp::Unspecified) | Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "compare {:?} has no operator: give one of equal, greater, less, not_equal",
                String::from_utf8_lossy(&compare.key)
            )))
        }
    };
    let number = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let target = match compare.target {
        Some(kv::compare::Target::Value(value)) => CompareTarget::Value(value),
        Some(kv::compare::Target::Version(version)) => CompareTarget::Version(number(version)),
        Some(kv::compare::Target::CreateRevision(revision)) => {
            CompareTarget::Create(number(revision))
        }
        Some(kv::compare::Target::ModRevision(revision)) => CompareTarget::Mod(number(revision)),
        None => {
            return Err(ApiError::InvalidArgument(format!(
            "compare {:?} has no target: give a value, version, create_revision or mod_revision",
            String::from_utf8_lossy(&compare.key)
        )))
        }
    };
    Ok(Compare {
        span: KeySpan {
            key: compare.key,
            range_end: compare.range_end,
        },
        op,
        target,
    })
}

fn op(op: kv::TxnOp) -> Result<TxnOp, ApiError> {
    Ok(match op.op {
        Some(kv::txn_op::Op::Get(get)) => TxnOp::Range(RangeSpec {
            span: KeySpan {
                key: get.key,
                range_end: get.range_end,
            },
            limit: u64::from(get.limit),
            ..RangeSpec::default()
        }),
        Some(kv::txn_op::Op::Put(put)) => TxnOp::Put(PutSpec {
            key: put.key,
            value: put.value,
            prev_kv: put.prev_kv,
            ignore_value: false,
            lease: put.lease,
            ignore_lease: false,
        }),
        Some(kv::txn_op::Op::Delete(delete)) => TxnOp::DeleteRange {
            span: KeySpan {
                key: delete.key,
                range_end: delete.range_end,
            },
            prev_kv: delete.prev_kv,
        },
        None => {
            return Err(ApiError::InvalidArgument(
                "a transaction operation is empty: give a get, put or delete".to_string(),
            ))
        }
    })
}

/// The request as the state machine's transaction, checked against its limits.
pub fn to_txn(request: kv::TxnRequest) -> Result<Txn, ApiError> {
    let ops = |ops: Vec<kv::TxnOp>| ops.into_iter().map(op).collect::<Result<Vec<_>, _>>();
    let txn = Txn {
        compares: request
            .compares
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: ops(request.success)?,
        failure: ops(request.failure)?,
    };
    txn.validate()
        .map_err(|invalid| ApiError::InvalidArgument(invalid.to_string()))?;
    Ok(txn)
}

/// The state machine's result as the response.
pub fn to_response(revision: u64, result: TxnResult) -> kv::TxnResponse {
    let results = result
        .results
        .into_iter()
        .map(|result| kv::TxnOpResult {
            result: Some(match result {
                TxnOpResult::Range(range) => kv::txn_op_result::Result::Get(kv::TxnGetResult {
                    kvs: range.kvs.into_iter().map(to_kv).collect(),
                    more: range.more,
                    count: range.count,
                }),
                TxnOpResult::Put { prev_kv } => kv::txn_op_result::Result::Put(kv::TxnPutResult {
                    prev_kv: prev_kv.map(to_kv),
                }),
                TxnOpResult::DeleteRange { deleted, prev_kvs } => {
                    kv::txn_op_result::Result::Delete(kv::TxnDeleteResult {
                        deleted,
                        prev_kvs: prev_kvs.into_iter().map(to_kv).collect(),
                    })
                }
                // raftkv's API has no nested transactions, so none can come back.
                TxnOpResult::Txn(_) => kv::txn_op_result::Result::Get(kv::TxnGetResult::default()),
            }),
        })
        .collect();
    kv::TxnResponse {
        succeeded: result.succeeded,
        revision,
        results,
    }
}
