//! The raftkv side of `raftkv bench`: operations go through the client library (`Client` and `Session`),
//! exactly as an application's would, with its leader cache, retries and exactly-once write numbering.
//!
//! Each benchmark client is one `Session` (its writes numbered for exactly-once application, as a real
//! client's are); reads go through `Client::get` so a stale read stays a plain local read on any node.
//! `--connections N` makes N `Client`s, each with its own channel (one HTTP/2 connection) per node.

use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientConfig, Consistency, ReadOptions, Session};

/// Longest the benchmark waits, after the preload, for every node to have applied it.
pub const SETTLE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Pause between two looks at the nodes' revisions while settling.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// The clients every worker draws from.
pub struct RaftkvPool {
    clients: Vec<Client>,
    read: ReadOptions,
}

impl RaftkvPool {
    /// `connections` independent clients of the cluster at `config.endpoints`; fails when no node answers.
    pub async fn connect(
        config: ClientConfig,
        connections: usize,
        consistency: Consistency,
    ) -> Result<Self, String> {
        let clients = (0..connections)
            .map(|_| Client::new(config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        let answers = clients[0].status_all().await;
        if answers.iter().all(|(_, answer)| answer.is_err()) {
            let errors: Vec<String> = answers
                .iter()
                .filter_map(|(_, answer)| answer.as_ref().err().map(ToString::to_string))
                .collect();
            return Err(format!(
                "no raftkv node answered at {}: is the cluster up? ({})",
                config.endpoints.join(","),
                errors.join("; ")
            ));
        }
        Ok(RaftkvPool {
            clients,
            read: ReadOptions {
                consistency,
                ..ReadOptions::default()
            },
        })
    }

    /// Waits until every node that answers has reached the highest store revision any of them reports:
    /// after the preload, so that a stale read on a follower finds the keys the preload wrote (a stale read
    /// promises no more than a committed value, and a follower may be a moment behind).
    pub async fn settle(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let revisions: Vec<u64> = self.clients[0]
                .status_all()
                .await
                .into_iter()
                .filter_map(|(_, answer)| answer.ok().map(|status| status.revision))
                .collect();
            let highest = revisions.iter().copied().max().unwrap_or(0);
            if !revisions.is_empty() && revisions.iter().all(|revision| *revision == highest) {
                return Ok(());
            }
            if started.elapsed() > SETTLE_WAIT_MAX {
                return Err(format!(
                    "the nodes did not all apply the preload within {SETTLE_WAIT_MAX:?} (revisions {revisions:?}): is one of them behind? `raftkv status`"
                ));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// The client of worker `index`: connections are shared round robin.
    pub fn worker(&self, index: usize) -> RaftkvWorker {
        let client = self.clients[index % self.clients.len()].clone();
        RaftkvWorker {
            session: client.session(),
            client,
            read: self.read.clone(),
        }
    }
}

/// One benchmark client.
pub struct RaftkvWorker {
    client: Client,
    session: Session,
    read: ReadOptions,
}

impl RaftkvWorker {
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        self.session
            .put(key, value)
            .await
            .map(drop)
            .map_err(|error| error.kind().to_string())
    }

    /// Reads `key`; a key that is absent counts as an error (`not_found`): every key read was preloaded.
    pub async fn get(&mut self, key: Vec<u8>) -> Result<(), String> {
        match self.client.get(key, &self.read).await {
            Ok(result) if result.kv.is_some() => Ok(()),
            Ok(_) => Err("not_found".to_string()),
            Err(error) => Err(error.kind().to_string()),
        }
    }
}
