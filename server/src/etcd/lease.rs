//! etcd's Lease service: grant, revoke, keep-alive (a stream), time-to-live, list. Grants and revokes go
//! through Raft on the leader; keep-alives and time-to-live are answered by the leader's lessor. A follower
//! passes each of those to the leader (a keep-alive stream message by message), and lists leases itself, from
//! its applied state.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use raftkv_proto::etcd::etcdserverpb::{self as pb, lease_client::LeaseClient};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response as GrpcResponse, Status, Streaming};

use super::{etcd_error, forward, to_etcd_status, EtcdApi, FORWARD_TIMEOUT};
use crate::error::ApiError;

/// Keep-alive responses of one stream waiting for the client to take them.
pub const KEEP_ALIVE_RESPONSES_QUEUED: usize = 16;

impl EtcdApi {
    fn leader_lease(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<LeaseClient<tonic::transport::Channel>, Status> {
        Ok(LeaseClient::new(self.leader_channel(metadata)?))
    }

    fn store_revision(&self) -> u64 {
        self.api.reader.state_machine.revisions().0
    }

    /// One keep-alive, on the leader or passed to it.
    async fn keep_alive_once(
        &self,
        id: i64,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lease(metadata)?;
            let request = tokio_stream::once(pb::LeaseKeepAliveRequest { id });
            let mut replies = forward(FORWARD_TIMEOUT, request, |request| {
                leader.lease_keep_alive(request)
            })
            .await?
            .into_inner();
            let reply = tokio::time::timeout(FORWARD_TIMEOUT, replies.message())
                .await
                .map_err(|_| etcd_error(Code::Unavailable, "request timed out"))??;
            let mut reply = reply.ok_or_else(|| etcd_error(Code::Unavailable, "leader changed"))?;
            if let Some(header) = reply.header.as_mut() {
                header.member_id = self.api.node_id;
            }
            return Ok(reply);
        }
        let ttl = self.api.lease_keep_alive(id).map_err(to_etcd_status)?;
        Ok(pb::LeaseKeepAliveResponse {
            header: Some(self.header(self.store_revision())),
            id,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for EtcdApi {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<GrpcResponse<pb::LeaseGrantResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lease(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.lease_grant(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        if request.ttl > crate::kv::state_machine::LEASE_TTL_MAX {
            return Err(etcd_error(Code::OutOfRange, "too large lease TTL"));
        }
        let (id, ttl, revision) = self
            .api
            .lease_grant(request.id, request.ttl)
            .await
            .map_err(to_etcd_status)?;
        Ok(GrpcResponse::new(pb::LeaseGrantResponse {
            header: Some(self.header(revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<pb::LeaseRevokeResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lease(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.lease_revoke(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let revision = self
            .api
            .lease_revoke(request.into_inner().id)
            .await
            .map_err(to_etcd_status)?;
        Ok(GrpcResponse::new(pb::LeaseRevokeResponse {
            header: Some(self.header(revision)),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    /// Each message renews one lease and is answered in order; an error ends the stream (etcd clients open
    /// another). The stream has no deadline: it lasts as long as its client keeps it.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        crate::api::refuse_if_draining(&self.api.draining).map_err(to_etcd_status)?;
        let metadata = request.metadata().clone();
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::channel(KEEP_ALIVE_RESPONSES_QUEUED);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let reply = match message {
                    Ok(message) => api.keep_alive_once(message.id, &metadata).await,
                    Err(_) => break,
                };
                let failed = reply.is_err();
                if responses.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(crate::api::until_draining(
            tokio_stream::wrappers::ReceiverStream::new(stream),
            self.api.draining.clone(),
            || to_etcd_status(ApiError::ShuttingDown),
        )))
    }

    /// A lease that does not exist answers TTL -1, as etcd's does.
    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<pb::LeaseTimeToLiveResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_lease(request.metadata())?;
            let response = forward(FORWARD_TIMEOUT, request.into_inner(), |request| {
                leader.lease_time_to_live(request)
            })
            .await?;
            return Ok(self.as_own(response, |response| response.header.as_mut()));
        }
        let request = request.into_inner();
        let status = self
            .api
            .lease_time_to_live(request.id, request.keys)
            .map_err(to_etcd_status)?;
        let header = Some(self.header(self.store_revision()));
        Ok(GrpcResponse::new(match status {
            Some(status) => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: status.remaining,
                granted_ttl: status.granted_ttl,
                keys: status.keys,
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<pb::LeaseLeasesResponse>, Status> {
        let leases = self.api.lease_list().map_err(to_etcd_status)?;
        Ok(GrpcResponse::new(pb::LeaseLeasesResponse {
            header: Some(self.header(self.store_revision())),
            leases: leases
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}
