//! Cluster tests over real gRPC between real `raftkv-server` processes on 127.0.0.1.

use std::collections::BTreeMap;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use raftkv_client::{ClientError, Consistency, ReadOptions};
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::RaftMessage;
use raftkv_server::raft::types::{NodeId, TypeConfig, Vote};

use raftkv_testkit::{fast_timing, TestCluster};

use crate::harness::read_at_once;

fn stale_on(endpoint: &str, min_revision: u64) -> ReadOptions {
    ReadOptions {
        consistency: Consistency::Stale,
        min_revision,
        endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

/// A snapshot comes by size as well as by count: with a count no test reaches, a node whose log grows past
/// `--snapshot-after-mb` builds one (and every node does, each at its own moment), and purges its log behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_built_once_the_log_reaches_its_size() {
    // Values of 60 KB: 40 of them are 2.4 MB of log, past a 1 MB threshold even drawn at its highest.
    const VALUE_BYTES: usize = 60 * 1024;
    const PUTS: usize = 40;
    // openraft 0.9 gives an AppendEntries at most one heartbeat interval: 64 entries of 60 KB to a follower
    // that fell behind take longer than fast_timing's 50 ms on a busy machine, and are retried as they are
    // after a back-off. Heartbeats of 200 ms leave room.
    let mut args = fast_timing();
    let heartbeat = args
        .iter()
        .position(|flag| flag == "--heartbeat-interval-ms")
        .expect("fast timing sets the heartbeat");
    args[heartbeat + 1] = "200".to_string();
    args.extend(
        [
            "--snapshot-after-entries",
            "1000000",
            "--snapshot-after-mb",
            "1",
        ]
        .map(String::from),
    );
    let cluster = TestCluster::start(3, &args);
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let mut last = 0;
    for i in 0..PUTS {
        last = client
            .put(format!("big-{i}"), "v".repeat(VALUE_BYTES))
            .await
            .expect("put");
    }
    for id in 1..=3u64 {
        cluster.wait_applied(id, last).await;
        cluster
            .wait_status(id, "build a snapshot by size", |status| {
                status.snapshot_index > 0
            })
            .await;
    }
}

/// Three nodes elect a leader and take writes through any node; the leader is SIGKILLed and a new one takes
/// over; the old leader restarts and catches up; a fourth node added as a learner after the log was purged
/// catches up by snapshot; every acknowledged write is then on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_leader_kill_and_learner_catches_up_by_snapshot() {
    let mut args = fast_timing();
    args.extend(["--snapshot-after-entries", "20", "--log-keep-entries", "0"].map(String::from));
    let mut cluster = TestCluster::start(3, &args);
    let (leader, term) = cluster.wait_for_leader(&[1, 2, 3], 1).await;

    let mut acknowledged: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for i in 0..30u64 {
        // Round-robin the entry node: followers answer with a leader hint the client follows.
        let via = 1 + i % 3;
        let key = format!("key-{i:03}");
        let value = format!("value-{i}");
        let revision = cluster
            .client_of(via)
            .put(key.clone(), value.clone())
            .await
            .expect("write before the kill");
        acknowledged.insert(key, (value, revision));
    }

    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (new_leader, new_term) = cluster.wait_for_leader(&survivors, term + 1).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    let client = cluster.client();
    for i in 30..60u64 {
        let key = format!("key-{i:03}");
        let value = format!("value-{i}");
        let revision = client
            .put(key.clone(), value.clone())
            .await
            .expect("write after the kill");
        acknowledged.insert(key, (value, revision));
    }

    cluster.restart(leader);
    let last_revision = acknowledged
        .values()
        .map(|(_, revision)| *revision)
        .max()
        .unwrap();
    cluster.wait_applied(leader, last_revision).await;

    // The log has been purged behind snapshots (every 20 entries, none kept): a new node must get a snapshot.
    let learner_args: Vec<String> = fast_timing()
        .into_iter()
        .chain(["--snapshot-after-entries", "100000"].map(String::from))
        .collect();
    let learner_addr = cluster.add_node(4, &learner_args);
    client
        .add_learner(4, &learner_addr)
        .await
        .expect("add learner");
    let learner_status = cluster.wait_applied(4, last_revision).await;
    assert!(
        learner_status.snapshot_index > 0,
        "the learner caught up without a snapshot: {learner_status:?}"
    );
    let members = client.members().await.unwrap();
    assert!(members
        .members
        .iter()
        .any(|member| member.node_id == 4 && !member.voter));

    for id in 1..=4u64 {
        let endpoint = cluster.addr(id);

        for (key, (value, revision)) in &acknowledged {
            let read = client
                .get(key.clone(), &stale_on(&endpoint, last_revision))
                .await
                .expect("stale read");
            let kv = read
                .kv
                .unwrap_or_else(|| panic!("node {id} lost acknowledged {key}"));
            assert_eq!(
                kv.value,
                value.as_bytes(),
                "node {id} has another value for {key}"
            );
            assert_eq!(
                kv.mod_revision, *revision,
                "node {id} has another revision for {key}"
            );
            assert_eq!(read.envelope.node_id, id);
        }
    }

    // Membership through the admin API: promote the learner, then remove it again.
    let members = client.promote(4).await.expect("promote");
    assert!(
        members
            .members
            .iter()
            .any(|member| member.node_id == 4 && member.voter),
        "{members:?}"
    );
    client
        .put("after-promote", "x")
        .await
        .expect("write with four voters");
    let members = client.remove_member(4).await.expect("remove");
    assert!(
        members.members.iter().all(|member| member.node_id != 4),
        "{members:?}"
    );
    client
        .put("after-remove", "x")
        .await
        .expect("write after removing a node");
}

