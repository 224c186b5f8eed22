//! What the playground drives: either its own cluster (`jepsen-lite ui --nodes N`: real processes behind an
//! in-process proxy mesh, as `run` starts them) or the local cluster of `scripts/cluster.sh up`, found through
//! its state folder (`.cluster/`: the size, each process's pid file, the base port; the mesh's control port is
//! the base port + 99). Both answer the same questions (which nodes, which processes run, which links pass)
//! and take the same actions (kill, restart, pause, resume, network commands), each bounded by a deadline.
//! Every action has the `scripts/cluster.sh` line that does the same by hand (for the playground's own
//! cluster, the line that does it to a `scripts/cluster.sh` cluster).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use raftkv_client::{ClientConfig, TlsConfig};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, ClusterConfig};
use crate::net::{self, Command, LinkStatus};

/// Deadline of a process action (a restart of an attached cluster's node runs `cluster.sh`, which starts the
/// process and returns; a kill waits for the process to go).
pub const PROCESS_ACTION_TIMEOUT: Duration = Duration::from_secs(20);
/// The port `scripts/cluster.sh` puts node 1 one above, unless its state folder says otherwise.
pub const CLUSTER_BASE_PORT_DEFAULT: u16 = 7000;
/// How far above the base port `scripts/cluster.sh` puts the mesh's control port.
pub const CONTROL_PORT_OFFSET: u16 = 99;

/// What can be done to a node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessAction {
    Kill,
    Restart,
    Pause,
    Resume,
}

impl ProcessAction {
    pub fn name(self) -> &'static str {
        match self {
            ProcessAction::Kill => "kill",
            ProcessAction::Restart => "restart",
            ProcessAction::Pause => "pause",
            ProcessAction::Resume => "resume",
        }
    }
}

/// Whether a node's process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    Paused,
    Stopped,
}

enum Inner {
    Own(Box<Mutex<Cluster>>),
    Attached(Attached),
}

/// A `scripts/cluster.sh` cluster, reached through its state folder.
struct Attached {
    /// Held while `scripts/cluster.sh` runs: two restarts of one node at once would both start a process.
    running: Mutex<()>,
    dir: PathBuf,
    script: PathBuf,
    base_port: u16,
    control: String,
}

/// The cluster the playground shows.
pub struct Backend {
    inner: Inner,
    /// Node id to its client address.
    nodes: BTreeMap<u64, String>,
    tls: Option<TlsConfig>,
}

