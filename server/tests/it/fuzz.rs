//! Property tests over arbitrary and mutated bytes, the stable-toolchain stand-in for `cargo fuzz`: peer
//! message decoding, the peer service end to end on an in-process node, log entry and snapshot decoding,
//! the WAL's recovery from damaged segment files, and the state machine's apply. The property is always the
//! same: no panic, bad input refused cleanly.
//!
//! Random bytes rarely get past a decoder's first field, so most inputs start from a valid encoding of a
//! generated message and apply a few edits (overwrite, insert, remove, truncate): they reach deep into the
//! decoders and, when they still decode, into openraft and the state machine.
//!
//! Each property runs proptest's default 256 cases (seconds in the suite). `PROPTEST_CASES` raises it:
//! `PROPTEST_CASES=100000 cargo test -p raftkv-server --test it fuzz`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use raftkv_proto::peer::peer_server::Peer;
use raftkv_proto::peer::RaftMessage;
use raftkv_server::kv::state_machine::{
    Batch, Command, Expected, Rejection, Request, Response, ScanRange, SessionRef, KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
};
use raftkv_server::raft::handover::TimeoutNow;
use raftkv_server::raft::network::{NetworkFactory, PeerChannels};
use raftkv_server::raft::peer_service::{decode_payload, PeerService};
use raftkv_server::raft::pre_vote::PreVoteRequest;
use raftkv_server::raft::quorum::{QuorumClock, SilencePolicy};
use raftkv_server::raft::types::{
    Entry, LogId, Node, NodeId, Raft, SnapshotMeta, TypeConfig, Vote,
};
use raftkv_server::reads::read_index::ReadIndexBatcher;
use raftkv_server::reads::LeaderContact;
use raftkv_server::storage;
use raftkv_server::storage::wal::{OpenError, Wal};
use raftkv_server::storage::Keyspace;

/// Longest run of random bytes tried as a message.
const RANDOM_BYTES_MAX: usize = 512;
/// Edits applied to a valid encoding.
const EDITS_MAX: usize = 4;
/// Entries in a generated AppendEntries.
const ENTRIES_MAX: usize = 4;
/// Commands in a generated state machine history.
const HISTORY_MAX: usize = 48;
/// Entries written to the WAL before its files are damaged.
const WAL_ENTRIES_MAX: usize = 24;
/// Cluster id of the in-process node.
const CLUSTER_ID: &str = "fuzz";
/// The node fuzzed peer messages mostly come from (the fuzzed node is node 1).
const SENDER: NodeId = 2;

// ---- strategies ----

fn log_id() -> impl Strategy<Value = LogId> {
    (0..4u64, 0..4u64, 0..16u64)
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

/// A vote, mostly of node `SENDER` (the envelope's usual sender) and mostly committed for a leader's message
/// (uncommitted for a candidate's), so that many messages pass the peer service's checks and reach openraft.
fn vote(leader: bool) -> impl Strategy<Value = Vote> {
    let committed = if leader {
        prop::bool::weighted(0.75)
    } else {
        prop::bool::weighted(0.25)
    };
    (
        0..4u64,
        prop_oneof![3 => Just(SENDER), 1 => 0..4u64],
        committed,
    )
        .prop_map(|(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        })
}

/// Keys from a small alphabet (so writes meet each other), plus the edge cases: empty and over the limit.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(b'a'..=b'c', 1..3),
        1 => Just(Vec::new()),
        1 => Just(vec![b'k'; KEY_BYTES_MAX + 1]),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => prop::collection::vec(any::<u8>(), 0..4),
        1 => Just(vec![b'v'; VALUE_BYTES_MAX + 1]),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let expected = prop_oneof![
        value().prop_map(Expected::Value),
        (0..8u64).prop_map(Expected::Revision),
        Just(Expected::Absent),
    ];
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| Command::Put { key, value }),
        key().prop_map(|key| Command::Delete { key }),
        (key(), expected, value()).prop_map(|(key, expected, value)| Command::Cas {
            key,
            expected,
            value
        }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let session =
        prop::option::of(
            (1..4u64, 0..6u64).prop_map(|(client_id, sequence)| SessionRef {
                client_id,
                sequence,
            }),
        );
    (session, command()).prop_map(|(session, command)| Request { session, command })
}

