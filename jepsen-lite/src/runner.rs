//! `jepsen-lite run`: one partition experiment from start to verdict.
//!
//! The order of a run, as [`run`] performs it:
//! 1. start N real `raftkv-server` processes behind the proxy mesh and wait for a first leader;
//! 2. start the observer (every node's role and term into the history) and C client processes (the workload),
//!    paced to the target rate, until the time limit;
//! 3. meanwhile run the nemesis schedule: each fault window starts a fault and heals exactly what it did;
//! 4. at the time limit, heal everything (the final heal) and wait for the clients' last operations;
//! 5. liveness: measure how long the cluster takes to elect a leader, accept a write and bring every node up to
//!    that write, within `recovery_timeout`;
//! 6. final reads from every node (register: every key; set: the whole set), recorded in the history;
//! 7. stop the observer and the cluster, then check the history and write `results.json` and `report.html`.
//!
//! The exit code comes from the merged verdict of every safety checker and liveness: 0 valid, 1 an anomaly (or
//! the cluster did not recover), 2 unknown or the harness failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use raftkv_client::{Client, Consistency};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::availability::{self, AvailabilityReport, Slo};
use crate::checker::{self, Model, Report, Verdict};
use crate::cluster::{Cluster, ClusterConfig};
use crate::history::{EventType, Function, History, Status};
use crate::nemesis::{self, NemesisSet, Schedule};
use crate::recorder::Recorder;
use crate::workload::{self, Op, Outcome, ReadPolicy, WorkloadKind};

/// How long the cluster may take to elect its first leader before the run is abandoned.
pub const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// The key liveness probes write (outside every workload's prefix, and never in the history).
pub const LIVENESS_KEY: &str = "jepsen-lite/liveness";
/// Pause between liveness probes.
pub const LIVENESS_POLL: Duration = Duration::from_millis(50);
/// Most attempts of one final read before it is given up (each is recorded).
pub const FINAL_READ_ATTEMPTS_MAX: usize = 5;

/// Everything a run needs to know.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub nodes: u64,
    #[serde(serialize_with = "serialize_duration")]
    pub time_limit: Duration,
    pub concurrency: usize,
    /// Target operations per second over all clients; 0 runs every client as fast as it can.
    pub rate: f64,
    pub workload: WorkloadKind,
    /// Registers of the register workload.
    pub keys: usize,
    #[serde(serialize_with = "serialize_consistency")]
    pub read_consistency: Consistency,
    #[serde(serialize_with = "serialize_optional_duration")]
    pub max_staleness: Option<Duration>,
    /// Reads carry their session's revision (read-your-writes, monotonic reads).
    pub sessions: bool,
    /// Bank transfers write without comparing revisions (the negative control).
    pub blind_transfers: bool,
    /// Lock holders now and then stall past their lease's TTL after taking the lock.
    pub lock_holder_pause: bool,
    #[serde(serialize_with = "serialize_display")]
    pub nemesis: NemesisSet,
    #[serde(serialize_with = "serialize_duration")]
    pub nemesis_interval: Duration,
    /// The rate of a skewed clock (`clock` nemesis).
    pub clock_rate: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub server_binary: PathBuf,
    /// Extra `raftkv-server` flags (timing).
    pub server_args: Vec<String>,
    /// Deadline of one client attempt.
    #[serde(serialize_with = "serialize_duration")]
    pub request_timeout: Duration,
    /// Deadline of one operation, retries included.
    #[serde(serialize_with = "serialize_duration")]
    pub operation_timeout: Duration,
    /// Bound on the recovery after the final heal.
    #[serde(serialize_with = "serialize_duration")]
    pub recovery_timeout: Duration,
    pub slo: Slo,
    /// Keep the nodes' data directories after the run.
    pub keep_data: bool,
    /// Run the cluster with TLS (mutual TLS between peers, through the mesh); clients trust its CA.
    pub tls: bool,
}

fn serialize_consistency<S: serde::Serializer>(
    consistency: &Consistency,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(consistency_name(*consistency))
}

