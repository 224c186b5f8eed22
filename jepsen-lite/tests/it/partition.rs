//! Partitions of real raftkv clusters through the proxy mesh: what each side can and cannot do, per read
//! consistency, and convergence after healing. Each test would fail if the guarantee it names did not hold.

use std::collections::BTreeMap;
use std::time::Duration;

use jepsen_lite::cluster::{Cluster, ClusterConfig};
use jepsen_lite::net::LinkState;
use raftkv_client::{Client, ClientConfig, ClientError, Consistency, ReadOptions, Role};
use raftkv_testkit::{fast_timing, server_binary};
use tempfile::TempDir;

const WAIT_MAX: Duration = Duration::from_secs(30);
/// Attempts of one pinned read before a test gives up on it.
const READ_ATTEMPTS_MAX: usize = 5;

async fn start(nodes: u64, dir: &TempDir) -> Cluster {
    let config = ClusterConfig {
        nodes,
        server_binary: server_binary().expect("raftkv-server binary"),
        data_root: dir.path().to_path_buf(),
        extra_args: fast_timing(),
        tls: false,
    };
    Cluster::start(config).await.expect("start cluster")
}

/// A client that talks to one node only, with short deadlines.
fn pinned_client(cluster: &Cluster, id: u64) -> Client {
    let mut config = ClientConfig::new(vec![cluster.addr(id)]);
    config.request_timeout = Duration::from_millis(1500);
    config.overall_timeout = Duration::from_millis(2000);
    Client::new(config).unwrap()
}

