//! gRPC health (`grpc.health.v1`): when a node reports SERVING, and the publisher that keeps the overall
//! service `""` and `raftkv.v1.Kv` in step with that decision.
//!
//! A node is SERVING while all of these hold: it knows a leader (or is one); it heard from that leader within
//! the silence bound (a follower: an accepted AppendEntries or snapshot chunk; a leader: a quorum
//! acknowledgement), so a leader cut off from its majority stops serving even though openraft 0.9 keeps it
//! leader; and its applied index is within `HEALTH_APPLY_LAG_MAX` entries of the leader's commit index.
//! Otherwise NOT_SERVING, which is also the state from start-up until the first check and from the first step
//! of shutdown on. The decision is a pure function of what the observer saw, so it is the same wherever it is
//! evaluated.
//!
//! The service itself is tonic-health's, behind `DrainingHealth`: its Watch streams end when the node starts
//! to shut down, after a last NOT_SERVING, instead of holding the server's drain until `DRAIN_TIMEOUT`.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::raft::types::NodeId;

/// Entries the applied index may trail the leader's commit index while the node still reports SERVING: a
/// node catching up after a restart or a partition reports NOT_SERVING until it is this close.
pub const HEALTH_APPLY_LAG_MAX: u64 = 1_000;
/// gRPC service names whose status the publisher sets: the whole server and the key-value API.
pub const HEALTH_SERVICES: [&str; 2] = ["", "raftkv.v1.Kv"];

/// What the health decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct HealthInputs {
    pub leader_id: Option<NodeId>,
    /// A follower: time since it last accepted a leader message; a leader: since its last quorum ack.
    pub since_leader: Option<Duration>,
    pub applied_index: u64,
    /// The leader's commit index as far as this node knows it.
    pub leader_commit_index: u64,
}

/// The decision, with the reason when not serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Serving,
    NotServing(String),
}

/// Decides health; `silence_max` is how long without hearing from the leader is still healthy.
pub fn assess(inputs: &HealthInputs, silence_max: Duration) -> Health {
    if inputs.leader_id.is_none() {
        return Health::NotServing("no leader known".to_string());
    }
    match inputs.since_leader {
        None => return Health::NotServing("no contact with the leader yet".to_string()),
        Some(since) if since > silence_max => {
            return Health::NotServing(format!(
                "no contact with the leader for {} ms, over the bound of {} ms",
                since.as_millis(),
                silence_max.as_millis()
            ))
        }
        Some(_) => {}
    }
    let behind = inputs
        .leader_commit_index
        .saturating_sub(inputs.applied_index);
    if behind > HEALTH_APPLY_LAG_MAX {
        return Health::NotServing(format!(
            "applied index {} is {behind} entries behind the leader's commit index {}, over the bound of {HEALTH_APPLY_LAG_MAX}",
            inputs.applied_index, inputs.leader_commit_index
        ));
    }
    Health::Serving
}

/// Publishes the decision to the health service, logging each change of status.
pub struct HealthPublisher {
    reporter: HealthReporter,
    current: Option<bool>,
}

impl HealthPublisher {
    /// Wraps `reporter` and reports NOT_SERVING until the first `publish`.
    pub async fn new(reporter: HealthReporter) -> Self {
        let mut publisher = HealthPublisher {
            reporter,
            current: None,
        };
        publisher
            .publish(&Health::NotServing("starting".to_string()))
            .await;
        publisher
    }

