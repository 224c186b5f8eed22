//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact, translated onto raftkv's reads and commands.
//! Reads go through the consistency ladder (`reads::Reader`); writes are proposed on the leader (a follower
//! forwards them). A plain put or single-key delete is the same command raftkv's own API proposes; anything
//! with more to it (`prev_kv`, `ignore_value`, a range delete, a transaction) is a `Command::Txn`.

use raftkv_proto::etcd::etcdserverpb::{
    self as pb, compare::CompareResult, compare::CompareTarget as PbTarget, compare::TargetUnion,
    kv_client::KvClient, range_request, request_op, response_op,
};
use raftkv_proto::etcd::mvccpb;
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::{
    envelope_metadata, etcd_error, forward, read_request, to_etcd_status, EtcdApi, FORWARD_TIMEOUT,
};
use crate::api::ApiError;
use crate::kv::state_machine::{
    Command, Compare, CompareOp, CompareTarget, KeySpan, KeyValue, PutSpec, RangeSpec, Response,
    SortOrder, SortTarget, Span, Txn, TxnInvalid, TxnOp, TxnOpResult, TxnResult, KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
};

/// Most keys a Range without a limit returns; a range holding more is refused with a request to page
/// through it with `limit` (etcd has no such bound; raftkv keeps every response bounded).
pub const ETCD_RANGE_KEYS_MAX: usize = 100_000;

pub(super) fn to_mvcc(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: i64::try_from(kv.create_revision).unwrap_or(i64::MAX),
        mod_revision: i64::try_from(kv.mod_revision).unwrap_or(i64::MAX),
        version: i64::try_from(kv.version).unwrap_or(i64::MAX),
        value: kv.value,
        lease: kv.lease,
    }
}

fn non_negative(name: &str, value: i64) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| {
        etcd_error(
            Code::InvalidArgument,
            &format!("{name} must not be negative (got {value})"),
        )
    })
}

/// etcd's message for a transaction (or a request inside one) raftkv refuses before proposing it.
fn txn_status(invalid: TxnInvalid) -> Status {
    let message = match &invalid {
        TxnInvalid::Key(reason) if reason.contains("empty") => "key is not provided".to_string(),
        other => other.to_string(),
    };
    etcd_error(Code::InvalidArgument, &message)
}

fn range_spec(request: pb::RangeRequest) -> Result<RangeSpec, Status> {
    let sort_order = match range_request::SortOrder::try_from(request.sort_order) {
        Ok(range_request::SortOrder::None) => SortOrder::None,
        Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
        Err(_) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!("unknown sort order {}", request.sort_order),
            ))
        }
    };
    let sort_target = match range_request::SortTarget::try_from(request.sort_target) {
        Ok(range_request::SortTarget::Key) => SortTarget::Key,
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        Err(_) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!("unknown sort target {}", request.sort_target),
            ))
        }
    };
    Ok(RangeSpec {
        span: KeySpan {
            key: request.key,
            range_end: request.range_end,
        },
        limit: non_negative("limit", request.limit)?,
        revision: non_negative("revision", request.revision)?,
        sort_order,
        sort_target,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: non_negative("min_mod_revision", request.min_mod_revision)?,
        max_mod_revision: non_negative("max_mod_revision", request.max_mod_revision)?,
        min_create_revision: non_negative("min_create_revision", request.min_create_revision)?,
        max_create_revision: non_negative("max_create_revision", request.max_create_revision)?,
    })
}

fn put_spec(request: pb::PutRequest) -> Result<PutSpec, Status> {
    if request.key.len() > KEY_BYTES_MAX || request.value.len() > VALUE_BYTES_MAX {
        return Err(txn_status(TxnInvalid::TooLarge));
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(etcd_error(Code::InvalidArgument, "value is provided"));
    }
    Ok(PutSpec {
        key: request.key,
        value: request.value,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        lease: request.lease,
        ignore_lease: request.ignore_lease,
    })
}

