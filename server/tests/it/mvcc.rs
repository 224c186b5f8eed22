//! Model-based test of the keyspace in sled: random entries of puts, deletes and cas, compactions (logical
//! and physical) and snapshot round trips, applied to the real keyspace and to a model that keeps every
//! version of every key in a list; then every key read at every revision, and scans at random revisions, must
//! agree with the model, including which revisions are refused as compacted or in the future.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftkv_server::kv::changes::KeyspaceRead;
use raftkv_server::kv::state_machine::{
    Batch, Command, Expected, KeyValue, Record, Rejection, Request, Response, ScanRange,
};
use raftkv_server::storage::{Keyspace, ReadError};

/// Keys: escaping (`00` bytes), a key that is a prefix of others, and keys around it.
const KEYS: [&[u8]; 5] = [b"a", b"a\x00", b"a\x00b", b"ab", b"b"];
/// Steps in one case.
const STEPS_MAX: usize = 60;
/// Writes in one entry.
const ENTRY_WRITES_MAX: usize = 3;

/// One step of a case.
#[derive(Clone, Debug)]
enum Step {
    Entry(Vec<Write>),
    /// Compact to this fraction (per mille) of the way from the compaction point to the revision; or, at
    /// 1000+, to a revision already compacted or beyond the store.
    Compact(u16),
    /// Delete what compaction made unreadable now (the compaction thread does it later).
    Physical,
    /// Continue on a copy made through a snapshot body.
    Snapshot,
}

#[derive(Clone, Debug)]
enum Write {
    Put(usize, u8),
    Delete(usize),
    CasValue(usize, u8, u8),
    /// Expect the key's mod revision to be its current one (`true`) or one off (`false`).
    CasRevision(usize, bool, u8),
    CasAbsent(usize, u8),
}

fn write() -> impl Strategy<Value = Write> {
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (key.clone(), 0..4u8).prop_map(|(k, v)| Write::Put(k, v)),
        1 => key.clone().prop_map(Write::Delete),
        1 => (key.clone(), 0..4u8, 0..4u8).prop_map(|(k, e, v)| Write::CasValue(k, e, v)),
        1 => (key.clone(), any::<bool>(), 0..4u8).prop_map(|(k, e, v)| Write::CasRevision(k, e, v)),
        1 => (key, 0..4u8).prop_map(|(k, v)| Write::CasAbsent(k, v)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec(write(), 1..=ENTRY_WRITES_MAX).prop_map(Step::Entry),
        1 => (0..1100u16).prop_map(Step::Compact),
        1 => Just(Step::Physical),
        1 => Just(Step::Snapshot),
    ]
}

/// Every version of every key, and the revisions.
#[derive(Default)]
struct Model {
    versions: BTreeMap<Vec<u8>, Vec<(u64, Option<Record>)>>,
    revision: u64,
    compact_revision: u64,
}

impl Model {
    fn at(&self, key: &[u8], revision: u64) -> Option<Record> {
        self.versions
            .get(key)?
            .iter()
            .rev()
            .find(|(at, _)| *at <= revision)
            .and_then(|(_, record)| record.clone())
    }

    fn readable(&self, revision: u64) -> Result<u64, String> {
        if revision == 0 {
            Ok(self.revision)
        } else if revision > self.revision {
            Err("future".to_string())
        } else if revision < self.compact_revision {
            Err("compacted".to_string())
        } else {
            Ok(revision)
        }
    }

    fn get(&self, key: &[u8], revision: u64) -> Result<Option<KeyValue>, String> {
        let at = self.readable(revision)?;
        Ok(self.at(key, at).map(|record| KeyValue::new(key, &record)))
    }

    fn scan(&self, revision: u64, limit: usize) -> Result<(Vec<KeyValue>, bool), String> {
        let at = self.readable(revision)?;
        let live: Vec<KeyValue> = self
            .versions
            .keys()
            .filter_map(|key| self.at(key, at).map(|record| KeyValue::new(key, &record)))
            .collect();
        let more = live.len() > limit;
        Ok((live.into_iter().take(limit).collect(), more))
    }

    fn set(&mut self, key: &[u8], value: Vec<u8>) -> u64 {
        self.revision += 1;
        let record = match self.at(key, u64::MAX) {
            Some(old) => Record {
                value,
                create_revision: old.create_revision,
                mod_revision: self.revision,
                version: old.version + 1,
                lease: 0,
            },
            None => Record {
                value,
                create_revision: self.revision,
                mod_revision: self.revision,
                version: 1,
                lease: 0,
            },
        };
        self.versions
            .entry(key.to_vec())
            .or_default()
            .push((self.revision, Some(record)));
        self.revision
    }

