//! `raftkv bench`: a load generator for raftkv (and, with the `etcd` feature, for etcd with identical work).
//!
//! N clients (tasks) share M connections and run one workload: `put` (random keys of the key space), `get`
//! (random keys, preloaded first, at a chosen consistency), `mixed` (reads with probability `--read-ratio`),
//! or `load` (every key of the key space written once, in order: to fill a store). Operations are numbered and
//! paced by `schedule` (closed loop, or open loop at `--rate` with latency measured from when each operation
//! was due). Each client keeps its own HDR histogram and error counts, merged into one `Report` at the end,
//! so the hot path takes no lock. The progress bar (on a terminal) reads two atomic counters.

#[cfg(feature = "etcd")]
mod etcd;
mod raftkv;
pub mod report;
pub mod schedule;
pub mod watch;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use raftkv_client::{ClientConfig, Consistency};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;

use crate::args::{parse_duration, ConsistencyArg};
use report::{LatencySummary, Report};
use schedule::{Schedule, Slot};

/// Most benchmark clients (tasks) in one run.
pub const CLIENTS_MAX: usize = 10_000;
/// Most connections (per node) in one run.
pub const CONNECTIONS_MAX: usize = 1_024;
/// Largest key space; each key is written once before a `get` or `mixed` run.
pub const KEY_SPACE_MAX: u64 = 100_000_000;
/// Longest key; the server refuses longer ones.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value; the server refuses larger ones.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most runtime threads the load generator may use.
pub const THREADS_MAX: usize = 64;
/// Run length when neither `--duration` nor `--total` is given.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(10);
/// How often the progress bar is redrawn.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// First byte of every benchmark key: keys are `k` followed by the key's number, zero-padded to the key size.
pub const KEY_PREFIX: char = 'k';

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Writes of random keys of the key space.
    Put,
    /// Reads of random keys (the key space is written first).
    Get,
    /// Reads (with probability --read-ratio) and writes of random keys (the key space is written first).
    Mixed,
    /// Writes every key of the key space once, in order.
    Load,
    /// --watchers watchers of every key while the clients put random keys: events delivered per second and
    /// the latency from each put's start to its event at each watcher.
    Watch,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Load => "load",
            Workload::Watch => "watch",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A raftkv cluster, through the client library.
    Raftkv,
    /// An etcd cluster, through the etcd-client crate (needs the `etcd` cargo feature).
    Etcd,
}

impl TargetKind {
    /// The name reports give it.
    fn name(self) -> &'static str {
        match self {
            TargetKind::Raftkv => "raftkv",
            TargetKind::Etcd => "etcd",
        }
    }
}

/// The load generator's CPU use over `elapsed`, in percent of one core.
fn cpu_percent(cpu: Duration, elapsed: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Flags of `raftkv bench`. The cluster is the global `--endpoints`; `--timeout` bounds each operation.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub workload: Workload,
    /// What to drive: raftkv, or etcd at --endpoints (same work, for comparison).
    #[arg(long, value_enum, default_value_t = TargetKind::Raftkv)]
    pub target: TargetKind,
    /// Consistency of reads (etcd: linearizable and lease are a linearizable range, stale a serializable one).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Fraction of operations that are reads in the mixed workload.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Concurrent clients, each with at most one operation in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Connections per node, shared by the clients round robin.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Run this long (e.g. 10s, 1m); the default when --total is not given is 10s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Option<Duration>,
    /// Run this many operations.
    #[arg(long)]
    pub total: Option<u64>,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Bytes per key.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Open loop: start this many operations per second in total, on schedule, and measure each latency from
    /// when it was due (without it: closed loop, each client starts its next operation when one ends).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Skip writing the key space before a get or mixed run (it is already there).
    #[arg(long)]
    pub no_preload: bool,
    /// Threads of the load generator's runtime (1 leaves the other cores to the servers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the key choice and of the value bytes: the same seed gives the same operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The watch workload: watchers of every key, spread over the nodes and --connections.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
}

/// A validated run.
#[derive(Clone, Debug)]
struct Plan {
    workload: Workload,
    schedule: Schedule,
    read_ratio: f64,
    clients: usize,
    key_space: u64,
    key_size: usize,
    value: Vec<u8>,
    seed: u64,
    /// Each put's value starts with when it was sent (`watch::stamp`).
    stamp: bool,
}

