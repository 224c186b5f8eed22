//! Storage tests: openraft's conformance suite on the sled store, and reopening a store after writes to find
//! every flushed vote, entry, applied state and membership.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};
use raftkv_server::raft_types::{Entry, LogId, Node, StorageError, TypeConfig, Vote};
use raftkv_server::state_machine::{Batch, Command, Request};
use raftkv_server::storage::{self, LogStore, OpenError, StateMachineStore};
use tempfile::TempDir;

const CLUSTER_ID: &str = "test-cluster";

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let (log, state_machine) = storage::open(dir.path(), 0, CLUSTER_ID).expect("open store");
        Ok((dir, log, state_machine))
    }
}

/// Runs openraft's storage conformance suite (it makes its own runtime, so this is a plain test).
#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put_entry(term: u64, index: u64, key: &str) -> Entry {
    let request = Request {
        session: None,
        command: Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
        },
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch::single(request)),
    }
}

async fn append_and_wait(log: &mut LogStore, entries: Vec<Entry>) {
    // Returns once the store has called openraft's flush callback.
    log.blocking_append(entries)
        .await
        .expect("append and flush");
}

/// Reopening a store after a vote, appends, applies and a membership change finds all of them again.
#[tokio::test]
async fn reopened_store_keeps_vote_log_state_and_membership() {
    let dir = TempDir::new().unwrap();
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: BTreeMap<u64, Node> = voters
        .iter()
        .map(|id| {
            (
                *id,
                Node {
                    addr: format!("127.0.0.1:{}", 9000 + id),
                },
            )
        })
        .collect();
    let membership = Membership::new(vec![voters.clone()], nodes);
    {
        let (mut log, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let mut entries = vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(membership.clone()),
        }];
        entries.extend((2..=10).map(|index| put_entry(1, index, &format!("key{index}"))));
        append_and_wait(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(1, 10))).await.unwrap();
        log.flush().unwrap();
        state_machine.apply(entries).await.unwrap();
        // Make the applied state durable the way a node does: a snapshot.
        let mut builder = state_machine.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        // Entries after the snapshot are durable in the log only.
        append_and_wait(&mut log, vec![put_entry(3, 11, "after-snapshot")]).await;
    }
    let (mut log, mut state_machine) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3, 11)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 10)));
    let entries = log.try_get_log_entries(1..=11).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|entry| entry.log_id.index)
            .collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    let (applied, stored_membership) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 10)));
    assert_eq!(
        stored_membership
            .membership()
            .voter_ids()
            .collect::<BTreeSet<_>>(),
        voters
    );
    let key5 = state_machine.read(|applied| applied.state.get(b"key5"));
    assert_eq!(key5.expect("key5 applied before restart").mod_revision, 5);
    assert!(
        state_machine
            .read(|applied| applied.state.get(b"after-snapshot"))
            .is_none(),
        "not applied yet"
    );
}

/// A data dir refuses to open as another node or another cluster.
#[test]
fn data_dir_refuses_other_node_or_cluster() {
    let dir = TempDir::new().unwrap();
    drop(storage::open(dir.path(), 1, CLUSTER_ID).unwrap());
    match storage::open(dir.path(), 2, CLUSTER_ID) {
        Err(OpenError::WrongNode {
            found: 1,
            wanted: 2,
            ..
        }) => {}
        other => panic!("expected WrongNode, got {:?}", other.map(|_| ())),
    }
    match storage::open(dir.path(), 1, "another") {
        Err(OpenError::WrongCluster { .. }) => {}
        other => panic!("expected WrongCluster, got {:?}", other.map(|_| ())),
    }
}

/// A node's own committed vote (it was leader) is read back uncommitted, so openraft restarts it as a
/// follower that campaigns in a new term instead of resuming leadership in the old one; a committed vote for
/// another node and an uncommitted vote read back unchanged.
#[tokio::test]
async fn own_committed_vote_is_read_back_uncommitted() {
    let cases = [
        (Vote::new_committed(4, 1), Vote::new(4, 1)),
        (Vote::new_committed(4, 2), Vote::new_committed(4, 2)),
        (Vote::new(5, 1), Vote::new(5, 1)),
    ];
    for (saved, expected) in cases {
        let dir = TempDir::new().unwrap();
        {
            let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
            log.save_vote(&saved).await.unwrap();
        }
        let (mut log, _) = storage::open(dir.path(), 1, CLUSTER_ID).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(expected),
            "saved {saved}"
        );
    }
}
