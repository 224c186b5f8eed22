//! Transactions on the real keyspace in sled: compares decided on the state before the transaction, one
//! revision for all of its changes, ranges and deletes that see the changes of earlier entries not yet
//! written, and refusals that change nothing.

use raftkv_server::kv::changes::KeyspaceRead;
use raftkv_server::kv::state_machine::{
    Batch, Command, Compare, CompareOp, CompareTarget, KeySpan, PutSpec, RangeSpec, Rejection,
    Request, Response, ScanRange, Txn, TxnOp, TxnOpResult, TxnResult,
};
use raftkv_server::storage::Keyspace;

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put(PutSpec {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ignore_value: false,
        lease: 0,
        ignore_lease: false,
    })
}

fn span(key: &str, range_end: &str) -> KeySpan {
    KeySpan {
        key: key.into(),
        range_end: range_end.into(),
    }
}

fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        span: KeySpan::key(key.as_bytes()),
        op: CompareOp::Equal,
        target: CompareTarget::Value(value.into()),
    }
}

/// Applies the commands as one log entry; their responses.
fn entry(store: &mut Keyspace, index: u64, commands: Vec<Command>) -> Vec<Response> {
    let writes = commands
        .into_iter()
        .map(|command| Request {
            session: None,
            command,
        })
        .collect();
    store.apply(index, &Batch { writes }).unwrap().responses
}

fn txn_result(response: &Response) -> (u64, &TxnResult) {
    match response {
        Response::Txn { revision, result } => (*revision, result),
        other => panic!("not a transaction's response: {other:?}"),
    }
}

fn value_at(store: &Keyspace, key: &str, revision: u64) -> Option<String> {
    store
        .get(key.as_bytes(), revision)
        .unwrap()
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

#[test]
fn a_transaction_takes_one_revision_for_all_its_changes() {
    let mut store = Keyspace::temporary().unwrap();
    entry(
        &mut store,
        1,
        vec![put("a", "1"), put("b", "2"), put("c", "3")],
    );
    let txn = Txn {
        compares: vec![value_is("a", "1")],
        success: vec![
            put_op("a", "10"),
            put_op("x", "new"),
            TxnOp::DeleteRange {
                span: span("b", "d"),
                prev_kv: true,
            },
            // A range later in the transaction sees its earlier writes.
            TxnOp::Range(RangeSpec {
                span: span("a", "z"),
                ..RangeSpec::default()
            }),
        ],
        failure: vec![put_op("a", "failed")],
    };
    let responses = entry(&mut store, 2, vec![Command::Txn(txn.clone())]);
    let (revision, result) = txn_result(&responses[0]);
    assert!(result.succeeded);
    assert_eq!(revision, 5);
    assert_eq!(store.revision(), 5);
    match &result.results[..] {
        [TxnOpResult::Put {
            prev_kv: Some(prev),
        }, TxnOpResult::Put { prev_kv: None }, TxnOpResult::DeleteRange {
            deleted: 2,
            prev_kvs,
        }, TxnOpResult::Range(range)] => {
            assert_eq!(prev.value, b"1");
            assert_eq!(prev_kvs.len(), 2);
            let keys: Vec<&[u8]> = range.kvs.iter().map(|kv| kv.key.as_slice()).collect();
            assert_eq!(keys, [b"a".as_slice(), b"x"]);
            assert!(range.kvs.iter().all(|kv| kv.mod_revision == 5));
        }
        other => panic!("unexpected results {other:?}"),
    }
    // The store before the transaction is still readable at its revision.
    assert_eq!(value_at(&store, "a", 4).as_deref(), Some("1"));
    assert_eq!(value_at(&store, "b", 4).as_deref(), Some("2"));
    assert_eq!(value_at(&store, "b", 5), None);

    // The same transaction again: the compare fails, the other branch runs.
    let responses = entry(&mut store, 3, vec![Command::Txn(txn)]);
    let (revision, result) = txn_result(&responses[0]);
    assert!(!result.succeeded);
    assert_eq!(revision, 6);
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("failed"));
}

#[test]
fn transactions_see_the_entries_applied_before_them_in_one_batch() {
    let mut store = Keyspace::temporary().unwrap();
    entry(&mut store, 1, vec![put("p/0", "base"), put("q", "base")]);
    // One entry: puts, then a transaction over them, then a write after it.
    let txn = Txn {
        compares: vec![value_is("p/1", "one")],
        success: vec![TxnOp::DeleteRange {
            span: span("p/", "p0"),
            prev_kv: false,
        }],
        failure: Vec::new(),
    };
    let responses = entry(
        &mut store,
        2,
        vec![
            put("p/1", "one"),
            put("p/2", "two"),
            Command::Txn(txn),
            put("p/3", "three"),
        ],
    );
    let (revision, result) = txn_result(&responses[2]);
    assert!(result.succeeded);
    assert_eq!(revision, 6);
    assert_eq!(
        result.results,
        [TxnOpResult::DeleteRange {
            deleted: 3,
            prev_kvs: Vec::new()
        }]
    );
    let left = store
        .scan(&ScanRange::Prefix(b"p/".to_vec()), 10, 0)
        .unwrap();
    let keys: Vec<&[u8]> = left.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"p/3".as_slice()]);
    assert_eq!(store.revision(), 7);
}