/// Durations as people write them (`30s`, `500ms`), as the flags take them, not serde's `{secs, nanos}`.
fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::net::format_duration(*duration))
}

fn serialize_optional_duration<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serialize_duration(duration, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The CLI name of a consistency.
pub fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::Linearizable => "linearizable",
        Consistency::Lease => "lease",
        Consistency::Stale => "stale",
    }
}

/// A consistency from its CLI name; the error says which names there are.
pub fn parse_consistency(text: &str) -> Result<Consistency, String> {
    [
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Stale,
    ]
    .into_iter()
    .find(|consistency| consistency_name(*consistency) == text)
    .ok_or_else(|| format!("unknown consistency {text:?} (expected linearizable, lease or stale)"))
}

/// What liveness found after the final heal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LivenessReport {
    /// Valid when a leader was elected, a write succeeded and every node applied it within the bound.
    pub verdict: Verdict,
    pub bound_ms: u64,
    pub leader_after_ms: Option<u64>,
    pub write_after_ms: Option<u64>,
    pub converged_after_ms: Option<u64>,
    /// The revision of the probe write every node had to reach.
    pub probe_revision: Option<u64>,
    /// Each node's store revision when liveness ended, `None` if it did not answer.
    pub revision: Vec<(u64, Option<u64>)>,
    /// What happened, in words.
    pub summary: String,
}

/// Everything `results.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The merged verdict of the checks and liveness.
    pub verdict: Verdict,
    pub exit_code: u8,
    pub config: RunConfig,
    /// The fault windows that were planned from the seed.
    pub schedule: Vec<PlannedWindow>,
    pub checks: Report,
    /// Whether the session check counted toward the verdict (see [`sessions_promised`]).
    pub sessions_promised: bool,
    pub liveness: LivenessReport,
    pub availability: AvailabilityReport,
    /// Client operation outcomes by error kind (`ok` included), over the whole run.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub history_lines: u64,
    pub duration_ms: u64,
}

/// One planned fault window, as `results.json` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedWindow {
    pub fault: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Exit codes of `run`.
pub const EXIT_VALID: u8 = 0;
pub const EXIT_ANOMALY: u8 = 1;
pub const EXIT_UNKNOWN: u8 = 2;

/// The exit code of a verdict.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Valid => EXIT_VALID,
        Verdict::Invalid => EXIT_ANOMALY,
        Verdict::Unknown => EXIT_UNKNOWN,
    }
}

/// State every client task shares.
struct Shared {
    config: RunConfig,
    recorder: Arc<Recorder>,
    client: Client,
    endpoints: Vec<String>,
    /// The next unused process id (ids below `concurrency` are the clients' first ones).
    next_process: AtomicU64,
    /// The next set element.
    next_element: AtomicU64,
    /// When clients stop invoking.
    deadline: Duration,
    /// The highest revision of an acknowledged write: what the watchers must reach before they stop.
    max_revision: AtomicU64,
}

impl Shared {
    fn policy(&self) -> ReadPolicy {
        ReadPolicy {
            consistency: self.config.read_consistency,
            max_staleness: self.config.max_staleness,
            sessions: self.config.sessions,
            blind_transfers: self.config.blind_transfers,
        }
    }

    /// Records the invoke, runs the op, records the completion; returns the completion kind.
    async fn perform(
        &self,
        process: u64,
        op: &Op,
        session: &mut raftkv_client::Session,
        endpoint: &str,
    ) -> EventType {
        self.perform_for_value(process, op, session, endpoint)
            .await
            .0
    }

    /// `perform`, also returning the completion's value.
    async fn perform_for_value(
        &self,
        process: u64,
        op: &Op,
        session: &mut raftkv_client::Session,
        endpoint: &str,
    ) -> (EventType, Value) {
        let key = Some(op.key());
        let mut invoke_extra = Map::new();
        invoke_extra.insert("node_endpoint".into(), endpoint.into());
        self.recorder.client(
            process,
            EventType::Invoke,
            op.function(),
            key,
            op.invoke_value(),
            invoke_extra,
        );
        let Outcome { kind, value, extra } =
            workload::execute(op, session, &self.client, endpoint, &self.policy()).await;
        if let (EventType::Ok, Some(revision)) =
            (kind, extra.get("revision").and_then(Value::as_u64))
        {
            self.max_revision.fetch_max(revision, Ordering::Relaxed);
        }
        self.recorder
            .client(process, kind, op.function(), key, value.clone(), extra);
        (kind, value)
    }

