//! etcd's Auth service while raftkv has no authentication: `AuthStatus` says it is disabled, `AuthDisable`
//! succeeds (it already is), `Authenticate` answers etcd's "authentication is not enabled", and enabling it
//! or managing users and roles is refused in words (`Unimplemented`). Access is controlled with mutual TLS
//! (README.md, "TLS").

use raftkv_proto::etcd::etcdserverpb as pb;
use tonic::{Code, Request, Response as GrpcResponse, Status};

use super::{etcd_error, EtcdApi};

/// Why enabling auth, or managing users and roles, is refused.
fn not_supported() -> Status {
    etcd_error(
        Code::Unimplemented,
        "raftkv: authentication is not supported yet; restrict access with mutual TLS (--tls-require-client-cert)",
    )
}

impl EtcdApi {
    fn revision_now(&self) -> u64 {
        self.api.reader.state_machine.revisions().0
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for EtcdApi {
    async fn auth_enable(
        &self,
        _request: Request<pb::AuthEnableRequest>,
    ) -> Result<GrpcResponse<pb::AuthEnableResponse>, Status> {
        Err(not_supported())
    }

    async fn auth_disable(
        &self,
        _request: Request<pb::AuthDisableRequest>,
    ) -> Result<GrpcResponse<pb::AuthDisableResponse>, Status> {
        Ok(GrpcResponse::new(pb::AuthDisableResponse {
            header: Some(self.header(self.revision_now())),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<GrpcResponse<pb::AuthStatusResponse>, Status> {
        Ok(GrpcResponse::new(pb::AuthStatusResponse {
            header: Some(self.header(self.revision_now())),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<GrpcResponse<pb::AuthenticateResponse>, Status> {
        Err(etcd_error(
            Code::FailedPrecondition,
            "authentication is not enabled",
        ))
    }

    async fn user_add(
        &self,
        _request: Request<pb::AuthUserAddRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserAddResponse>, Status> {
        Err(not_supported())
    }

    async fn user_get(
        &self,
        _request: Request<pb::AuthUserGetRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserGetResponse>, Status> {
        Err(not_supported())
    }

    async fn user_list(
        &self,
        _request: Request<pb::AuthUserListRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserListResponse>, Status> {
        Err(not_supported())
    }

    async fn user_delete(
        &self,
        _request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserDeleteResponse>, Status> {
        Err(not_supported())
    }

    async fn user_change_password(
        &self,
        _request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserChangePasswordResponse>, Status> {
        Err(not_supported())
    }

    async fn user_grant_role(
        &self,
        _request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserGrantRoleResponse>, Status> {
        Err(not_supported())
    }

    async fn user_revoke_role(
        &self,
        _request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<GrpcResponse<pb::AuthUserRevokeRoleResponse>, Status> {
        Err(not_supported())
    }

    async fn role_add(
        &self,
        _request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleAddResponse>, Status> {
        Err(not_supported())
    }

    async fn role_get(
        &self,
        _request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleGetResponse>, Status> {
        Err(not_supported())
    }

    async fn role_list(
        &self,
        _request: Request<pb::AuthRoleListRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleListResponse>, Status> {
        Err(not_supported())
    }

    async fn role_delete(
        &self,
        _request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleDeleteResponse>, Status> {
        Err(not_supported())
    }

    async fn role_grant_permission(
        &self,
        _request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleGrantPermissionResponse>, Status> {
        Err(not_supported())
    }

    async fn role_revoke_permission(
        &self,
        _request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<GrpcResponse<pb::AuthRoleRevokePermissionResponse>, Status> {
        Err(not_supported())
    }
}