impl Backend {
    /// Starts `nodes` nodes of `server_binary` under `data_root`, behind a proxy mesh, with the fast timing.
    pub async fn start_own(
        nodes: u64,
        server_binary: PathBuf,
        data_root: PathBuf,
    ) -> anyhow::Result<Backend> {
        let cluster = Cluster::start(ClusterConfig {
            nodes,
            server_binary,
            data_root,
            extra_args: raftkv_testkit::fast_timing(),
            tls: false,
        })
        .await?;
        let addresses = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.addr(id)))
            .collect();
        Ok(Backend {
            tls: cluster.client_tls(),
            nodes: addresses,
            inner: Inner::Own(Box::new(Mutex::new(cluster))),
        })
    }

    /// Attaches to the cluster whose `scripts/cluster.sh` state folder is `dir` (`.cluster/`).
    pub fn attach(dir: &Path) -> anyhow::Result<Backend> {
        let size: u64 = std::fs::read_to_string(dir.join("size"))
            .with_context(|| {
                format!(
                    "no local cluster in {} (start one with `scripts/cluster.sh up`, or pass --nodes N for a cluster of the playground's own)",
                    dir.display()
                )
            })?
            .trim()
            .parse()
            .with_context(|| format!("{} is not a node count", dir.join("size").display()))?;
        if size == 0 || size > crate::cluster::NODES_MAX {
            bail!(
                "{} says {size} nodes, but a cluster has 1 to {}; start it again with `scripts/cluster.sh up`",
                dir.join("size").display(),
                crate::cluster::NODES_MAX
            );
        }
        let base_port = match std::fs::read_to_string(dir.join("base")) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a port", dir.join("base").display()))?,
            Err(_) => CLUSTER_BASE_PORT_DEFAULT,
        };
        let root = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let script = root
            .parent()
            .map(|repo| repo.join("scripts/cluster.sh"))
            .filter(|script| script.is_file())
            .with_context(|| {
                format!(
                    "no scripts/cluster.sh next to {}: attach to the .cluster/ folder of a raftkv checkout",
                    dir.display()
                )
            })?;
        let tls = match root.join("tls/ca.pem") {
            ca if ca.is_file() => Some(TlsConfig::from_pem(
                std::fs::read(&ca).with_context(|| format!("cannot read {}", ca.display()))?,
                None,
            )?),
            _ => None,
        };
        let nodes = (1..=size)
            .map(|id| (id, format!("127.0.0.1:{}", base_port as u64 + id)))
            .collect();
        Ok(Backend {
            inner: Inner::Attached(Attached {
                running: Mutex::new(()),
                dir: root,
                script,
                base_port,
                control: format!(
                    "127.0.0.1:{}",
                    base_port
                        .checked_add(CONTROL_PORT_OFFSET)
                        .with_context(|| {
                            format!(
                                "{} holds a base port too high for the control port",
                                dir.display()
                            )
                        })?
                ),
            }),
            nodes,
            tls,
        })
    }

    /// Node ids and their client addresses.
    pub fn nodes(&self) -> &BTreeMap<u64, String> {
        &self.nodes
    }

    /// A client configuration for `endpoints` that trusts the cluster's CA, if it has one.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.tls = self.tls.clone();
        config
    }

    /// Node `id`'s client address; the error names the nodes there are.
    pub fn address(&self, id: u64) -> anyhow::Result<&str> {
        self.nodes.get(&id).map(String::as_str).with_context(|| {
            format!(
                "there is no node {id}: the nodes are {}",
                self.nodes
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Kills, restarts, pauses or resumes node `id`, within `PROCESS_ACTION_TIMEOUT`.
    pub async fn process(&self, action: ProcessAction, id: u64) -> anyhow::Result<()> {
        self.address(id)?;
        let work = async {
            match &self.inner {
                Inner::Own(cluster) => {
                    let mut cluster = cluster.lock().await;
                    let state = own_state(&cluster, id);
                    match (action, state) {
                        (ProcessAction::Kill, ProcessState::Stopped) => {
                            bail!("node {id} is not running")
                        }
                        (ProcessAction::Kill, _) => cluster.kill(id),
                        (ProcessAction::Restart, ProcessState::Stopped) => cluster.restart(id),
                        (ProcessAction::Restart, _) => {
                            bail!("node {id} is running: kill it first")
                        }
                        (ProcessAction::Pause, ProcessState::Running) => cluster.pause(id),
                        (ProcessAction::Pause, _) => bail!("node {id} is not running"),
                        (ProcessAction::Resume, ProcessState::Paused) => cluster.resume(id),
                        (ProcessAction::Resume, _) => bail!("node {id} is not paused"),
                    }
                }
                Inner::Attached(attached) => {
                    attached.script(&[action.name(), &id.to_string()]).await
                }
            }
        };
        tokio::time::timeout(PROCESS_ACTION_TIMEOUT, work)
            .await
            .with_context(|| {
                format!(
                    "{} node {id} did not finish within {PROCESS_ACTION_TIMEOUT:?}",
                    action.name()
                )
            })?
    }

    /// Applies a network command and returns every link after it.
    pub async fn net(&self, command: &Command) -> anyhow::Result<Vec<LinkStatus>> {
        match &self.inner {
            Inner::Own(cluster) => {
                let cluster = cluster.lock().await;
                command.apply(cluster.mesh())?;
                Ok(cluster.mesh().snapshot())
            }
            Inner::Attached(attached) => Ok(net::request(&attached.control, command).await?),
        }
    }

    /// Every node's process state.
    pub async fn process_states(&self) -> BTreeMap<u64, ProcessState> {
        match &self.inner {
            Inner::Own(cluster) => {
                let cluster = cluster.lock().await;
                self.nodes
                    .keys()
                    .map(|&id| (id, own_state(&cluster, id)))
                    .collect()
            }
            Inner::Attached(attached) => self
                .nodes
                .keys()
                .map(|&id| (id, attached.state(id)))
                .collect(),
        }
    }

    /// The `scripts/cluster.sh` line that does `action` to node `id` by hand.
    pub fn process_command_line(&self, action: ProcessAction, id: u64) -> String {
        format!("{} {} {id}", self.script_prefix(), action.name())
    }

    /// The `scripts/cluster.sh` line that applies `command` by hand.
    pub fn net_command_line(&self, command: &Command) -> String {
        let words = match command {
            Command::Delay {
                delay,
                link: Some((from, to)),
            } => format!("slow {from} {to} {}", net::format_duration(*delay)),
            other => other.to_string(),
        };
        format!("{} {words}", self.script_prefix())
    }

    fn script_prefix(&self) -> String {
        match &self.inner {
            Inner::Attached(attached) if attached.base_port != CLUSTER_BASE_PORT_DEFAULT => {
                format!("RAFTKV_BASE_PORT={} scripts/cluster.sh", attached.base_port)
            }
            _ => "scripts/cluster.sh".to_string(),
        }
    }

    /// Stops the playground's own cluster; an attached one is left running.
    pub async fn shutdown(self) {
        if let Inner::Own(cluster) = self.inner {
            cluster.into_inner().shutdown().await;
        }
    }
}

fn own_state(cluster: &Cluster, id: u64) -> ProcessState {
    match (cluster.pid(id), cluster.is_up(id)) {
        (None, _) => ProcessState::Stopped,
        (Some(_), true) => ProcessState::Running,
        (Some(_), false) => ProcessState::Paused,
    }
}

impl Attached {
    /// Runs `scripts/cluster.sh ARGS` for this cluster; its error output is the error.
    async fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let _one_at_a_time = self.running.lock().await;
        let output = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("RAFTKV_BASE_PORT", self.base_port.to_string())
            // Its own process group: a node it restarts must not get the Ctrl-C meant for the playground.
            .process_group(0)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "scripts/cluster.sh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// A node's state from its pid file: stopped without a live process, paused when the process is stopped
    /// (`T` in `/proc/PID/stat`).
    fn state(&self, id: u64) -> ProcessState {
        let Some(pid) = std::fs::read_to_string(self.dir.join(format!("node{id}.pid")))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        else {
            return ProcessState::Stopped;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name, which is in parentheses and may hold spaces.
            Ok(stat) => match stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                Some("T") | Some("t") => ProcessState::Paused,
                Some("Z") | Some("X") | None => ProcessState::Stopped,
                Some(_) => ProcessState::Running,
            },
            Err(_) => ProcessState::Stopped,
        }
    }
}
