//! N real `raftkv-server` processes on 127.0.0.1: started bootstrapped together on free ports with their data
//! dirs and logs under one root, signalled (SIGKILL, SIGSTOP/SIGCONT, SIGTERM), restarted with the same flags,
//! asked for their status through the client library, and waited on with bounds. Every process is tracked
//! by pid (its `Child`) and SIGKILLed when the cluster is dropped, so a failing test or experiment leaves
//! nothing behind.
//!
//! Starting is two steps, [`Cluster::plan`] (addresses, data dirs, certificates; nothing runs) and
//! [`Cluster::start_all`], so that a caller can put something between the nodes first: jepsen-lite starts
//! its proxy mesh on the planned addresses and routes each node's peer traffic through it
//! ([`Cluster::route_peers`]). [`Cluster::start`] does both for everyone else.
//!
//! Layout under the data root: `node{id}/` (the node's data dir), `node{id}.log` (its stderr, appended
//! across restarts, filtered by `RUST_LOG`), `tls/` (the certificates of a cluster started with `tls`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use raftkv_client::{Client, ClientConfig, Role, StatusResponse, TlsConfig};
use tempfile::TempDir;

use crate::certs::{self, CertFiles};
use crate::wait::{poll_observing, poll_until, TimedOut};

/// Most nodes a cluster may have (as many as [`certs::generate`] makes certificates for).
pub const NODES_MAX: u64 = certs::NODES_MAX;
/// Longest [`Cluster::stop_all`] waits for the nodes to exit after SIGTERM before it SIGKILLs them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The nodes' `RUST_LOG` unless the spec says otherwise: warnings and errors, which tests look for.
pub const LOG_FILTER_DEFAULT: &str = "warn";

/// How to start a cluster. `ClusterSpec::new(n)` is n nodes with [`FAST_TIMING`](crate::FAST_TIMING) in a
/// temporary directory; change fields with struct update syntax.
#[derive(Clone)]
pub struct ClusterSpec {
    /// Nodes 1..=`nodes`, bootstrapped together.
    pub nodes: u64,
    /// Flags for every node.
    pub args: Vec<String>,
    /// Flags for one node, after `args` (e.g. its own certificate).
    pub node_args: BTreeMap<u64, Vec<String>>,
    /// The `raftkv-server` binary; `None`: [`server_binary`](crate::server_binary).
    pub server_binary: Option<PathBuf>,
    /// Where data dirs and logs go; `None`: a temporary directory removed with the cluster.
    pub data_root: Option<PathBuf>,
    /// Every node also serves metrics, on a free port of its own (`--metrics-listen`).
    pub metrics: bool,
    /// TLS with a fresh CA and node certificates under `data_root/tls` (mutual TLS between peers); clients
    /// of the cluster trust the CA.
    pub tls: bool,
    /// What clients of the cluster trust, when the node flags set TLS up themselves (`node_args`).
    pub client_tls: Option<TlsConfig>,
    /// The nodes' `RUST_LOG`.
    pub log_filter: String,
    /// Connect and request deadline of one status call; `None`: the client library's defaults.
    pub status_timeout: Option<Duration>,
}

impl ClusterSpec {
    /// `nodes` nodes with the fast test timing, plaintext, in a temporary directory.
    pub fn new(nodes: u64) -> ClusterSpec {
        ClusterSpec {
            nodes,
            args: crate::fast_timing(),
            node_args: BTreeMap::new(),
            server_binary: None,
            data_root: None,
            metrics: false,
            tls: false,
            client_tls: None,
            log_filter: LOG_FILTER_DEFAULT.to_string(),
            status_timeout: None,
        }
    }
}

