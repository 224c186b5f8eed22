//! Operating a node: `/metrics` scraped from a running cluster, gRPC health on a node cut off from its
//! majority, gRPC reflection, SIGTERM under a write load, and start-up errors that say what to fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::{ClientError, Consistency, ReadOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use raftkv_testkit::{
    fast_timing, free_port, poll_until_blocking, server_binary, wait_until, ClusterSpec,
    TestCluster, POLL_INTERVAL, WAIT_MAX,
};

use crate::harness::read_at_once;

/// Bound for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for a node to exit after SIGTERM.
const SIGTERM_EXIT_MAX: Duration = Duration::from_secs(20);
/// Bound for a node that must refuse to start to exit.
const STARTUP_EXIT_MAX: Duration = Duration::from_secs(20);

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
#[derive(Debug)]
struct Scrape(Vec<Sample>);

impl Scrape {
    /// Parses the text exposition format (comments skipped; label values without escaped quotes).
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                value => value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label in {line:?}"));
                            (key.to_string(), value.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Scrape(samples)
    }

    /// Samples of `name` whose labels include `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }

    /// The one sample of `name` with `labels`, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.matching(name, labels);
        let first = matching.next()?.value;
        assert!(
            matching.next().is_none(),
            "{name} {labels:?} names more than one series"
        );
        Some(first)
    }

    /// The value of an unlabelled gauge or counter that must be present.
    fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
            .unwrap_or_else(|| panic!("{name} missing from the scrape"))
    }

    /// Sum over every series of `name` with `labels` (0 if none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }
}

/// GETs `path` from `addr` over plain HTTP/1.1; returns the status code and the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8(response).map_err(std::io::Error::other)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of headers"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status code"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("scrape timed out"))?
}

async fn scrape(cluster: &TestCluster, id: u64) -> Option<Scrape> {
    match http_get(&cluster.metrics_addr(id), "/metrics").await {
        Ok((200, body)) => Some(Scrape::parse(&body)),
        _ => None,
    }
}

/// Polls node `id`'s metrics until `check` accepts a scrape.
async fn wait_scrape(
    cluster: &TestCluster,
    id: u64,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    wait_until(&format!("node {id}: {what}"), WAIT_MAX, || async {
        scrape(cluster, id).await.filter(|scrape| check(scrape))
    })
    .await
}

/// The series of client operations of `kind` that succeeded.
fn ok_operations(scrape: &Scrape, kind: &str) -> f64 {
    scrape.sum(
        "raftkv_client_operations_total",
        &[("kind", kind), ("outcome", "ok")],
    )
}