fn entry() -> impl Strategy<Value = Entry> {
    let membership = prop::collection::btree_set(1..5u64, 1..4).prop_map(|voters| {
        let nodes: BTreeMap<NodeId, Node> = voters
            .iter()
            .map(|id| (*id, Node::new(format!("127.0.0.1:{}", 1000 + id))))
            .collect();
        Membership::new(vec![voters], nodes)
    });
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        prop::collection::vec(request(), 0..4)
            .prop_map(|writes| EntryPayload::Normal(Batch { writes })),
        membership.prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn append_entries() -> impl Strategy<Value = AppendEntriesRequest<TypeConfig>> {
    (
        vote(true),
        prop::option::of(log_id()),
        prop::collection::vec(entry(), 0..ENTRIES_MAX),
        prop::option::of(log_id()),
    )
        .prop_map(
            |(vote, prev_log_id, entries, leader_commit)| AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            },
        )
}

fn vote_request() -> impl Strategy<Value = VoteRequest<NodeId>> {
    (vote(false), prop::option::of(log_id()))
        .prop_map(|(vote, last_log_id)| VoteRequest::new(vote, last_log_id))
}

fn pre_vote_request() -> impl Strategy<Value = PreVoteRequest> {
    (any::<u64>(), prop::option::of(log_id()))
        .prop_map(|(term, last_log_id)| PreVoteRequest { term, last_log_id })
}

fn timeout_now() -> impl Strategy<Value = TimeoutNow> {
    (any::<u64>(), any::<u64>()).prop_map(|(term, within_ms)| TimeoutNow { term, within_ms })
}

fn install_snapshot() -> impl Strategy<Value = InstallSnapshotRequest<TypeConfig>> {
    (
        vote(true),
        prop::option::of(log_id()),
        0..64u64,
        prop::collection::vec(any::<u8>(), 0..32),
        any::<bool>(),
    )
        .prop_map(
            |(vote, last_log_id, offset, data, done)| InstallSnapshotRequest {
                vote,
                meta: SnapshotMeta {
                    last_log_id,
                    snapshot_id: format!("s{offset}"),
                    ..Default::default()
                },
                offset,
                data,
                done,
            },
        )
}

/// One edit of a byte string: (where, byte, which edit).
type Edit = (Index, u8, u8);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), 0..4u8), 0..=EDITS_MAX)
}

/// Applies `edits` to `bytes`: overwrite, insert or remove a byte, or truncate.
fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for (at, byte, edit) in edits {
        let position = at.index(bytes.len() + 1);
        match edit {
            0 if position < bytes.len() => bytes[position] = *byte,
            1 => bytes.insert(position, *byte),
            2 if position < bytes.len() => {
                bytes.remove(position);
            }
            3 => bytes.truncate(position),
            _ => {}
        }
    }
    bytes
}

/// Either random bytes or a mutated valid encoding of a value from `valid`.
fn message_bytes<T: serde::Serialize + std::fmt::Debug>(
    valid: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..RANDOM_BYTES_MAX),
        (valid, edits()).prop_map(|(message, edits)| {
            mutate(postcard::to_stdvec(&message).expect("encode"), &edits)
        }),
    ]
}

/// Decoding `bytes` as `T` either works or is `InvalidArgument`; never a panic.
fn check_decodes_or_refuses<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Err(status) = decode_payload::<T>(bytes, "fuzzed") {
        prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    Ok(())
}

// ---- decoding ----

