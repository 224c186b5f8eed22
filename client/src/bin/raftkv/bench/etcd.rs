//! The etcd side of `raftkv bench --target etcd` (cargo feature `etcd`): the same operations through the
//! `etcd-client` crate, so both systems see identical work from the identical load generator.
//!
//! Consistency maps onto etcd's two range modes: `linearizable` and `lease` become a linearizable range
//! (etcd 3.4 has no client-visible lease read: its leader always confirms leadership through ReadIndex),
//! `stale` becomes a serializable range (served from the local member's state).
//!
//! Routing mirrors the raftkv client's: writes and linearizable reads go to the leader (found with the
//! maintenance `Status` call of every endpoint), stale reads are spread over every member.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use raftkv_client::Consistency;

/// One connection pool of benchmark clients.
pub struct EtcdPool {
    clients: Vec<Client>,
    serializable: bool,
}

fn options(connect_timeout: Duration, request_timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout(request_timeout)
}

/// The endpoint of the member that leads, asking each in turn.
async fn leader_endpoint(
    endpoints: &[String],
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<String, String> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        let status = async {
            let mut client = Client::connect(
                [endpoint.as_str()],
                Some(options(connect_timeout, request_timeout)),
            )
            .await?;
            client.status().await
        };
        match status.await {
            Ok(status) => {
                let member_id = status.header().map(|header| header.member_id());
                if member_id.is_some() && member_id == Some(status.leader()) {
                    return Ok(endpoint.clone());
                }
            }
            Err(error) => errors.push(format!("{endpoint}: {error}")),
        }
    }
    Err(format!(
        "no etcd leader found among {}: is etcd up? ({})",
        endpoints.join(","),
        errors.join("; ")
    ))
}

impl EtcdPool {
    pub async fn connect(
        endpoints: &[String],
        connections: usize,
        consistency: Consistency,
        reads_only: bool,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let serializable = consistency == Consistency::Stale;
        let targets = if serializable && reads_only {
            endpoints.to_vec()
        } else {
            vec![leader_endpoint(endpoints, connect_timeout, request_timeout).await?]
        };
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = Client::connect(&targets, Some(options(connect_timeout, request_timeout)))
                .await
                .map_err(|error| {
                    format!("cannot connect to etcd at {}: {error}", targets.join(","))
                })?;
            clients.push(client);
        }
        Ok(EtcdPool {
            clients,
            serializable,
        })
    }

    pub fn worker(&self, index: usize) -> EtcdWorker {
        EtcdWorker {
            kv: self.clients[index % self.clients.len()].kv_client(),
            serializable: self.serializable,
        }
    }
}

/// One benchmark client.
pub struct EtcdWorker {
    kv: etcd_client::KvClient,
    serializable: bool,
}

impl EtcdWorker {
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        self.kv
            .put(key, value, None)
            .await
            .map(drop)
            .map_err(|error| error_kind(&error))
    }

    /// Reads `key`; an absent key counts as `not_found`, as on raftkv.
    pub async fn get(&mut self, key: Vec<u8>) -> Result<(), String> {
        let options = self
            .serializable
            .then(|| GetOptions::new().with_serializable());
        match self.kv.get(key, options).await {
            Ok(response) if !response.kvs().is_empty() => Ok(()),
            Ok(_) => Err("not_found".to_string()),
            Err(error) => Err(error_kind(&error)),
        }
    }
}

pub(super) fn error_kind(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}", status.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) => "transport".to_string(),
        _ => "other".to_string(),
    }
}