fn read(consistency: Consistency, endpoint: &str) -> ReadOptions {
    ReadOptions {
        consistency,
        endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

fn value_of(result: Result<raftkv_client::GetResult, ClientError>, what: &str) -> Vec<u8> {
    match result {
        Ok(read) => read.kv.map(|kv| kv.value).unwrap_or_default(),
        Err(error) => panic!("{what}: {error}"),
    }
}

/// Isolating the leader: the majority elects a new leader with a higher term; the isolated node commits
/// nothing; after healing the old leader steps down and converges with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_converges_after_heal() {
    let dir = TempDir::new().unwrap();
    let cluster = start(3, &dir).await;
    let (old_leader, old_term) = cluster
        .wait_for_leader(&cluster.ids(), 1, WAIT_MAX)
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let mut acknowledged = BTreeMap::new();
    for i in 0..10 {
        let revision = client
            .put(format!("before-{i}"), format!("{i}"))
            .await
            .unwrap();
        acknowledged.insert(format!("before-{i}"), (format!("{i}"), revision));
    }

    cluster.mesh().isolate(old_leader).unwrap();
    let majority: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    let (_, new_term) = cluster
        .wait_for_leader(&majority, old_term + 1, WAIT_MAX)
        .await
        .unwrap();
    assert!(new_term > old_term);

    // The isolated node cannot commit: a write sent only to it is never acknowledged.
    let minority_write = pinned_client(&cluster, old_leader)
        .put("minority-write", "lost")
        .await;
    assert!(
        matches!(
            minority_write,
            Err(ClientError::Indeterminate { .. } | ClientError::Unavailable { .. })
        ),
        "the isolated node acknowledged a write: {minority_write:?}"
    );
    for i in 0..10 {
        let revision = client
            .put(format!("during-{i}"), format!("{i}"))
            .await
            .unwrap();
        acknowledged.insert(format!("during-{i}"), (format!("{i}"), revision));
    }

    cluster.mesh().heal();
    let last_revision = acknowledged
        .values()
        .map(|(_, revision)| *revision)
        .max()
        .unwrap();
    let status = cluster
        .wait_status(old_leader, WAIT_MAX, "step down and catch up", |status| {
            status.role == Role::Follower as i32
                && status.term >= new_term
                && status.revision >= last_revision
        })
        .await
        .unwrap();
    assert_eq!(
        status.leader_id,
        cluster
            .wait_for_leader(&cluster.ids(), new_term, WAIT_MAX)
            .await
            .unwrap()
            .0
    );
    for id in cluster.ids() {
        for (key, (value, revision)) in &acknowledged {
            let options = ReadOptions {
                min_revision: last_revision,
                ..read(Consistency::Stale, &cluster.addr(id))
            };
            let kv = client
                .get(key.clone(), &options)
                .await
                .unwrap()
                .kv
                .unwrap_or_else(|| panic!("node {id} lost {key}"));
            assert_eq!(
                (kv.value, kv.mod_revision),
                (value.clone().into_bytes(), *revision),
                "node {id}, {key}"
            );
        }
        let options = ReadOptions {
            min_revision: last_revision,
            ..read(Consistency::Stale, &cluster.addr(id))
        };
        let lost = client.get("minority-write", &options).await.unwrap();
        assert!(
            lost.kv.is_none(),
            "node {id} applied the write the isolated leader never committed"
        );
    }
    cluster.shutdown().await;
}

/// A follower cut off for many election timeouts and then healed does not disturb the leader: it never
/// raises its term while alone (its pre-votes find no quorum), so the leader keeps its role and its term, and
/// every write during and after the partition succeeds. Without pre-vote the follower campaigns in ever higher
/// terms and, on heal, its term deposes the leader (the check on terms fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_rejoins_without_disturbing_the_leader() {
    // How long the follower stays cut off: ten times the test timing's longest election timeout.
    const ISOLATION: Duration = Duration::from_secs(6);
    const WRITE_INTERVAL: Duration = Duration::from_millis(50);
    let dir = TempDir::new().unwrap();
    let cluster = start(3, &dir).await;
    let (leader, term) = cluster
        .wait_for_leader(&cluster.ids(), 1, WAIT_MAX)
        .await
        .unwrap();
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let client = cluster.client().unwrap();
    client.put("before", "x").await.unwrap();

    cluster.mesh().isolate(follower).unwrap();
    let isolated_at = tokio::time::Instant::now();
    let mut writes = 0;
    let mut follower_terms = Vec::new();
    while isolated_at.elapsed() < ISOLATION {
        client
            .put(format!("during-{writes}"), "x")
            .await
            .unwrap_or_else(|error| panic!("write {writes} during the isolation failed: {error}"));
        writes += 1;
        if let Some(status) = cluster.status(follower).await {
            follower_terms.push(status.term);
        }
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
    assert!(
        !follower_terms.is_empty() && follower_terms.iter().all(|seen| *seen == term),
        "the isolated follower left term {term}: {follower_terms:?}"
    );

    cluster.mesh().heal();
    let last = client.put("after-heal", "x").await.unwrap();
    let status = cluster
        .wait_status(follower, WAIT_MAX, "catch up after heal", |status| {
            status.revision >= last
        })
        .await
        .unwrap();
    assert_eq!(
        (status.leader_id, status.term),
        (leader, term),
        "the healed follower follows another leader or term"
    );
    // A few more election timeouts: a disruption would show as a new term on some node.
    for i in 0..20 {
        client.put(format!("after-{i}"), "x").await.unwrap();
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
    for id in cluster.ids() {
        let status = cluster.status(id).await.expect("status");
        assert_eq!(
            (status.leader_id, status.term),
            (leader, term),
            "node {id} after the heal"
        );
    }
    cluster.shutdown().await;
}

/// The read ladder across a partition. On the cut-off (deposed) leader: linearizable is refused at once,
/// lease is refused once the lease lapses, stale answers with the old value and a growing
/// milliseconds-since-leader, max_staleness is refused past its bound. On the majority every mode answers
/// with the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ladder_across_a_partition() {
    let dir = TempDir::new().unwrap();
    let cluster = start(3, &dir).await;
    let (old_leader, old_term) = cluster
        .wait_for_leader(&cluster.ids(), 1, WAIT_MAX)
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    client.put("k", "old").await.unwrap();
    let isolated = cluster.addr(old_leader);
    let isolated_client = pinned_client(&cluster, old_leader);
    let lease = isolated_client
        .get("k", &read(Consistency::Lease, &isolated))
        .await;
    assert_eq!(value_of(lease, "lease read on the healthy leader"), b"old");

    cluster.mesh().isolate(old_leader).unwrap();
    // A deposed leader that has not learned it was deposed never serves a linearizable read.
    match isolated_client
        .get("k", &read(Consistency::Linearizable, &isolated))
        .await
    {
        Err(_) => {}
        Ok(read) => panic!("the cut-off leader served a linearizable read: {read:?}"),
    }

    let majority: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    let (new_leader, _) = cluster
        .wait_for_leader(&majority, old_term + 1, WAIT_MAX)
        .await
        .unwrap();
    let revision = client.put("k", "new").await.unwrap();

    // Minority side.
    match isolated_client
        .get("k", &read(Consistency::Lease, &isolated))
        .await
    {
        Err(_) => {}
        Ok(read) => panic!("the cut-off leader served a lease read after its lease: {read:?}"),
    }
    match isolated_client
        .get("k", &read(Consistency::Linearizable, &isolated))
        .await
    {
        Err(_) => {}
        Ok(read) => panic!("the cut-off leader served a linearizable read: {read:?}"),
    }
    let first = isolated_client
        .get("k", &read(Consistency::Stale, &isolated))
        .await
        .unwrap();
    assert_eq!(
        first.kv.as_ref().unwrap().value,
        b"old",
        "the minority cannot know the new value"
    );
    assert_eq!(first.envelope.node_id, old_leader);
    let first_millis = first
        .envelope
        .millis_since_leader
        .expect("heard from a leader before the cut");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = isolated_client
        .get("k", &read(Consistency::Stale, &isolated))
        .await
        .unwrap();
    let second_millis = second.envelope.millis_since_leader.unwrap();
    assert!(
        second_millis >= first_millis + 150,
        "staleness did not grow: {first_millis} then {second_millis}"
    );
    let bounded = ReadOptions {
        max_staleness: Some(Duration::from_millis(100)),
        ..read(Consistency::Stale, &isolated)
    };
    match isolated_client.get("k", &bounded).await {
        Err(ClientError::TooStale(_)) => {}
        other => {
            panic!("a bounded stale read past its bound was not refused as too stale: {other:?}")
        }
    }

    // Majority side: every mode sees the new value.
    for id in &majority {
        let endpoint = cluster.addr(*id);
        let linearizable = client
            .get("k", &read(Consistency::Linearizable, &endpoint))
            .await;
        assert_eq!(
            value_of(linearizable, "majority linearizable read"),
            b"new",
            "node {id}"
        );
        let stale = ReadOptions {
            min_revision: revision,
            ..read(Consistency::Stale, &endpoint)
        };
        assert_eq!(
            value_of(client.get("k", &stale).await, "majority stale read"),
            b"new",
            "node {id}"
        );
        let bounded = ReadOptions {
            max_staleness: Some(Duration::from_secs(2)),
            ..stale
        };
        assert_eq!(
            value_of(client.get("k", &bounded).await, "majority bounded read"),
            b"new",
            "node {id}"
        );
    }
    let lease = client
        .get("k", &read(Consistency::Lease, &cluster.addr(new_leader)))
        .await;
    assert_eq!(value_of(lease, "lease read on the new leader"), b"new");
    cluster.shutdown().await;
}

/// A linearizable read on a follower never returns a value older than a write acknowledged before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_linearizable_reads_see_every_acknowledged_write() {
    let dir = TempDir::new().unwrap();
    let cluster = start(3, &dir).await;
    let (leader, _) = cluster
        .wait_for_leader(&cluster.ids(), 1, WAIT_MAX)
        .await
        .unwrap();
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    // Slow the follower's replication so that a local read would often be behind.
    cluster
        .mesh()
        .set_link(
            leader,
            follower,
            LinkState::Delay(Duration::from_millis(30)),
        )
        .unwrap();
    let client = cluster.client().unwrap();
    let endpoint = cluster.addr(follower);
    for i in 0..30u32 {
        client.put("register", i.to_string()).await.unwrap();
        // A pinned read is not retried by the client; under a loaded machine an election can refuse one. A
        // refusal is allowed (it returns no value), an old value is not.
        let mut attempts = 0;
        let read = loop {
            attempts += 1;
            match client
                .get("register", &read(Consistency::Linearizable, &endpoint))
                .await
            {
                Ok(read) => break read,
                Err(error) if attempts < READ_ATTEMPTS_MAX => {
                    eprintln!("follower read refused, retrying: {error}");
                }
                Err(error) => panic!("follower read refused {attempts} times: {error}"),
            }
        };
        assert_eq!(read.envelope.node_id, follower);
        assert_eq!(
            read.kv.unwrap().value,
            i.to_string().into_bytes(),
            "follower read returned an older value"
        );
    }
    cluster.shutdown().await;
}

