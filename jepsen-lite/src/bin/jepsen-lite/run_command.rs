//! `jepsen-lite run`: the command line of one partition experiment, and the summary it prints.
//!
//! The flags are those of docs/design.md, "jepsen-lite"; this module only turns them into a [`RunConfig`], calls [`runner::run`] and prints
//! what was found. Exit code: 0 every check passed, 1 an anomaly was found (or the cluster did not recover), 2 the
//! checker could not decide or the harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use jepsen_lite::availability::Slo;
use jepsen_lite::checker::Verdict;
use jepsen_lite::nemesis::NemesisSet;
use jepsen_lite::net::parse_duration;
use jepsen_lite::runner::{self, RunConfig};
use jepsen_lite::workload::WorkloadKind;
use raftkv_client::Consistency;

/// A flag given twice takes its last value, so that scripts can append to a common set of flags.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct RunCommand {
    /// Nodes in the cluster (3 or 5 make sense; 1 to 9 work)
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// How long clients run and faults are injected (e.g. 30s)
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    time_limit: Duration,
    /// Concurrent client processes
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Target operations per second over all clients (0: as fast as they can)
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// What the clients do
    #[arg(long, value_enum, default_value = "register")]
    workload: WorkloadKind,
    /// Registers of the register workload; accounts of the bank workload (at least 2)
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Bank workload: transfers write both balances without comparing their revisions (the negative control:
    /// concurrent transfers lose updates, which the bank check must flag)
    #[arg(long)]
    bank_blind_writes: bool,
    /// Lock workload: a quarter of the holders stall past their lease's TTL right after taking the lock (as a
    /// process pause would). Their holds overlap the next holder's, which the lock check must flag, while the
    /// fencing token keeps the protected writes in order
    #[arg(long)]
    lock_holder_pause: bool,
    /// Consistency of the workload's reads: linearizable, lease or stale
    #[arg(long, default_value = "linearizable", value_parser = jepsen_lite::runner::parse_consistency)]
    read_consistency: Consistency,
    /// Reads carry the client session's revision: read-your-writes and monotonic reads even when stale
    #[arg(long)]
    sessions: bool,
    /// With stale reads: refuse to serve beyond this staleness (e.g. 500ms)
    #[arg(long, value_parser = parse_duration_arg)]
    max_staleness: Option<Duration>,
    /// Faults, comma-separated: none, partition-halves, partition-leader, partition-ring, bridge, kill, pause,
    /// latency, clock, all (every one but clock)
    #[arg(long, default_value = "all")]
    nemesis: NemesisSet,
    /// Clock nemesis: the rate of the skewed node's clock (0.25: one of its seconds lasts four real ones)
    #[arg(long, default_value_t = jepsen_lite::clock::CLOCK_RATE_DEFAULT, value_parser = jepsen_lite::clock::parse_rate)]
    clock_rate: f64,
    /// Length of each fault, and of the calm between faults
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    nemesis_interval: Duration,
    /// Seed of the fault schedule and the operations (default: drawn at random and printed)
    #[arg(long)]
    seed: Option<u64>,
    /// Where history.jsonl, results.json, report.html and the node logs go
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// Longest the cluster may take, after the final heal, to elect a leader and apply a write everywhere
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    recovery_timeout: Duration,
    /// Deadline of one client attempt
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    request_timeout: Duration,
    /// Deadline of one operation, retries included; a write past it is recorded as info
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    operation_timeout: Duration,
    /// SLO: least fraction of operations in a fault window that must be served (succeed, or be a cas answered
    /// with a mismatch)
    #[arg(long, default_value_t = 0.5)]
    slo_served_fraction: f64,
    /// SLO: longest time from a heal until writes succeed again
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    slo_recovery: Duration,
    /// Keep the nodes' data directories (logs are always kept)
    #[arg(long)]
    keep_data: bool,
    /// Run the nodes at the server's default timing (heartbeat, election timeouts, lease margin) instead of
    /// the fast timing that keeps experiments short, so availability figures show what users get
    #[arg(long)]
    server_defaults: bool,
    /// Run the cluster with TLS: a throwaway CA and node certificates under OUT/cluster/tls, mutual TLS
    /// between peers (through the proxy mesh), clients and observer trusting the CA
    #[arg(long)]
    tls: bool,
    /// The raftkv-server binary (default: next to jepsen-lite)
    #[arg(long, env = "RAFTKV_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

impl RunCommand {
    fn into_config(self) -> anyhow::Result<RunConfig> {
        let server_binary = match self.server_bin {
            Some(path) => path,
            None => raftkv_testkit::server_binary()?,
        };
        let seed = self.seed.unwrap_or_else(rand::random);
        Ok(RunConfig {
            nodes: self.nodes,
            time_limit: self.time_limit,
            concurrency: self.concurrency,
            rate: self.rate,
            workload: self.workload,
            keys: self.keys,
            read_consistency: self.read_consistency,
            max_staleness: self.max_staleness,
            sessions: self.sessions,
            blind_transfers: self.bank_blind_writes,
            lock_holder_pause: self.lock_holder_pause,
            nemesis: self.nemesis,
            nemesis_interval: self.nemesis_interval,
            clock_rate: self.clock_rate,
            seed,
            out: self.out,
            server_binary,
            server_args: if self.server_defaults {
                Vec::new()
            } else {
                raftkv_testkit::fast_timing()
            },
            request_timeout: self.request_timeout,
            operation_timeout: self.operation_timeout,
            recovery_timeout: self.recovery_timeout,
            slo: Slo {
                served_fraction_min: self.slo_served_fraction,
                recovery_ms_max: self.slo_recovery.as_millis() as u64,
            },
            keep_data: self.keep_data,
            tls: self.tls,
        })
    }
}

fn word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Valid => "valid",
        Verdict::Invalid => "INVALID",
        Verdict::Unknown => "unknown",
    }
}

