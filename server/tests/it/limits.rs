//! Every limit at its edge, on real nodes over gRPC: each refusal comes with its status code and a message
//! naming the limit, and nothing is written (the leader's last log index does not move). Complements
//! `cluster::bad_input_is_refused_and_changes_nothing` (empty key, put key and value over their limits,
//! malformed and misaddressed peer messages).
//!
//! Limits covered here: key and value size on every write and read that carries them
//! (`KEY_BYTES_MAX`, `VALUE_BYTES_MAX`), client request size (`CLIENT_REQUEST_BYTES_MAX`), scan limit
//! (`SCAN_LIMIT_MAX`), pending proposals (`PROPOSALS_PENDING_MAX`, driven for real), peer message size
//! (`PEER_MESSAGE_BYTES_MAX`), snapshot chunk size and contiguity (`SNAPSHOT_CHUNK_BYTES`), and a learner
//! catching up by a snapshot several chunks long.

use std::collections::BTreeMap;

use raftkv_client::{ClientError, Consistency, Expected, ReadOptions, ScanRange};
use raftkv_proto::kv;
use raftkv_proto::kv::kv_client::KvClient;
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::RaftMessage;
use raftkv_server::kv::state_machine::{KEY_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_BYTES_MAX};
use raftkv_server::kv::write_batch::PROPOSALS_PENDING_MAX;
use raftkv_server::node::CLIENT_REQUEST_BYTES_MAX;
use raftkv_server::raft::network::PEER_MESSAGE_BYTES_MAX;
use raftkv_server::raft::peer_service::SNAPSHOT_CHUNK_BYTES;
use raftkv_server::raft::types::{SnapshotMeta, TypeConfig, Vote};
use tonic::transport::Channel;
use tonic::Code;

use raftkv_testkit::{fast_timing, wait_until, TestCluster, WAIT_MAX};

/// Connections the proposal flood is spread over: one HTTP/2 connection admits a bounded number of
/// concurrent streams, and the flood needs more than `PROPOSALS_PENDING_MAX` in flight at once.
const FLOOD_CONNECTIONS: usize = 32;
/// Requests in the flood beyond the limit.
const FLOOD_EXTRA: usize = 512;

/// Test timing with a leader that goes on taking writes for 5 s after its quorum stops answering.
fn slow_quorum_lapse_timing() -> Vec<String> {
    [
        "--heartbeat-interval-ms",
        "50",
        "--election-timeout-min-ms",
        "5000",
        "--election-timeout-max-ms",
        "6000",
        "--lease-drift-margin-ms",
        "100",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

async fn kv_client(addr: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to node")
        .max_decoding_message_size(usize::MAX)
}

async fn last_log_index(cluster: &TestCluster, id: u64) -> u64 {
    cluster.status(id).await.expect("status").last_log_index
}

/// Asserts `result` failed with `code`, with a message that mentions `mentions`.
fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
    mentions: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(
                status.message().contains(mentions),
                "{what}: the message does not mention {mentions:?}: {:?}",
                status.message()
            );
        }
        Ok(response) => panic!("{what}: accepted: {response:?}"),
    }
}

