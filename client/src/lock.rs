//! Locks on leases, as etcd's recipe makes them (`Client::lock`): each would-be holder puts a key
//! `NAME/<lease id in hex>` attached to its lease, once; the key with the lowest create revision holds the
//! lock, and every other one waits for the deletion of the key just before its own. The holder's create
//! revision is a fencing token: it grows with every new holder, so a store (or anything else) that remembers
//! the highest token it has seen can refuse a holder that lost the lock without knowing it (paused past its
//! lease, cut off). The key goes when its lease ends: on `unlock`, on revoke, or when nobody keeps the lease
//! alive.

use std::time::Duration;

use raftkv_proto::kv;

use crate::client::{Client, Consistency, ReadOptions, ScanRange, WatchOptions};
use crate::error::ClientError;
use crate::txn::{compare_create_revision, get, put_with_lease, CompareOp, Txn, TxnOpResult};

/// Most would-be holders of one lock the recipe reads at once.
pub const LOCK_WAITERS_MAX: u32 = 10_000;
/// How long `Client::lock` waits on one watch before it looks at the holders again (a bound on a watch that
/// a node ended quietly).
pub const LOCK_RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A lock held: its key and the key's create revision, the fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHold {
    pub key: Vec<u8>,
    pub revision: u64,
}

/// The prefix of every key of lock `name`.
pub fn lock_prefix(name: &str) -> Vec<u8> {
    format!("{name}/").into_bytes()
}

impl Client {
    /// Waits until lock `name` is held by `lease` (which must be kept alive meanwhile) and returns the hold;
    /// at most `wait` if given (then `DeadlineExceeded`, and the key stays until its lease ends). Fails with
    /// `LeaseNotFound` if the lease ends first.
    pub async fn lock(
        &self,
        name: &str,
        lease: i64,
        wait: Option<Duration>,
    ) -> Result<LockHold, ClientError> {
        let started = std::time::Instant::now();
        match wait {
            Some(wait) => tokio::time::timeout(wait, self.acquire(name, lease))
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::DeadlineExceeded {
                        elapsed: started.elapsed(),
                        last_error: format!("lock {name:?} still held by another after {wait:?}"),
                    })
                }),
            None => self.acquire(name, lease).await,
        }
    }

    async fn acquire(&self, name: &str, lease: i64) -> Result<LockHold, ClientError> {
        let prefix = lock_prefix(name);
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        let claim = Txn::default()
            .when(compare_create_revision(key.clone(), CompareOp::Equal, 0))
            .and_then(put_with_lease(key.clone(), Vec::new(), lease))
            .or_else(get(key.clone()));
        let claimed = self.txn(claim).await?;
        let revision = if claimed.succeeded {
            claimed.revision
        } else {
            match claimed
                .results
                .first()
                .and_then(|result| result.result.as_ref())
            {
                Some(TxnOpResult::Get(got)) if !got.kvs.is_empty() => got.kvs[0].create_revision,
                _ => return Err(lease_gone(lease)),
            }
        };
        let linearizable = ReadOptions {
            consistency: Consistency::Linearizable,
            ..ReadOptions::default()
        };
        loop {
            let holders = self
                .scan(
                    ScanRange::Prefix(prefix.clone()),
                    LOCK_WAITERS_MAX,
                    &linearizable,
                )
                .await?;
            if holders.more {
                return Err(ClientError::OutOfRange(format!(
                    "more than {LOCK_WAITERS_MAX} would-be holders wait on lock {name:?}"
                )));
            }
            if !holders.kvs.iter().any(|kv| kv.key == key) {
                return Err(lease_gone(lease));
            }
            let before = holders
                .kvs
                .iter()
                .filter(|kv| kv.create_revision < revision)
                .max_by_key(|kv| kv.create_revision);
            let Some(before) = before else {
                return Ok(LockHold { key, revision });
            };
            self.wait_deleted(&before.key, holders.envelope.revision + 1)
                .await?;
        }
    }

    /// Releases a hold: deletes its key (its lease stays).
    pub async fn unlock(&self, hold: &LockHold) -> Result<(), ClientError> {
        self.delete(hold.key.clone()).await.map(|_| ())
    }

    /// Waits until `key` is deleted at revision `from` or later, or `LOCK_RECHECK_INTERVAL` passed.
    async fn wait_deleted(&self, key: &[u8], from: u64) -> Result<(), ClientError> {
        let options = WatchOptions {
            start_revision: from,
            ..WatchOptions::default()
        };
        let mut watch = self.watch(key.to_vec(), &options).await?;
        let deleted = async {
            while let Some(response) = watch.next().await? {
                let deletion = response
                    .events
                    .iter()
                    .any(|event| event.kind == kv::EventKind::Delete as i32);
                if deletion {
                    return Ok(());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(LOCK_RECHECK_INTERVAL, deleted).await {
            Ok(outcome) => outcome,
            Err(_) => Ok(()),
        }
    }
}

fn lease_gone(lease: i64) -> ClientError {
    ClientError::LeaseNotFound(format!(
        "lease {lease:016x} ended while waiting for the lock: its key is gone"
    ))
}
