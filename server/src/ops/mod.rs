//! What operators see of a node: the observer (what openraft's metrics watch becomes: gauges, lifecycle
//! log lines, health), the health decision and its gRPC publication, the Prometheus metrics, automatic
//! compaction and the snapshot schedule.

pub mod auto_compaction;
pub mod health;
pub mod observer;
pub mod snapshot_schedule;
pub mod telemetry;
