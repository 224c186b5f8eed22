//! Command-line flags of `raftkv-server` and their validation into a `NodeConfig`.
//!
//! Parsing is clap's; everything that can be wrong with a combination of flags is found here, before the
//! node touches the disk or the network, and reported as one line that says what to change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::etcd::{MAX_REQUEST_BYTES_LIMIT, MAX_REQUEST_BYTES_MIN};
use crate::kv::state_machine::TXN_OPS_MAX;
use crate::raft::types::NodeId;

/// Default cluster id: nodes and data dirs of one cluster share it; a message for another cluster is refused.
pub const CLUSTER_ID_DEFAULT: &str = "raftkv";
/// `--snapshot-after-mb` by default: well above the log of 100,000 small entries, so for small values the
/// entry count decides, as in etcd; large values reach it first.
pub const SNAPSHOT_AFTER_MB_DEFAULT: u64 = 128;
/// The largest `--snapshot-after-mb` (a terabyte of log).
pub const SNAPSHOT_AFTER_MB_MAX: u64 = 1 << 20;

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
    /// Start this node of a new cluster (with --initial-cluster) from a backup taken with `etcdctl snapshot
    /// save` against a raftkv node: its keyspace, revisions and history. The data dir must be empty; a
    /// restart with the same flag and backup leaves it alone.
    #[arg(long, value_name = "FILE")]
    pub restore_from: Option<PathBuf>,
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
    /// Also build a snapshot once the log since the last one holds this many megabytes, or as many bytes as
    /// the last snapshot if that is larger (a snapshot then never writes more than the log it lets go).
    #[arg(long, default_value_t = SNAPSHOT_AFTER_MB_DEFAULT)]
    pub snapshot_after_mb: u64,
    /// Entries kept in the log behind a snapshot, so that slightly lagging followers catch up from the log.
    #[arg(long, default_value_t = 1_000)]
    pub log_keep_entries: u64,
    /// Megabytes of sled's page cache, which holds the hot part of the keyspace and its history; the rest
    /// stays on disk. Bounds the node's memory beyond a fixed overhead.
    #[arg(long, default_value_t = crate::storage::CACHE_MB_DEFAULT)]
    pub cache_mb: u64,
    /// etcd API: most compares, or operations in one branch, of a transaction (etcd's flag and default; at
    /// most `TXN_OPS_MAX`).
    #[arg(long, default_value_t = crate::etcd::MAX_TXN_OPS_DEFAULT)]
    pub max_txn_ops: usize,
    /// etcd API: largest request decoded, in bytes (etcd's flag and default). raftkv's own limits on keys (4
    /// KiB), values (64 KiB) and transactions (`TXN_BYTES_MAX`) still apply below it.
    #[arg(long, default_value_t = crate::etcd::MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// etcd API: how often a watch created with `progress_notify` gets a response with no events while
    /// nothing changes for it, in milliseconds (etcd's default, 10 minutes).
    #[arg(long, default_value_t = crate::etcd::watch::PROGRESS_NOTIFY_INTERVAL_DEFAULT_MS)]
    pub watch_progress_notify_interval_ms: u64,
    /// Discard history automatically: `revision` keeps the last --auto-compaction-retention revisions
    /// (checked every minute); `periodic` keeps --auto-compaction-retention of time (a duration such as `30m`,
    /// `1h`, `10s`, or a number of hours), compacting every tenth of it. Off unless a retention is given.
    #[arg(long, value_enum, default_value_t = AutoCompactionMode::Periodic)]
    pub auto_compaction_mode: AutoCompactionMode,
    /// How much history automatic compaction keeps (see --auto-compaction-mode); `0` turns it off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Log output format. `RUST_LOG` chooses what is logged (see README, "Logs").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (off unless given).
    #[arg(long, env = "RAFTKV_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// This node's certificate (PEM, leaf first) for clients and peers alike. With --tls-key and --tls-ca it
    /// turns TLS on for the one port. Peers verify it under the name `raftkv-node`, so it must carry that
    /// DNS name, and it must allow both server and client authentication (the node also presents it when
    /// it dials its peers).
    #[arg(long, env = "RAFTKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RAFTKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM). Peers must present a client certificate it issued for `raftkv-node`; this node
    /// trusts peers' server certificates only from it.
    #[arg(long, env = "RAFTKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Refuse the TLS handshake of clients without a certificate from --tls-ca too (client mutual TLS);
    /// without it only peer calls need a client certificate.
    #[arg(long, env = "RAFTKV_TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
}

/// How --auto-compaction-retention is read (etcd's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// Automatic compaction, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this many revisions behind the current one.
    Revision(u64),
    /// Keep this much time of history.
    Periodic(Duration),
}

