//! Real `raftkv-server` processes behind the proxy mesh: the test kit's [`raftkv_testkit::Cluster`] (start,
//! SIGKILL, restart, SIGSTOP/SIGCONT, status, bounded waits) with every node's peer traffic routed through a
//! [`Mesh`].
//!
//! The kit plans the nodes (free 127.0.0.1 ports, data dirs under the data root, and with `tls` a throwaway CA
//! and node certificates), the mesh starts on the planned addresses, and only then do the nodes start, each
//! dialling its peers through the mesh (`--peer-route`). So a partition is made by the mesh alone: the nodes
//! have no fault flag. Peer traffic under TLS is mutual TLS carried unchanged through the TCP-level mesh, and
//! every client of the cluster trusts the CA (`client_config`). This module owns only what the mesh adds;
//! the kit's operations are reached through `Deref`.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use raftkv_testkit::ClusterSpec;

use crate::net::{Mesh, PortLayout};

/// Deadline of a status call to one node: a partitioned or paused node must not hold up a wait or a
/// poll of the others for long.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Most nodes a cluster may have (node ids 1..=NODES_MAX, as the proxy port layout allows).
pub const NODES_MAX: u64 = crate::net::BASE_LAYOUT_NODE_ID_MAX;
/// The nodes' log filter unless `RAFTKV_LOG` says otherwise.
pub const LOG_FILTER_DEFAULT: &str = "info,openraft=warn";

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

/// A running cluster of real processes behind a proxy mesh.
pub struct Cluster {
    nodes: raftkv_testkit::Cluster,
    /// Always `Some` until `shutdown` takes it.
    mesh: Option<Mesh>,
}

/// Refuses a node count a cluster cannot have; callers check before they touch anything (a data dir).
pub fn check_nodes(nodes: u64) -> anyhow::Result<()> {
    if nodes == 0 || nodes > NODES_MAX {
        bail!("--nodes must be between 1 and {NODES_MAX}, not {nodes}");
    }
    Ok(())
}

impl Cluster {
    /// Starts the mesh and every node, bootstrapped together. Does not wait for a leader.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        check_nodes(config.nodes)?;
        let mut nodes = raftkv_testkit::Cluster::plan(ClusterSpec {
            args: config.extra_args,
            server_binary: Some(config.server_binary),
            data_root: Some(config.data_root),
            tls: config.tls,
            log_filter: std::env::var("RAFTKV_LOG")
                .unwrap_or_else(|_| LOG_FILTER_DEFAULT.to_string()),
            status_timeout: Some(STATUS_TIMEOUT),
            ..ClusterSpec::new(config.nodes)
        })?;
        let mesh = Mesh::start(nodes.socket_addrs(), PortLayout::OsAssigned).await?;
        for id in nodes.ids() {
            nodes.route_peers(id, mesh.route_for(id)?)?;
        }
        nodes.start_all()?;
        Ok(Cluster {
            nodes,
            mesh: Some(mesh),
        })
    }

    /// The proxy mesh between the nodes.
    pub fn mesh(&self) -> &Mesh {
        self.mesh.as_ref().expect("the mesh lives until shutdown")
    }

    /// Stops every node (SIGCONT, SIGTERM, then SIGKILL after the kit's `STOP_TIMEOUT`) and the mesh.
    pub async fn shutdown(mut self) {
        self.nodes.stop_all().await;
        if let Some(mesh) = self.mesh.take() {
            mesh.shutdown().await;
        }
    }
}

impl Deref for Cluster {
    type Target = raftkv_testkit::Cluster;

    fn deref(&self) -> &raftkv_testkit::Cluster {
        &self.nodes
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut raftkv_testkit::Cluster {
        &mut self.nodes
    }
}
