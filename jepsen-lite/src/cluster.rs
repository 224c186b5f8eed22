//! Real `raftkv-server` processes behind the proxy mesh: start, SIGKILL, restart, SIGSTOP/SIGCONT, and ask
//! each node's status through the client library.
//!
//! Every node listens on a free 127.0.0.1 port and dials its peers through the mesh (`--peer-route`), so a
//! partition is made by the mesh alone: the nodes have no fault flag. Processes are tracked by pid (the
//! `Child`) and killed when the cluster is dropped. With `tls`, the cluster gets a throwaway CA and node
//! certificates (`certs`) under its data root; peer traffic is then mutual TLS carried unchanged through the
//! TCP-level mesh, and every client of the cluster trusts the CA (`client_config`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftkv_client::{Client, ClientConfig, Role, StatusResponse, TlsConfig};

use crate::certs::{self, CertFiles};

use crate::net::{Mesh, PortLayout};

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Deadline of a status call to one node.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Most nodes a cluster may have (node ids 1..=NODES_MAX, as the proxy port layout allows).
pub const NODES_MAX: u64 = crate::net::BASE_LAYOUT_NODE_ID_MAX;
/// Longest a node may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: u64,
    /// The `raftkv-server` binary.
    pub server_binary: PathBuf,
    /// Each node's data dir and log go under this directory.
    pub data_root: PathBuf,
    /// Extra flags for every node (timing, snapshots).
    pub extra_args: Vec<String>,
    /// Run the nodes with TLS (mutual TLS between peers), with certificates made for this cluster.
    pub tls: bool,
}