struct Node {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Flags after the node's identity: TLS, the cluster's, its own, its peer routes.
    args: Vec<String>,
    /// Started with `--initial-cluster` (a founding member), at every start.
    bootstrap: bool,
    /// Environment variables added at every start (e.g. libfaketime's), set by [`Cluster::set_env`].
    env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

/// Real `raftkv-server` processes (see the module doc).
pub struct Cluster {
    binary: PathBuf,
    data_root: PathBuf,
    nodes: BTreeMap<u64, Node>,
    /// `--initial-cluster` of the founding members.
    initial_cluster: String,
    certs: Option<CertFiles>,
    client_tls: Option<TlsConfig>,
    log_filter: String,
    status_timeout: Option<Duration>,
    /// Dropped after `Drop` has killed the nodes.
    _temp: Option<TempDir>,
}

impl Cluster {
    /// Plans and starts every node. Does not wait for a leader.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::plan(spec)?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Picks every node's address, makes the data root (and certificates), and starts nothing.
    pub fn plan(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        if spec.nodes == 0 || spec.nodes > NODES_MAX {
            bail!("a cluster has 1 to {NODES_MAX} nodes, not {}", spec.nodes);
        }
        if let Some(id) = spec
            .node_args
            .keys()
            .find(|id| !(1..=spec.nodes).contains(*id))
        {
            bail!(
                "flags for node {id}, but the cluster has nodes 1 to {}",
                spec.nodes
            );
        }
        let binary = match spec.server_binary {
            Some(binary) => binary,
            None => crate::server_binary()?,
        };
        let (data_root, temp) = match spec.data_root {
            Some(root) => (root, None),
            None => {
                let temp = TempDir::new().context("cannot create a temporary data root")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(&data_root)
            .with_context(|| format!("cannot create {}", data_root.display()))?;
        let certs = match spec.tls {
            true => Some(certs::generate(&data_root.join("tls"), spec.nodes, &[])?),
            false => None,
        };
        let client_tls = match &certs {
            Some(certs) => Some(certs.client_tls()?),
            None => spec.client_tls,
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=spec.nodes {
            let mut args = match &certs {
                Some(certs) => certs.server_args(id)?,
                None => Vec::new(),
            };
            args.extend(spec.args.iter().cloned());
            args.extend(spec.node_args.get(&id).into_iter().flatten().cloned());
            let metrics_addr = match spec.metrics {
                true => Some(crate::free_addr().context("no free port for metrics")?),
                false => None,
            };
            let node = Node {
                addr: crate::free_addr().context("no free port for a node")?,
                metrics_addr,
                args,
                bootstrap: true,
                env: Vec::new(),
                child: None,
                paused: false,
            };
            nodes.insert(id, node);
        }
        let initial_cluster = nodes
            .iter()
            .map(|(id, node)| format!("{id}={}", node.addr))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            binary,
            data_root,
            nodes,
            initial_cluster,
            certs,
            client_tls,
            log_filter: spec.log_filter,
            status_timeout: spec.status_timeout,
            _temp: temp,
        })
    }

    /// Makes node `id` dial each peer `to` at `via` (`--peer-route to=via`) from its next start on.
    pub fn route_peers(
        &mut self,
        id: u64,
        routes: impl IntoIterator<Item = (u64, SocketAddr)>,
    ) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        for (to, via) in routes {
            node.args.push("--peer-route".to_string());
            node.args.push(format!("{to}={via}"));
        }
        Ok(())
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            if self.pid(id).is_none() {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Starts node `id`, not a founding member (to be added as a learner), with `args` instead of the
    /// cluster's flags; returns its address.
    pub fn add_node(&mut self, id: u64, args: &[String]) -> anyhow::Result<String> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} is already in the cluster");
        }
        let node = Node {
            addr: crate::free_addr().context("no free port for a node")?,
            metrics_addr: None,
            args: args.to_vec(),
            bootstrap: false,
            env: Vec::new(),
            child: None,
            paused: false,
        };
        self.nodes.insert(id, node);
        self.spawn(id)?;
        Ok(self.addr(id))
    }

    fn node(&self, id: u64) -> anyhow::Result<&Node> {
        self.nodes
            .get(&id)
            .with_context(|| format!("no node {id} in the cluster"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id} in the cluster"))
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log_path = self.log_path(id);
        let data_dir = self.data_dir(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let (binary, filter, initial) = (&self.binary, &self.log_filter, &self.initial_cluster);
        let node = self
            .nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id} in the cluster"))?;
        let mut command = Command::new(binary);
        command
            .args(["--id", &id.to_string(), "--listen", &node.addr.to_string()])
            .arg("--data-dir")
            .arg(&data_dir);
        if node.bootstrap {
            command.args(["--initial-cluster", initial]);
        }
        if let Some(metrics_addr) = node.metrics_addr {
            command.args(["--metrics-listen", &metrics_addr.to_string()]);
        }
        let child = command
            .args(&node.args)
            .env("RUST_LOG", filter)
            .envs(node.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Sends `signal` (a `kill -SIGNAL` name) to node `id`.
    fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid(id)
            .with_context(|| format!("node {id} is not running"))?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} (node {id}) failed: {status}");
        }
        Ok(())
    }

    /// The node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`'s client address (`127.0.0.1:PORT`); panics for a node the cluster does not have.
    pub fn addr(&self, id: u64) -> String {
        self.socket_addr(id).to_string()
    }

    /// Node `id`'s client address; panics for a node the cluster does not have.
    pub fn socket_addr(&self, id: u64) -> SocketAddr {
        match self.node(id) {
            Ok(node) => node.addr,
            Err(error) => panic!("{error}"),
        }
    }

    /// Every node's client address, by id.
    pub fn socket_addrs(&self) -> BTreeMap<u64, SocketAddr> {
        self.nodes
            .iter()
            .map(|(id, node)| (*id, node.addr))
            .collect()
    }