fn consistency_of(arg: ConsistencyArg) -> (Consistency, &'static str) {
    match arg {
        ConsistencyArg::Linearizable => (Consistency::Linearizable, "linearizable"),
        ConsistencyArg::Lease => (Consistency::Lease, "lease"),
        ConsistencyArg::Stale => (Consistency::Stale, "stale"),
    }
}

/// The key of number `index`: `k` and the number zero-padded to `key_size` bytes.
pub fn key(index: u64, key_size: usize) -> Vec<u8> {
    format!("{KEY_PREFIX}{index:0width$}", width = key_size - 1).into_bytes()
}

fn decimal_digits(mut value: u64) -> usize {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

impl BenchArgs {
    fn plan(&self) -> Result<Plan, String> {
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!("--clients must be 1..={CLIENTS_MAX}"));
        }
        if self.connections == 0 || self.connections > CONNECTIONS_MAX.min(self.clients) {
            return Err(format!(
                "--connections must be 1..={} (and at most --clients)",
                CONNECTIONS_MAX
            ));
        }
        if self.threads == 0 || self.threads > THREADS_MAX {
            return Err(format!("--threads must be 1..={THREADS_MAX}"));
        }
        if self.key_space == 0 || self.key_space > KEY_SPACE_MAX {
            return Err(format!("--key-space must be 1..={KEY_SPACE_MAX}"));
        }
        let digits = decimal_digits(self.key_space - 1);
        if self.key_size < digits + 1 || self.key_size > KEY_BYTES_MAX {
            return Err(format!(
                "--key-size must be {}..={KEY_BYTES_MAX} to number {} keys",
                digits + 1,
                self.key_space
            ));
        }
        if self.value_size > VALUE_BYTES_MAX {
            return Err(format!("--value-size must be at most {VALUE_BYTES_MAX}"));
        }
        if self.workload == Workload::Watch {
            if self.watchers == 0 || self.watchers > watch::WATCHERS_MAX {
                return Err(format!("--watchers must be 1..={}", watch::WATCHERS_MAX));
            }
            if self.value_size < watch::STAMP_BYTES {
                return Err(format!(
                    "--value-size must be at least {} for watch: each value carries when it was sent",
                    watch::STAMP_BYTES
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".to_string());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of operations per second".to_string());
            }
        }
        if self.total == Some(0) {
            return Err("--total must be at least 1".to_string());
        }
        let schedule = if self.workload == Workload::Load {
            if self.total.is_some() || self.duration.is_some() {
                return Err(
                    "load writes each key of --key-space once: drop --total and --duration"
                        .to_string(),
                );
            }
            Schedule {
                rate_per_second: self.rate,
                total: Some(self.key_space),
                duration: None,
            }
        } else {
            Schedule {
                rate_per_second: self.rate,
                total: self.total,
                duration: match self.total {
                    Some(_) => self.duration,
                    None => Some(self.duration.unwrap_or(DURATION_DEFAULT)),
                },
            }
        };
        let mut value = vec![0u8; self.value_size];
        let mut rng = StdRng::seed_from_u64(self.seed);
        rng.fill_bytes(&mut value);
        // Printable bytes, so a benchmark value looks sane in `raftkv get` and etcdctl.
        for byte in &mut value {
            *byte = b'a' + *byte % 26;
        }
        Ok(Plan {
            workload: self.workload,
            schedule,
            read_ratio: self.read_ratio,
            clients: self.clients,
            key_space: self.key_space,
            key_size: self.key_size,
            value,
            seed: self.seed,
            stamp: self.workload == Workload::Watch,
        })
    }
}

/// Every connection of a run, to one system.
enum Pool {
    Raftkv(raftkv::RaftkvPool),
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdPool),
}

/// One client's handle.
enum Worker {
    Raftkv(raftkv::RaftkvWorker),
    /// Boxed: etcd-client's handle is several times the size of ours.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::EtcdWorker>),
}

impl Pool {
    /// After the preload: waits until every raftkv node has applied it. Not done for etcd (its client has no
    /// per-member revision here): a serializable read on a member a moment behind may count `not_found`.
    async fn settle(&self) -> Result<(), String> {
        match self {
            Pool::Raftkv(pool) => pool.settle().await,
            #[cfg(feature = "etcd")]
            Pool::Etcd(_) => Ok(()),
        }
    }