#[test]
fn nested_branches_are_decided_on_the_state_before_the_transaction() {
    let mut store = Keyspace::temporary().unwrap();
    entry(&mut store, 1, vec![put("k", "old")]);
    // The outer branch changes k; the nested compare still sees the old value.
    let txn = Txn {
        compares: Vec::new(),
        success: vec![
            put_op("k", "new"),
            TxnOp::Txn(Txn {
                compares: vec![value_is("k", "old")],
                success: vec![put_op("seen", "old")],
                failure: vec![put_op("seen", "new")],
            }),
        ],
        failure: Vec::new(),
    };
    entry(&mut store, 2, vec![Command::Txn(txn)]);
    assert_eq!(value_at(&store, "seen", 0).as_deref(), Some("old"));
    assert_eq!(value_at(&store, "k", 0).as_deref(), Some("new"));
}

#[test]
fn a_refused_transaction_changes_nothing() {
    let mut store = Keyspace::temporary().unwrap();
    entry(&mut store, 1, vec![put("a", "1")]);
    let keep_missing = Txn {
        success: vec![
            put_op("a", "2"),
            TxnOp::Put(PutSpec {
                key: b"missing".to_vec(),
                value: Vec::new(),
                prev_kv: false,
                ignore_value: true,
                lease: 0,
                ignore_lease: false,
            }),
        ],
        ..Txn::default()
    };
    let responses = entry(&mut store, 2, vec![Command::Txn(keep_missing)]);
    assert_eq!(
        responses[0],
        Response::Rejected(Rejection::KeyNotFound {
            key: b"missing".to_vec()
        })
    );
    assert_eq!(store.revision(), 2);
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("1"));

    // A put keeping the value of a key that exists keeps it, at a new revision.
    let keep = Txn {
        success: vec![TxnOp::Put(PutSpec {
            key: b"a".to_vec(),
            value: Vec::new(),
            prev_kv: false,
            ignore_value: true,
            lease: 0,
            ignore_lease: false,
        })],
        ..Txn::default()
    };
    entry(&mut store, 3, vec![Command::Txn(keep)]);
    let kv = store.get(b"a", 0).unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (b"1".as_slice(), 3, 2)
    );

    // A read-only transaction changes no revision.
    let read_only = Txn {
        success: vec![TxnOp::Range(RangeSpec {
            span: KeySpan::key(b"a"),
            ..RangeSpec::default()
        })],
        ..Txn::default()
    };
    let responses = entry(&mut store, 4, vec![Command::Txn(read_only)]);
    assert_eq!(txn_result(&responses[0]).0, 3);
    assert_eq!(store.revision(), 3);
}

/// What a transaction's reads return is bounded on the state before it, whatever the number of reads: a
/// transaction that would return more is refused and changes nothing.
#[test]
fn a_transaction_reading_too_much_is_refused_whole() {
    use raftkv_server::kv::state_machine::RANGE_KEYS_IN_WRITE_MAX;
    let mut store = Keyspace::temporary().unwrap();
    let keys = RANGE_KEYS_IN_WRITE_MAX / 3 + 1;
    for (chunk, index) in (0..keys).collect::<Vec<_>>().chunks(500).zip(1..) {
        let puts = chunk
            .iter()
            .map(|key| put(&format!("r/{key:05}"), "v"))
            .collect();
        entry(&mut store, index, puts);
    }
    let revision = store.revision();
    let everything = || {
        TxnOp::Range(RangeSpec {
            span: span("r/", "r0"),
            ..RangeSpec::default()
        })
    };
    // Each read alone is within the limit; three of them are not.
    let greedy = Txn {
        success: vec![put_op("x", "1"), everything(), everything(), everything()],
        ..Txn::default()
    };
    let responses = entry(&mut store, 100, vec![Command::Txn(greedy)]);
    assert!(
        matches!(
            responses[0],
            Response::Rejected(Rejection::RangeTooLarge { .. })
        ),
        "{:?}",
        responses[0]
    );
    assert_eq!(store.revision(), revision);
    assert_eq!(value_at(&store, "x", 0), None);
    let modest = Txn {
        success: vec![put_op("x", "1"), everything()],
        ..Txn::default()
    };
    let responses = entry(&mut store, 101, vec![Command::Txn(modest)]);
    assert_eq!(txn_result(&responses[0]).0, revision + 1);
}

/// A retried transaction is answered from the session table with its outcome and revision, but without the
/// values it read: session records (and snapshots) stay small.
#[test]
fn a_retried_transaction_gets_its_outcome_without_its_reads() {
    use raftkv_server::kv::state_machine::SessionRef;
    let mut store = Keyspace::temporary().unwrap();
    entry(&mut store, 1, vec![put("a", "1")]);
    let txn = Txn {
        success: vec![
            put_op("b", "2"),
            TxnOp::Range(RangeSpec {
                span: KeySpan::key(b"a"),
                ..RangeSpec::default()
            }),
        ],
        ..Txn::default()
    };
    let session = Some(SessionRef {
        client_id: 7,
        sequence: 1,
    });
    let request = || Request {
        session,
        command: Command::Txn(txn.clone()),
    };
    let first = store
        .apply(
            2,
            &Batch {
                writes: vec![request()],
            },
        )
        .unwrap()
        .responses;
    let retried = store
        .apply(
            3,
            &Batch {
                writes: vec![request()],
            },
        )
        .unwrap()
        .responses;
    let (revision, result) = txn_result(&first[0]);
    assert_eq!(result.results.len(), 2);
    let (again, remembered) = txn_result(&retried[0]);
    assert_eq!((again, remembered.succeeded), (revision, true));
    assert!(remembered.results.is_empty());
    assert_eq!(store.revision(), revision, "applied once");
}