proptest! {
    /// What a node decodes from peers (requests) and from its peers' replies never panics.
    #[test]
    fn peer_messages_decode_or_are_refused(
        append in message_bytes(append_entries()),
        vote in message_bytes(vote_request()),
        snapshot in message_bytes(install_snapshot()),
    ) {
        for bytes in [&append, &vote, &snapshot] {
            check_decodes_or_refuses::<AppendEntriesRequest<TypeConfig>>(bytes)?;
            check_decodes_or_refuses::<VoteRequest<NodeId>>(bytes)?;
            check_decodes_or_refuses::<InstallSnapshotRequest<TypeConfig>>(bytes)?;
            check_decodes_or_refuses::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes)?;
            check_decodes_or_refuses::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes)?;
            check_decodes_or_refuses::<
                Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
            >(bytes)?;
        }
    }

    /// A stored log entry and a snapshot of the state machine decode or are refused; a valid entry
    /// round-trips.
    #[test]
    fn entries_and_snapshots_decode_or_are_refused(
        entry in entry(),
        entry_edits in edits(),
        history in prop::collection::vec(request(), 0..HISTORY_MAX),
        snapshot_edits in edits(),
        random in prop::collection::vec(any::<u8>(), 0..RANDOM_BYTES_MAX),
    ) {
        let encoded = postcard::to_stdvec(&entry).unwrap();
        let decoded: Entry = postcard::from_bytes(&encoded).unwrap();
        prop_assert_eq!(&decoded.log_id, &entry.log_id);
        prop_assert_eq!(format!("{:?}", decoded.payload), format!("{:?}", entry.payload));
        let _ = postcard::from_bytes::<Entry>(&mutate(encoded, &entry_edits));
        let _ = postcard::from_bytes::<Entry>(&random);

        let mut state = Keyspace::temporary().unwrap();
        for (index, request) in history.iter().enumerate() {
            state.apply(index as u64 + 1, &Batch::single(request.clone())).unwrap();
        }
        let snapshot = state.snapshot_body().unwrap();
        let copy = Keyspace::from_snapshot_body(&snapshot).unwrap();
        state.compact_all().unwrap();
        copy.compact_all().unwrap();
        prop_assert_eq!(copy.dump().unwrap(), state.dump().unwrap());
        // A loaded snapshot that passed the checks is usable: reading and writing it does not panic.
        for bytes in [mutate(snapshot, &snapshot_edits), random] {
            if let Ok(mut decoded) = Keyspace::from_snapshot_body(&bytes) {
                let _ = decoded.scan(&ScanRange::Prefix(Vec::new()), usize::MAX, 0);
                for (index, request) in history.iter().enumerate() {
                    let _ = decoded.apply(1_000 + index as u64, &Batch::single(request.clone()));
                }
            }
        }
    }

    /// Applying any history never panics; a retry gets the stored response and changes nothing; an older
    /// sequence and an invalid command are rejected and change no key; the state round-trips through a
    /// snapshot; two nodes applying the same history agree on state and responses.
    #[test]
    fn state_machine_apply_rejects_bad_commands_cleanly(
        history in prop::collection::vec(request(), 1..HISTORY_MAX),
    ) {
        let mut state = Keyspace::temporary().unwrap();
        let mut replica = Keyspace::temporary().unwrap();
        let all = |state: &Keyspace| state.scan(&ScanRange::Prefix(Vec::new()), usize::MAX, 0).unwrap();
        // Per session: the last sequence applied and its response.
        let mut sessions: BTreeMap<u64, (u64, Response)> = BTreeMap::new();
        for (position, request) in history.iter().enumerate() {
            let index = position as u64 + 1;
            let batch = Batch::single(request.clone());
            let keys_before = all(&state);
            let response = state.apply(index, &batch).unwrap().responses.remove(0);
            prop_assert_eq!(&replica.apply(index, &batch).unwrap().responses[0], &response);
            let keys_after = all(&state);
            let last = request
                .session
                .and_then(|session| sessions.get(&session.client_id).cloned());
            match (request.session, last) {
                (Some(session), Some((last, stored))) if session.sequence == last => {
                    prop_assert_eq!(&response, &stored, "a retry must get the first answer");
                    prop_assert_eq!(&keys_after, &keys_before);
                }
                (Some(session), Some((last, _))) if session.sequence < last => {
                    prop_assert!(
                        matches!(response, Response::Rejected(Rejection::SequenceTooOld { .. })),
                        "an old sequence was answered {:?}", response
                    );
                    prop_assert_eq!(&keys_after, &keys_before);
                }
                (session, _) => {
                    if request.command.validate().is_err() {
                        prop_assert!(
                            matches!(response, Response::Rejected(Rejection::Invalid(_))),
                            "an invalid command was answered {:?}", response
                        );
                        prop_assert_eq!(&keys_after, &keys_before);
                    }
                    if let Some(session) = session {
                        sessions.insert(session.client_id, (session.sequence, response.clone()));
                    }
                }
            }
        }
        prop_assert_eq!(state.dump().unwrap(), replica.dump().unwrap());
        let copy = state.snapshot_copy().unwrap();
        state.compact_all().unwrap();
        copy.compact_all().unwrap();
        prop_assert_eq!(copy.dump().unwrap(), state.dump().unwrap());
    }
}