    /// The command a write stands for (against the model's current state) and the model's response.
    fn apply(&mut self, write: &Write) -> (Command, Response) {
        let current = |model: &Model, k: usize| model.at(KEYS[k], u64::MAX);
        match *write {
            Write::Put(k, v) => {
                let revision = self.set(KEYS[k], vec![v]);
                (
                    Command::Put {
                        key: KEYS[k].to_vec(),
                        value: vec![v],
                    },
                    Response::Put { revision },
                )
            }
            Write::Delete(k) => {
                let command = Command::Delete {
                    key: KEYS[k].to_vec(),
                };
                if current(self, k).is_some() {
                    self.revision += 1;
                    let revision = self.revision;
                    self.versions
                        .entry(KEYS[k].to_vec())
                        .or_default()
                        .push((revision, None));
                    (
                        command,
                        Response::Delete {
                            revision,
                            deleted: true,
                        },
                    )
                } else {
                    (
                        command,
                        Response::Delete {
                            revision: self.revision,
                            deleted: false,
                        },
                    )
                }
            }
            Write::CasValue(k, expected, v) => {
                let matches = current(self, k).is_some_and(|record| record.value == [expected]);
                self.cas(k, Expected::Value(vec![expected]), matches, v)
            }
            Write::CasRevision(k, exact, v) => {
                let now = current(self, k).map_or(0, |record| record.mod_revision);
                let wanted = if exact { now } else { now + 1 };
                self.cas(k, Expected::Revision(wanted), exact, v)
            }
            Write::CasAbsent(k, v) => {
                let matches = current(self, k).is_none();
                self.cas(k, Expected::Absent, matches, v)
            }
        }
    }

    fn cas(&mut self, k: usize, expected: Expected, matches: bool, v: u8) -> (Command, Response) {
        let revision = if matches {
            self.set(KEYS[k], vec![v])
        } else {
            self.revision
        };
        let current = self
            .at(KEYS[k], u64::MAX)
            .map(|record| KeyValue::new(KEYS[k], &record));
        (
            Command::Cas {
                key: KEYS[k].to_vec(),
                expected,
                value: vec![v],
            },
            Response::Cas {
                revision,
                swapped: matches,
                current,
            },
        )
    }
}

fn outcome<T>(result: Result<T, ReadError>) -> Result<T, String> {
    result.map_err(|error| match error {
        ReadError::FutureRevision { .. } => "future".to_string(),
        ReadError::Compacted { .. } => "compacted".to_string(),
        ReadError::Storage(reason) => panic!("storage failed: {reason}"),
    })
}

/// Every key at every revision (and one past), and scans at a few, agree with the model.
fn check_reads(store: &Keyspace, model: &Model, scan_limit: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.revision(), model.revision);
    prop_assert_eq!(store.compact_revision(), model.compact_revision);
    for revision in 0..=model.revision + 1 {
        for key in KEYS {
            prop_assert_eq!(
                outcome(store.get(key, revision)),
                model.get(key, revision),
                "get {:?} at {}",
                key,
                revision
            );
        }
        let scan = outcome(store.scan(&ScanRange::Prefix(Vec::new()), scan_limit, revision))
            .map(|result| (result.kvs, result.more));
        prop_assert_eq!(
            scan,
            model.scan(revision, scan_limit),
            "scan at {}",
            revision
        );
        let prefixed = outcome(store.scan(&ScanRange::Prefix(b"a\x00".to_vec()), 10, revision))
            .map(|result| result.kvs);
        let expected = model.scan(revision, 10).map(|(kvs, _)| {
            kvs.into_iter()
                .filter(|kv| kv.key.starts_with(b"a\x00"))
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(prefixed, expected, "prefix scan at {}", revision);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keyspace_agrees_with_a_model_that_keeps_every_version(
        steps in prop::collection::vec(step(), 1..STEPS_MAX),
        scan_limit in 1..6usize,
    ) {
        let mut store = Keyspace::temporary().unwrap();
        // An empty store is at revision 1, as etcd's.
        let mut model = Model {
            revision: 1,
            ..Model::default()
        };
        let mut index = 0;
        for step in &steps {
            match step {
                Step::Entry(writes) => {
                    index += 1;
                    let mut requests = Vec::new();
                    let mut responses = Vec::new();
                    for write in writes {
                        let (command, response) = model.apply(write);
                        requests.push(Request { session: None, command });
                        responses.push(response);
                    }
                    let got = store.apply(index, &Batch { writes: requests }).unwrap();
                    prop_assert_eq!(got.responses, responses);
                }
                Step::Compact(fraction) => {
                    index += 1;
                    let span = model.revision.saturating_sub(model.compact_revision);
                    let (target, expected) = if *fraction < 1000 {
                        let target = model.compact_revision + 1 + span * u64::from(*fraction) / 1000;
                        if target <= model.revision {
                            model.compact_revision = target;
                            (target, Response::Compact { revision: model.revision, compact_revision: target })
                        } else {
                            (target, Response::Rejected(Rejection::FutureRevision { requested: target, current: model.revision }))
                        }
                    } else if model.compact_revision > 0 {
                        let target = model.compact_revision;
                        (target, Response::Rejected(Rejection::Compacted { requested: target, compact_revision: target }))
                    } else {
                        let target = model.revision + 1;
                        (target, Response::Rejected(Rejection::FutureRevision { requested: target, current: model.revision }))
                    };
                    let got = store
                        .apply(index, &Batch::single(Request { session: None, command: Command::Compact { revision: target } }))
                        .unwrap();
                    prop_assert_eq!(&got.responses[0], &expected);
                }
                Step::Physical => store.compact_all().unwrap(),
                Step::Snapshot => store = store.snapshot_copy().unwrap(),
            }
        }
        check_reads(&store, &model, scan_limit)?;
        // What the compaction deletes is never something a read can still see.
        store.compact_all().unwrap();
        check_reads(&store, &model, scan_limit)?;
        let copy = store.snapshot_copy().unwrap();
        check_reads(&copy, &model, scan_limit)?;
    }
}
