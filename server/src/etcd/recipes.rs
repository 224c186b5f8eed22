//! What etcd's lock and election services are made of, on the server: a candidate's key under a name, held by
//! a lease and claimed in one transaction (`claim`); the holder is the key with the lowest create revision,
//! and every other candidate waits for the deletion of the key just before its own (`wait_turn`), as etcd's
//! client recipes do. Claims are writes (the leader's); the waiting reads this node's applied state, which is
//! safe: a key created before the candidate's is in any state that holds the candidate's, and a deleted key
//! never comes back with the same create revision.

use raftkv_proto::etcd::mvccpb;
use tonic::{Code, Status};

use super::kv::to_mvcc;
use super::{etcd_error, to_etcd_status, EtcdApi};
use crate::api::ApiError;
use crate::kv::changes::KeyspaceRead as _;
use crate::kv::state_machine::{
    Command, Compare, CompareOp, CompareTarget, KeySpan, KeyValue, PutSpec, RangeSpec, ScanRange,
    Txn, TxnOp, TxnOpResult, SCAN_LIMIT_MAX,
};
use crate::watch::Watcher;

/// Most candidates one lock or election name may have waiting: a wait reads them all.
pub const CANDIDATES_MAX: usize = SCAN_LIMIT_MAX;

/// `name/` + the lease in hex: a candidate's key, as etcd's recipes spell it.
pub fn candidate_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `name/`: every candidate's key starts with it.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// Every candidate key of `name`: the keys starting with `name/`.
pub fn candidates_span(name: &[u8]) -> KeySpan {
    let start = prefix(name);
    // `name/` ends with `/`, which is below 0xFF: the end is the same bytes with the last one raised.
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    KeySpan {
        key: start,
        range_end: end,
    }
}

impl EtcdApi {
    /// Creates `key` with `value` held by `lease`, unless it exists; returns its create revision and the
    /// revision of the transaction. On the leader.
    pub(super) async fn claim(
        &self,
        key: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(u64, u64), Status> {
        let txn = Txn {
            compares: vec![Compare {
                span: KeySpan::key(key),
                op: CompareOp::Equal,
                target: CompareTarget::Create(0),
            }],
            success: vec![TxnOp::Put(PutSpec {
                key: key.to_vec(),
                value: value.to_vec(),
                prev_kv: false,
                ignore_value: false,
                lease,
                ignore_lease: false,
            })],
            failure: vec![TxnOp::Range(RangeSpec {
                span: KeySpan::key(key),
                ..RangeSpec::default()
            })],
        };
        let (revision, result) = self.propose_txn(txn).await?;
        if result.succeeded {
            return Ok((revision, revision));
        }
        match result.results.into_iter().next() {
            Some(TxnOpResult::Range(range)) if !range.kvs.is_empty() => {
                Ok((range.kvs[0].create_revision, revision))
            }
            _ => Err(etcd_error(
                Code::Aborted,
                "the candidate's key went away while it was claimed; retry",
            )),
        }
    }

    /// The candidates of `name` in this node's applied state, in create-revision order, and the revision read.
    pub(super) fn candidates(&self, name: &[u8]) -> Result<(Vec<KeyValue>, u64), Status> {
        let range = ScanRange::Prefix(prefix(name));
        let (revision, scanned) = self
            .api
            .reader
            .state_machine
            .read(|applied| {
                (
                    applied.keyspace.revision(),
                    applied.keyspace.scan(&range, CANDIDATES_MAX, 0),
                )
            })
            .map_err(|error| to_etcd_status(ApiError::Internal(error.to_string())))?;
        let scanned = scanned.map_err(|error| to_etcd_status(error.into()))?;
        if scanned.more {
            // The holder might be among those not read: refuse rather than guess.
            return Err(etcd_error(
                Code::ResourceExhausted,
                &format!("more than {CANDIDATES_MAX} candidates wait on this name"),
            ));
        }
        let mut kvs = scanned.kvs;
        kvs.sort_by_key(|kv| kv.create_revision);
        Ok((kvs, revision))
    }

    /// Waits until no candidate of `name` created before `mine` (the create revision of `key`) is left; fails
    /// if `key` itself goes (its lease ended).
    pub(super) async fn wait_turn(&self, name: &[u8], key: &[u8], mine: u64) -> Result<(), Status> {
        loop {
            let (candidates, revision) = self.candidates(name)?;
            if !candidates.iter().any(|kv| kv.key == key) {
                return Err(etcd_error(
                    Code::Aborted,
                    "the candidate's key was deleted while it waited (its lease ended)",
                ));
            }
            let Some(before) = candidates.iter().rfind(|kv| kv.create_revision < mine) else {
                return Ok(());
            };
            self.wait_deleted(&before.key, revision + 1).await?;
        }
    }

    /// Waits until `key` is deleted at `from` or later.
    async fn wait_deleted(&self, key: &[u8], from: u64) -> Result<(), Status> {
        let store = self.api.reader.state_machine.clone();
        let mut watcher = Watcher::start(store, KeySpan::key(key), from)
            .map_err(|end| etcd_error(Code::Unavailable, &end.to_string()))?;
        loop {
            let changes = watcher
                .next_batch()
                .await
                .map_err(|end| etcd_error(Code::Unavailable, &end.to_string()))?;
            if changes.iter().any(|change| change.record.is_none()) {
                return Ok(());
            }
        }
    }
}

/// Deletes a candidate's key when dropped armed: a Lock or Campaign whose wait failed or was cancelled
/// leaves no key queued behind (etcd's recipes delete it too).
pub(super) struct KeyCleanup {
    api: Option<EtcdApi>,
    key: Vec<u8>,
}

impl KeyCleanup {
    pub(super) fn new(api: &EtcdApi, key: &[u8]) -> KeyCleanup {
        KeyCleanup {
            api: Some(api.clone()),
            key: key.to_vec(),
        }
    }

    /// The wait succeeded: the key stays.
    pub(super) fn disarm(mut self) {
        self.api = None;
    }
}

impl Drop for KeyCleanup {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move {
                let _ = api.api.write(None, Command::Delete { key }).await;
            });
        }
    }
}

/// The leader of an election: its candidate with the lowest create revision.
pub fn leader_of(candidates: &[KeyValue]) -> Option<mvccpb::KeyValue> {
    candidates.first().cloned().map(to_mvcc)
}
