//! Client library behaviour against a real cluster when the cluster misbehaves: a leader SIGKILLed under a
//! write load, a leader frozen mid-request, a read pinned to a dead node.

use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientConfig, ClientError, Consistency, Expected, ReadOptions};

use raftkv_testkit::{fast_timing, wait_until, TestCluster, WAIT_MAX};

/// One session increments a counter with cas (expected i-1, new i) while the leader is SIGKILLed. With a
/// single writer, a cas that reports "not swapped" with the counter already at i could only be a retry of a
/// write that had been applied (a duplicate); and the final value must equal the number of increments
/// acknowledged (none lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_through_leader_kill_apply_exactly_once() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let mut session = client.session();
    const INCREMENTS: u64 = 200;
    let writer = tokio::spawn(async move {
        let mut acknowledged = 0u64;
        for next in 1..=INCREMENTS {
            let expected = if next == 1 {
                Expected::Absent
            } else {
                Expected::Value((next - 1).to_string().into_bytes())
            };
            let result = session
                .cas("counter", expected, next.to_string())
                .await
                .expect("cas through the failover");
            assert!(
                result.swapped,
                "increment {next} was not swapped (duplicate apply?): {result:?}"
            );
            acknowledged += 1;
        }
        acknowledged
    });
    // Kill the leader once the writer is under way.
    let reader = cluster.client();
    wait_until("the writer has started", WAIT_MAX, || async {
        let read = reader.get("counter", &ReadOptions::default()).await.ok()?;
        read.kv.map(|_| ())
    })
    .await;
    cluster.kill(leader);
    assert!(
        !writer.is_finished(),
        "the writer finished before the leader was killed; raise INCREMENTS"
    );
    let acknowledged = writer.await.unwrap();
    let read = client
        .get("counter", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read.kv.unwrap().value,
        acknowledged.to_string().into_bytes()
    );
}

/// A write whose leader freezes (SIGSTOP) after the request was sent is reported indeterminate, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_frozen_leader_is_indeterminate() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let mut config = ClientConfig::new(vec![cluster.addr(leader)]);
    config.request_timeout = Duration::from_millis(500);
    config.overall_timeout = Duration::from_millis(1500);
    let client = Client::new(config).unwrap();
    client
        .put("warm", "up")
        .await
        .expect("write before the freeze");
    cluster.pause(leader);
    let result = client.put("frozen", "maybe").await;
    cluster.resume(leader);
    match result {
        Err(ClientError::Indeterminate { .. }) => {}
        other => panic!("expected an indeterminate outcome, got {other:?}"),
    }
}

/// A read pinned to a node that is down fails fast with a connection error naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_pinned_to_dead_node_fails_fast() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    cluster.kill(3);
    let dead = cluster.addr(3);
    let options = ReadOptions {
        consistency: Consistency::Stale,
        endpoint: Some(dead.clone()),
        ..Default::default()
    };
    let started = Instant::now();
    match cluster.client().get("any", &options).await {
        Err(ClientError::Connection { endpoint, .. }) => assert_eq!(endpoint, dead),
        other => panic!("expected a connection error, got {other:?}"),
    }
    assert!(
        started.elapsed() < raftkv_client::OVERALL_TIMEOUT_DEFAULT,
        "the pinned read retried instead of failing"
    );
}

/// A client that only reads learns the leader from the first read the leader answers and sends its later
/// linearizable reads straight there, instead of through followers that must ask the leader each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_learns_the_leader() {
    const READS: usize = 6;
    let cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let revision = cluster.client().put("k", "v").await.unwrap();
    // A leader every node names, not one an election right after start-up is about to replace.
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], revision).await;
    // A second client, which has written nothing and so knows no leader.
    let reader = cluster.client();
    let mut served_by = Vec::new();
    for _ in 0..READS {
        let read = reader.get("k", &ReadOptions::default()).await.unwrap();
        assert_eq!(read.kv.unwrap().value, b"v");
        served_by.push(read.envelope.node_id);
    }
    // The endpoints are tried in turn until a leader answers: at most one read per node.
    let first = served_by
        .iter()
        .position(|id| *id == leader)
        .unwrap_or_else(|| panic!("the leader answered none of {served_by:?}"));
    assert!(first < 3, "{served_by:?}");
    assert!(
        served_by[first..].iter().all(|id| *id == leader),
        "reads after the leader answered went elsewhere: {served_by:?}"
    );
}

/// How the watched node goes away in [`watch_across_a_stop`].
enum Stop {
    /// SIGKILL.
    Kill,
    /// SIGTERM, and the node must have exited within this bound.
    Sigterm(Duration),
}

