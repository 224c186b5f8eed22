//! Leases in the client library: grant, revoke, keep-alive, time-to-live and list, each retried like the
//! other calls (grants and revokes as writes: one that may have been applied is reported `Indeterminate`).
//! A key is put with a lease by `Client::put_with_lease`.

use raftkv_proto::kv;

use crate::client::Client;
use crate::error::ClientError;

/// A lease as `Client::lease_time_to_live` finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Seconds left, by the leader's clock.
    pub remaining: i64,
    /// The TTL it was granted, in seconds.
    pub granted_ttl: i64,
    /// The keys attached (when asked for).
    pub keys: Vec<Vec<u8>>,
}

impl Client {
    /// Grants a lease of `ttl` seconds (the cluster raises it to its minimum); `id` 0 has the leader draw
    /// one. Returns the lease's id and TTL.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<(i64, i64), ClientError> {
        let request = kv::LeaseGrantRequest { ttl, id };
        let response = self
            .with_retries(true, true, None, |endpoint, deadline| async move {
                self.kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?
                    .lease_grant(self.request(request, deadline))
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        Ok((response.id, response.ttl))
    }

    /// Revokes a lease and deletes its keys; returns the revision of the deletions.
    pub async fn lease_revoke(&self, id: i64) -> Result<u64, ClientError> {
        let response = self
            .with_retries(true, true, None, |endpoint, deadline| async move {
                self.kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?
                    .lease_revoke(self.request(kv::LeaseRevokeRequest { id }, deadline))
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        Ok(response.revision)
    }

    /// Renews a lease to its full TTL; returns the TTL, or `None` if the lease is gone (expired or revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, ClientError> {
        let response = self
            .with_retries(false, true, None, |endpoint, deadline| async move {
                self.kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?
                    .lease_keep_alive(self.request(kv::LeaseKeepAliveRequest { id }, deadline))
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        Ok((response.ttl > 0).then_some(response.ttl))
    }

    /// The lease as the leader sees it (with its keys if `keys`); `None` if it does not exist.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<LeaseStatus>, ClientError> {
        let response = self
            .with_retries(false, true, None, |endpoint, deadline| async move {
                self.kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?
                    .lease_time_to_live(
                        self.request(kv::LeaseTimeToLiveRequest { id, keys }, deadline),
                    )
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        Ok(response.found.then_some(LeaseStatus {
            remaining: response.ttl,
            granted_ttl: response.granted_ttl,
            keys: response.keys,
        }))
    }

    /// Every lease's id.
    pub async fn lease_list(&self) -> Result<Vec<i64>, ClientError> {
        let response = self
            .with_retries(false, false, None, |endpoint, deadline| async move {
                self.kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?
                    .lease_list(self.request(kv::LeaseListRequest {}, deadline))
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        Ok(response.ids)
    }
}
