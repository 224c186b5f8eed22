//! Test harness: real `raftkv-server` processes on 127.0.0.1 with free ports and temporary data dirs, killed
//! by pid when the cluster is dropped. Waits are condition polls with deadlines, never bare sleeps. Each node's
//! stderr (at `RUST_LOG=warn`) goes to `node{id}.log` next to its data dir, for tests that check warnings.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_client::{Client, ClientConfig, ReadOptions, Role, StatusResponse, TlsConfig};
use tempfile::TempDir;

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Default bound for a condition to become true.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct TestNode {
    pub id: u64,
    pub addr: String,
    /// `--metrics-listen` address, if the node serves metrics.
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    pub child: Option<Child>,
}

pub struct TestCluster {
    pub nodes: BTreeMap<u64, TestNode>,
    pub initial_cluster: String,
    /// What the cluster's clients trust, for a TLS cluster.
    pub client_tls: Option<TlsConfig>,
    _dir: TempDir,
}

/// Flags that make elections quick in tests.
pub fn fast_timing() -> Vec<String> {
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
    .map(|s| s.to_string())
    .collect()
}

impl TestCluster {
    /// Starts `size` nodes bootstrapped together, each with `extra_args`.
    pub fn start(size: u64, extra_args: &[String]) -> TestCluster {
        TestCluster::start_nodes(size, extra_args, false)
    }

    /// Like `start`, and every node also serves metrics on a port of its own (`TestNode::metrics_addr`).
    pub fn start_with_metrics(size: u64, extra_args: &[String]) -> TestCluster {
        TestCluster::start_nodes(size, extra_args, true)
    }

    /// Starts `size` nodes bootstrapped together, node `id` with `node_args(id)` (e.g. its own certificate).
    pub fn start_with_node_args(size: u64, node_args: impl Fn(u64) -> Vec<String>) -> TestCluster {
        TestCluster::start_nodes_with(size, node_args, false)
    }

    fn start_nodes(size: u64, extra_args: &[String], metrics: bool) -> TestCluster {
        TestCluster::start_nodes_with(size, |_| extra_args.to_vec(), metrics)
    }

    fn start_nodes_with(
        size: u64,
        node_args: impl Fn(u64) -> Vec<String>,
        metrics: bool,
    ) -> TestCluster {
        let dir = TempDir::new().unwrap();
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            let addr = format!("127.0.0.1:{}", free_port());
            let metrics_addr = metrics.then(|| format!("127.0.0.1:{}", free_port()));
            let data_dir = dir.path().join(format!("node{id}"));
            nodes.insert(
                id,
                TestNode {
                    id,
                    addr,
                    metrics_addr,
                    data_dir,
                    extra_args: node_args(id),
                    child: None,
                },
            );
        }
        let initial_cluster = nodes
            .values()
            .map(|node| format!("{}={}", node.id, node.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            nodes,
            initial_cluster,
            client_tls: None,
            _dir: dir,
        };
        for id in 1..=size {
            cluster.spawn(id, true);
        }
        cluster
    }