/// Keys and values over their limits in cas, delete and get, a request over the request size limit, a scan
/// over the scan limit, a peer message over its limit and snapshot chunks that are too big or leave a gap:
/// each refused with its status, and the leader's log does not move. A scan of exactly the limit works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_refused_with_its_status_and_writes_nothing() {
    let cluster = TestCluster::start(3, &fast_timing());
    let (leader, term) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let revision = client.put("stable", "before").await.unwrap();
    cluster.wait_applied(leader, revision).await;
    let before = last_log_index(&cluster, leader).await;
    let mut kv = kv_client(&cluster.addr(leader)).await;

    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let big_value = vec![b'v'; VALUE_BYTES_MAX + 1];
    let cas = |key: Vec<u8>, expected: Vec<u8>, new_value: Vec<u8>| kv::CasRequest {
        key,
        new_value,
        expected: Some(kv::cas_request::Expected::ExpectedValue(expected)),
        session: None,
    };
    assert_refused(
        "cas with an expected value over the limit",
        kv.cas(cas(b"stable".to_vec(), big_value.clone(), b"x".to_vec()))
            .await,
        Code::InvalidArgument,
        "over the limit",
    );
    assert_refused(
        "cas with a new value over the limit",
        kv.cas(cas(
            b"stable".to_vec(),
            b"before".to_vec(),
            big_value.clone(),
        ))
        .await,
        Code::InvalidArgument,
        "over the limit",
    );
    assert_refused(
        "cas with a key over the limit",
        kv.cas(cas(long_key.clone(), b"before".to_vec(), b"x".to_vec()))
            .await,
        Code::InvalidArgument,
        "over the limit",
    );
    assert_refused(
        "delete with a key over the limit",
        kv.delete(kv::DeleteRequest {
            key: long_key.clone(),
            session: None,
        })
        .await,
        Code::InvalidArgument,
        "over the limit",
    );
    assert_refused(
        "get with a key over the limit",
        kv.get(kv::GetRequest {
            key: long_key.clone(),
            read: None,
        })
        .await,
        Code::InvalidArgument,
        "over the limit",
    );
    // Larger than any valid request: refused by gRPC before a handler runs.
    assert_refused(
        "a request over the request size limit",
        kv.put(kv::PutRequest {
            key: b"huge".to_vec(),
            value: vec![b'v'; CLIENT_REQUEST_BYTES_MAX],
            session: None,
            lease: 0,
        })
        .await,
        Code::OutOfRange,
        &CLIENT_REQUEST_BYTES_MAX.to_string(),
    );
    let scan = |limit: usize| kv::ScanRequest {
        prefix: Vec::new(),
        start: Vec::new(),
        end: Vec::new(),
        limit: limit as u32,
        read: None,
    };
    assert_refused(
        "a scan over the scan limit",
        kv.scan(scan(SCAN_LIMIT_MAX + 1)).await,
        Code::OutOfRange,
        &SCAN_LIMIT_MAX.to_string(),
    );
    let at_limit = kv
        .scan(scan(SCAN_LIMIT_MAX))
        .await
        .expect("scan at the limit");
    assert_eq!(at_limit.into_inner().kvs.len(), 1);
    // The client library reports the same refusals with typed errors.
    match client
        .cas("stable", Expected::Value(big_value.clone()), "x")
        .await
    {
        Err(ClientError::InvalidArgument(_)) => {}
        other => panic!("client cas over the limit: {other:?}"),
    }
    match client
        .scan(
            ScanRange::Prefix(Vec::new()),
            SCAN_LIMIT_MAX as u32 + 1,
            &ReadOptions::default(),
        )
        .await
    {
        Err(ClientError::OutOfRange(_)) => {}
        other => panic!("client scan over the limit: {other:?}"),
    }

    // Peer messages: over the size limit, and snapshot chunks over the chunk size or off the end.
    let mut peer = PeerClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .unwrap();
    let from = if leader == 1 { 2 } else { 1 };
    let message = |payload: Vec<u8>| RaftMessage {
        cluster_id: "raftkv".into(),
        from,
        to: leader,
        payload,
        leader_quorum_age_ms: None,
        seq: 0,
        deadline_ms: 0,
    };
    assert_refused(
        "a peer message over the peer message limit",
        peer.append_entries(message(vec![0; PEER_MESSAGE_BYTES_MAX + 1]))
            .await,
        Code::OutOfRange,
        &PEER_MESSAGE_BYTES_MAX.to_string(),
    );
    let chunk = |offset: u64, length: u64| {
        let request = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
            // A later term: a leader of the current one is known, and a second one is refused before the size.
            vote: Vote::new_committed(term + 1, from),
            meta: SnapshotMeta {
                snapshot_id: "forged".to_string(),
                ..Default::default()
            },
            offset,
            data: vec![0; length as usize],
            done: false,
        };
        message(postcard::to_stdvec(&request).unwrap())
    };
    assert_refused(
        "a snapshot chunk over the chunk size",
        peer.install_snapshot(chunk(0, SNAPSHOT_CHUNK_BYTES + 1))
            .await,
        Code::InvalidArgument,
        &SNAPSHOT_CHUNK_BYTES.to_string(),
    );
    assert_refused(
        "a snapshot chunk far past the bytes received",
        peer.install_snapshot(chunk(1 << 40, 16)).await,
        Code::InvalidArgument,
        "gap",
    );

    assert_eq!(
        last_log_index(&cluster, leader).await,
        before,
        "a refused request wrote to the log"
    );
    let read = client.get("stable", &ReadOptions::default()).await.unwrap();
    assert_eq!(read.kv.unwrap().value, b"before");
}