    /// Every node's client address, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|node| node.addr.to_string())
            .collect()
    }

    /// Node `id`'s `--metrics-listen` address, if it serves metrics.
    pub fn metrics_addr(&self, id: u64) -> Option<String> {
        self.nodes
            .get(&id)?
            .metrics_addr
            .map(|addr| addr.to_string())
    }

    /// Where the data dirs and logs are.
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.data_root.join(format!("node{id}"))
    }

    /// Where node `id`'s stderr goes.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data_root.join(format!("node{id}.log"))
    }

    /// Node `id`'s log so far (empty if it has none).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// The last `bytes` of every node's log, each under a heading: what to show when something failed.
    pub fn log_tails(&self, bytes: usize) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let log = self.log(id);
            let mut start = log.len().saturating_sub(bytes);
            while !log.is_char_boundary(start) {
                start += 1;
            }
            out.push_str(&format!(
                "---- node {id}: the last {} bytes of its log ----\n{}\n",
                log.len() - start,
                &log[start..]
            ));
        }
        out
    }

    /// A node's process id, if it is running (paused counts as running).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Whether a node is running and not paused.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|node| node.child.is_some() && !node.paused)
    }

    /// The certificates of a cluster started with `tls`.
    pub fn certs(&self) -> Option<&CertFiles> {
        self.certs.as_ref()
    }

    /// What a client of this cluster trusts (`None`: plaintext).
    pub fn client_tls(&self) -> Option<TlsConfig> {
        self.client_tls.clone()
    }

    /// A client configuration for `endpoints`, with the cluster's TLS.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.tls = self.client_tls();
        config
    }

    /// A client of every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.client_config(self.endpoints()))?)
    }

    /// A client of node `id` only (it still follows leader hints for writes).
    pub fn client_of(&self, id: u64) -> anyhow::Result<Client> {
        Ok(Client::new(self.client_config(vec![self.addr(id)]))?)
    }

    /// SIGKILLs node `id` and reaps it; nothing if it is not running.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            child
                .kill()
                .with_context(|| format!("cannot kill node {id}"))?;
            child
                .wait()
                .with_context(|| format!("cannot reap node {id}"))?;
        }
        Ok(())
    }

    /// SIGKILLs every running node at once: every signal is sent before any node is reaped, so no node
    /// outlives another by more than the time it takes to send the next signal.
    pub fn kill_all(&mut self) -> anyhow::Result<()> {
        let mut killed = Vec::new();
        for (id, node) in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                child
                    .kill()
                    .with_context(|| format!("cannot kill node {id}"))?;
                killed.push((*id, child));
            }
        }
        for (id, mut child) in killed {
            child
                .wait()
                .with_context(|| format!("cannot reap node {id}"))?;
        }
        Ok(())
    }

    /// Starts a stopped node again on its data dir, with the flags it first started with.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.pid(id).is_some() {
            bail!("node {id} is running");
        }
        self.spawn(id)
    }

    /// Sets the environment variables node `id` gets, beyond `RUST_LOG`, from its next start on (replacing
    /// any set before; empty: none).
    pub fn set_env(&mut self, id: u64, env: Vec<(String, String)>) -> anyhow::Result<()> {
        self.node_mut(id)?.env = env;
        Ok(())
    }

    /// SIGSTOPs a node.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "STOP")?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "CONT")?;
        self.node_mut(id)?.paused = false;
        Ok(())
    }

    /// SIGTERMs node `id` (SIGCONT first if paused) and waits at most `bound` for it to exit; returns how it
    /// exited. A node still running at the bound is SIGKILLed and the error says so.
    pub async fn terminate(&mut self, id: u64, bound: Duration) -> anyhow::Result<ExitStatus> {
        if self.node(id)?.paused {
            self.resume(id)?;
        }
        self.signal(id, "TERM")?;
        let mut child = self
            .node_mut(id)?
            .child
            .take()
            .expect("signalled, so running");
        let exited = poll_until(&format!("node {id} exits after SIGTERM"), bound, || {
            let status = child.try_wait();
            async move { status.ok().flatten() }
        })
        .await;
        match exited {
            Ok(status) => Ok(status),
            Err(timed_out) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{timed_out}; SIGKILLed it")
            }
        }
    }

    /// Stops every node: SIGCONT the paused, SIGTERM all, and SIGKILL whoever has not exited within
    /// `STOP_TIMEOUT`. Best effort: a node that cannot be signalled is killed with the rest.
    pub async fn stop_all(&mut self) {
        for id in self.ids() {
            if self.nodes[&id].paused {
                let _ = self.resume(id);
            }
            let _ = self.signal(id, "TERM");
        }
        let mut children: Vec<Child> = self
            .nodes
            .values_mut()
            .filter_map(|node| node.child.take())
            .collect();
        let _ = poll_until("every node exits after SIGTERM", STOP_TIMEOUT, || {
            let all_exited = children
                .iter_mut()
                .all(|child| matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
            async move { all_exited.then_some(()) }
        })
        .await;
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `id`'s status, or `None` if it does not answer (within `status_timeout`, if the spec set one).
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let addr = self.addr(id);
        let mut config = self.client_config(vec![addr.clone()]);
        if let Some(timeout) = self.status_timeout {
            config.connect_timeout = timeout;
            config.request_timeout = timeout;
        }
        Client::new(config).ok()?.status_of(&addr).await.ok()
    }

    /// Waits at most `bound` until one of `among` is leader in a term >= `min_term`; returns (id, term).
    pub async fn wait_for_leader(
        &self,
        among: &[u64],
        min_term: u64,
        bound: Duration,
    ) -> Result<(u64, u64), TimedOut> {
        let what = format!("one of nodes {among:?} is leader in a term >= {min_term}");
        poll_observing(&what, bound, move || async move {
            let mut seen = Vec::new();
            for id in among {
                let status = self.status(*id).await;
                if let Some(status) = &status {
                    if status.role == Role::Leader as i32 && status.term >= min_term {
                        return Ok((*id, status.term));
                    }
                }
                seen.push(describe(*id, status.as_ref()));
            }
            Err(seen.join("; "))
        })
        .await
    }

    /// Waits at most `bound` until each of `ids` has reached store revision `revision` and all name one
    /// leader; returns it.
    /// An election right after start-up can move leadership between finding a leader and using it: this
    /// waits it out.
    pub async fn wait_for_agreed_leader(
        &self,
        ids: &[u64],
        revision: u64,
        bound: Duration,
    ) -> Result<u64, TimedOut> {
        let what = format!("nodes {ids:?} have reached revision {revision} and name one leader");
        poll_observing(&what, bound, move || async move {
            let mut seen = Vec::new();
            let mut leaders = Vec::new();
            for id in ids {
                let status = self.status(*id).await;
                seen.push(describe(*id, status.as_ref()));
                match status {
                    Some(status) if status.revision >= revision => leaders.push(status.leader_id),
                    _ => {}
                }
            }
            match leaders.first() {
                Some(&leader)
                    if leader != 0
                        && leaders.len() == ids.len()
                        && leaders.iter().all(|other| *other == leader) =>
                {
                    Ok(leader)
                }
                _ => Err(seen.join("; ")),
            }
        })
        .await
    }

    /// Waits at most `bound` until node `id`'s store has reached at least `revision` (what a write returned);
    /// returns its status.
    pub async fn wait_applied(
        &self,
        id: u64,
        revision: u64,
        bound: Duration,
    ) -> Result<StatusResponse, TimedOut> {
        let what = format!("revision {revision}");
        self.wait_status(id, bound, &what, |status| status.revision >= revision)
            .await
    }

    /// Waits at most `bound` until node `id` has applied the log up to at least `index`; returns its status.
    pub async fn wait_applied_index(
        &self,
        id: u64,
        index: u64,
        bound: Duration,
    ) -> Result<StatusResponse, TimedOut> {
        let what = format!("apply index {index}");
        self.wait_status(id, bound, &what, |status| status.applied_index >= index)
            .await
    }

    /// Waits at most `bound` until `check` holds for node `id`'s status; returns that status. `what` names
    /// the condition, for the error.
    pub async fn wait_status(
        &self,
        id: u64,
        bound: Duration,
        what: &str,
        check: impl Fn(&StatusResponse) -> bool,
    ) -> Result<StatusResponse, TimedOut> {
        let check = &check;
        poll_observing(&format!("node {id}: {what}"), bound, move || async move {
            match self.status(id).await {
                Some(status) if check(&status) => Ok(status),
                status => Err(describe(id, status.as_ref())),
            }
        })
        .await
    }
}

/// One node's status in a few words, for a wait's error.
fn describe(id: u64, status: Option<&StatusResponse>) -> String {
    match status {
        None => format!("node {id} did not answer"),
        Some(status) => {
            let role = Role::try_from(status.role).map_or_else(
                |_| format!("role {}", status.role),
                |role| format!("{role:?}"),
            );
            format!(
                "node {id} {} in term {}, leader {}, applied index {}, revision {}",
                role.to_lowercase(),
                status.term,
                status.leader_id,
                status.applied_index,
                status.revision
            )
        }
    }
}

/// The end of each node's log printed when a test fails with its cluster still up: the data root (and the logs
/// in it) is usually a temporary dir that goes with the test.
const FAILED_TEST_LOG_TAIL_BYTES: usize = 8 * 1024;

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprint!("{}", self.log_tails(FAILED_TEST_LOG_TAIL_BYTES));
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
