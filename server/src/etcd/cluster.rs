//! etcd's Cluster service over raftkv's membership. A member's `ID` is its raftkv node id, its name
//! `raftkv-ID`, and its one address serves as both its peer and its client URL (raftkv serves both on one
//! port). `MemberAdd` gives the new member the next free id, `MemberUpdate` moves a member to another address;
//! a follower forwards changes to the leader.

use openraft::ChangeMembers;
use raftkv_proto::etcd::etcdserverpb::{self as pb, cluster_client::ClusterClient};
use raftkv_proto::kv;
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::{etcd_error, forward, to_etcd_status, EtcdApi, MEMBERSHIP_FORWARD_TIMEOUT};
use crate::api::{ApiError, MEMBERSHIP_CHANGE_TIMEOUT};
use crate::raft::types::{Node, NodeId};

/// The address in a member URL (`http://127.0.0.1:7001` -> `127.0.0.1:7001`).
fn url_address(url: &str) -> Result<String, Status> {
    let address = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(address.to_string())
        }
        _ => Err(etcd_error(
            Code::InvalidArgument,
            &format!("member URL {url:?} is not of the form http://HOST:PORT"),
        )),
    }
}

impl EtcdApi {
    fn member(&self, member: &kv::Member) -> pb::Member {
        let url = format!("{}://{}", self.scheme, member.address);
        pb::Member {
            id: member.node_id,
            name: format!("raftkv-{}", member.node_id),
            peer_ur_ls: vec![url.clone()],
            client_ur_ls: vec![url],
            is_learner: !member.voter,
        }
    }

    fn member_list(&self) -> Vec<pb::Member> {
        self.api
            .members()
            .members
            .iter()
            .map(|member| self.member(member))
            .collect()
    }

    /// The member with this id, or etcd's "member not found".
    fn find_member(&self, id: NodeId) -> Result<kv::Member, Status> {
        self.api
            .members()
            .members
            .into_iter()
            .find(|member| member.node_id == id)
            .ok_or_else(|| etcd_error(Code::NotFound, "member not found"))
    }

    fn leader_cluster(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<ClusterClient<tonic::transport::Channel>, Status> {
        Ok(ClusterClient::new(self.leader_channel(metadata)?)
            .max_decoding_message_size(crate::api::CLIENT_RESPONSE_BYTES_MAX))
    }

    fn current_revision(&self) -> u64 {
        self.api.reader.state_machine.revisions().0
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<(), Status> {
        self.api
            .change_membership(change)
            .await
            .map(|_| ())
            .map_err(to_etcd_status)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdApi {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<GrpcResponse<pb::MemberAddResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_cluster(request.metadata())?;
            return forward(
                MEMBERSHIP_FORWARD_TIMEOUT,
                request.into_inner(),
                |request| leader.member_add(request),
            )
            .await;
        }
        let request = request.into_inner();
        let [url] = request.peer_ur_ls.as_slice() else {
            return Err(etcd_error(
                Code::InvalidArgument,
                "give exactly one peer URL: a raftkv node has one address",
            ));
        };
        let address = url_address(url)?;
        let members = self.api.members().members;
        if members.iter().any(|member| member.address == address) {
            return Err(etcd_error(
                Code::FailedPrecondition,
                "Peer URLs already exists",
            ));
        }
        let id = members
            .iter()
            .map(|member| member.node_id)
            .max()
            .unwrap_or(0)
            + 1;
        let added = tokio::time::timeout(
            MEMBERSHIP_CHANGE_TIMEOUT,
            self.api.raft.add_learner(
                id,
                Node {
                    addr: address.clone(),
                },
                false,
            ),
        )
        .await;
        match added {
            Err(_) => {
                return Err(to_etcd_status(ApiError::Indeterminate(
                    "adding the member did not finish in time".to_string(),
                )))
            }
            Ok(Err(error)) => return Err(to_etcd_status(ApiError::Membership(error.to_string()))),
            Ok(Ok(_)) => {}
        }
        if !request.is_learner {
            self.change(ChangeMembers::AddVoterIds([id].into())).await?;
        }
        Ok(GrpcResponse::new(pb::MemberAddResponse {
            header: Some(self.header(self.current_revision())),
            member: Some(self.member(&kv::Member {
                node_id: id,
                address,
                voter: !request.is_learner,
            })),
            members: self.member_list(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<GrpcResponse<pb::MemberRemoveResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_cluster(request.metadata())?;
            return forward(
                MEMBERSHIP_FORWARD_TIMEOUT,
                request.into_inner(),
                |request| leader.member_remove(request),
            )
            .await;
        }
        let id = request.into_inner().id;
        let member = self.find_member(id)?;
        let change = if member.voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        self.change(change).await?;
        Ok(GrpcResponse::new(pb::MemberRemoveResponse {
            header: Some(self.header(self.current_revision())),
            members: self.member_list(),
        }))
    }

    /// Moves a member to another address (etcd: updates its peer URLs). The node must be restarted there
    /// with the same id and data; peers dial the new address from the committed membership on.
    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<GrpcResponse<pb::MemberUpdateResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_cluster(request.metadata())?;
            return forward(
                MEMBERSHIP_FORWARD_TIMEOUT,
                request.into_inner(),
                |request| leader.member_update(request),
            )
            .await;
        }
        let request = request.into_inner();
        self.find_member(request.id)?;
        let [url] = request.peer_ur_ls.as_slice() else {
            return Err(etcd_error(
                Code::InvalidArgument,
                "give exactly one peer URL: a raftkv node has one address",
            ));
        };
        let address = url_address(url)?;
        if self
            .api
            .members()
            .members
            .iter()
            .any(|member| member.address == address && member.node_id != request.id)
        {
            return Err(etcd_error(
                Code::FailedPrecondition,
                "Peer URLs already exists",
            ));
        }
        let nodes = [(request.id, Node { addr: address })].into();
        self.change(ChangeMembers::SetNodes(nodes)).await?;
        Ok(GrpcResponse::new(pb::MemberUpdateResponse {
            header: Some(self.header(self.current_revision())),
            members: self.member_list(),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<GrpcResponse<pb::MemberListResponse>, Status> {
        Ok(GrpcResponse::new(pb::MemberListResponse {
            header: Some(self.header(self.current_revision())),
            members: self.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<GrpcResponse<pb::MemberPromoteResponse>, Status> {
        if !self.is_leader() {
            let mut leader = self.leader_cluster(request.metadata())?;
            return forward(
                MEMBERSHIP_FORWARD_TIMEOUT,
                request.into_inner(),
                |request| leader.member_promote(request),
            )
            .await;
        }
        let id = request.into_inner().id;
        if self.find_member(id)?.voter {
            return Err(etcd_error(
                Code::FailedPrecondition,
                "can only promote a learner member",
            ));
        }
        self.change(ChangeMembers::AddVoterIds([id].into())).await?;
        Ok(GrpcResponse::new(pb::MemberPromoteResponse {
            header: Some(self.header(self.current_revision())),
            members: self.member_list(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_name_an_address() {
        assert_eq!(
            url_address("http://127.0.0.1:7004").unwrap(),
            "127.0.0.1:7004"
        );
        assert_eq!(url_address("https://host:1/").unwrap(), "host:1");
        assert!(url_address("http://127.0.0.1").is_err());
        assert!(url_address("http://:80").is_err());
    }
}