    /// Sets every health service to `health`; logs when the status changes.
    pub async fn publish(&mut self, health: &Health) {
        let serving = *health == Health::Serving;
        // Set on every call, not only on change: idle gauges leave the scrape (`GAUGE_IDLE_TIMEOUT`).
        metrics::gauge!(crate::ops::telemetry::HEALTH_SERVING).set(if serving { 1.0 } else { 0.0 });
        if self.current == Some(serving) {
            return;
        }
        match health {
            Health::Serving => tracing::info!("health: serving"),
            Health::NotServing(reason) => tracing::info!(reason = %reason, "health: not serving"),
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in HEALTH_SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
        self.current = Some(serving);
    }
}

/// The `grpc.health.v1` service: tonic-health's Check as it is; its Watch streams end with `ending()` (the
/// API's shutting-down status) once the node starts to shut down, after a last NOT_SERVING, and a Watch opened
/// from then on is refused with it. Without this a watcher (a load balancer, `grpc-health-probe -watch`)
/// kept the shutdown's drain waiting for its stream until `DRAIN_TIMEOUT`.
pub struct DrainingHealth {
    inner: HealthService,
    draining: watch::Receiver<bool>,
    ending: fn() -> Status,
}

impl DrainingHealth {
    /// The service for `reporter`'s statuses; `draining` turns true when shutdown begins.
    pub fn server(
        reporter: HealthReporter,
        draining: watch::Receiver<bool>,
        ending: fn() -> Status,
    ) -> HealthServer<DrainingHealth> {
        HealthServer::new(DrainingHealth {
            inner: HealthService::from_health_reporter(reporter),
            draining,
            ending,
        })
    }
}

/// A health Watch stream as `DrainingHealth` serves it.
pub type HealthWatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl HealthApi for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthWatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if *self.draining.borrow() {
            return Err((self.ending)());
        }
        let statuses = self.inner.watch(request).await?.into_inner();
        let ending = self.ending;
        let not_serving = HealthCheckResponse {
            status: WireStatus::NotServing as i32,
        };
        // Statuses until shutdown begins (biased: one already published goes out first), then the end.
        let until_shutdown = futures::stream::unfold(
            Some((Box::pin(statuses), self.draining.clone())),
            |state| async move {
                let (mut statuses, mut draining) = state?;
                // `None`: the node started to shut down.
                let next = tokio::select! {
                    biased;
                    item = statuses.next() => Some(item),
                    Ok(_) = draining.wait_for(|draining| *draining) => None,
                };
                next.flatten()
                    .map(|item| (item, Some((statuses, draining))))
            },
        );
        let mut draining = self.draining.clone();
        let last = futures::stream::once(async move {
            // Reached only when shutdown began (or the statuses ended, which tonic-health's never do).
            let _ = draining.wait_for(|draining| *draining).await;
            Ok(not_serving)
        });
        let end = futures::stream::once(async move { Err(ending()) });
        Ok(Response::new(Box::pin(
            until_shutdown.chain(last).chain(end),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row: who the node knows as leader, ms since it heard from it, applied and leader commit index, and
    /// whether it serves (`None`) or a piece of the reason it does not.
    type Row = (Option<NodeId>, Option<u64>, u64, u64, Option<&'static str>);

    #[test]
    fn health_table() {
        let bound = Duration::from_millis(2000);
        let rows: &[Row] = &[
            (Some(1), Some(50), 100, 100, None),
            (Some(1), Some(2000), 100, 100, None),
            (
                Some(1),
                Some(2001),
                100,
                100,
                Some("no contact with the leader for 2001 ms, over the bound of 2000 ms"),
            ),
            (None, Some(50), 100, 100, Some("no leader known")),
            (
                Some(1),
                None,
                100,
                100,
                Some("no contact with the leader yet"),
            ),
            (Some(1), Some(50), 100, 1_100, None),
            (
                Some(1),
                Some(50),
                100,
                1_101,
                Some("applied index 100 is 1001 entries behind the leader's commit index 1101"),
            ),
            // A node ahead of what it heard of the leader's commit (it learnt it later) is not behind.
            (Some(1), Some(50), 500, 100, None),
        ];
        for (leader_id, since_ms, applied_index, leader_commit_index, expected) in rows {
            let inputs = HealthInputs {
                leader_id: *leader_id,
                since_leader: since_ms.map(Duration::from_millis),
                applied_index: *applied_index,
                leader_commit_index: *leader_commit_index,
            };
            match (assess(&inputs, bound), expected) {
                (Health::Serving, None) => {}
                (Health::NotServing(reason), Some(piece)) => {
                    assert!(
                        reason.contains(piece),
                        "{inputs:?}: {reason:?} does not say {piece:?}"
                    )
                }
                (got, _) => panic!("{inputs:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}