/// Scrapes `/metrics` of a three-node cluster before writes, after 20 writes and after the leader is killed:
/// indexes, client counters, flushes and replication lag move with the writes; term, leader, role and the
/// elections counter move with the leader change; only `/metrics` is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_writes_and_a_leader_change() {
    const WRITES: u64 = 20;
    let mut cluster = TestCluster::with_spec(ClusterSpec {
        metrics: true,
        ..ClusterSpec::new(3)
    });
    let (leader, term) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();

    let before = wait_scrape(&cluster, leader, "reports itself leader", |scrape| {
        scrape.get("raftkv_role", &[("role", "leader")]) == Some(1.0)
            && scrape.get("raftkv_health_serving", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(before.value("raftkv_term"), term as f64);
    assert_eq!(before.value("raftkv_leader_id"), leader as f64);
    assert_eq!(
        before.get("raftkv_role", &[("role", "follower")]),
        Some(0.0)
    );
    assert_eq!(
        before.get(
            "raftkv_node_info",
            &[("node_id", &leader.to_string()), ("cluster_id", "raftkv")]
        ),
        Some(1.0)
    );
    let commit_before = before.value("raftkv_commit_index");
    let flushes_before = before.value("raftkv_storage_flushes_total");
    let puts_before = ok_operations(&before, "put");
    for follower in &followers {
        let lag = before.get(
            "raftkv_replication_lag_entries",
            &[("follower", &follower.to_string())],
        );
        assert!(lag.is_some(), "no lag gauge for follower {follower}");
    }

    let client = cluster.client();
    let mut last = 0;
    for i in 0..WRITES {
        last = client.put(format!("m{i}"), "v").await.unwrap();
    }
    let read = client.get("m0", &ReadOptions::default()).await.unwrap();
    assert!(read.kv.is_some());
    // A refused read is counted under its error kind.
    let future = ReadOptions {
        revision: 1_000_000,
        endpoint: Some(cluster.addr(leader)),
        ..ReadOptions::default()
    };
    assert!(client.get("m0", &future).await.is_err());
    // Metrics count log indexes, not revisions: where the last write's entry lies.
    let last_index = cluster.wait_applied(leader, last).await.applied_index;

    let after = wait_scrape(&cluster, leader, "applies every write", |scrape| {
        scrape.value("raftkv_applied_index") >= last_index as f64
            && scrape.value("raftkv_commit_index") >= last_index as f64
    })
    .await;
    assert!(after.value("raftkv_commit_index") >= commit_before + WRITES as f64);
    assert!(after.value("raftkv_last_log_index") >= last_index as f64);
    assert!(after.value("raftkv_storage_flushes_total") > flushes_before);
    assert!(after.value("raftkv_storage_flushed_appends_total") > 0.0);
    assert!(
        after.value("raftkv_storage_flushed_entries_total")
            >= after.value("raftkv_storage_flushed_appends_total"),
        "every flushed append holds at least one entry"
    );
    assert!(after.value("raftkv_storage_disk_bytes") > 0.0);
    assert_eq!(after.value("raftkv_proposals_pending"), 0.0);
    let puts_after = ok_operations(&after, "put");
    assert!(
        puts_after >= puts_before + WRITES as f64,
        "put counter went from {puts_before} to {puts_after} over {WRITES} writes"
    );
    let latency_count = after.sum(
        "raftkv_client_operation_duration_seconds_count",
        &[("kind", "put"), ("outcome", "ok")],
    );
    assert_eq!(latency_count, puts_after, "every put has a latency sample");
    let gets = after.sum(
        "raftkv_client_operations_total",
        &[("kind", "get"), ("consistency", "linearizable")],
    );
    assert!(gets >= 1.0, "the linearizable get was not counted");
    let refused = after.sum(
        "raftkv_client_operations_total",
        &[("kind", "get"), ("outcome", "future_revision")],
    );
    assert_eq!(
        refused, 1.0,
        "the read at a future revision was not counted"
    );
    for follower in &followers {
        // A follower that led briefly earlier (an election race at start) keeps its per-follower lag gauges
        // until they idle out (GAUGE_IDLE_TIMEOUT), so wait for them to go as well.
        let scrape = wait_scrape(&cluster, *follower, "applies every write", |scrape| {
            scrape.value("raftkv_applied_index") >= last_index as f64
                && scrape
                    .matching("raftkv_replication_lag_entries", &[])
                    .next()
                    .is_none()
        })
        .await;
        assert_eq!(scrape.value("raftkv_leader_id"), leader as f64);
        assert_eq!(
            scrape.get("raftkv_role", &[("role", "follower")]),
            Some(1.0)
        );
        assert!(scrape.value("raftkv_millis_since_leader") >= 0.0);
        assert!(
            scrape.get("raftkv_replication_lag_entries", &[]).is_none(),
            "a follower reports replication lag"
        );
    }
    let (status, _) = http_get(&cluster.metrics_addr(leader), "/other")
        .await
        .unwrap();
    assert_eq!(status, 404);

    let mut elections_before = 0.0;
    for follower in &followers {
        elections_before += scrape(&cluster, *follower)
            .await
            .unwrap()
            .value("raftkv_elections_started_total");
    }
    cluster.kill(leader);
    let (new_leader, new_term) = cluster.wait_for_leader(&followers, term + 1).await;
    let new_leader_scrape = wait_scrape(&cluster, new_leader, "reports the new term", |scrape| {
        scrape.value("raftkv_term") >= new_term as f64
            && scrape.get("raftkv_role", &[("role", "leader")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        new_leader_scrape.value("raftkv_leader_id"),
        new_leader as f64
    );
    assert!(new_leader_scrape.value("raftkv_elections_started_total") >= 1.0);
    assert_eq!(
        new_leader_scrape.get("raftkv_node_info", &[("node_id", &new_leader.to_string())]),
        Some(1.0)
    );
    let mut elections_after = 0.0;
    for follower in &followers {
        elections_after += scrape(&cluster, *follower)
            .await
            .unwrap()
            .value("raftkv_elections_started_total");
    }
    assert!(
        elections_after > elections_before,
        "no election counted: {elections_before} before, {elections_after} after"
    );
    let other = followers
        .iter()
        .copied()
        .find(|id| *id != new_leader)
        .unwrap();
    wait_scrape(&cluster, other, "follows the new leader", |scrape| {
        scrape.value("raftkv_leader_id") == new_leader as f64
            && scrape.value("raftkv_term") >= new_term as f64
    })
    .await;

    let revision = client.put("after-change", "v").await.unwrap();
    assert!(revision > last);
    let index = cluster
        .wait_applied(new_leader, revision)
        .await
        .applied_index;
    wait_scrape(
        &cluster,
        new_leader,
        "commits the write after the change",
        |scrape| scrape.value("raftkv_commit_index") >= index as f64,
    )
    .await;
}

/// A gRPC channel to `addr`, dialled with a deadline.
async fn channel(addr: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(SCRAPE_TIMEOUT)
        .timeout(SCRAPE_TIMEOUT)
        .connect()
        .await
        .ok()
}

async fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel(addr).await?);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(SCRAPE_TIMEOUT);
    let response = client.check(request).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Waits until every health service of node `id` reports `wanted`.
async fn wait_health(cluster: &TestCluster, id: u64, wanted: ServingStatus) {
    let addr = cluster.addr(id);
    wait_until(
        &format!("node {id} reports {wanted:?}"),
        WAIT_MAX,
        || async {
            for service in ["", "raftkv.v1.Kv"] {
                if health(&addr, service).await != Some(wanted) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

/// The leader is cut off from its majority by SIGKILLing both followers (no process of theirs is left to
/// answer, so it cannot reach a quorum): its health turns NOT_SERVING although openraft 0.9 keeps it leader,
/// and turns SERVING again once the two are restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_contact_with_the_majority() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    wait_health(&cluster, leader, ServingStatus::Serving).await;
    let mut client = HealthClient::new(channel(&cluster.addr(leader)).await.unwrap());
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".to_string(),
        })
        .await
        .expect_err("an unknown service has a health status");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for follower in &followers {
        cluster.kill(*follower);
    }
    wait_health(&cluster, leader, ServingStatus::NotServing).await;

    for follower in &followers {
        cluster.restart(*follower);
    }
    wait_health(&cluster, leader, ServingStatus::Serving).await;
    for follower in &followers {
        wait_health(&cluster, *follower, ServingStatus::Serving).await;
    }
}

/// A `grpc.health.v1` Watch open on a node does not hold up its shutdown: SIGTERM ends it after a last
/// NOT_SERVING, and the node exits well within a bound below the server's drain bound (`DRAIN_TIMEOUT`, 6 s:
/// a shutdown that waited on the stream would not make it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_health_watches_after_a_last_not_serving() {
    const EXIT_MAX: Duration = Duration::from_secs(4);
    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    wait_health(&cluster, victim, ServingStatus::Serving).await;
    // No request timeout on this channel: the Watch lasts until the node ends it.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(victim)))
            .unwrap()
            .connect_timeout(SCRAPE_TIMEOUT)
            .connect()
            .await
            .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = tokio::time::timeout(SCRAPE_TIMEOUT, watch.message())
        .await
        .expect("the watch sends the current status at once")
        .expect("the watch is open")
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let status = cluster.terminate(victim, EXIT_MAX).await;
    assert!(status.success(), "node {victim} exited with {status:?}");
    let mut statuses = Vec::new();
    let end = loop {
        match tokio::time::timeout(SCRAPE_TIMEOUT, watch.message()).await {
            Ok(Ok(Some(response))) => statuses.push(response.status),
            Ok(Ok(None)) => break None,
            Ok(Err(status)) => break Some(status),
            Err(_) => panic!("the watch did not end once its node exited: {statuses:?}"),
        }
        assert!(statuses.len() <= 4, "statuses after SIGTERM: {statuses:?}");
    };
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(
        statuses.last(),
        Some(&not_serving),
        "the last status before the end, of {statuses:?}"
    );
    assert!(
        !statuses.ends_with(&[not_serving, not_serving]),
        "NOT_SERVING sent twice: {statuses:?}"
    );
    // Ended by the node with its shutting-down status, not by a broken connection.
    let end = end.expect("the watch ended without a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert_eq!(
        end.metadata()
            .get(raftkv_proto::contract::ERROR_KIND_KEY)
            .and_then(|kind| kind.to_str().ok()),
        Some(raftkv_proto::contract::ErrorKind::ShuttingDown.as_str()),
        "{end:?}"
    );
}

/// gRPC reflection (v1 and v1alpha, as grpcurl uses) lists every service and serves the descriptor of
/// `raftkv.v1.Kv`, so tools work without the .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = TestCluster::start(1, &fast_timing());
    let addr = cluster.addr(1);
    let connected = wait_until("the node accepts connections", WAIT_MAX, || channel(&addr)).await;
    let mut client = ServerReflectionClient::new(connected.clone());
    let ask = |message: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "raftkv.v1.Kv".to_string(),
        )),
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for wanted in [
        "raftkv.v1.Kv",
        "raftkv.v1.Admin",
        "raftkv.peer.v1.Peer",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|name| name == wanted),
            "{wanted} not in {names:?}"
        );
    }
    let file = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(file)) = file.message_response else {
        panic!("no descriptor for raftkv.v1.Kv: {file:?}");
    };
    assert!(!file.file_descriptor_proto.is_empty());

    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(connected);
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let listed = alpha
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    assert!(list
        .service
        .iter()
        .any(|service| service.name == "raftkv.v1.Kv"));
}