/// Watches `prefix` from a follower while writing, stops that follower as `stop` says, writes more, and checks
/// that every change arrived once, in order, across the stop (the watch resumed on another node from the first
/// revision it had not delivered).
async fn watch_across_a_stop(prefix: &str, stop: Stop) {
    use raftkv_client::WatchOptions;
    const BEFORE: usize = 10;
    const AFTER: usize = 10;

    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let watcher = client_starting_at(&cluster, victim);
    let writer = cluster.client();
    let options = WatchOptions {
        range_end: raftkv_client::txn::prefix_end(prefix.as_bytes()),
        ..WatchOptions::default()
    };
    let mut watch = watcher.watch(prefix, &options).await.expect("watch");
    let mut seen: Vec<(String, u64)> = Vec::new();
    let put = |index: usize| {
        let writer = writer.clone();
        let key = format!("{prefix}{index:02}");
        async move { writer.put(key, "x").await.expect("put") }
    };
    for index in 0..BEFORE {
        put(index).await;
    }
    collect_changes(&mut watch, &mut seen, BEFORE).await;
    match stop {
        Stop::Kill => cluster.kill(victim),
        Stop::Sigterm(bound) => {
            let status = cluster.terminate(victim, bound).await;
            assert!(status.success(), "node {victim} exited with {status:?}");
        }
    }
    for index in BEFORE..BEFORE + AFTER {
        put(index).await;
    }
    collect_changes(&mut watch, &mut seen, BEFORE + AFTER).await;
    let keys: Vec<String> = seen.iter().map(|(key, _)| key.clone()).collect();
    let expected: Vec<String> = (0..BEFORE + AFTER)
        .map(|index| format!("{prefix}{index:02}"))
        .collect();
    assert_eq!(
        keys, expected,
        "every change once, in order, across the stop"
    );
    assert!(seen.windows(2).all(|pair| pair[0].1 < pair[1].1));
}

/// A watch whose node dies goes on on another node from the first revision it had not delivered: every change
/// arrives once, in order, across the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_node_when_its_node_dies() {
    watch_across_a_stop("feed/", Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watches_at_once_and_they_resume_elsewhere() {
    // A node's open watch streams must not hold up its shutdown: SIGTERM ends them at once (`shutting_down`),
    // the node exits well within a bound below the server's drain bound (`DRAIN_TIMEOUT`, 6 s: a shutdown
    // that waited on the watch would not make it), and the watcher resumes on another node, missing nothing.
    watch_across_a_stop("drain/", Stop::Sigterm(Duration::from_secs(4))).await;
}

/// Reads `watch` until `seen` holds `until` changes (key, revision), at most `WAIT_MAX`.
async fn collect_changes(
    watch: &mut raftkv_client::Watch,
    seen: &mut Vec<(String, u64)>,
    until: usize,
) {
    let deadline = Instant::now() + WAIT_MAX;
    while seen.len() < until {
        let left = deadline.saturating_duration_since(Instant::now());
        let response = tokio::time::timeout(left, watch.next())
            .await
            .expect("changes within the bound")
            .expect("the watch goes on")
            .expect("the stream stays open");
        for event in response.events {
            let kv = event.kv.expect("a key");
            seen.push((String::from_utf8(kv.key).unwrap(), kv.mod_revision));
        }
    }
}

/// A watch on a quiet key hears how far it has seen while other keys change, so when its node dies it resumes
/// from there, not from a revision compacted meanwhile: the next change of its key arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_resumes_past_a_compaction_when_its_node_dies() {
    use raftkv_client::WatchOptions;

    let mut cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let watcher = client_starting_at(&cluster, victim);
    let writer = cluster.client();
    let mut watch = watcher
        .watch("quiet", &WatchOptions::default())
        .await
        .expect("watch");
    let start = watch.next_revision();
    // Other keys change for longer than a progress interval; the watch hears how far it has seen.
    let deadline = Instant::now() + WAIT_MAX;
    while watch.next_revision() <= start + 1 {
        writer.put("busy", "x").await.expect("put");
        assert!(
            Instant::now() < deadline,
            "no progress report within the bound"
        );
        if let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_millis(100), watch.next()).await
        {
            assert!(response.events.is_empty(), "the quiet key did not change");
        }
    }
    // Compacted past where the watch started (and had its last event, none): resuming from there would fail.
    let point = watch.next_revision() - 1;
    assert!(point > start);
    writer.compact(point).await.expect("compact");
    cluster.kill(victim);
    writer.put("quiet", "now").await.expect("put");
    let response = tokio::time::timeout(WAIT_MAX, async {
        loop {
            let response = watch
                .next()
                .await
                .expect("the watch resumes")
                .expect("open");
            if !response.events.is_empty() {
                return response;
            }
        }
    })
    .await
    .expect("the change within the bound");
    assert_eq!(response.events[0].kv.as_ref().unwrap().value, b"now");
}

/// A client of a 3-node cluster whose first endpoint is node `first`: a new client sends its first call there,
/// so a watch it starts is served by `first` until that node goes.
fn client_starting_at(cluster: &TestCluster, first: u64) -> Client {
    let endpoints: Vec<String> = std::iter::once(first)
        .chain([1, 2, 3].into_iter().filter(|id| *id != first))
        .map(|id| cluster.addr(id))
        .collect();
    Client::new(ClientConfig::new(endpoints)).unwrap()
}