/// Election and lease timing that keeps experiments short.
pub fn fast_timing_args() -> Vec<String> {
    [
        "--heartbeat-interval-ms",
        "50",
        "--election-timeout-min-ms",
        "300",
        "--election-timeout-max-ms",
        "600",
        "--lease-drift-margin-ms",
        "100",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// Finds `raftkv-server` next to the running executable (or its parent directory, for test binaries under
/// `target/*/deps`), or from `RAFTKV_SERVER_BIN`.
pub fn find_server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("RAFTKV_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("raftkv-server");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("raftkv-server not found next to {}: build it (cargo build -p raftkv-server) or set RAFTKV_SERVER_BIN", exe.display())
}

struct NodeProcess {
    addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

/// A running cluster of real processes behind a proxy mesh.
pub struct Cluster {
    config: ClusterConfig,
    /// Always `Some` until `shutdown` takes it.
    mesh: Option<Mesh>,
    nodes: BTreeMap<u64, NodeProcess>,
    /// The certificates of a TLS cluster.
    certs: Option<CertFiles>,
    /// What clients of a TLS cluster trust.
    client_tls: Option<TlsConfig>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Cluster {
    /// Starts the mesh and every node, bootstrapped together. Does not wait for a leader.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        if config.nodes == 0 || config.nodes > NODES_MAX {
            bail!("a cluster has 1 to {NODES_MAX} nodes, not {}", config.nodes);
        }
        std::fs::create_dir_all(&config.data_root)
            .with_context(|| format!("cannot create {}", config.data_root.display()))?;
        let mut addrs = BTreeMap::new();
        for id in 1..=config.nodes {
            addrs.insert(id, free_addr()?);
        }
        let certs = match config.tls {
            true => Some(certs::generate(
                &config.data_root.join("tls"),
                config.nodes,
                &[],
            )?),
            false => None,
        };
        let client_tls = certs.as_ref().map(CertFiles::client_tls).transpose()?;
        let mesh = Mesh::start(addrs.clone(), PortLayout::OsAssigned).await?;
        let initial = addrs
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        for (&id, &addr) in &addrs {
            let mut args = vec![
                "--id".to_string(),
                id.to_string(),
                "--listen".to_string(),
                addr.to_string(),
                "--initial-cluster".to_string(),
                initial.clone(),
                "--data-dir".to_string(),
                config
                    .data_root
                    .join(format!("node{id}"))
                    .display()
                    .to_string(),
            ];
            for (to, route) in mesh.route_for(id)? {
                args.push("--peer-route".to_string());
                args.push(format!("{to}={route}"));
            }
            if let Some(certs) = &certs {
                args.extend(certs.server_args(id)?);
            }
            args.extend(config.extra_args.iter().cloned());
            nodes.insert(
                id,
                NodeProcess {
                    addr,
                    args,
                    child: None,
                    paused: false,
                },
            );
        }
        let mut cluster = Cluster {
            config,
            mesh: Some(mesh),
            nodes,
            certs,
            client_tls,
        };
        for id in 1..=cluster.config.nodes {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.config.data_root.join(format!("node{id}.log"))
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log_path = self.log_path(id);
        let binary = self.config.server_binary.clone();
        let node = self
            .nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&binary)
            .args(&node.args)
            .env(
                "RUST_LOG",
                std::env::var("RAFTKV_LOG").unwrap_or_else(|_| "info,openraft=warn".to_string()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid(id)
            .with_context(|| format!("node {id} is not running"))?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// A node's process id, if running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// A node's client address.
    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.to_string()
    }

    /// Every node's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|node| node.addr.to_string())
            .collect()
    }

    /// The proxy mesh between the nodes.
    pub fn mesh(&self) -> &Mesh {
        self.mesh.as_ref().expect("the mesh lives until shutdown")
    }

    /// The data and log directory.
    pub fn data_root(&self) -> &Path {
        &self.config.data_root
    }

    /// The certificates of a TLS cluster (`None` without TLS).
    pub fn certs(&self) -> Option<&CertFiles> {
        self.certs.as_ref()
    }

    /// What a client of this cluster trusts (`None` without TLS).
    pub fn client_tls(&self) -> Option<TlsConfig> {
        self.client_tls.clone()
    }

    /// A client configuration for `endpoints` of this cluster, with TLS when the cluster has it.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.tls = self.client_tls();
        config
    }

    /// A client of every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.client_config(self.endpoints()))?)
    }

    /// SIGKILLs a node (and reaps it).
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a killed node again on its data dir.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.pid(id).is_some() {
            bail!("node {id} is running");
        }
        self.spawn(id)
    }

    /// SIGSTOPs a node.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "STOP")?;
        self.nodes.get_mut(&id).expect("node exists").paused = true;
        Ok(())
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "CONT")?;
        self.nodes.get_mut(&id).expect("node exists").paused = false;
        Ok(())
    }

    /// Whether a node is running and not paused.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|node| node.child.is_some() && !node.paused)
    }

    /// One node's status, or `None` if it does not answer within `STATUS_TIMEOUT`.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut config = self.client_config(vec![self.addr(id)]);
        config.request_timeout = STATUS_TIMEOUT;
        config.connect_timeout = STATUS_TIMEOUT;
        let client = Client::new(config).ok()?;
        client.status_of(&self.addr(id)).await.ok()
    }

    /// Waits (at most `bound`) until one of `among` is leader with term >= `min_term`; returns (id, term).
    pub async fn wait_for_leader(
        &self,
        among: &[u64],
        min_term: u64,
        bound: Duration,
    ) -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + bound;
        loop {
            for id in among {
                if let Some(status) = self.status(*id).await {
                    if status.role == Role::Leader as i32 && status.term >= min_term {
                        return Ok((*id, status.term));
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader among {among:?} with term >= {min_term} within {bound:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits (at most `bound`) until `check` holds for node `id`'s status; returns that status.
    pub async fn wait_status(
        &self,
        id: u64,
        bound: Duration,
        what: &str,
        check: impl Fn(&StatusResponse) -> bool,
    ) -> anyhow::Result<StatusResponse> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.status(id).await.filter(|status| check(status)) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("node {id}: {what} did not happen within {bound:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops every node (SIGCONT, SIGTERM, then SIGKILL after `STOP_TIMEOUT`) and the mesh.
    pub async fn shutdown(mut self) {
        let ids = self.ids();
        for id in &ids {
            if self.nodes[id].paused {
                let _ = self.resume(*id);
            }
            let _ = self.signal(*id, "TERM");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) => break,
                        _ if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        _ => tokio::time::sleep(POLL_INTERVAL).await,
                    }
                }
            }
        }
        if let Some(mesh) = self.mesh.take() {
            mesh.shutdown().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