/// With the followers down nothing commits, so every write the leader accepts stays pending; a flood of more
/// than `PROPOSALS_PENDING_MAX` concurrent puts gets `ResourceExhausted` (kind `busy`) for the excess, at
/// once. Once the followers are back the pending writes commit, and not one refused key exists. The election
/// timeouts are long here: a leader that no quorum acknowledged for `election_timeout_min` refuses writes
/// before it counts them (`no_quorum`), and the flood must all arrive before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_over_the_pending_limit_are_refused_and_never_written() {
    let mut cluster = TestCluster::start(3, &slow_quorum_lapse_timing());
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let leader_addr = cluster.addr(leader);
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.kill(*id);
    }

    let mut channels = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        channels.push(kv_client(&leader_addr).await);
    }
    let total = PROPOSALS_PENDING_MAX + FLOOD_EXTRA;
    let puts = (0..total).map(|i| {
        let mut kv = channels[i % FLOOD_CONNECTIONS].clone();
        async move {
            let result = kv
                .put(kv::PutRequest {
                    key: format!("flood/{i:05}").into_bytes(),
                    value: b"x".to_vec(),
                    session: None,
                    lease: 0,
                })
                .await;
            (i, result)
        }
    });
    let results = futures::future::join_all(puts).await;
    let mut refused = Vec::new();
    for (i, result) in results {
        match result {
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_eq!(
                    status
                        .metadata()
                        .get(raftkv_proto::contract::ERROR_KIND_KEY)
                        .and_then(|kind| kind.to_str().ok()),
                    Some(raftkv_proto::contract::ErrorKind::Busy.as_str()),
                    "{status:?}"
                );
                assert!(
                    status
                        .message()
                        .contains(&PROPOSALS_PENDING_MAX.to_string()),
                    "{status:?}"
                );
                refused.push(i);
            }
            // Pending until the commit timeout: indeterminate, never refused.
            Err(status) if status.code() == Code::DeadlineExceeded => {}
            other => panic!("put {i} with no quorum: {other:?}"),
        }
    }
    assert!(
        refused.len() >= FLOOD_EXTRA,
        "only {} of {total} concurrent puts were refused with {PROPOSALS_PENDING_MAX} allowed pending",
        refused.len()
    );

    for id in &followers {
        cluster.restart(*id);
    }
    let client = cluster.client();
    // A write after the flood commits only once the pending ones before it did.
    let revision = client
        .put("after-flood", "x")
        .await
        .expect("write after restart");
    cluster.wait_applied(leader, revision).await;
    let written: BTreeMap<Vec<u8>, ()> =
        wait_until("a scan of the flood keys", WAIT_MAX, || async {
            client
                .scan(
                    ScanRange::Prefix(b"flood/".to_vec()),
                    SCAN_LIMIT_MAX as u32,
                    &ReadOptions::default(),
                )
                .await
                .ok()
        })
        .await
        .kvs
        .into_iter()
        .map(|kv| (kv.key, ()))
        .collect();
    for i in refused {
        let key = format!("flood/{i:05}").into_bytes();
        assert!(
            !written.contains_key(&key),
            "put {i} was refused as busy but its key exists"
        );
    }
}

/// A learner added after the log was purged catches up by a snapshot several `SNAPSHOT_CHUNK_BYTES` chunks
/// long and ends with every key, value and revision the leader has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_catches_up_by_a_snapshot_of_several_chunks() {
    const VALUE_BYTES: usize = 60 * 1024;
    // Values alone make the snapshot this many chunks long, at least.
    const CHUNKS_MIN: usize = 3;
    let keys = CHUNKS_MIN * SNAPSHOT_CHUNK_BYTES as usize / VALUE_BYTES + 1;
    let mut args = fast_timing();
    args.extend(["--snapshot-after-entries", "10", "--log-keep-entries", "0"].map(String::from));
    let mut cluster = TestCluster::start(3, &args);
    let (leader, _) = cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let mut last = 0;
    for i in 0..keys {
        let value = vec![b'a' + (i % 26) as u8; VALUE_BYTES];
        last = client.put(format!("big/{i:04}"), value).await.unwrap();
    }
    // The snapshot covering the writes exists and the log behind it is purged.
    wait_until("the leader snapshots past the writes", WAIT_MAX, || async {
        cluster
            .status(leader)
            .await
            .filter(|status| status.snapshot_index + 10 >= last)
    })
    .await;

    let learner_addr = cluster.add_node(4, &fast_timing());
    client
        .add_learner(4, &learner_addr)
        .await
        .expect("add learner");
    let learner = cluster.wait_applied(4, last).await;
    assert!(
        learner.snapshot_index > 0,
        "the learner caught up without a snapshot: {learner:?}"
    );
    let on_leader = client
        .scan(
            ScanRange::Prefix(b"big/".to_vec()),
            SCAN_LIMIT_MAX as u32,
            &ReadOptions::default(),
        )
        .await
        .unwrap();
    let on_learner = client
        .scan(
            ScanRange::Prefix(b"big/".to_vec()),
            SCAN_LIMIT_MAX as u32,
            &ReadOptions {
                consistency: Consistency::Stale,
                min_revision: last,
                endpoint: Some(learner_addr),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(on_leader.kvs.len(), keys);
    let bytes: usize = on_learner.kvs.iter().map(|kv| kv.value.len()).sum();
    assert!(bytes > CHUNKS_MIN * SNAPSHOT_CHUNK_BYTES as usize);
    assert!(
        on_learner.kvs == on_leader.kvs,
        "the learner's keys differ from the leader's"
    );
}