    /// One hold of the lock workload: acquire, a fenced write, a pause, release; returns the kind of the last
    /// operation run (an `info` ends the process, as for any workload). With `stall`, the holder sleeps past
    /// its lease's TTL between the acquire and the fenced write.
    async fn lock_cycle(
        &self,
        process: u64,
        session: &mut raftkv_client::Session,
        endpoint: &str,
        stall: bool,
    ) -> EventType {
        let ttl = match self.config.lock_holder_pause {
            true => workload::LOCK_PAUSE_LEASE_TTL,
            false => workload::LOCK_LEASE_TTL,
        };
        let (kind, held) = self
            .perform_for_value(process, &Op::Acquire { ttl }, session, endpoint)
            .await;
        if kind != EventType::Ok {
            return kind;
        }
        let token = held.get("token").and_then(Value::as_u64).unwrap_or(0);
        let key = held
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        let lease = held
            .get("lease")
            .and_then(Value::as_str)
            .and_then(|hex| i64::from_str_radix(hex, 16).ok())
            .unwrap_or(0);
        if stall {
            let granted = held
                .get("ttl")
                .and_then(Value::as_u64)
                .unwrap_or(ttl as u64);
            let stall_for = Duration::from_secs(granted) + workload::LOCK_PAUSE_PAST_TTL;
            tracing::info!(
                process,
                token,
                ?stall_for,
                "a lock holder stalls past its lease"
            );
            tokio::time::sleep(stall_for).await;
        }
        let fenced = Op::Fenced { token, key };
        let kind = self.perform(process, &fenced, session, endpoint).await;
        if kind == EventType::Info {
            return kind;
        }
        tokio::time::sleep(workload::LOCK_HOLD).await;
        self.perform(process, &Op::Release { token, lease }, session, endpoint)
            .await
    }
}