// ---- the WAL's recovery ----

proptest! {
    /// A WAL whose segment files were damaged (bytes overwritten, inserted, removed, a file cut short) either
    /// refuses to open or opens holding a prefix of what was written, never other entries; damage to any
    /// segment but the last is always refused (only the last can have a torn tail). An edit that leaves the
    /// records whole and only zeros after them (it touched the preallocated tail alone) is no damage: all
    /// entries open.
    #[test]
    fn damaged_wal_opens_to_a_prefix_or_refuses(
        entries in prop::collection::vec(entry(), 1..WAL_ENTRIES_MAX),
        segment_bytes in 48..400u64,
        damaged in any::<Index>(),
        edits in edits(),
    ) {
        let mut entries = entries;
        for (position, entry) in entries.iter_mut().enumerate() {
            entry.log_id.index = position as u64 + 1;
        }
        let dir = tempfile::TempDir::new().unwrap();
        {
            let wal = Wal::open(dir.path(), segment_bytes, false, None).unwrap();
            wal.append(entries.clone()).unwrap();
        }
        let mut segments: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|item| item.unwrap().path())
            .collect();
        segments.sort();
        let victim = damaged.index(segments.len());
        let before = std::fs::read(&segments[victim]).unwrap();
        let after = mutate(before.clone(), &edits);
        std::fs::write(&segments[victim], &after).unwrap();
        let (_, records_end) = crate::storage::record_layout(&before);
        let harmless = after.len() >= records_end
            && after[..records_end] == before[..records_end]
            && after[records_end..].iter().all(|byte| *byte == 0);
        // Entries held by the segments before the damaged one (a segment is named by its first index).
        let victim_name = segments[victim].file_name().unwrap().to_str().unwrap().to_string();
        let earlier = victim_name.trim_end_matches(".wal").parse::<usize>().unwrap() - 1;
        match Wal::open(dir.path(), segment_bytes, false, None) {
            Ok(wal) => {
                prop_assert!(
                    victim + 1 == segments.len() || harmless,
                    "damage to segment {} of {} was not refused", victim + 1, segments.len()
                );
                let read = wal.read(0, u64::MAX).unwrap();
                prop_assert!(read.len() <= entries.len());
                prop_assert!(read.len() >= earlier, "entries before the damaged segment were lost");
                if harmless {
                    prop_assert_eq!(read.len(), entries.len());
                }
                prop_assert_eq!(&read[..], &entries[..read.len()]);
            }
            Err(error) => {
                prop_assert!(!harmless, "an undamaged WAL was refused: {}", error);
                prop_assert!(matches!(error, OpenError::Corrupt { .. }), "{}", error);
            }
        }
    }
}

// ---- the peer service, end to end ----

/// One in-process node (storage in a temporary dir, never initialized: it takes messages from anyone)
/// and its peer service.
struct InProcessNode {
    raft: Raft,
    service: PeerService,
    _dir: tempfile::TempDir,
}

