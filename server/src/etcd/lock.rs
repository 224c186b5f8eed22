//! etcd's `v3lockpb.Lock` service: `Lock` waits until the named lock is held by the caller's lease and answers
//! with the key that stands for the hold (its create revision orders holders: a fencing token); `Unlock`
//! deletes that key. Built on `recipes`; a follower passes both to the leader, since both write.

use raftkv_proto::etcd::v3lockpb::{self as pb, lock_client::LockClient};
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::recipes::{candidate_key, KeyCleanup};
use super::{etcd_error, forward, to_etcd_status, EtcdApi};
use crate::api::SERVER_REQUEST_TIMEOUT;
use crate::kv::state_machine::{Command, Response};

impl EtcdApi {
    fn leader_lock(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<LockClient<tonic::transport::Channel>, Status> {
        Ok(LockClient::new(self.leader_channel(metadata)?))
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for EtcdApi {
    /// Waits as long as the request's deadline allows (at most `SERVER_REQUEST_TIMEOUT`).
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<GrpcResponse<pb::LockResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lock(request.metadata())?;
            let response = forward(SERVER_REQUEST_TIMEOUT, request.into_inner(), |request| {
                leader.lock(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(etcd_error(Code::InvalidArgument, "a lock needs a name"));
        }
        if request.lease <= 0 {
            return Err(etcd_error(
                Code::InvalidArgument,
                "a lock is held by a lease: grant one and pass its id",
            ));
        }
        let key = candidate_key(&request.name, request.lease);
        let (mine, _) = self.claim(&key, request.lease, &[]).await?;
        let cleanup = KeyCleanup::new(self, &key);
        self.wait_turn(&request.name, &key, mine).await?;
        cleanup.disarm();
        let (revision, _) = self.api.reader.state_machine.revisions();
        Ok(GrpcResponse::new(pb::LockResponse {
            header: Some(self.header(revision)),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<GrpcResponse<pb::UnlockResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lock(request.metadata())?;
            let response = forward(super::FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.unlock(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(etcd_error(Code::InvalidArgument, "key is not provided"));
        }
        let revision = match self
            .api
            .write(None, Command::Delete { key })
            .await
            .map_err(to_etcd_status)?
        {
            Response::Delete { revision, .. } => revision,
            other => {
                return Err(etcd_error(
                    Code::Internal,
                    &format!("an unlock was answered with {other:?}"),
                ))
            }
        };
        Ok(GrpcResponse::new(pb::UnlockResponse {
            header: Some(self.header(revision)),
        }))
    }
}