/// A session's read on a lagging follower waits for the session's own write; with the follower cut off it
/// fails with the typed revision error instead of returning an older value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_read_waits_for_own_write_and_times_out_when_partitioned() {
    let dir = TempDir::new().unwrap();
    let cluster = start(3, &dir).await;
    let (leader, _) = cluster
        .wait_for_leader(&cluster.ids(), 1, WAIT_MAX)
        .await
        .unwrap();
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let endpoint = cluster.addr(follower);
    let client = cluster.client().unwrap();
    let mut session = client.session();
    cluster
        .mesh()
        .set_link(
            leader,
            follower,
            LinkState::Delay(Duration::from_millis(200)),
        )
        .unwrap();
    for i in 0..5u32 {
        session.put("mine", i.to_string()).await.unwrap();
        let read = session
            .get("mine", &read(Consistency::Stale, &endpoint))
            .await
            .unwrap();
        assert_eq!(
            read.kv.unwrap().value,
            i.to_string().into_bytes(),
            "the session did not read its own write"
        );
        assert!(read.envelope.revision >= session.min_revision());
    }

    cluster.mesh().isolate(follower).unwrap();
    session.put("mine", "unseen").await.unwrap();
    match session
        .get("mine", &read(Consistency::Stale, &endpoint))
        .await
    {
        Err(ClientError::RevisionTimeout(message)) => {
            assert!(message.contains("short of"), "{message}")
        }
        other => panic!("expected a revision timeout on the cut-off follower, got {other:?}"),
    }
    cluster.shutdown().await;
}