async fn in_process_node() -> InProcessNode {
    const NODE_ID: NodeId = 1;
    let dir = tempfile::TempDir::new().unwrap();
    let (log_store, state_machine) = storage::open(dir.path(), NODE_ID, CLUSTER_ID).unwrap();
    let peers = PeerChannels::new(NODE_ID, CLUSTER_ID.to_string(), BTreeMap::new(), None);
    let config = openraft::Config {
        cluster_name: CLUSTER_ID.to_string(),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let raft = Raft::new(
        NODE_ID,
        Arc::new(config),
        NetworkFactory::new(peers, log_store.progress()),
        log_store,
        state_machine,
    )
    .await
    .unwrap();
    let (batcher, batcher_task) =
        ReadIndexBatcher::start(raft.clone(), NODE_ID, std::time::Duration::ZERO);
    tokio::spawn(batcher_task);
    let service = PeerService {
        node_id: NODE_ID,
        cluster_id: CLUSTER_ID.to_string(),
        raft: raft.clone(),
        batcher,
        leader_contact: LeaderContact::new(),
        snapshot_received: Arc::default(),
        voter_lease: std::time::Duration::from_millis(150),
        quorum: Arc::new(QuorumClock::new(
            raft.metrics(),
            SilencePolicy {
                silent_after: std::time::Duration::from_secs(1),
                probe: std::time::Duration::from_secs(1),
            },
        )),
        election_gate: Arc::default(),
        takeover: Arc::default(),
        draining: tokio::sync::watch::channel(false).1,
    };
    InProcessNode {
        raft,
        service,
        _dir: dir,
    }
}

/// Peer messages with fuzzed envelopes and payloads, sent to the peer service of a real in-process node:
/// every one is answered (a reply or a status), none panics, and the node is still running afterwards.
#[test]
fn peer_service_answers_fuzzed_messages_without_panicking() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(in_process_node());
    let envelope = (
        prop_oneof![Just(CLUSTER_ID.to_string()), Just("other".to_string())],
        prop_oneof![3 => Just(SENDER), 1 => 0..4u64],
        prop_oneof![4 => Just(1u64), 1 => 0..4u64],
        prop::option::of(any::<u64>()),
    );
    let payload = prop_oneof![
        message_bytes(append_entries()).prop_map(|bytes| (0u8, bytes)),
        message_bytes(vote_request()).prop_map(|bytes| (1u8, bytes)),
        message_bytes(install_snapshot()).prop_map(|bytes| (2u8, bytes)),
        message_bytes(pre_vote_request()).prop_map(|bytes| (3u8, bytes)),
        message_bytes(timeout_now()).prop_map(|bytes| (4u8, bytes)),
    ];
    let mut runner = TestRunner::new(Config::default());
    let codes_seen = std::sync::Mutex::new(BTreeSet::new());
    runner
        .run(
            &(envelope, payload),
            |((cluster_id, from, to, leader_quorum_age_ms), (rpc, payload))| {
                let message = tonic::Request::new(RaftMessage {
                    cluster_id,
                    from,
                    to,
                    payload,
                    leader_quorum_age_ms,
                    seq: 0,
                    deadline_ms: 0,
                });
                let result = runtime.block_on(async {
                    match rpc {
                        0 => node.service.append_entries(message).await,
                        1 => node.service.vote(message).await,
                        2 => node.service.install_snapshot(message).await,
                        3 => node.service.pre_vote(message).await,
                        _ => node.service.timeout_now(message).await,
                    }
                });
                let code = match result {
                    Ok(_) => tonic::Code::Ok,
                    Err(status) => status.code(),
                };
                prop_assert!(
                    matches!(
                        code,
                        tonic::Code::Ok
                            | tonic::Code::InvalidArgument
                            | tonic::Code::FailedPrecondition
                    ),
                    "unexpected status {:?}",
                    code
                );
                codes_seen.lock().unwrap().insert(code as i32);
                Ok(())
            },
        )
        .unwrap();
    let running = node.raft.metrics().borrow().running_state.clone();
    assert!(
        running.is_ok(),
        "fuzzed peer messages stopped the node: {running:?}"
    );
    // The inputs reached past the envelope and the decoder, not only the refusals.
    let codes_seen = codes_seen.into_inner().unwrap();
    assert!(
        codes_seen.contains(&(tonic::Code::Ok as i32)),
        "no fuzzed message was accepted: {codes_seen:?}"
    );
    runtime.block_on(async { node.raft.shutdown().await.unwrap() });
}