/// Longest retention of `periodic` automatic compaction: a year.
pub const AUTO_COMPACTION_PERIOD_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Reads --auto-compaction-retention for `mode`: `None` when it is 0 (off).
pub fn parse_auto_compaction(
    mode: AutoCompactionMode,
    retention: &str,
) -> Result<Option<AutoCompaction>, String> {
    let retention = retention.trim();
    let bad = || {
        format!(
            "--auto-compaction-retention {retention:?} is not {}",
            match mode {
                AutoCompactionMode::Revision => "a number of revisions (e.g. 1000)",
                AutoCompactionMode::Periodic =>
                    "a duration (e.g. 30m, 1h, 10s) or a number of hours",
            }
        )
    };
    match mode {
        AutoCompactionMode::Revision => {
            let revisions: u64 = retention.parse().map_err(|_| bad())?;
            Ok((revisions > 0).then_some(AutoCompaction::Revision(revisions)))
        }
        AutoCompactionMode::Periodic => {
            let seconds = if let Ok(hours) = retention.parse::<u64>() {
                hours.checked_mul(3600)
            } else {
                let split = retention
                    .find(|c: char| !c.is_ascii_digit())
                    .ok_or_else(bad)?;
                let (number, unit) = retention.split_at(split);
                let number: u64 = number.parse().map_err(|_| bad())?;
                let unit_secs = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    _ => return Err(bad()),
                };
                number.checked_mul(unit_secs)
            };
            let duration = seconds
                .map(Duration::from_secs)
                .filter(|duration| *duration <= AUTO_COMPACTION_PERIOD_MAX)
                .ok_or_else(|| {
                    format!(
                        "--auto-compaction-retention {retention:?} is too long; give at most {} hours",
                        AUTO_COMPACTION_PERIOD_MAX.as_secs() / 3600
                    )
                })?;
            Ok((!duration.is_zero()).then_some(AutoCompaction::Periodic(duration)))
        }
    }
}

/// Where the node's TLS material is; read and checked when the node starts (`tls::NodeTls::load`).
#[derive(Clone, Debug)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub require_client_cert: bool,
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
    /// A backup to start from (`storage::restore`), only with `initial_cluster`.
    pub restore_from: Option<PathBuf>,
    pub peer_routes: BTreeMap<NodeId, String>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long after a quorum round started the leader may serve lease reads without another round.
    pub lease_duration: Duration,
    pub snapshot_after_entries: u64,
    pub snapshot_after_mb: u64,
    pub log_keep_entries: u64,
    pub cache_mb: u64,
    pub max_txn_ops: usize,
    pub watch_progress_notify_interval: Duration,
    pub max_request_bytes: usize,
    pub auto_compaction: Option<AutoCompaction>,
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the one port, or plaintext when `None`.
    pub tls: Option<TlsPaths>,
}

