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
    pub fn new(
        reporter: HealthReporter,
        draining: watch::Receiver<bool>,
        ending: fn() -> Status,
    ) -> DrainingHealth {
        DrainingHealth {
            inner: HealthService::from_health_reporter(reporter),
            draining,
            ending,
        }
    }

    /// `new`, as a gRPC service.
    pub fn server(
        reporter: HealthReporter,
        draining: watch::Receiver<bool>,
        ending: fn() -> Status,
    ) -> HealthServer<DrainingHealth> {
        HealthServer::new(DrainingHealth::new(reporter, draining, ending))
    }
}

/// A health Watch stream as `DrainingHealth` serves it.
pub type HealthWatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

/// Where a health Watch stream is.
enum WatchState<S> {
    /// Passing on the statuses; `last` is the last one sent.
    Open {
        statuses: Pin<Box<S>>,
        draining: watch::Receiver<bool>,
        last: Option<i32>,
    },
    /// Shutdown began and NOT_SERVING went out: the end is next.
    Ending,
}

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
        let not_serving = WireStatus::NotServing as i32;
        let start = WatchState::Open {
            statuses: Box::pin(statuses),
            draining: self.draining.clone(),
            last: None,
        };
        let stream = futures::stream::unfold(Some(start), move |state| async move {
            match state? {
                WatchState::Ending => Some((Err(ending()), None)),
                WatchState::Open {
                    mut statuses,
                    mut draining,
                    last,
                } => {
                    // `None`: shutdown began. Biased: a status already published goes out first. A status
                    // equal to the last one sent is passed over (the publisher sets NOT_SERVING at shutdown
                    // even on a node that was not serving).
                    let next = loop {
                        let next = tokio::select! {
                            biased;
                            item = statuses.next() => Some(item),
                            Ok(_) = draining.wait_for(|draining| *draining) => None,
                        };
                        match next {
                            Some(Some(Ok(response))) if Some(response.status) == last => continue,
                            next => break next,
                        }
                    };
                    match next {
                        Some(Some(Ok(response))) => {
                            let last = Some(response.status);
                            let state = WatchState::Open {
                                statuses,
                                draining,
                                last,
                            };
                            Some((Ok(response), Some(state)))
                        }
                        Some(Some(Err(status))) => Some((Err(status), None)),
                        // tonic-health's statuses never end; if they did, so does the Watch.
                        Some(None) => None,
                        // NOT_SERVING once (the publisher usually sent it already), then the end.
                        None if last == Some(not_serving) => Some((Err(ending()), None)),
                        None => Some((
                            Ok(HealthCheckResponse {
                                status: not_serving,
                            }),
                            Some(WatchState::Ending),
                        )),
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending() -> Status {
        Status::unavailable("shutting down")
    }

    async fn next_status(stream: &mut HealthWatchStream) -> Result<i32, Status> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream answers")
            .expect("the stream is open")
            .map(|response| response.status)
    }

    /// A Watch sends the status, then at shutdown NOT_SERVING once (whether or not the publisher sent it
    /// first, or the node was not serving before) and the ending status, and ends; once shutdown began a new
    /// Watch is refused.
    #[tokio::test]
    async fn health_watches_end_at_shutdown_after_one_not_serving() {
        let serving = WireStatus::Serving as i32;
        let not_serving = WireStatus::NotServing as i32;
        let watch_request = || {
            Request::new(HealthCheckRequest {
                service: String::new(),
            })
        };
        // (NOT_SERVING before shutdown began, published again as it begins)
        for (not_serving_before, published_first) in [(false, false), (false, true), (true, true)] {
            let reporter = HealthReporter::new();
            let (draining, draining_signal) = watch::channel(false);
            let service = DrainingHealth::new(reporter.clone(), draining_signal, ending);
            let mut stream = service.watch(watch_request()).await.unwrap().into_inner();
            assert_eq!(next_status(&mut stream).await.unwrap(), serving);
            if not_serving_before {
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                assert_eq!(next_status(&mut stream).await.unwrap(), not_serving);
                let end = next_status(&mut stream);
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                draining.send(true).unwrap();
                let end = end.await.unwrap_err();
                assert_eq!(end.code(), tonic::Code::Unavailable);
                assert!(stream.next().await.is_none(), "nothing after the end");
                continue;
            }
            if published_first {
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
            draining.send(true).unwrap();
            assert_eq!(next_status(&mut stream).await.unwrap(), not_serving);
            let end = next_status(&mut stream).await.unwrap_err();
            assert_eq!(end.code(), tonic::Code::Unavailable);
            assert!(stream.next().await.is_none(), "nothing after the end");
            match service.watch(watch_request()).await {
                Err(refused) => assert_eq!(refused.message(), "shutting down"),
                Ok(_) => panic!("a Watch opened during shutdown was served"),
            }
        }
    }

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
