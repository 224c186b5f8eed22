//! Command-line flags of `raftkv-server` and their validation into a `NodeConfig`.
//!
//! Parsing is clap's; everything that can be wrong with a combination of flags is found here, before the
//! node touches the disk or the network, and reported as one line that says what to change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::raft_types::NodeId;

/// Default cluster id: nodes and data dirs of one cluster share it; a message for another cluster is refused.
pub const CLUSTER_ID_DEFAULT: &str = "raftkv";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// raftkv-server: one node of a raftkv cluster. One port serves both clients and peers.
#[derive(Debug, Parser)]
#[command(name = "raftkv-server", version, about)]
pub struct Args {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "RAFTKV_ID")]
    pub id: NodeId,
    /// Address to listen on for clients and peers.
    #[arg(long, env = "RAFTKV_LISTEN")]
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (default: --listen).
    #[arg(long, env = "RAFTKV_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory holding this node's log, vote and snapshots.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Cluster id; a data dir and every peer message are bound to it.
    #[arg(long, env = "RAFTKV_CLUSTER_ID", default_value = CLUSTER_ID_DEFAULT)]
    pub cluster_id: String,
    /// Bootstrap members, `1=HOST:PORT,2=HOST:PORT,...`. Safe to pass on every start: a node that is already
    /// initialized ignores it. Omit it on a node that will join with `raftkv members add-learner`.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Dial this address to reach peer ID (`ID=HOST:PORT`, repeatable or comma-separated): how the
    /// partition harness puts a proxy on each link.
    #[arg(long = "peer-route", value_delimiter = ',')]
    pub peer_routes: Vec<String>,
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    #[arg(long, default_value_t = 2000)]
    pub election_timeout_max_ms: u64,
    /// Leader lease safety margin. A lease read trusts the lease for election_timeout_min minus this margin
    /// after a quorum round started, which is safe while node clocks run at rates that differ by less than
    /// margin / election_timeout_min.
    #[arg(long, default_value_t = 250)]
    pub lease_drift_margin_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many new entries. A snapshot writes the whole
    /// state, so the interval bounds write amplification: at 1M keys of 256 B, every 10,000 entries made
    /// loading crawl (BENCHMARKS.md); 100,000 is also etcd's default snapshot count.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so that slightly lagging followers catch up from the log.
    #[arg(long, default_value_t = 1_000)]
    pub log_keep_entries: u64,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub initial_cluster: Option<BTreeMap<NodeId, String>>,
    pub peer_routes: BTreeMap<NodeId, String>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long after a quorum round started the leader may serve lease reads without another round.
    pub lease_duration: Duration,
    pub snapshot_after_entries: u64,
    pub log_keep_entries: u64,
}

/// Parses `ID=HOST:PORT`.
fn parse_member(text: &str, flag: &str) -> Result<(NodeId, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{flag} expects ID=HOST:PORT, got {text:?}"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: {id:?} is not a node id"))?;
    if id == 0 {
        return Err(format!("{flag}: node ids start at 1"));
    }
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_none()
    {
        return Err(format!("{flag}: {addr:?} is not HOST:PORT"));
    }
    Ok((id, addr.to_string()))
}

fn parse_members<'a>(
    items: impl Iterator<Item = &'a str>,
    flag: &str,
) -> Result<BTreeMap<NodeId, String>, String> {
    let mut members = BTreeMap::new();
    for item in items.map(str::trim).filter(|item| !item.is_empty()) {
        let (id, addr) = parse_member(item, flag)?;
        if members.insert(id, addr).is_some() {
            return Err(format!("{flag} names node {id} twice"));
        }
    }
    Ok(members)
}

impl NodeConfig {
    /// Validates the flags.
    pub fn from_args(args: &Args) -> Result<Self, String> {
        if args.id == 0 {
            return Err("--id must be a positive integer".to_string());
        }
        if args.cluster_id.is_empty() {
            return Err("--cluster-id must not be empty".to_string());
        }
        let advertise = args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.to_string());
        let initial_cluster = match &args.initial_cluster {
            None => None,
            Some(text) => {
                let members = parse_members(text.split(','), "--initial-cluster")?;
                match members.get(&args.id) {
                    None => {
                        return Err(format!(
                            "--initial-cluster does not name this node ({}); add {}={advertise} or drop the flag",
                            args.id, args.id
                        ))
                    }
                    Some(addr) if *addr != advertise => {
                        return Err(format!(
                            "--initial-cluster gives node {} the address {addr}, but it advertises {advertise}",
                            args.id
                        ))
                    }
                    Some(_) => Some(members),
                }
            }
        };
        let peer_routes =
            parse_members(args.peer_routes.iter().map(String::as_str), "--peer-route")?;
        if peer_routes.contains_key(&args.id) {
            return Err(format!(
                "--peer-route names this node ({}); routes are for peers",
                args.id
            ));
        }
        if args.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval-ms must be above 0".to_string());
        }
        if args.election_timeout_min_ms <= args.heartbeat_interval_ms * 2 {
            return Err(
                "--election-timeout-min-ms must be more than twice --heartbeat-interval-ms"
                    .to_string(),
            );
        }
        if args.election_timeout_max_ms <= args.election_timeout_min_ms {
            return Err(
                "--election-timeout-max-ms must be above --election-timeout-min-ms".to_string(),
            );
        }
        if args.lease_drift_margin_ms >= args.election_timeout_min_ms {
            return Err(
                "--lease-drift-margin-ms must be below --election-timeout-min-ms".to_string(),
            );
        }
        if args.snapshot_after_entries == 0 {
            return Err("--snapshot-after-entries must be above 0".to_string());
        }
        let lease_duration =
            Duration::from_millis(args.election_timeout_min_ms - args.lease_drift_margin_ms);
        Ok(NodeConfig {
            id: args.id,
            listen: args.listen,
            advertise,
            data_dir: args.data_dir.clone(),
            cluster_id: args.cluster_id.clone(),
            initial_cluster,
            peer_routes,
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
            election_timeout_min: Duration::from_millis(args.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(args.election_timeout_max_ms),
            lease_duration,
            snapshot_after_entries: args.snapshot_after_entries,
            log_keep_entries: args.log_keep_entries,
        })
    }
}