pub async fn run(command: RunCommand) -> anyhow::Result<ExitCode> {
    let config = command.into_config()?;
    eprintln!(
        "jepsen-lite run: {} nodes, {} workload, {} reads, nemesis {}, seed {} (rerun with --seed {})",
        config.nodes,
        serde_json::to_value(config.workload)?
            .as_str()
            .unwrap_or_default(),
        runner::consistency_name(config.read_consistency),
        config.nemesis,
        config.seed,
        config.seed
    );
    let outcome = runner::run(config).await?;
    let results = &outcome.results;
    let checks = &results.checks;
    println!(
        "operations   {} ({} ok, {} fail, {} info, {} pending)",
        checks.summary.operations,
        checks.summary.ok,
        checks.summary.fail,
        checks.summary.info,
        checks.summary.pending
    );
    if let Some(linearizable) = &checks.linearizable {
        println!(
            "linearizable {:8} {} keys, {} anomalous",
            word(linearizable.verdict),
            linearizable.keys,
            linearizable.anomalies.len()
        );
    }
    if let Some(set) = &checks.set {
        println!("set          {:8}", word(set.verdict));
    }
    if let Some(lock) = &checks.lock {
        println!(
            "lock         {:8} {} holds, {} fenced writes, {} anomalies: {}",
            word(lock.verdict),
            lock.holds,
            lock.fenced_writes_ok,
            lock.anomalies_count,
            lock.explanation
        );
    }
    if let Some(bank) = &checks.bank {
        println!(
            "bank         {:8} {} reads, {} transfers ok, {} anomalies: {}",
            word(bank.verdict),
            bank.reads_checked,
            bank.transfers_ok,
            bank.anomalies_count,
            bank.explanation
        );
    }
    println!(
        "split-brain  {:8} {} observations, max term {}, {} term conflicts, {} revision conflicts",
        word(checks.split_brain.verdict),
        checks.split_brain.observations,
        checks.split_brain.max_term,
        checks.split_brain.conflicts.len(),
        checks.split_brain.revision_conflicts.len()
    );
    println!(
        "session      {:8} {}",
        word(checks.session.verdict),
        if results.sessions_promised {
            "(promised: counts toward the verdict)"
        } else {
            "(not promised by stale reads without --sessions: for information)"
        }
    );
    println!("staleness    {:8}", word(checks.staleness.verdict));
    println!(
        "liveness     {:8} {}",
        word(results.liveness.verdict),
        results.liveness.summary
    );
    for window in &results.availability.windows {
        println!(
            "window       {:<17} {:<28} served {:>5.1}%  longest outage {:>5} ms  recovery {:>6}  SLO {}",
            window.fault,
            window.description,
            window.served_fraction * 100.0,
            window.longest_unavailability_ms,
            window
                .recovery_ms
                .map_or("-".to_string(), |ms| format!("{ms} ms")),
            if window.slo_met { "met" } else { "missed" }
        );
    }
    println!("verdict      {}", word(results.verdict));
    println!("history      {}", outcome.history_path.display());
    println!("results      {}", outcome.results_path.display());
    println!("report       {}", outcome.report_path.display());
    Ok(ExitCode::from(results.exit_code))
}