/// SIGTERMs a node and waits (bounded) for it to exit; returns how it exited.
async fn sigterm(cluster: &mut TestCluster, id: u64) -> std::process::ExitStatus {
    cluster.terminate(id, SIGTERM_EXIT_MAX).await
}

/// Writers through `raftkv_client` keep writing unique keys while the leader is SIGTERMed: it exits 0 within
/// the bound, restarts, and has every acknowledged write (read back linearizably through it); then every node
/// is SIGTERMed and restarted and the cluster still has every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_keeps_every_acknowledged_write() {
    const WRITERS: usize = 4;
    const ACKED_BEFORE_SIGTERM: usize = 100;
    const ACKED_AFTER_SIGTERM: usize = 100;
    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let acknowledged: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, acknowledged, stop) = (client.clone(), acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut session = client.session();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w{writer}-{n:05}"), format!("value-{writer}-{n}"));
                n += 1;
                match session.put(key.clone(), value.clone()).await {
                    Ok(revision) => {
                        acknowledged.lock().unwrap().insert(key, (value, revision));
                    }
                    // Not acknowledged: it may or may not be there, and the test does not look for it.
                    Err(ClientError::Indeterminate { .. } | ClientError::Unavailable { .. }) => {}
                    Err(ClientError::DeadlineExceeded { .. } | ClientError::Busy(_)) => {}
                    Err(other) => panic!("writer {writer}: unexpected error {other:?}"),
                }
            }
        }));
    }
    let count = || acknowledged.lock().unwrap().len();
    wait_until("writes are acknowledged", WAIT_MAX, || async {
        (count() >= ACKED_BEFORE_SIGTERM).then_some(())
    })
    .await;

    let status = sigterm(&mut cluster, leader).await;
    assert!(
        status.success(),
        "the leader exited with {status:?} after SIGTERM"
    );
    let at_sigterm = count();
    wait_until("writes continue on the new leader", WAIT_MAX, || async {
        (count() >= at_sigterm + ACKED_AFTER_SIGTERM).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let last_revision = acknowledged
        .values()
        .map(|(_, revision)| *revision)
        .max()
        .unwrap();

    cluster.restart(leader);
    cluster.wait_applied(leader, last_revision).await;
    let through_restarted = ReadOptions {
        consistency: Consistency::Linearizable,
        endpoint: Some(cluster.addr(leader)),
        ..Default::default()
    };
    check_every_write(&client, &acknowledged, &through_restarted).await;

    for id in 1..=3 {
        let status = sigterm(&mut cluster, id).await;
        assert!(
            status.success(),
            "node {id} exited with {status:?} after SIGTERM"
        );
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    check_every_write(&client, &acknowledged, &ReadOptions::default()).await;
}

/// Attempts of one read in `check_every_write` before the test gives up on it.
const READ_ATTEMPTS_MAX: usize = 20;

/// Reads every acknowledged write with `options` and checks its value and revision.
async fn check_every_write(
    client: &raftkv_client::Client,
    acknowledged: &BTreeMap<String, (String, u64)>,
    options: &ReadOptions,
) {
    for (key, (value, revision)) in acknowledged {
        // A node that just restarted may refuse a read for a moment (no quorum confirmed yet, no leader known);
        // a pinned read is not retried by the client, so retry refusals here. A wrong value fails at once.
        let mut attempts = 0;
        let read = loop {
            attempts += 1;
            match client.get(key.clone(), options).await {
                Ok(read) => break read,
                Err(error) if attempts < READ_ATTEMPTS_MAX => {
                    eprintln!("reading {key} refused, retrying: {error}");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(error) => panic!("reading {key}: {error}"),
            }
        };
        let kv = read
            .kv
            .unwrap_or_else(|| panic!("acknowledged write {key} is gone"));
        assert_eq!(kv.value, value.as_bytes(), "{key} has another value");
        assert_eq!(kv.mod_revision, *revision, "{key} has another revision");
    }
}

/// Runs `raftkv-server` with `args` (and the default log filter), which must refuse to start: checks the
/// exit code and that stderr is one line containing every piece of `expected`.
pub fn check_startup_error(args: &[String], code: i32, expected: &[&str]) {
    let binary = server_binary().unwrap_or_else(|error| panic!("{error:#}"));
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raftkv-server");
    let exited = poll_until_blocking("raftkv-server exits", STARTUP_EXIT_MAX, || {
        child.try_wait().unwrap()
    });
    let status = exited.unwrap_or_else(|timed_out| {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("raftkv-server {args:?} still running: {timed_out}");
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(code),
        "exit of {args:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {stderr}");
    assert!(lines[0].starts_with("raftkv-server: "), "{stderr}");
    for piece in expected {
        assert!(lines[0].contains(piece), "{piece:?} not in {stderr:?}");
    }
}

/// Arguments of a node with id `id` listening on a free port with its data in `data_dir`.
pub fn node_args(id: u64, data_dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    args.extend(fast_timing());
    args
}

pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// Replaces the value of `flag` in `args`.
fn set_flag(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = args.iter().position(|arg| arg == flag).unwrap();
    args[at + 1] = value.to_string();
    args
}

#[test]
fn startup_refuses_a_listen_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = set_flag(node_args(1, dir.path()), "--listen", &addr);
    check_startup_error(
        &args,
        1,
        &[
            &format!("cannot listen on {addr} (--listen)"),
            "pick another address",
        ],
    );
}

#[test]
fn startup_refuses_a_metrics_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = with(node_args(1, dir.path()), &["--metrics-listen", &addr]);
    check_startup_error(
        &args,
        1,
        &[
            &format!("cannot listen on {addr} (--metrics-listen)"),
            "pick another address",
        ],
    );
}

/// The data dir cannot be created: its parent is a regular file. (Tests may run as root, for whom
/// permission bits do not make a directory unwritable; a file in the way refuses everyone.)
#[test]
fn startup_refuses_a_data_dir_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data_dir = file.join("data");
    check_startup_error(
        &node_args(1, &data_dir),
        1,
        &[
            &format!("cannot create data dir {}", data_dir.display()),
            "pass a --data-dir this user can create and write",
        ],
    );
}

#[test]
fn startup_refuses_a_data_dir_of_another_node() {
    let dir = tempfile::tempdir().unwrap();
    drop(raftkv_server::storage::open(dir.path(), 1, "raftkv").unwrap());
    check_startup_error(
        &node_args(2, dir.path()),
        1,
        &[
            "belongs to node 1, not node 2",
            "pass --id 1 or use another --data-dir",
        ],
    );
}

#[test]
fn startup_refuses_a_data_dir_of_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    drop(raftkv_server::storage::open(dir.path(), 1, "alpha").unwrap());
    let args = with(node_args(1, dir.path()), &["--cluster-id", "beta"]);
    check_startup_error(
        &args,
        1,
        &[
            "belongs to cluster \"alpha\", not \"beta\"",
            "pass --cluster-id alpha or use another --data-dir",
        ],
    );
}