/// True when two listen addresses would compete for the same port.
fn addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
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
        if args.restore_from.is_some() && initial_cluster.is_none() {
            return Err(
                "--restore-from starts a new cluster from a backup: give --initial-cluster too (every node of the new cluster restores the same backup)"
                    .to_string(),
            );
        }
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
        if args.election_timeout_min_ms <= args.heartbeat_interval_ms.saturating_mul(2) {
            return Err(format!(
                "--election-timeout-min-ms ({}) must be more than twice --heartbeat-interval-ms ({}); raise the one or lower the other",
                args.election_timeout_min_ms, args.heartbeat_interval_ms
            ));
        }
        if args.election_timeout_max_ms <= args.election_timeout_min_ms {
            return Err(format!(
                "--election-timeout-max-ms ({}) must be above --election-timeout-min-ms ({})",
                args.election_timeout_max_ms, args.election_timeout_min_ms
            ));
        }
        if args.lease_drift_margin_ms >= args.election_timeout_min_ms {
            return Err(format!(
                "--lease-drift-margin-ms ({}) must be below --election-timeout-min-ms ({})",
                args.lease_drift_margin_ms, args.election_timeout_min_ms
            ));
        }
        if let Some(metrics_listen) = args.metrics_listen {
            if addresses_overlap(metrics_listen, args.listen) {
                return Err(format!(
                    "--metrics-listen {metrics_listen} overlaps --listen {}; give metrics a port of their own",
                    args.listen
                ));
            }
        }
        if args.snapshot_after_entries == 0 {
            return Err("--snapshot-after-entries must be above 0".to_string());
        }
        if !(1..=SNAPSHOT_AFTER_MB_MAX).contains(&args.snapshot_after_mb) {
            return Err(format!(
                "--snapshot-after-mb must be between 1 and {SNAPSHOT_AFTER_MB_MAX}"
            ));
        }
        if args.cache_mb == 0 {
            return Err("--cache-mb must be at least 1".to_string());
        }
        if args.watch_progress_notify_interval_ms
            < crate::etcd::watch::PROGRESS_NOTIFY_INTERVAL_MIN_MS
        {
            return Err(format!(
                "--watch-progress-notify-interval-ms must be at least {}",
                crate::etcd::watch::PROGRESS_NOTIFY_INTERVAL_MIN_MS
            ));
        }
        if !(1..=TXN_OPS_MAX).contains(&args.max_txn_ops) {
            return Err(format!("--max-txn-ops must be between 1 and {TXN_OPS_MAX}"));
        }
        if !(MAX_REQUEST_BYTES_MIN..=MAX_REQUEST_BYTES_LIMIT).contains(&args.max_request_bytes) {
            return Err(format!(
                "--max-request-bytes must be between {MAX_REQUEST_BYTES_MIN} and {MAX_REQUEST_BYTES_LIMIT}"
            ));
        }
        let auto_compaction =
            parse_auto_compaction(args.auto_compaction_mode, &args.auto_compaction_retention)?;
        let tls = tls_paths(args)?;
        let lease_duration =
            Duration::from_millis(args.election_timeout_min_ms - args.lease_drift_margin_ms);
        Ok(NodeConfig {
            id: args.id,
            listen: args.listen,
            advertise,
            data_dir: args.data_dir.clone(),
            cluster_id: args.cluster_id.clone(),
            initial_cluster,
            restore_from: args.restore_from.clone(),
            peer_routes,
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
            election_timeout_min: Duration::from_millis(args.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(args.election_timeout_max_ms),
            lease_duration,
            snapshot_after_entries: args.snapshot_after_entries,
            snapshot_after_mb: args.snapshot_after_mb,
            log_keep_entries: args.log_keep_entries,
            cache_mb: args.cache_mb,
            max_txn_ops: args.max_txn_ops,
            watch_progress_notify_interval: Duration::from_millis(
                args.watch_progress_notify_interval_ms,
            ),
            max_request_bytes: args.max_request_bytes,
            auto_compaction,
            metrics_listen: args.metrics_listen,
            tls,
        })
    }
}