/// SIGTERM shuts a node down gracefully (exit 0, in bounded time); restarted, it has every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_restart_keeps_data() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let mut last = 0;
    for i in 0..20 {
        last = client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    cluster.wait_applied(2, last).await;
    let status = cluster
        .terminate(2, std::time::Duration::from_secs(15))
        .await;
    assert!(
        status.success(),
        "node exited with {status:?} after SIGTERM"
    );
    cluster.restart(2);
    cluster.wait_applied(2, last).await;
    let endpoint = cluster.addr(2);
    for i in 0..20 {
        let read = client
            .get(format!("k{i}"), &stale_on(&endpoint, last))
            .await
            .unwrap();
        assert_eq!(
            read.kv.expect("acknowledged write lost").value,
            format!("v{i}").into_bytes()
        );
    }
}

/// Bad input is refused with a clear status and changes nothing: empty key, key or value over the limit,
/// a malformed peer message, a peer message for another cluster or another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let revision = client.put("stable", "before").await.unwrap();
    let before = cluster.wait_applied(leader, revision).await;

    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("empty key", Vec::new(), b"v".to_vec()),
        (
            "key over limit",
            vec![b'k'; raftkv_server::kv::state_machine::KEY_BYTES_MAX + 1],
            b"v".to_vec(),
        ),
        (
            "value over limit",
            b"k".to_vec(),
            vec![b'v'; raftkv_server::kv::state_machine::VALUE_BYTES_MAX + 1],
        ),
    ];
    for (what, key, value) in cases {
        match client.put(key, value).await {
            Err(ClientError::InvalidArgument(message)) => assert!(!message.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }

    let mut peer = PeerClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .unwrap();
    let garbage = RaftMessage {
        cluster_id: "raftkv".into(),
        from: 99,
        to: leader,
        payload: vec![0xff; 7],
        ..Default::default()
    };
    let status = peer
        .append_entries(garbage)
        .await
        .expect_err("malformed payload accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let foreign = RaftMessage {
        cluster_id: "another-cluster".into(),
        from: 2,
        to: leader,
        payload: Vec::new(),
        ..Default::default()
    };
    let status = peer
        .vote(foreign)
        .await
        .expect_err("message for another cluster accepted");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let misrouted = RaftMessage {
        cluster_id: "raftkv".into(),
        from: 2,
        to: leader + 10,
        payload: Vec::new(),
        ..Default::default()
    };
    let status = peer
        .append_entries(misrouted)
        .await
        .expect_err("message for another node accepted");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    // Nothing changed: same term, no new log entry, the value is intact.
    let after = cluster.status(leader).await.unwrap();
    assert_eq!(after.term, before.term);
    assert_eq!(after.last_log_index, before.last_log_index);
    let read = client.get("stable", &ReadOptions::default()).await.unwrap();
    assert_eq!(read.kv.unwrap().value, b"before");
}

/// The AppendEntries stream answers each message with its `seq`, in order, and a message it refuses ends the
/// stream with the refusal's status. A leader of term 0 is behind every node, so openraft answers it with
/// `HigherVote` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_entries_stream_answers_in_order_and_ends_on_a_refusal() {
    let cluster = TestCluster::start(3, &fast_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let follower = if leader == 1 { 2 } else { 1 };
    // The follower has everything the new leader appended (its first entry may still be on its way).
    let leader_log = cluster.status(leader).await.unwrap().last_log_index;
    let before = cluster.wait_applied_index(follower, leader_log).await;
    let mut peer = PeerClient::connect(format!("http://{}", cluster.addr(follower)))
        .await
        .unwrap();
    let (messages, outgoing) = tokio::sync::mpsc::channel(4);
    let mut replies = peer
        .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("stream opened")
        .into_inner();
    let stale_leader = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(0, leader),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    let message = |seq: u64, payload: Vec<u8>| RaftMessage {
        cluster_id: "raftkv".into(),
        from: leader,
        to: follower,
        payload,
        seq,
        ..Default::default()
    };
    for seq in [5, 6] {
        messages
            .send(message(seq, postcard::to_stdvec(&stale_leader).unwrap()))
            .await
            .unwrap();
        let reply = replies
            .message()
            .await
            .expect("a reply")
            .expect("the stream is open");
        assert_eq!(reply.seq, seq);
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            postcard::from_bytes(&reply.payload).unwrap();
        assert!(
            matches!(answer, Ok(AppendEntriesResponse::HigherVote(_))),
            "{answer:?}"
        );
    }
    messages.send(message(7, vec![0xff; 7])).await.unwrap();
    let status = replies
        .message()
        .await
        .expect_err("a malformed message is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        !matches!(replies.message().await, Ok(Some(_))),
        "the stream goes on after a refusal"
    );
    let after = cluster.status(follower).await.unwrap();
    assert_eq!(after.term, before.term);
    assert_eq!(after.last_log_index, before.last_log_index);
}

/// Concurrent linearizable reads on the leader share read-index rounds: 200 reads in flight at once cost far
/// fewer than 200 quorum rounds (one round per read would fail this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_quorum_rounds() {
    const READS: u64 = 200;
    let cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let revision = client.put("shared", "x").await.unwrap();
    // The leader that committed the write, once every node has applied it and names it.
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], revision).await;
    let before = cluster.status(leader).await.unwrap().read_index_rounds;
    read_at_once(&client, cluster.addr(leader), "shared", b"x", READS).await;
    let rounds = cluster.status(leader).await.unwrap().read_index_rounds - before;
    assert!(rounds >= 1, "no read-index round ran");
    assert!(
        rounds < READS / 2,
        "{READS} concurrent reads took {rounds} rounds: they are not sharing"
    );
}
