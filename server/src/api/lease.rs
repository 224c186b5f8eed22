//! Leases as the APIs serve them (raftkv's `Kv` lease calls and etcd's `Lease` service): grants and revokes go
//! through Raft; keep-alives and time-to-live answers come from the leader's `Lessor`, checked against the
//! applied state; lists come from the applied state of any node.

use crate::error::ApiError;
use crate::kv::state_machine::{Command, Response, LEASE_TTL_MAX};
use crate::lease::{RenewRefusal, LEASES_MAX};
use crate::storage::LeaseWithKeys;

use super::Api;

/// Times a grant asking for no particular id draws another one after finding its draw in use.
pub const LEASE_ID_DRAWS_MAX: usize = 3;

/// A lease as `lease_time_to_live` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The TTL it was granted, in seconds.
    pub granted_ttl: i64,
    /// Seconds left, as the leader counts.
    pub remaining: i64,
    /// The keys attached, if asked for.
    pub keys: Vec<Vec<u8>>,
}

impl Api {
    /// Grants a lease of `ttl` seconds (raised to the lessor's minimum) with id `id`, or a drawn one if 0;
    /// returns (id, ttl, store revision).
    pub(crate) async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64, u64), ApiError> {
        if id < 0 {
            return Err(ApiError::InvalidArgument(format!(
                "lease id {id} is negative: give a positive id, or 0 to have one chosen"
            )));
        }
        if ttl > LEASE_TTL_MAX {
            return Err(ApiError::InvalidArgument(format!(
                "lease TTL {ttl} s is over the limit of {LEASE_TTL_MAX} s"
            )));
        }
        self.ensure_leader()?;
        if self.lessor.tracked() >= LEASES_MAX {
            return Err(ApiError::OutOfRange(format!(
                "{LEASES_MAX} leases exist, the most a cluster holds; revoke some first"
            )));
        }
        let ttl = self.lessor.grant_ttl(ttl);
        let mut draws = 0;
        loop {
            let chosen = if id == 0 { draw_id() } else { id };
            let command = Command::LeaseGrant { id: chosen, ttl };
            match self.write(None, command).await {
                Ok(Response::LeaseGrant { revision, id, ttl }) => {
                    self.lessor.granted(id, ttl);
                    return Ok((id, ttl, revision));
                }
                Err(ApiError::LeaseExists { .. }) if id == 0 && draws < LEASE_ID_DRAWS_MAX => {
                    draws += 1;
                }
                Err(error) => return Err(error),
                Ok(other) => {
                    return Err(ApiError::Internal(format!(
                        "a lease grant was answered with {other:?}"
                    )))
                }
            }
        }
    }

    /// Revokes lease `id`, deleting its keys; returns the store revision after it.
    pub(crate) async fn lease_revoke(&self, id: i64) -> Result<u64, ApiError> {
        match self.write(None, Command::LeaseRevoke { id }).await? {
            Response::LeaseRevoke { revision, .. } => {
                self.lessor.forget(id);
                Ok(revision)
            }
            other => Err(ApiError::Internal(format!(
                "a lease revoke was answered with {other:?}"
            ))),
        }
    }

    /// Renews lease `id` to its full TTL, on the leader; returns that TTL, or 0 if the lease does not exist
    /// (etcd's answer for a lease that expired or was revoked).
    pub(crate) fn lease_keep_alive(&self, id: i64) -> Result<i64, ApiError> {
        // Not refused while leadership moves: the lessor expires nothing meanwhile, and holders keep renewing.
        self.ensure_leader_and_quorum()?;
        let lease = self
            .reader
            .state_machine
            .lease_record(id)
            .map_err(ApiError::Internal)?;
        let Some(lease) = lease else {
            return Ok(0);
        };
        match self.lessor.renew(id, lease.ttl) {
            Ok(()) => Ok(lease.ttl),
            Err(RenewRefusal::Expired) => Ok(0),
            Err(RenewRefusal::NotLeading) => Err(ApiError::NoQuorum(
                "this leader has not yet renewed its leases since it was elected or got its quorum back; retry"
                    .to_string(),
            )),
        }
    }

    /// Lease `id` as the leader sees it; `None` if it does not exist.
    pub(crate) fn lease_time_to_live(
        &self,
        id: i64,
        with_keys: bool,
    ) -> Result<Option<LeaseStatus>, ApiError> {
        self.ensure_leader()?;
        Ok(self
            .lease_record(id, with_keys)?
            .map(|(lease, keys)| LeaseStatus {
                granted_ttl: lease.ttl,
                remaining: self.lessor.remaining(id).unwrap_or(lease.ttl),
                keys,
            }))
    }

    /// The ids of every lease, from this node's applied state.
    pub(crate) fn lease_list(&self) -> Result<Vec<i64>, ApiError> {
        Ok(self
            .reader
            .state_machine
            .leases(LEASES_MAX)
            .map_err(ApiError::Internal)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    fn lease_record(&self, id: i64, with_keys: bool) -> Result<Option<LeaseWithKeys>, ApiError> {
        self.reader
            .state_machine
            .lease(id, with_keys)
            .map_err(ApiError::Internal)
    }
}

/// A positive lease id from the thread's random generator.
fn draw_id() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}