/// TLS needs all three of --tls-cert, --tls-key and --tls-ca (one port carries peer traffic, which is always
/// mutual TLS when TLS is on), or none of them.
fn tls_paths(args: &Args) -> Result<Option<TlsPaths>, String> {
    let given = [
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
        ("--tls-ca", &args.tls_ca),
    ];
    let missing: Vec<&str> = given
        .iter()
        .filter(|(_, path)| path.is_none())
        .map(|(flag, _)| *flag)
        .collect();
    match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsPaths {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
            require_client_cert: args.tls_require_client_cert,
        })),
        (None, None, None) if args.tls_require_client_cert => Err(
            "--tls-require-client-cert needs TLS: add --tls-cert, --tls-key and --tls-ca".to_string(),
        ),
        (None, None, None) => Ok(None),
        _ => Err(format!(
            "TLS needs --tls-cert, --tls-key and --tls-ca together: add {} (or drop the others to run without TLS)",
            missing.join(" and ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags every row starts from: a valid single node.
    const BASE: &[&str] = &[
        "raftkv-server",
        "--listen",
        "127.0.0.1:7001",
        "--data-dir",
        "/tmp/raftkv-config-test",
    ];

    /// `NodeConfig::from_args` on `BASE` plus `extra`: the error, or `None` when the flags are valid.
    fn check(extra: &[&str]) -> Option<String> {
        let id: &[&str] = if extra.contains(&"--id") {
            &[]
        } else {
            &["--id", "1"]
        };
        let args =
            Args::try_parse_from(BASE.iter().chain(id).chain(extra)).expect("clap parses the row");
        NodeConfig::from_args(&args).err()
    }

    /// Each row: extra flags, and a piece of the error they must give (`None`: accepted). Every message says
    /// which flag is wrong and, where there is one, what to do.
    #[test]
    fn flag_validation_table() {
        let rows: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["--id", "0"], Some("--id must be a positive integer")),
            (&["--cluster-id", ""], Some("--cluster-id must not be empty")),
            (&["--initial-cluster", "1=127.0.0.1:7001,2=127.0.0.1:7002"], None),
            (&["--initial-cluster", "2=127.0.0.1:7002,3=127.0.0.1:7003"], Some("--initial-cluster does not name this node (1); add 1=127.0.0.1:7001 or drop the flag")),
            (&["--initial-cluster", "1=127.0.0.1:9999"], Some("--initial-cluster gives node 1 the address 127.0.0.1:9999, but it advertises 127.0.0.1:7001")),
            (&["--initial-cluster", "1=127.0.0.1:7001,1=127.0.0.1:7001"], Some("--initial-cluster names node 1 twice")),
            (&["--initial-cluster", "1=127.0.0.1:7001,x=127.0.0.1:7002"], Some("--initial-cluster: \"x\" is not a node id")),
            (&["--initial-cluster", "1=127.0.0.1:7001,0=127.0.0.1:7002"], Some("--initial-cluster: node ids start at 1")),
            (&["--initial-cluster", "1=127.0.0.1:7001,2=nowhere"], Some("--initial-cluster: \"nowhere\" is not HOST:PORT")),
            (&["--initial-cluster", "1:127.0.0.1:7001"], Some("--initial-cluster expects ID=HOST:PORT")),
            (&["--peer-route", "2=127.0.0.1:7102"], None),
            (&["--peer-route", "1=127.0.0.1:7101"], Some("--peer-route names this node (1); routes are for peers")),
            (&["--heartbeat-interval-ms", "0"], Some("--heartbeat-interval-ms must be above 0")),
            (&["--heartbeat-interval-ms", "500"], Some("--election-timeout-min-ms (1000) must be more than twice --heartbeat-interval-ms (500)")),
            (&["--heartbeat-interval-ms", "499"], None),
            (&["--election-timeout-max-ms", "1000"], Some("--election-timeout-max-ms (1000) must be above --election-timeout-min-ms (1000)")),
            (&["--lease-drift-margin-ms", "1000"], Some("--lease-drift-margin-ms (1000) must be below --election-timeout-min-ms (1000)")),
            (&["--lease-drift-margin-ms", "999"], None),
            (&["--metrics-listen", "127.0.0.1:7001"], Some("--metrics-listen 127.0.0.1:7001 overlaps --listen 127.0.0.1:7001; give metrics a port of their own")),
            (&["--metrics-listen", "0.0.0.0:7001"], Some("overlaps --listen")),
            (&["--metrics-listen", "127.0.0.1:7201"], None),
            (&["--snapshot-after-entries", "0"], Some("--snapshot-after-entries must be above 0")),
            (&["--cache-mb", "0"], Some("--cache-mb must be at least 1")),
            (&["--max-txn-ops", "0"], Some("--max-txn-ops must be between 1 and 1024")),
            (&["--max-txn-ops", "1025"], Some("--max-txn-ops must be between 1 and 1024")),
            (&["--max-txn-ops", "1024"], None),
            (&["--max-request-bytes", "100"], Some("--max-request-bytes must be between")),
            (&["--snapshot-after-mb", "0"], Some("--snapshot-after-mb must be between 1 and 1048576")),
            (&["--snapshot-after-mb", "1048577"], Some("--snapshot-after-mb must be between 1 and 1048576")),
            (&["--snapshot-after-mb", "1"], None),
            (
                &["--auto-compaction-retention", "soon"],
                Some("--auto-compaction-retention \"soon\" is not a duration"),
            ),
            (
                &["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
                Some("--auto-compaction-retention \"1h\" is not a number of revisions"),
            ),
            (&["--auto-compaction-retention", "30m"], None),
            (
                &["--auto-compaction-retention", "18446744073709551615"],
                Some("--auto-compaction-retention \"18446744073709551615\" is too long"),
            ),
            (
                &["--auto-compaction-retention", "18446744073709551615m"],
                Some("is too long; give at most 8760 hours"),
            ),
            (&["--auto-compaction-retention", "8760"], None),
            (&["--auto-compaction-retention", "8761"], Some("is too long")),
            (&["--auto-compaction-mode", "revision", "--auto-compaction-retention", "100"], None),
            (&["--tls-cert", "c.pem"], Some("TLS needs --tls-cert, --tls-key and --tls-ca together: add --tls-key and --tls-ca")),
            (&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem"], None),
            (&["--tls-require-client-cert"], Some("--tls-require-client-cert needs TLS")),
        ];
        for (extra, expected) in rows {
            let got = check(extra);
            match (expected, &got) {
                (None, None) => {}
                (Some(piece), Some(error)) => {
                    assert!(
                        error.contains(piece),
                        "{extra:?}: {error:?} does not say {piece:?}"
                    )
                }
                _ => panic!("{extra:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_lease_lasts_the_shortest_election_timeout_less_the_drift_margin() {
        let args = Args::try_parse_from(BASE.iter().chain(&[
            "--id",
            "1",
            "--election-timeout-min-ms",
            "800",
            "--election-timeout-max-ms",
            "1600",
            "--lease-drift-margin-ms",
            "150",
        ]))
        .unwrap();
        let config = NodeConfig::from_args(&args).unwrap();
        assert_eq!(config.lease_duration, Duration::from_millis(650));
    }
}