    async fn connect(args: &BenchArgs, config: ClientConfig) -> Result<Pool, String> {
        let consistency = consistency_of(args.consistency).0;
        match args.target {
            TargetKind::Raftkv => Ok(Pool::Raftkv(
                raftkv::RaftkvPool::connect(config, args.connections, consistency).await?,
            )),
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => Ok(Pool::Etcd(
                etcd::EtcdPool::connect(
                    &config.endpoints,
                    args.connections,
                    consistency,
                    args.workload == Workload::Get,
                    config.connect_timeout,
                    config.request_timeout,
                )
                .await?,
            )),
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => Err(
                "this raftkv was built without etcd support: rebuild with `cargo build --release -p raftkv-client --features etcd` (needs protoc: apt-get install protobuf-compiler)"
                    .to_string(),
            ),
        }
    }

    fn worker(&self, index: usize) -> Worker {
        match self {
            Pool::Raftkv(pool) => Worker::Raftkv(pool.worker(index)),
            #[cfg(feature = "etcd")]
            Pool::Etcd(pool) => Worker::Etcd(Box::new(pool.worker(index))),
        }
    }
}

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Put,
    Get,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Get => "get",
        }
    }
}

impl Worker {
    async fn run(
        &mut self,
        operation: Operation,
        key: Vec<u8>,
        value: &[u8],
    ) -> Result<(), String> {
        match (self, operation) {
            (Worker::Raftkv(worker), Operation::Put) => worker.put(key, value.to_vec()).await,
            (Worker::Raftkv(worker), Operation::Get) => worker.get(key).await,
            #[cfg(feature = "etcd")]
            (Worker::Etcd(worker), Operation::Put) => worker.put(key, value.to_vec()).await,
            #[cfg(feature = "etcd")]
            (Worker::Etcd(worker), Operation::Get) => worker.get(key).await,
        }
    }
}

/// State shared by the clients of one phase.
struct Phase {
    plan: Plan,
    started: Instant,
    /// The next operation number to claim.
    next: AtomicU64,
    /// Operations finished (either way), for the progress bar.
    done: AtomicU64,
}

/// What one client measured.
struct Measured {
    latency: Histogram<u64>,
    by_operation: BTreeMap<&'static str, Histogram<u64>>,
    ok: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    finished: Instant,
}

