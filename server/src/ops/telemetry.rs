//! Metrics of a node: the names (one constant each, the README lists them), the process-wide Prometheus
//! recorder behind the `metrics` facade, the record helper of client operations, and the `/metrics` scrape
//! endpoint of `--metrics-listen`.
//!
//! The endpoint is a small HTTP/1.1 responder on its own listener rather than the exporter's `http-listener`
//! feature: that listener is spawned where we cannot stop or join it (it outlives shutdown), answers every path,
//! and brings hyper's HTTP/1 server and an IP allow-list crate; this one is a task of the node like any other,
//! with a bounded request size, a deadline per connection and a cap on connections.
//!
//! Gauges that describe Raft (term, role, indexes, lag) are set by `observer`; counters the storage keeps
//! (`storage::StorageStats`) are copied into the registry by the same task, so storage holds no metrics code.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub const NODE_INFO: &str = "raftkv_node_info";
pub const TERM: &str = "raftkv_term";
pub const ROLE: &str = "raftkv_role";
pub const LEADER_ID: &str = "raftkv_leader_id";
pub const COMMIT_INDEX: &str = "raftkv_commit_index";
pub const APPLIED_INDEX: &str = "raftkv_applied_index";
pub const LAST_LOG_INDEX: &str = "raftkv_last_log_index";
pub const SNAPSHOT_INDEX: &str = "raftkv_snapshot_index";
pub const MILLIS_SINCE_LEADER: &str = "raftkv_millis_since_leader";
pub const REPLICATION_LAG_ENTRIES: &str = "raftkv_replication_lag_entries";
pub const ELECTIONS_STARTED: &str = "raftkv_elections_started_total";
pub const HEALTH_SERVING: &str = "raftkv_health_serving";
pub const CLIENT_OPERATIONS: &str = "raftkv_client_operations_total";
pub const CLIENT_OPERATION_SECONDS: &str = "raftkv_client_operation_duration_seconds";
pub const PROPOSALS_PENDING: &str = "raftkv_proposals_pending";
pub const READ_INDEX_ROUNDS: &str = "raftkv_read_index_rounds_total";
pub const READ_INDEX_ROUND_READS: &str = "raftkv_read_index_round_reads_total";
pub const READ_INDEX_FORWARDS: &str = "raftkv_read_index_forwards_total";
pub const READ_INDEX_FORWARDED_READS: &str = "raftkv_read_index_forwarded_reads_total";
pub const WRITE_BATCHES: &str = "raftkv_write_batches_total";
pub const WRITE_BATCH_WRITES: &str = "raftkv_write_batch_writes_total";
pub const STORAGE_FLUSHES: &str = "raftkv_storage_flushes_total";
pub const STORAGE_FLUSHED_APPENDS: &str = "raftkv_storage_flushed_appends_total";
pub const STORAGE_FLUSHED_ENTRIES: &str = "raftkv_storage_flushed_entries_total";
pub const STORAGE_FLUSH_MICROSECONDS: &str = "raftkv_storage_flush_microseconds_total";
pub const STORAGE_DISK_BYTES: &str = "raftkv_storage_disk_bytes";
pub const SNAPSHOTS_BUILT: &str = "raftkv_snapshots_built_total";
pub const SNAPSHOTS_INSTALLED: &str = "raftkv_snapshots_installed_total";
pub const SNAPSHOT_BYTES: &str = "raftkv_snapshot_bytes";

/// Upper bounds (seconds) of the client latency histogram buckets: from a local stale read (well under a
/// millisecond) to a write that waits out `WRITE_COMMIT_TIMEOUT`.
pub const CLIENT_LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// A gauge not set for this long leaves the scrape. The observer sets every gauge it owns several times a
/// second, so only gauges that stopped meaning anything go: the per-follower lag of a node that is no longer
/// leader, or of a follower that was removed.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest scrape request head read; a longer one is answered 431 and closed.
pub const SCRAPE_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Deadline for one scrape connection: read the request, render, write the answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections served at once; more are closed at once without an answer.
pub const SCRAPE_CONNECTIONS_MAX: usize = 16;
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide recorder, installed on first use. The `metrics` facade has one global recorder per
/// process: nodes started in the same process (tests) share it.
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    RECORDER
        .get_or_init(install)
        .clone()
        .map_err(anyhow::Error::msg)
}

fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CLIENT_OPERATION_SECONDS.to_string()),
            CLIENT_LATENCY_BUCKETS_SECONDS,
        )
        .map_err(|error| format!("invalid latency buckets: {error}"))?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        "another metrics recorder is installed in this process; start the node without it"
            .to_string()
    })?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        NODE_INFO,
        "always 1; labels name the node id, cluster id and version"
    );
    describe_gauge!(TERM, "current Raft term");
    describe_gauge!(
        ROLE,
        "1 for the role this node is in (leader, follower, candidate, learner, shutdown), 0 for the others"
    );
    describe_gauge!(LEADER_ID, "id of the leader this node knows of, 0 if none");
    describe_gauge!(COMMIT_INDEX, "highest log index known to be committed");
    describe_gauge!(
        APPLIED_INDEX,
        "highest log index applied to the state machine"
    );
    describe_gauge!(LAST_LOG_INDEX, "highest log index stored");
    describe_gauge!(SNAPSHOT_INDEX, "log index covered by the last snapshot");
    describe_gauge!(
        MILLIS_SINCE_LEADER,
        Unit::Milliseconds,
        "on a follower, time since it last accepted a message from a leader; on a leader, since its last quorum acknowledgement; -1 if never"
    );
    describe_gauge!(
        REPLICATION_LAG_ENTRIES,
        "on the leader only: entries a follower is behind the leader's last log index"
    );
    describe_counter!(
        ELECTIONS_STARTED,
        "elections this node started (terms in which it voted for itself)"
    );
    describe_gauge!(
        HEALTH_SERVING,
        "1 while grpc health reports SERVING, 0 while NOT_SERVING"
    );
    describe_counter!(
        CLIENT_OPERATIONS,
        "client operations by kind, consistency (none for writes) and outcome (ok or the raftkv-error kind)"
    );
    describe_histogram!(
        CLIENT_OPERATION_SECONDS,
        Unit::Seconds,
        "latency of client operations as the server saw them"
    );
    describe_gauge!(
        PROPOSALS_PENDING,
        "writes proposed to Raft and not yet answered"
    );
    describe_counter!(
        READ_INDEX_ROUNDS,
        "quorum rounds this node ran as leader to confirm linearizable reads"
    );
    describe_counter!(
        READ_INDEX_ROUND_READS,
        "linearizable reads those rounds confirmed; divided by raftkv_read_index_rounds_total, reads per round"
    );
    describe_counter!(
        READ_INDEX_FORWARDS,
        "on a follower, read-index calls it made to the leader for linearizable reads"
    );
    describe_counter!(
        READ_INDEX_FORWARDED_READS,
        "linearizable reads those calls served; divided by raftkv_read_index_forwards_total, reads per call"
    );
    describe_counter!(
        WRITE_BATCHES,
        "log entries of client writes this node committed as leader (one per write batch)"
    );
    describe_counter!(
        WRITE_BATCH_WRITES,
        "client writes carried by those entries; divided by raftkv_write_batches_total, writes per entry"
    );
    describe_counter!(STORAGE_FLUSHES, "group-commit flushes of the log");
    describe_counter!(
        STORAGE_FLUSHED_APPENDS,
        "log appends (one or more entries each) made durable by group-commit flushes"
    );
    describe_counter!(
        STORAGE_FLUSHED_ENTRIES,
        "log entries made durable by group-commit flushes; divide by raftkv_storage_flushes_total for entries per flush"
    );
    describe_counter!(
        STORAGE_FLUSH_MICROSECONDS,
        Unit::Microseconds,
        "time spent in group-commit flushes; divide by raftkv_storage_flushes_total for the mean"
    );
    describe_gauge!(
        STORAGE_DISK_BYTES,
        Unit::Bytes,
        "bytes of the log store on disk (without the snapshot file)"
    );
    describe_counter!(SNAPSHOTS_BUILT, "snapshots built by this node");
    describe_counter!(
        SNAPSHOTS_INSTALLED,
        "snapshots received from a leader and installed"
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        Unit::Bytes,
        "size of the last snapshot file written"
    );
}

/// Consistency label of operations that are not reads.
pub const CONSISTENCY_NONE: &str = "none";
/// Outcome label of a successful operation; failures carry their `raftkv-error` kind.
pub const OUTCOME_OK: &str = "ok";

/// Counts one client operation and records its latency. Every label is a `&'static str`, so no label string
/// is copied per request (it runs for every client request; the label list still is, once per metric).
pub fn record_client_operation(
    kind: &'static str,
    consistency: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    let labels = [
        metrics::Label::from_static_parts("kind", kind),
        metrics::Label::from_static_parts("consistency", consistency),
        metrics::Label::from_static_parts("outcome", outcome),
    ];
    metrics::counter!(CLIENT_OPERATIONS, labels.iter()).increment(1);
    metrics::histogram!(CLIENT_OPERATION_SECONDS, labels.iter()).record(elapsed);
}

/// Binds the scrape listener; bound before anything else starts so that a taken port fails start-up.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {addr} (--metrics-listen): {error}; stop the process using the port or pick another address"
        )
    })
}

/// Serves `/metrics` on `listener` until `stop` turns true, then waits for the scrapes in progress (each is
/// bounded by `SCRAPE_TIMEOUT`).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(SCRAPE_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener cannot accept a connection");
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many scrapes at once; connection closed");
                    continue;
                };
                let handle = handle.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &handle)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "scrape connection failed"),
                        Err(_) => tracing::debug!(%peer, "scrape took longer than {SCRAPE_TIMEOUT:?}"),
                    }
                });
            }
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Reads one request head and answers it, then closes the connection.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            break true;
        }
        if head.len() > SCRAPE_REQUEST_BYTES_MAX {
            break false;
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    };
    let mut send_body = true;
    let (status, body) = if !complete {
        ("431 Request Header Fields Too Large", String::new())
    } else {
        let request_line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
        let request_line = String::from_utf8_lossy(request_line);
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        send_body = method != "HEAD";
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => ("200 OK", handle.render()),
            ("GET" | "HEAD", _) => ("404 Not Found", "metrics are at /metrics\n".to_string()),
            _ => (
                "405 Method Not Allowed",
                "only GET and HEAD are served\n".to_string(),
            ),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {PROMETHEUS_TEXT}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