/// A flag error ends the process with exit code 2 and one line; every such rule is checked in
/// `config`'s table test, this one only shows the binary reports them so.
#[test]
fn startup_refuses_election_timeout_min_not_below_max() {
    let dir = tempfile::tempdir().unwrap();
    let args = set_flag(
        node_args(1, dir.path()),
        "--election-timeout-min-ms",
        "5000",
    );
    let args = set_flag(args, "--election-timeout-max-ms", "5000");
    check_startup_error(
        &args,
        2,
        &["--election-timeout-max-ms (5000) must be above --election-timeout-min-ms (5000)"],
    );
}

/// Concurrent writers on one cluster: the leader packs their writes into shared log entries (the log grows by
/// fewer entries than there were writes, and the leader's metrics count more writes than entries), yet every
/// acknowledged write has a revision of its own (revisions are store-wide), a read of the hot key returns the
/// value of its write with the highest, and a cas on that revision swaps. The read-index counters count the
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_but_never_a_revision() {
    const WRITERS: u64 = 32;
    const ROUNDS: u64 = 20;
    let cluster = TestCluster::with_spec(ClusterSpec {
        metrics: true,
        ..ClusterSpec::new(3)
    });
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let log_before = cluster.status(leader).await.unwrap().last_log_index;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        writers.spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..ROUNDS {
                let own = format!("own/{writer}");
                let value = format!("{writer}-{round}");
                let revision = client.put(own.clone(), value.clone()).await.expect("put");
                acknowledged.push((own, value.clone(), revision));
                let revision = client.put("hot", value.clone()).await.expect("put");
                acknowledged.push(("hot".to_string(), value, revision));
            }
            acknowledged
        });
    }
    let mut by_revision: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut hot: BTreeMap<u64, String> = BTreeMap::new();
    while let Some(acknowledged) = writers.join_next().await {
        for (key, value, revision) in acknowledged.expect("writer") {
            by_revision.entry(revision).or_default().push(key.clone());
            if key == "hot" {
                let earlier = hot.insert(revision, value);
                assert!(
                    earlier.is_none(),
                    "two acknowledged writes to the hot key claim revision {revision}"
                );
            }
        }
    }
    assert_eq!(hot.len() as u64, WRITERS * ROUNDS);
    for (revision, keys) in &by_revision {
        assert_eq!(
            keys.len(),
            1,
            "writes to {keys:?} claim one revision {revision}"
        );
    }
    let entries = cluster.status(leader).await.unwrap().last_log_index - log_before;
    assert!(
        entries < 2 * WRITERS * ROUNDS,
        "{} writes took {entries} entries: none was batched",
        2 * WRITERS * ROUNDS,
    );
    let (last_revision, last_value) = hot.last_key_value().expect("hot writes");
    let read = client
        .get("hot", &ReadOptions::default())
        .await
        .expect("linearizable read")
        .kv
        .expect("hot key exists");
    assert_eq!(read.mod_revision, *last_revision);
    assert_eq!(read.value, last_value.as_bytes());
    let cas = client
        .cas(
            "hot",
            raftkv_client::Expected::Revision(*last_revision),
            "after",
        )
        .await
        .expect("cas");
    assert!(
        cas.swapped,
        "cas on the last revision did not swap: {cas:?}"
    );
    // Leadership may move under the load: count what every node proposed while it led (a write retried after
    // a leader change is proposed again, so at least every write).
    let (mut entries, mut writes, mut rounds, mut round_reads) = (0.0, 0.0, 0.0, 0.0);
    for id in [1, 2, 3] {
        let scrape = scrape(&cluster, id).await.expect("node metrics");
        entries += scrape.sum("raftkv_write_batches_total", &[]);
        writes += scrape.sum("raftkv_write_batch_writes_total", &[]);
        rounds += scrape.sum("raftkv_read_index_rounds_total", &[]);
        round_reads += scrape.sum("raftkv_read_index_round_reads_total", &[]);
    }
    assert!(
        writes >= (2 * WRITERS * ROUNDS + 1) as f64,
        "{writes} writes proposed"
    );
    assert!(
        entries < writes,
        "the leaders proposed {entries} entries for {writes} writes"
    );
    // The one linearizable read above took a read-index round on a leader.
    assert!(rounds >= 1.0);
    assert!(round_reads >= 1.0);
}

/// Concurrent linearizable reads on a follower share their calls to the leader: 200 reads in flight at once
/// cost far fewer than 200 read-index calls (a call per read would fail this), and each still sees the last
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_follower_reads_share_calls_to_the_leader() {
    const READS: u64 = 200;
    let cluster = TestCluster::with_spec(ClusterSpec {
        metrics: true,
        ..ClusterSpec::new(3)
    });
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let client = cluster.client();
    let revision = client.put("shared", "x").await.unwrap();
    // The follower has the write, and knows the leader that made it (not a candidate of an earlier term).
    let status = cluster.wait_applied(follower, revision).await;
    assert_eq!(status.leader_id, leader);
    read_at_once(&client, cluster.addr(follower), "shared", b"x", READS).await;
    let scrape = scrape(&cluster, follower).await.expect("follower metrics");
    let calls = scrape.value("raftkv_read_index_forwards_total");
    assert_eq!(
        scrape.value("raftkv_read_index_forwarded_reads_total"),
        READS as f64
    );
    assert!(calls >= 1.0, "no read-index call reached the leader");
    assert!(
        calls < (READS / 2) as f64,
        "{READS} concurrent follower reads took {calls} calls to the leader: they are not sharing"
    );
}
