//! etcd's `v3electionpb.Election` service: `Campaign` waits until the caller's candidate key is the oldest of
//! the election (then it leads, with its value proclaimed), `Proclaim` replaces the value while the caller
//! still leads, `Resign` deletes its key, `Leader` and `Observe` read the oldest key (once, or each change of
//! leader or value, in order). Built on `recipes`; a follower passes the writes to the leader and serves the
//! reads from its own applied state.

use std::pin::Pin;

use futures::Stream;
use raftkv_proto::etcd::mvccpb;
use raftkv_proto::etcd::v3electionpb::{self as pb, election_client::ElectionClient};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::recipes::{candidate_key, candidates_span, leader_of, KeyCleanup};
use super::{etcd_error, forward, to_etcd_status, EtcdApi, FORWARD_TIMEOUT};
use crate::api::SERVER_REQUEST_TIMEOUT;
use crate::error::ApiError;
use crate::kv::state_machine::{Compare, CompareOp, CompareTarget, KeySpan, PutSpec, Txn, TxnOp};
use crate::watch::Watcher;

/// Leader changes of one `Observe` stream waiting for the client to take them.
pub const OBSERVED_QUEUED: usize = 16;

/// etcd's answer when the caller no longer leads.
const NOT_LEADER: &str = "election: not leader";