    /// Adds a node that is not part of the bootstrap (to be added as a learner).
    pub fn add_node(&mut self, id: u64, extra_args: &[String]) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let data_dir = self._dir.path().join(format!("node{id}"));
        self.nodes.insert(
            id,
            TestNode {
                id,
                addr: addr.clone(),
                metrics_addr: None,
                data_dir,
                extra_args: extra_args.to_vec(),
                child: None,
            },
        );
        self.spawn(id, false);
        addr
    }

    /// Where node `id`'s stderr goes.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("node{id}.log"))
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    fn spawn(&mut self, id: u64, bootstrap: bool) {
        let initial_cluster = self.initial_cluster.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open the node log");
        let node = self.nodes.get_mut(&id).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_raftkv-server"));
        command
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                &node.addr,
                "--data-dir",
            ])
            .arg(&node.data_dir)
            .args(&node.extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if bootstrap {
            command.args(["--initial-cluster", &initial_cluster]);
        }
        if let Some(metrics_addr) = &node.metrics_addr {
            command.args(["--metrics-listen", metrics_addr]);
        }
        node.child = Some(command.spawn().expect("start raftkv-server"));
    }

    /// SIGKILLs a node.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGKILLs every running node at once: every signal is sent before any node is reaped, so no node
    /// outlives another by more than the time it takes to send the next signal.
    pub fn kill_all(&mut self) {
        let mut killed = Vec::new();
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                child.kill().unwrap();
                killed.push(child);
            }
        }
        for mut child in killed {
            child.wait().unwrap();
        }
    }

    /// Starts a killed node again with its data dir (bootstrap flags as at first start).
    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes[&id].child.is_none(), "node {id} is running");
        let bootstrap = self
            .initial_cluster
            .split(',')
            .any(|member| member.starts_with(&format!("{id}=")));
        self.spawn(id, bootstrap);
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.clone()
    }

    /// The `--metrics-listen` address of node `id` (started with `start_with_metrics`).
    pub fn metrics_addr(&self, id: u64) -> String {
        self.nodes[&id]
            .metrics_addr
            .clone()
            .expect("node started without --metrics-listen")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|node| node.addr.clone()).collect()
    }

    /// A client configuration for `endpoints`, trusting the cluster's CA if it has TLS.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.tls = self.client_tls.clone();
        config
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        Client::new(self.client_config(self.endpoints())).unwrap()
    }

    /// A client of one node only (it still follows leader hints for writes).
    pub fn client_of(&self, id: u64) -> Client {
        Client::new(self.client_config(vec![self.addr(id)])).unwrap()
    }

    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        self.client_of(id).status_of(&self.addr(id)).await.ok()
    }

    /// Waits until one of `among` is leader in a term all of them that answer agree on; returns its id.
    pub async fn wait_for_leader(&self, among: &[u64], min_term: u64) -> (u64, u64) {
        wait_until("a leader is elected", WAIT_MAX, || async {
            for id in among {
                if let Some(status) = self.status(*id).await {
                    if status.role == Role::Leader as i32 && status.term >= min_term {
                        return Some((*id, status.term));
                    }
                }
            }
            None
        })
        .await
    }

    /// Waits until each of `ids` has applied `revision` and all name one leader; returns it. An election right
    /// after start-up can move leadership between finding a leader and using it: this waits it out.
    pub async fn wait_for_agreed_leader(&self, ids: &[u64], revision: u64) -> u64 {
        wait_until("every node names one leader", WAIT_MAX, || async {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(self.wait_applied(*id, revision).await.leader_id);
            }
            (leaders
                .iter()
                .all(|leader| *leader == leaders[0] && *leader != 0))
            .then(|| leaders[0])
        })
        .await
    }

    /// Waits until node `id` knows `leader` as its leader.
    pub async fn wait_knows_leader(&self, id: u64, leader: u64) -> StatusResponse {
        wait_until(
            &format!("node {id} knows node {leader} as leader"),
            WAIT_MAX,
            || async {
                self.status(id)
                    .await
                    .filter(|status| status.leader_id == leader)
            },
        )
        .await
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) -> StatusResponse {
        wait_until(
            &format!("node {id} applies index {index}"),
            WAIT_MAX,
            || async {
                self.status(id)
                    .await
                    .filter(|status| status.applied_index >= index)
            },
        )
        .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit; SIGKILLs it if the bound passes.
pub fn terminate(mut child: Child, bound: Duration) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            panic!("process {pid} did not exit within {bound:?} of SIGTERM");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `check` until it returns `Some`, at most `bound`; panics naming `what` otherwise.
pub async fn wait_until<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends `count` linearizable reads of `key` at once, all to the node at `endpoint`, and checks that each
/// saw `value`.
pub async fn read_at_once(client: &Client, endpoint: String, key: &str, value: &[u8], count: u64) {
    let options = ReadOptions {
        endpoint: Some(endpoint),
        ..Default::default()
    };
    let reads = (0..count).map(|_| client.get(key, &options));
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.expect("linearizable read").kv.unwrap().value, value);
    }
}
