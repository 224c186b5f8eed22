//! The raftkv side of `raftkv bench`: operations go through the client library (`Client` and `Session`),
//! exactly as an application's would, with its leader cache, retries and exactly-once write numbering.
//!
//! Each benchmark client is one `Session` (its writes numbered for exactly-once application, as a real
//! client's are); reads go through `Client::get` so a stale read stays a plain local read on any node.
//! `--connections N` makes N `Client`s, each with its own channel (one HTTP/2 connection) per node.

use raftkv_client::{Client, ClientConfig, Consistency, ReadOptions, Session};

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