impl EtcdApi {
    fn leader_election(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<ElectionClient<tonic::transport::Channel>, Status> {
        Ok(ElectionClient::new(self.leader_channel(metadata)?))
    }

    /// A transaction that runs `op` only while `leader` still holds its key (same create revision).
    async fn while_leading(&self, leader: &pb::LeaderKey, op: TxnOp) -> Result<u64, Status> {
        let txn = Txn {
            compares: vec![Compare {
                span: KeySpan::key(&leader.key),
                op: CompareOp::Equal,
                target: CompareTarget::Create(leader.rev),
            }],
            success: vec![op],
            failure: Vec::new(),
        };
        let (revision, result) = self.propose_txn(txn).await?;
        if result.succeeded {
            Ok(revision)
        } else {
            Err(etcd_error_raw(Code::FailedPrecondition, NOT_LEADER))
        }
    }

    /// The election's leader now, from this node's applied state.
    fn current_leader(&self, name: &[u8]) -> Result<(Option<mvccpb::KeyValue>, u64), Status> {
        let (candidates, revision) = self.candidates(name)?;
        Ok((leader_of(&candidates), revision))
    }
}

/// A status with etcd's exact message (not prefixed `etcdserver:`, as the election's errors are not).
fn etcd_error_raw(code: Code, message: &str) -> Status {
    Status::new(code, message)
}

fn leader_key(leader: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    leader.ok_or_else(|| etcd_error_raw(Code::InvalidArgument, "\"leader\" field must be provided"))
}

#[tonic::async_trait]
impl pb::election_server::Election for EtcdApi {
    /// Waits as long as the request's deadline allows (at most `SERVER_REQUEST_TIMEOUT`).
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<GrpcResponse<pb::CampaignResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_election(request.metadata())?;
            let response = forward(SERVER_REQUEST_TIMEOUT, request.into_inner(), |request| {
                leader.campaign(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(etcd_error(
                Code::InvalidArgument,
                "an election needs a name",
            ));
        }
        if request.lease <= 0 {
            return Err(etcd_error(
                Code::InvalidArgument,
                "a campaign is held by a lease: grant one and pass its id",
            ));
        }
        let key = candidate_key(&request.name, request.lease);
        let (rev, _) = self.claim(&key, request.lease, &request.value).await?;
        let cleanup = KeyCleanup::new(self, &key);
        let leader = pb::LeaderKey {
            name: request.name.clone(),
            key: key.clone(),
            rev: i64::try_from(rev).unwrap_or(i64::MAX),
            lease: request.lease,
        };
        // A candidate that already had a key proclaims its new value, as etcd's does.
        self.while_leading(&leader, put_op(&leader, &request.value))
            .await?;
        self.wait_turn(&request.name, &key, rev).await?;
        cleanup.disarm();
        let (revision, _) = self.api.reader.state_machine.revisions();
        Ok(GrpcResponse::new(pb::CampaignResponse {
            header: Some(self.header(revision)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<GrpcResponse<pb::ProclaimResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_election(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.proclaim(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        let leader = leader_key(request.leader)?;
        let (candidates, _) = self.candidates(&leader.name)?;
        let leads = candidates
            .first()
            .is_some_and(|first| first.key == leader.key);
        if !leads {
            return Err(etcd_error_raw(Code::FailedPrecondition, NOT_LEADER));
        }
        let revision = self
            .while_leading(&leader, put_op(&leader, &request.value))
            .await?;
        Ok(GrpcResponse::new(pb::ProclaimResponse {
            header: Some(self.header(revision)),
        }))
    }

    /// From this node's applied state.
    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<GrpcResponse<pb::LeaderResponse>, Status> {
        let (kv, revision) = self.current_leader(&request.into_inner().name)?;
        let kv = kv.ok_or_else(|| etcd_error_raw(Code::NotFound, "election: no leader"))?;
        Ok(GrpcResponse::new(pb::LeaderResponse {
            header: Some(self.header(revision)),
            kv: Some(kv),
        }))
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

    /// The leader now (once there is one), then each change of leader or of its value, from this node's
    /// applied state. No deadline: it lasts as long as its client reads it.
    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<GrpcResponse<Self::ObserveStream>, Status> {
        crate::api::refuse_if_draining(&self.api.draining).map_err(to_etcd_status)?;
        let name = request.into_inner().name;
        let (responses, stream) = mpsc::channel(OBSERVED_QUEUED);
        let api = self.clone();
        tokio::spawn(async move {
            let outcome = api.observe_into(&name, &responses).await;
            if let Err(status) = outcome {
                let _ = responses.send(Err(status)).await;
            }
        });
        Ok(GrpcResponse::new(crate::api::until_draining(
            tokio_stream::wrappers::ReceiverStream::new(stream),
            self.api.draining.clone(),
            || to_etcd_status(ApiError::ShuttingDown),
        )))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<GrpcResponse<pb::ResignResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_election(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.resign(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let leader = leader_key(request.into_inner().leader)?;
        let delete = TxnOp::DeleteRange {
            span: KeySpan::key(&leader.key),
            prev_kv: false,
        };
        let revision = self.while_leading(&leader, delete).await?;
        Ok(GrpcResponse::new(pb::ResignResponse {
            header: Some(self.header(revision)),
        }))
    }
}

impl EtcdApi {
    /// Sends the election's leader each time it changes (key or value) until the client goes.
    async fn observe_into(
        &self,
        name: &[u8],
        responses: &mpsc::Sender<Result<pb::LeaderResponse, Status>>,
    ) -> Result<(), Status> {
        let (mut last, mut revision) = self.current_leader(name)?;
        let store = self.api.reader.state_machine.clone();
        let mut watcher = Watcher::start(store, candidates_span(name), revision + 1)
            .map_err(|end| etcd_error(Code::Unavailable, &end.to_string()))?;
        if let Some(kv) = &last {
            let response = pb::LeaderResponse {
                header: Some(self.header(revision)),
                kv: Some(kv.clone()),
            };
            if responses.send(Ok(response)).await.is_err() {
                return Ok(());
            }
        }
        loop {
            let changes = tokio::select! {
                changes = watcher.next_batch() => changes
                    .map_err(|end| etcd_error(Code::Unavailable, &end.to_string()))?,
                _ = responses.closed() => return Ok(()),
            };
            if changes.is_empty() {
                continue;
            }
            let (now, at) = self.current_leader(name)?;
            revision = at;
            let changed = match (&last, &now) {
                (Some(before), Some(after)) => {
                    before.key != after.key || before.mod_revision != after.mod_revision
                }
                (None, Some(_)) => true,
                _ => false,
            };
            if changed {
                let response = pb::LeaderResponse {
                    header: Some(self.header(revision)),
                    kv: now.clone(),
                };
                if responses.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
            last = now;
        }
    }
}

/// A put of the leader's key with `value`, held by its lease.
fn put_op(leader: &pb::LeaderKey, value: &[u8]) -> TxnOp {
    TxnOp::Put(PutSpec {
        key: leader.key.clone(),
        value: value.to_vec(),
        prev_kv: false,
        ignore_value: false,
        lease: leader.lease,
        ignore_lease: false,
    })
}