fn mix_seed(seed: u64, stream: u64) -> u64 {
    seed ^ (stream.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One client: issues operations until the deadline, one at a time, as a Jepsen process.
async fn client_task(shared: Arc<Shared>, index: usize) {
    let config = &shared.config;
    let mut rng = StdRng::seed_from_u64(mix_seed(config.seed, index as u64 + 1));
    let endpoint = shared.endpoints[index % shared.endpoints.len()].clone();
    let mut process = index as u64;
    let mut session = shared.client.session();
    let pace = (config.rate > 0.0)
        .then(|| Duration::from_secs_f64(config.concurrency as f64 / config.rate));
    // Spread the clients' first operations over one pacing interval.
    let mut next_start = shared.recorder.elapsed()
        + pace.map_or(Duration::ZERO, |pace| {
            pace.mul_f64(rng.random_range(0.0..1.0))
        });
    while shared.recorder.elapsed() < shared.deadline {
        if let Some(pace) = pace {
            let now = shared.recorder.elapsed();
            if next_start > now {
                tokio::time::sleep(next_start - now).await;
            }
            next_start = next_start.max(now) + pace;
            if shared.recorder.elapsed() >= shared.deadline {
                break;
            }
        }
        let outcome = if config.workload == WorkloadKind::Lock {
            let stall = config.lock_holder_pause && rng.random_bool(workload::LOCK_PAUSE_SHARE);
            shared
                .lock_cycle(process, &mut session, &endpoint, stall)
                .await
        } else {
            let op = workload::generate(config.workload, config.keys, &mut rng, || {
                shared.next_element.fetch_add(1, Ordering::Relaxed)
            });
            shared.perform(process, &op, &mut session, &endpoint).await
        };
        if outcome == EventType::Info {
            // The old process may still have a write in flight: go on as a new one, with a new session.
            process = shared.next_process.fetch_add(1, Ordering::Relaxed);
            session = shared.client.session();
        }
    }
}

/// Runs the nemesis schedule: each window starts its fault, records it, and heals exactly what it did.
async fn nemesis_task(
    cluster: &mut Cluster,
    recorder: &Recorder,
    schedule: &Schedule,
    rng: &mut StdRng,
    settings: &nemesis::FaultSettings,
) -> anyhow::Result<()> {
    for window in &schedule.windows {
        let now = recorder.elapsed();
        if window.start > now {
            tokio::time::sleep(window.start - now).await;
        }
        let active = nemesis::apply(window.fault, cluster, rng, settings)
            .await
            .with_context(|| format!("cannot start the {} fault", window.fault))?;
        let description = active.description();
        recorder.nemesis(
            "start",
            window.fault.name(),
            Value::from(description.clone()),
        );
        tracing::info!(fault = %window.fault, %description, "fault started");
        let now = recorder.elapsed();
        if window.end > now {
            tokio::time::sleep(window.end - now).await;
        }
        active.heal(cluster).await?;
        recorder.nemesis("stop", window.fault.name(), Value::Null);
        tracing::info!(fault = %window.fault, "fault healed");
    }
    Ok(())
}

/// Lifts every fault that could be left over: all links pass, every node is running and resumed.
fn final_heal(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.mesh().heal();
    for id in cluster.ids() {
        if cluster.pid(id).is_none() {
            cluster.restart(id)?;
        } else if !cluster.is_up(id) {
            cluster.resume(id)?;
        }
    }
    Ok(())
}

/// Measures recovery after the final heal: a leader, a successful write, and every node applying it.
async fn liveness(cluster: &Cluster, client: &Client, bound: Duration) -> LivenessReport {
    let started = Instant::now();
    let deadline = started + bound;
    let ids = cluster.ids();
    let ms = |instant: Instant| instant.duration_since(started).as_millis() as u64;
    let leader_after_ms = cluster
        .wait_for_leader(&ids, 0, bound)
        .await
        .ok()
        .map(|_| ms(Instant::now()));
    let mut write_after_ms = None;
    let mut probe_revision = None;
    if leader_after_ms.is_some() {
        let mut session = client.session();
        while Instant::now() < deadline {
            match session.put(LIVENESS_KEY, "probe").await {
                Ok(revision) => {
                    write_after_ms = Some(ms(Instant::now()));
                    probe_revision = Some(revision);
                    break;
                }
                Err(_) => tokio::time::sleep(LIVENESS_POLL).await,
            }
        }
    }
    let mut converged_after_ms = None;
    let mut applied_index = Vec::new();
    if let Some(revision) = probe_revision {
        loop {
            applied_index.clear();
            for &id in &ids {
                let applied = cluster.status(id).await.map(|status| status.revision);
                applied_index.push((id, applied));
            }
            if applied_index
                .iter()
                .all(|(_, applied)| applied.is_some_and(|applied| applied >= revision))
            {
                converged_after_ms = Some(ms(Instant::now()));
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(LIVENESS_POLL).await;
        }
    }
    let bound_ms = bound.as_millis() as u64;
    let (verdict, summary) = match (leader_after_ms, write_after_ms, converged_after_ms) {
        (Some(leader), Some(write), Some(converged)) => (
            Verdict::Valid,
            format!("after the final heal: a leader in {leader} ms, a write in {write} ms, every node applied it in {converged} ms"),
        ),
        (None, _, _) => (
            Verdict::Invalid,
            format!("no leader was elected within {bound_ms} ms of the final heal"),
        ),
        (Some(leader), None, _) => (
            Verdict::Invalid,
            format!("a leader in {leader} ms, but no write succeeded within {bound_ms} ms of the final heal"),
        ),
        (Some(_), Some(write), None) => (
            Verdict::Invalid,
            format!("a write succeeded in {write} ms, but not every node applied it within {bound_ms} ms: {applied_index:?}"),
        ),
    };
    LivenessReport {
        verdict,
        bound_ms,
        leader_after_ms,
        write_after_ms,
        converged_after_ms,
        probe_revision,
        revision: applied_index,
        summary,
    }
}

/// The history key of the watchers' operations.
pub const WATCH_KEY: &str = crate::checker::watch::WATCH_KEY;
/// How long, after the clients are done, the watchers may take to reach the last acknowledged write.
pub const WATCH_CATCH_UP_MAX: Duration = Duration::from_secs(10);
/// How often the runner looks at how far each watcher has seen while it waits for them to catch up.
pub const WATCH_CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// A watcher of the watch workload, running.
struct RunningWatcher {
    process: u64,
    stop: watch::Sender<bool>,
    through: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<workload::Watcher>,
}

/// One watcher per node, each first served by its node (and resuming elsewhere), each invoke in the history.
async fn start_watchers(shared: &Arc<Shared>, cluster: &Cluster) -> Vec<RunningWatcher> {
    let endpoints = cluster.endpoints();
    let mut running = Vec::new();
    for index in 0..endpoints.len() {
        let order: Vec<String> = endpoints[index..]
            .iter()
            .chain(&endpoints[..index])
            .cloned()
            .collect();
        let mut config = cluster.client_config(order.clone());
        config.request_timeout = shared.config.request_timeout;
        config.connect_timeout = shared.config.request_timeout;
        config.overall_timeout = shared.config.operation_timeout;
        let process = shared.next_process.fetch_add(1, Ordering::Relaxed);
        let started = match Client::new(config) {
            Ok(client) => workload::Watcher::start(&client)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let mut watcher = match started {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, node = %order[0], "a watcher could not start");
                continue;
            }
        };
        let mut invoke = Map::new();
        invoke.insert("node_endpoint".into(), order[0].clone().into());
        shared.recorder.client(
            process,
            EventType::Invoke,
            Function::Watch,
            Some(WATCH_KEY),
            serde_json::json!({"node": order[0], "from": watcher.from}),
            invoke,
        );
        let (stop, mut stopped) = watch::channel(false);
        let through = Arc::new(AtomicU64::new(watcher.through()));
        let seen = Arc::clone(&through);
        let recorder = Arc::clone(&shared.recorder);
        let task = tokio::spawn(async move {
            let now = || recorder.elapsed().as_nanos() as u64;
            loop {
                tokio::select! {
                    going = watcher.take(now) => {
                        seen.store(watcher.through(), Ordering::Relaxed);
                        if !going {
                            return watcher;
                        }
                    }
                    _ = stopped.wait_for(|stop| *stop) => return watcher,
                }
            }
        });
        running.push(RunningWatcher {
            process,
            stop,
            through,
            task,
        });
    }
    running
}

/// Waits until every watcher has seen the last acknowledged write (at most `WATCH_CATCH_UP_MAX`), stops them
/// and records what each saw.
async fn stop_watchers(shared: &Shared, watchers: Vec<RunningWatcher>) {
    let target = shared.max_revision.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + WATCH_CATCH_UP_MAX;
    while tokio::time::Instant::now() < deadline
        && watchers.iter().any(|watcher| {
            watcher.through.load(Ordering::Relaxed) < target && !watcher.task.is_finished()
        })
    {
        tokio::time::sleep(WATCH_CATCH_UP_POLL).await;
    }
    for watcher in watchers {
        let _ = watcher.stop.send(true);
        let Ok(seen) = watcher.task.await else {
            continue;
        };
        let (kind, mut extra) = match &seen.ended {
            None => (EventType::Ok, Map::new()),
            Some(reason) => {
                let mut extra = Map::new();
                extra.insert("error".into(), reason.clone().into());
                (EventType::Info, extra)
            }
        };
        extra.insert("final".into(), true.into());
        shared.recorder.client(
            watcher.process,
            kind,
            Function::Watch,
            Some(WATCH_KEY),
            seen.record(),
            extra,
        );
    }
}

/// Opens the bank's accounts before the clients start (each attempt in the history), until one succeeds.
async fn open_accounts(shared: &Shared) {
    let op = Op::Open {
        accounts: shared.config.keys.max(2),
    };
    let endpoint = shared.endpoints[0].clone();
    for _ in 0..FINAL_READ_ATTEMPTS_MAX {
        let process = shared.next_process.fetch_add(1, Ordering::Relaxed);
        let mut session = shared.client.session();
        if shared.perform(process, &op, &mut session, &endpoint).await == EventType::Ok {
            return;
        }
    }
}

/// Final reads from every node: every register key, or the whole set. Each attempt is in the history.
async fn final_reads(shared: &Shared) {
    let recorder = &shared.recorder;
    for endpoint in &shared.endpoints {
        let ops: Vec<Op> = match shared.config.workload {
            WorkloadKind::Register => (0..shared.config.keys)
                .map(|index| Op::Read {
                    key: workload::register_key(index),
                })
                .collect(),
            WorkloadKind::Set => vec![Op::Read {
                key: workload::SET_KEY.to_string(),
            }],
            WorkloadKind::Bank => vec![Op::Balances],
            // Nothing to read back: the holds and fenced writes (or the watchers' events) are the history.
            WorkloadKind::Lock | WorkloadKind::Watch => Vec::new(),
        };
        for op in ops {
            for _ in 0..FINAL_READ_ATTEMPTS_MAX {
                let process = shared.next_process.fetch_add(1, Ordering::Relaxed);
                let mut extra = Map::new();
                extra.insert("final".into(), true.into());
                recorder.client(
                    process,
                    EventType::Invoke,
                    op.function(),
                    Some(op.key()),
                    Value::Null,
                    extra,
                );
                let outcome = match shared.config.workload {
                    WorkloadKind::Set => workload::read_set(&shared.client, endpoint).await,
                    WorkloadKind::Register
                    | WorkloadKind::Bank
                    | WorkloadKind::Lock
                    | WorkloadKind::Watch => {
                        let mut session = shared.client.session();
                        let policy = ReadPolicy {
                            consistency: Consistency::Linearizable,
                            max_staleness: None,
                            sessions: false,
                            blind_transfers: false,
                        };
                        workload::execute(&op, &mut session, &shared.client, endpoint, &policy)
                            .await
                    }
                };
                let kind = outcome.kind;
                recorder.client(
                    process,
                    kind,
                    op.function(),
                    Some(op.key()),
                    outcome.value,
                    outcome.extra,
                );
                if kind == EventType::Ok {
                    break;
                }
            }
        }
    }
}

/// Counts completions by outcome: `ok`, `fail:<error>`, `info:<error>`, `pending`.
fn outcomes(history: &History) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for op in &history.operations {
        let error = op.extra.get("error").and_then(Value::as_str).unwrap_or("");
        let name = match op.status {
            Status::Ok => "ok".to_string(),
            Status::Fail => format!("fail:{error}"),
            Status::Info => format!("info:{error}"),
            Status::Pending => "pending".to_string(),
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Whether the run promised read-your-writes and monotonic reads: linearizable and lease reads imply them,
/// stale reads only with sessions.
pub fn sessions_promised(config: &RunConfig) -> bool {
    config.sessions || config.read_consistency != Consistency::Stale
}

/// The verdict of every check that applies: the session check counts only when the run promised sessions
/// (stale reads without sessions are allowed to go back in time; the session report still shows how often).
fn merged_verdict(checks: &Report, config: &RunConfig) -> Verdict {
    if sessions_promised(config) {
        return checks.verdict;
    }
    [
        checks.linearizable.as_ref().map(|report| report.verdict),
        checks.set.as_ref().map(|report| report.verdict),
        checks.bank.as_ref().map(|report| report.verdict),
        checks.lock.as_ref().map(|report| report.verdict),
        checks.watch.as_ref().map(|report| report.verdict),
        Some(checks.split_brain.verdict),
        Some(checks.staleness.verdict),
    ]
    .into_iter()
    .flatten()
    .fold(Verdict::Valid, Verdict::merge)
}

/// Validates a configuration before anything starts.
pub fn validate(config: &RunConfig) -> anyhow::Result<()> {
    crate::cluster::check_nodes(config.nodes)?;
    if config.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if config.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if config.rate < 0.0 || !config.rate.is_finite() {
        bail!("--rate must be a non-negative number of operations per second");
    }
    if config.time_limit.is_zero() {
        bail!("--time-limit must be positive");
    }
    if !config.nemesis.0.is_empty() && config.nemesis_interval.is_zero() {
        bail!("--nemesis-interval must be positive");
    }
    let partitions = config.nemesis.0.iter().any(|fault| {
        !matches!(
            fault,
            nemesis::Fault::Kill | nemesis::Fault::Pause | nemesis::Fault::Latency
        )
    });
    if config.nemesis.0.contains(&nemesis::Fault::Clock) {
        crate::clock::libfaketime().context("the clock nemesis needs libfaketime")?;
        crate::clock::check_rate(config.clock_rate).map_err(anyhow::Error::msg)?;
    }
    if partitions && config.nodes < 3 {
        bail!("partition nemeses need at least 3 nodes");
    }
    if config.max_staleness.is_some() && config.read_consistency != Consistency::Stale {
        bail!("--max-staleness only applies to --read-consistency stale");
    }
    if config.blind_transfers && config.workload != WorkloadKind::Bank {
        bail!("--bank-blind-writes only applies to --workload bank");
    }
    if config.lock_holder_pause && config.workload != WorkloadKind::Lock {
        bail!("--lock-holder-pause only applies to --workload lock");
    }
    if config.workload == WorkloadKind::Bank && config.keys < 2 {
        bail!("--workload bank needs --keys of at least 2 accounts");
    }
    if !(0.0..=1.0).contains(&config.slo.served_fraction_min) {
        bail!("--slo-served-fraction must be between 0 and 1");
    }
    Ok(())
}

/// The outcome of a run: the results and where the files are.
pub struct RunOutcome {
    pub results: Results,
    pub history_path: PathBuf,
    pub results_path: PathBuf,
    pub report_path: PathBuf,
}

/// Runs one experiment (see the module doc for the order).
pub async fn run(config: RunConfig) -> anyhow::Result<RunOutcome> {
    validate(&config)?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let data_root = config.out.join("cluster");
    if data_root.exists() {
        std::fs::remove_dir_all(&data_root)
            .with_context(|| format!("cannot clear {}", data_root.display()))?;
    }
    let mut nemesis_rng = StdRng::seed_from_u64(mix_seed(config.seed, 0));
    let schedule = Schedule::generate(
        &mut nemesis_rng,
        &config.nemesis,
        config.nemesis_interval,
        config.time_limit,
    );
    tracing::info!(nodes = config.nodes, workload = ?config.workload, nemesis = %config.nemesis, seed = config.seed, "starting the cluster");
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: config.nodes,
        server_binary: config.server_binary.clone(),
        data_root: data_root.clone(),
        extra_args: config.server_args.clone(),
        tls: config.tls,
    })
    .await?;
    let outcome = run_on(&config, &mut cluster, &schedule, &mut nemesis_rng).await;
    cluster.shutdown().await;
    if !config.keep_data {
        for id in 1..=config.nodes {
            let _ = std::fs::remove_dir_all(data_root.join(format!("node{id}")));
        }
    }
    let (recorder, liveness, duration) = outcome?;
    let (history_path, history_lines) = recorder.finish()?;
    let history = History::read_file(&history_path)
        .with_context(|| format!("cannot read back {}", history_path.display()))?;
    let model = match config.workload {
        WorkloadKind::Register => Model::Register,
        WorkloadKind::Set => Model::Set,
        WorkloadKind::Bank => Model::Bank,
        WorkloadKind::Lock => Model::Lock,
        WorkloadKind::Watch => Model::Watch,
    };
    let checks = checker::check_history(&history, model)
        .with_context(|| format!("cannot check {}", history_path.display()))?;
    let availability = availability::check(&history, config.slo);
    let verdict = merged_verdict(&checks, &config).merge(liveness.verdict);
    let results = Results {
        verdict,
        exit_code: exit_code(verdict),
        schedule: schedule
            .windows
            .iter()
            .map(|window| PlannedWindow {
                fault: window.fault.name().to_string(),
                start_ms: window.start.as_millis() as u64,
                end_ms: window.end.as_millis() as u64,
            })
            .collect(),
        sessions_promised: sessions_promised(&config),
        checks,
        liveness,
        availability,
        outcomes: outcomes(&history),
        history_lines,
        duration_ms: duration.as_millis() as u64,
        config,
    };
    let (results_path, report_path) = write_outputs(&results, &history)?;
    Ok(RunOutcome {
        results,
        history_path,
        results_path,
        report_path,
    })
}

/// Writes `results.json` and `report.html` next to the history.
fn write_outputs(results: &Results, history: &History) -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = &results.config.out;
    let results_path = out.join("results.json");
    let json = serde_json::to_value(results).context("cannot serialize the results")?;
    write_file(
        &results_path,
        &serde_json::to_string_pretty(&json).context("cannot serialize the results")?,
    )?;
    let report_path = out.join("report.html");
    let html = crate::report::render_html(history, &json)?;
    write_file(&report_path, &html)?;
    Ok((results_path, report_path))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Steps 1–6 on a started cluster; returns the recorder (to finish), liveness and the run's duration.
async fn run_on(
    config: &RunConfig,
    cluster: &mut Cluster,
    schedule: &Schedule,
    nemesis_rng: &mut StdRng,
) -> anyhow::Result<(Arc<Recorder>, LivenessReport, Duration)> {
    cluster
        .wait_for_leader(&cluster.ids(), 0, FIRST_LEADER_TIMEOUT)
        .await
        .context("the cluster did not elect a first leader")?;
    let recorder = Arc::new(Recorder::create(&config.out.join("history.jsonl"))?);
    let mut client_config = cluster.client_config(cluster.endpoints());
    client_config.request_timeout = config.request_timeout;
    client_config.connect_timeout = config.request_timeout;
    client_config.overall_timeout = config.operation_timeout;
    let client = Client::new(client_config)?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        recorder: Arc::clone(&recorder),
        client: client.clone(),
        endpoints: cluster.endpoints(),
        next_process: AtomicU64::new(config.concurrency as u64),
        next_element: AtomicU64::new(0),
        deadline: config.time_limit,
        max_revision: AtomicU64::new(0),
    });
    let (stop_observer, observer_stopped) = watch::channel(false);
    let observer = tokio::spawn(crate::observer::observe(
        cluster.ids().into_iter().zip(cluster.endpoints()).collect(),
        cluster.client_tls(),
        Arc::clone(&recorder),
        observer_stopped,
    ));
    if config.workload == WorkloadKind::Bank {
        open_accounts(&shared).await;
    }
    let watchers = match config.workload {
        WorkloadKind::Watch => start_watchers(&shared, cluster).await,
        _ => Vec::new(),
    };
    let mut clients = JoinSet::new();
    for index in 0..config.concurrency {
        clients.spawn(client_task(Arc::clone(&shared), index));
    }
    let settings = nemesis::FaultSettings {
        clock_rate: config.clock_rate,
    };
    let nemesis_result = nemesis_task(cluster, &recorder, schedule, nemesis_rng, &settings).await;
    let now = recorder.elapsed();
    if now < config.time_limit && nemesis_result.is_ok() {
        tokio::time::sleep(config.time_limit - now).await;
    }
    final_heal(cluster)?;
    recorder.nemesis("heal", "all", Value::from("final heal"));
    tracing::info!("final heal; waiting for the clients' last operations");
    while let Some(joined) = clients.join_next().await {
        joined.context("a client task panicked")?;
    }
    nemesis_result?;
    let liveness = liveness(cluster, &client, config.recovery_timeout).await;
    tracing::info!(summary = %liveness.summary, "liveness");
    final_reads(&shared).await;
    stop_watchers(&shared, watchers).await;
    let _ = stop_observer.send(true);
    observer.await.context("the observer panicked")??;
    let duration = recorder.elapsed();
    Ok((recorder, liveness, duration))
}