fn compare(compare: pb::Compare) -> Result<Compare, Status> {
    let op = match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!("unknown compare result {}", compare.result),
            ))
        }
    };
    let number = |union: &Option<TargetUnion>| match union {
        Some(
            TargetUnion::Version(number)
            | TargetUnion::CreateRevision(number)
            | TargetUnion::ModRevision(number)
            | TargetUnion::Lease(number),
        ) => *number,
        _ => 0,
    };
    let target = match PbTarget::try_from(compare.target) {
        Ok(PbTarget::Version) => CompareTarget::Version(number(&compare.target_union)),
        Ok(PbTarget::Create) => CompareTarget::Create(number(&compare.target_union)),
        Ok(PbTarget::Mod) => CompareTarget::Mod(number(&compare.target_union)),
        Ok(PbTarget::Lease) => CompareTarget::Lease(number(&compare.target_union)),
        Ok(PbTarget::Value) => CompareTarget::Value(match compare.target_union {
            Some(TargetUnion::Value(value)) => value,
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(etcd_error(
                Code::InvalidArgument,
                &format!("unknown compare target {}", compare.target),
            ))
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

fn txn_op(op: pb::RequestOp) -> Result<TxnOp, Status> {
    Ok(match op.request {
        Some(request_op::Request::RequestRange(range)) => TxnOp::Range(range_spec(range)?),
        Some(request_op::Request::RequestPut(put)) => TxnOp::Put(put_spec(put)?),
        Some(request_op::Request::RequestDeleteRange(delete)) => TxnOp::DeleteRange {
            span: KeySpan {
                key: delete.key,
                range_end: delete.range_end,
            },
            prev_kv: delete.prev_kv,
        },
        Some(request_op::Request::RequestTxn(txn)) => TxnOp::Txn(to_txn(txn)?),
        None => {
            return Err(etcd_error(
                Code::InvalidArgument,
                "a transaction operation is empty",
            ))
        }
    })
}

fn to_txn(request: pb::TxnRequest) -> Result<Txn, Status> {
    Ok(Txn {
        compares: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(txn_op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(txn_op)
            .collect::<Result<_, _>>()?,
    })
}

impl EtcdApi {
    fn txn_response(&self, revision: u64, result: TxnResult) -> pb::TxnResponse {
        let responses = result
            .results
            .into_iter()
            .map(|result| pb::ResponseOp {
                response: Some(match result {
                    TxnOpResult::Range(range) => {
                        response_op::Response::ResponseRange(pb::RangeResponse {
                            header: Some(self.header(revision)),
                            kvs: range.kvs.into_iter().map(to_mvcc).collect(),
                            more: range.more,
                            count: i64::try_from(range.count).unwrap_or(i64::MAX),
                        })
                    }
                    TxnOpResult::Put { prev_kv } => {
                        response_op::Response::ResponsePut(pb::PutResponse {
                            header: Some(self.header(revision)),
                            prev_kv: prev_kv.map(to_mvcc),
                        })
                    }
                    TxnOpResult::DeleteRange { deleted, prev_kvs } => {
                        response_op::Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: Some(self.header(revision)),
                            deleted: i64::try_from(deleted).unwrap_or(i64::MAX),
                            prev_kvs: prev_kvs.into_iter().map(to_mvcc).collect(),
                        })
                    }
                    TxnOpResult::Txn(nested) => {
                        response_op::Response::ResponseTxn(self.txn_response(revision, nested))
                    }
                }),
            })
            .collect();
        pb::TxnResponse {
            header: Some(self.header(revision)),
            succeeded: result.succeeded,
            responses,
        }
    }

    /// Proposes a transaction on this node, the leader, and returns its revision and result.
    pub(super) async fn propose_txn(&self, txn: Txn) -> Result<(u64, TxnResult), Status> {
        match self
            .api
            .write(None, Command::Txn(txn))
            .await
            .map_err(to_etcd_status)?
        {
            Response::Txn { revision, result } => Ok((revision, result)),
            other => Err(to_etcd_status(ApiError::Internal(format!(
                "a transaction was answered with {other:?}"
            )))),
        }
    }

    /// The leader's KV client, for a follower to forward a write to.
    fn leader_kv(
        &self,
        request: &tonic::metadata::MetadataMap,
    ) -> Result<KvClient<tonic::transport::Channel>, Status> {
        Ok(KvClient::new(self.leader_channel(request)?)
            .max_decoding_message_size(crate::api::CLIENT_RESPONSE_BYTES_MAX))
    }

    /// A forwarded answer, told as this node's: etcd's header names the member the client asked.
    pub(super) fn as_own<T>(
        &self,
        mut response: GrpcResponse<T>,
        header: impl FnOnce(&mut T) -> Option<&mut pb::ResponseHeader>,
    ) -> GrpcResponse<T> {
        if let Some(header) = header(response.get_mut()) {
            header.member_id = self.api.node_id;
        }
        response
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdApi {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<GrpcResponse<pb::RangeResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let serializable = request.serializable;
        let spec = range_spec(request)?;
        spec.span.validate().map_err(txn_status)?;
        let read = read_request(&metadata, serializable, spec.revision)?;
        let bounded = spec.fetch_limit();
        let fetch = match (spec.count_only, bounded) {
            (true, _) => 0,
            (false, Some(fetch)) => fetch,
            (false, None) => ETCD_RANGE_KEYS_MAX + 1,
        };
        let span = spec.span.clone();
        let ((kvs, count), envelope) = self
            .api
            .reader
            .serve(read, |applied| match span.resolve() {
                Span::Key(key) => applied.keyspace.get(key, read.revision).map(|kv| {
                    let kvs: Vec<KeyValue> = kv.into_iter().collect();
                    let count = kvs.len() as u64;
                    (kvs, count)
                }),
                Span::Range(range) => applied.keyspace.range_count(&range, fetch, read.revision),
            })
            .await
            .map_err(to_etcd_status)?;
        if bounded.is_none() && kvs.len() > ETCD_RANGE_KEYS_MAX {
            return Err(etcd_error(
                Code::ResourceExhausted,
                &format!(
                    "the range holds {count} keys, more than the {ETCD_RANGE_KEYS_MAX} one response may carry; page through it with a limit"
                ),
            ));
        }
        let result = spec.finish(kvs, count);
        let mut response = GrpcResponse::new(pb::RangeResponse {
            header: Some(self.header(envelope.revision)),
            kvs: result.kvs.into_iter().map(to_mvcc).collect(),
            more: result.more,
            count: i64::try_from(result.count).unwrap_or(i64::MAX),
        });
        envelope_metadata(response.metadata_mut(), &envelope);
        Ok(response)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<GrpcResponse<pb::PutResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_kv(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.put(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let put = put_spec(request.into_inner())?;
        if put.key.is_empty() {
            return Err(etcd_error(Code::InvalidArgument, "key is not provided"));
        }
        if !put.prev_kv && !put.ignore_value && put.lease == 0 && !put.ignore_lease {
            let command = Command::Put {
                key: put.key,
                value: put.value,
            };
            return match self
                .api
                .write(None, command)
                .await
                .map_err(to_etcd_status)?
            {
                Response::Put { revision } => Ok(GrpcResponse::new(pb::PutResponse {
                    header: Some(self.header(revision)),
                    prev_kv: None,
                })),
                other => Err(to_etcd_status(ApiError::Internal(format!(
                    "a put was answered with {other:?}"
                )))),
            };
        }
        let txn = Txn {
            success: vec![TxnOp::Put(put)],
            ..Txn::default()
        };
        txn.validate().map_err(txn_status)?;
        let (revision, result) = self.propose_txn(txn).await?;
        let prev_kv = match result.results.into_iter().next() {
            Some(TxnOpResult::Put { prev_kv }) => prev_kv,
            _ => None,
        };
        Ok(GrpcResponse::new(pb::PutResponse {
            header: Some(self.header(revision)),
            prev_kv: prev_kv.map(to_mvcc),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<GrpcResponse<pb::DeleteRangeResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_kv(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.delete_range(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        let span = KeySpan {
            key: request.key,
            range_end: request.range_end,
        };
        span.validate().map_err(txn_status)?;
        if span.range_end.is_empty() && !request.prev_kv {
            let command = Command::Delete { key: span.key };
            return match self
                .api
                .write(None, command)
                .await
                .map_err(to_etcd_status)?
            {
                Response::Delete { revision, deleted } => {
                    Ok(GrpcResponse::new(pb::DeleteRangeResponse {
                        header: Some(self.header(revision)),
                        deleted: i64::from(deleted),
                        prev_kvs: Vec::new(),
                    }))
                }
                other => Err(to_etcd_status(ApiError::Internal(format!(
                    "a delete was answered with {other:?}"
                )))),
            };
        }
        let txn = Txn {
            success: vec![TxnOp::DeleteRange {
                span,
                prev_kv: request.prev_kv,
            }],
            ..Txn::default()
        };
        txn.validate().map_err(txn_status)?;
        let (revision, result) = self.propose_txn(txn).await?;
        let (deleted, prev_kvs) = match result.results.into_iter().next() {
            Some(TxnOpResult::DeleteRange { deleted, prev_kvs }) => (deleted, prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(GrpcResponse::new(pb::DeleteRangeResponse {
            header: Some(self.header(revision)),
            deleted: i64::try_from(deleted).unwrap_or(i64::MAX),
            prev_kvs: prev_kvs.into_iter().map(to_mvcc).collect(),
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<GrpcResponse<pb::TxnResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_kv(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.txn(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let txn = to_txn(request.into_inner())?;
        if txn.widest() > self.max_txn_ops {
            return Err(txn_status(TxnInvalid::TooManyOps));
        }
        txn.validate().map_err(txn_status)?;
        let (revision, result) = self.propose_txn(txn).await?;
        Ok(GrpcResponse::new(self.txn_response(revision, result)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<GrpcResponse<pb::CompactionResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_kv(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.compact(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        // `physical` is not waited for: raftkv's compaction thread frees the space in the background.
        let revision = non_negative("revision", request.into_inner().revision)?;
        match self
            .api
            .write(None, Command::Compact { revision })
            .await
            .map_err(to_etcd_status)?
        {
            Response::Compact { revision, .. } => Ok(GrpcResponse::new(pb::CompactionResponse {
                header: Some(self.header(revision)),
            })),
            other => Err(to_etcd_status(ApiError::Internal(format!(
                "a compaction was answered with {other:?}"
            )))),
        }
    }
}