async fn client_loop(phase: Arc<Phase>, mut worker: Worker, index: usize) -> Measured {
    let plan = &phase.plan;
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(1 + index as u64));
    let mut measured = Measured {
        latency: report::histogram(),
        by_operation: BTreeMap::new(),
        ok: BTreeMap::new(),
        errors: BTreeMap::new(),
        finished: Instant::now(),
    };
    loop {
        let number = phase.next.fetch_add(1, Ordering::Relaxed);
        let due = match plan.schedule.slot(number, phase.started.elapsed()) {
            Slot::Stop => break,
            Slot::Now => Instant::now(),
            Slot::Due(offset) => {
                let due = phase.started + offset;
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        let (operation, key_index) = match plan.workload {
            Workload::Load => (Operation::Put, number),
            Workload::Put | Workload::Watch => {
                (Operation::Put, rng.random_range(0..plan.key_space))
            }
            Workload::Get => (Operation::Get, rng.random_range(0..plan.key_space)),
            Workload::Mixed => {
                let operation = if rng.random_bool(plan.read_ratio) {
                    Operation::Get
                } else {
                    Operation::Put
                };
                (operation, rng.random_range(0..plan.key_space))
            }
        };
        let stamped;
        let value = if plan.stamp {
            let mut value = plan.value.clone();
            watch::stamp(&mut value);
            stamped = value;
            &stamped
        } else {
            &plan.value
        };
        let outcome = worker
            .run(operation, key(key_index, plan.key_size), value)
            .await;
        let latency = due.elapsed();
        match outcome {
            Ok(()) => {
                report::record(&mut measured.latency, latency);
                if plan.workload == Workload::Mixed {
                    report::record(
                        measured
                            .by_operation
                            .entry(operation.name())
                            .or_insert_with(report::histogram),
                        latency,
                    );
                }
                *measured.ok.entry(operation.name()).or_default() += 1;
            }
            Err(kind) => *measured.errors.entry(kind).or_default() += 1,
        }
        phase.done.fetch_add(1, Ordering::Relaxed);
    }
    measured.finished = Instant::now();
    measured
}

/// Everything the clients of one phase measured, merged.
struct Merged {
    elapsed: Duration,
    latency: Histogram<u64>,
    by_operation: BTreeMap<&'static str, Histogram<u64>>,
    ok: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs one phase with `plan.clients` clients; shows a progress bar labelled `label` if asked.
async fn run_phase(pool: &Pool, plan: Plan, label: &'static str, progress: bool) -> Merged {
    let phase = Arc::new(Phase {
        started: Instant::now(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        plan,
    });
    let bar = progress.then(|| progress_bar(&phase, label));
    let mut clients = JoinSet::new();
    for index in 0..phase.plan.clients {
        clients.spawn(client_loop(phase.clone(), pool.worker(index), index));
    }
    let mut merged = Merged {
        elapsed: Duration::ZERO,
        latency: report::histogram(),
        by_operation: BTreeMap::new(),
        ok: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            joined = clients.join_next() => match joined {
                None => break,
                Some(Ok(measured)) => {
                    merged.elapsed = merged.elapsed.max(measured.finished - phase.started);
                    merged
                        .latency
                        .add(&measured.latency)
                        .expect("histograms share their bounds");
                    for (operation, histogram) in measured.by_operation {
                        merged
                            .by_operation
                            .entry(operation)
                            .or_insert_with(report::histogram)
                            .add(&histogram)
                            .expect("histograms share their bounds");
                    }
                    for (operation, count) in measured.ok {
                        *merged.ok.entry(operation).or_default() += count;
                    }
                    for (kind, count) in measured.errors {
                        *merged.errors.entry(kind).or_default() += count;
                    }
                }
                Some(Err(error)) => {
                    *merged.errors.entry(format!("client task: {error}")).or_default() += 1;
                }
            },
            _ = ticker.tick() => {
                if let Some(bar) = &bar {
                    update_progress(bar, &phase);
                }
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    merged
}

fn progress_bar(phase: &Phase, label: &'static str) -> indicatif::ProgressBar {
    let schedule = &phase.plan.schedule;
    let (length, unit) = match (schedule.planned(), schedule.duration) {
        (Some(planned), _) => (planned, "{pos}/{len} ops"),
        (None, Some(duration)) => (duration.as_millis() as u64, "{elapsed}"),
        (None, None) => (0, "{pos} ops"),
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(length),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let template = format!("{label} [{{bar:40}}] {unit} {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn update_progress(bar: &indicatif::ProgressBar, phase: &Phase) {
    let done = phase.done.load(Ordering::Relaxed);
    let elapsed = phase.started.elapsed();
    match phase.plan.schedule.planned() {
        Some(_) => bar.set_position(done),
        None => bar.set_position(elapsed.as_millis() as u64),
    }
    let rate = done as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    bar.set_message(format!("{done} done, {rate:.0} ops/s"));
}

/// CPU time (user + system) this process has used, from /proc (Linux; `None` elsewhere).
fn process_cpu_time() -> Option<Duration> {
    /// Units of the times in /proc/self/stat: USER_HZ, which Linux fixes at 100 for user space.
    const CLOCK_TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis);
    // utime and stime are the 14th and 15th fields of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1000 / CLOCK_TICKS_PER_SECOND,
    ))
}

/// Runs the benchmark against `config.endpoints`: connects, preloads the key space if the workload reads,
/// runs the workload and reports. Fails (with a message saying what to do) on bad flags, when the cluster
/// cannot be reached, or when the preload fails.
pub async fn run(args: &BenchArgs, config: ClientConfig) -> Result<Report, String> {
    let plan = args.plan()?;
    let progress = std::io::stderr().is_terminal();
    if plan.workload == Workload::Watch {
        return run_watch(args, config, plan, progress).await;
    }
    let pool = Pool::connect(args, config).await?;
    if matches!(plan.workload, Workload::Get | Workload::Mixed) && !args.no_preload {
        let preload = Plan {
            workload: Workload::Load,
            schedule: Schedule {
                rate_per_second: None,
                total: Some(plan.key_space),
                duration: None,
            },
            ..plan.clone()
        };
        let merged = run_phase(&pool, preload, "preload", progress).await;
        if !merged.errors.is_empty() {
            return Err(format!(
                "preloading {} keys failed: {:?} (is the cluster healthy? `raftkv status`)",
                plan.key_space, merged.errors
            ));
        }
        pool.settle().await?;
    }
    let cpu_before = process_cpu_time();
    let merged = run_phase(&pool, plan.clone(), args.workload.name(), progress).await;
    let cpu_used = cpu_before
        .zip(process_cpu_time())
        .map(|(before, after)| after - before);
    let reads = matches!(plan.workload, Workload::Get | Workload::Mixed);
    Ok(Report {
        target: args.target.name(),
        workload: plan.workload.name(),
        consistency: reads.then(|| consistency_of(args.consistency).1),
        read_ratio: (plan.workload == Workload::Mixed).then_some(plan.read_ratio),
        clients: plan.clients,
        connections: args.connections,
        rate_per_second: args.rate,
        key_space: plan.key_space,
        key_size: plan.key_size,
        value_size: plan.value.len(),
        elapsed: merged.elapsed,
        ok: merged.ok,
        errors: merged.errors,
        latency: LatencySummary::of(&merged.latency),
        latency_by_operation: merged
            .by_operation
            .iter()
            .map(|(operation, histogram)| (*operation, LatencySummary::of(histogram)))
            .collect(),
        client_cpu_percent: cpu_used.map(|cpu| cpu_percent(cpu, merged.elapsed)),
    })
}

/// The watch workload: the watchers first, then the puts, then a drain until every event arrived.
async fn run_watch(
    args: &BenchArgs,
    config: ClientConfig,
    plan: Plan,
    progress: bool,
) -> Result<Report, String> {
    let watchers = watch::Watchers::start(args, &config, args.watchers).await?;
    let pool = Pool::connect(args, config).await?;
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let merged = run_phase(&pool, plan.clone(), "watch", progress).await;
    let puts = merged.ok.get("put").copied().unwrap_or(0);
    let expected = puts * args.watchers as u64;
    let watched = watchers.finish(expected).await;
    let cpu_used = cpu_before
        .zip(process_cpu_time())
        .map(|(before, after)| after - before);
    let mut errors = merged.errors;
    for error in watched.errors {
        *errors.entry(format!("watch: {error}")).or_default() += 1;
    }
    if watched.events < expected {
        errors.insert("missed_event".to_string(), expected - watched.events);
    }
    let mut latency_by_operation = BTreeMap::new();
    latency_by_operation.insert("put", LatencySummary::of(&merged.latency));
    Ok(Report {
        target: args.target.name(),
        workload: plan.workload.name(),
        consistency: None,
        read_ratio: None,
        clients: plan.clients,
        connections: args.connections,
        rate_per_second: args.rate,
        key_space: plan.key_space,
        key_size: plan.key_size,
        value_size: plan.value.len(),
        // Until every event arrived: events per second counts the delivery, not just the puts.
        elapsed: watched.completed - started,
        ok: BTreeMap::from([("event", watched.events)]),
        errors,
        latency: LatencySummary::of(&watched.latency),
        latency_by_operation,
        client_cpu_percent: cpu_used.map(|cpu| cpu_percent(cpu, watched.completed - started)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(line: &str) -> Result<Plan, String> {
        let words = std::iter::once("bench").chain(line.split_whitespace());
        Harness::try_parse_from(words)
            .map_err(|error| error.to_string())?
            .args
            .plan()
    }

    #[test]
    fn keys_have_the_requested_size_and_sort_in_number_order() {
        assert_eq!(key(42, 16), b"k000000000000042".to_vec());
        assert_eq!(key(999, 4), b"k999".to_vec());
        assert!(key(9, 16) < key(10, 16));
    }

    #[test]
    fn flags_become_a_schedule() {
        let put = plan("put").unwrap();
        assert_eq!(put.schedule.duration, Some(DURATION_DEFAULT));
        assert_eq!(put.value.len(), 256);
        assert!(put.value.iter().all(u8::is_ascii_lowercase));
        let total = plan("get --total 100 --rate 50").unwrap();
        assert_eq!(total.schedule.total, Some(100));
        assert_eq!(total.schedule.duration, None);
        assert_eq!(total.schedule.rate_per_second, Some(50.0));
        let load = plan("load --key-space 1000").unwrap();
        assert_eq!(load.schedule.total, Some(1000));
    }

    #[test]
    fn bad_flags_say_what_to_change() {
        for (line, expected) in [
            ("put --clients 0", "--clients"),
            ("put --clients 2 --connections 3", "--connections"),
            (
                "put --key-space 100000 --key-size 5",
                "--key-size must be 6",
            ),
            ("put --value-size 100000", "--value-size"),
            ("mixed --read-ratio 1.5", "--read-ratio"),
            ("put --rate 0", "--rate"),
            ("load --total 5", "drop --total"),
            ("put --total 0", "--total"),
            ("put --total 5 --duration 1s", "cannot be used with"),
            ("watch --watchers 0", "--watchers"),
            ("watch --value-size 4", "--value-size must be at least 8"),
        ] {
            let error = plan(line)
                .err()
                .unwrap_or_else(|| panic!("{line} was accepted"));
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
