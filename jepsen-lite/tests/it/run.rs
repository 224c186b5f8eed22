//! The short mode of `jepsen-lite run` and the split-brain demo, on real clusters: seconds, not minutes. Each run
//! goes through the same code as the CLI (runner::run) and is judged by the checkers; the stale-read run is the
//! negative control that shows the register checker catches real stale reads while the safety checks still hold.

use std::time::Duration;

use jepsen_lite::availability::Slo;
use jepsen_lite::checker::bank::BankAnomaly;
use jepsen_lite::checker::Verdict;
use jepsen_lite::demo::{self, DemoConfig};
use jepsen_lite::history::History;
use jepsen_lite::nemesis::NemesisSet;
use jepsen_lite::runner::{self, RunConfig};
use jepsen_lite::workload::WorkloadKind;
use raftkv_client::Consistency;
use raftkv_testkit::{fast_timing, server_binary};
use tempfile::TempDir;

/// A short run: two fault windows of 1.5 s with calm around them.
fn short_config(dir: &TempDir, nodes: u64, workload: WorkloadKind, nemesis: &str) -> RunConfig {
    RunConfig {
        nodes,
        time_limit: Duration::from_secs(9),
        concurrency: 5,
        rate: 100.0,
        workload,
        keys: 3,
        read_consistency: Consistency::Linearizable,
        max_staleness: None,
        sessions: false,
        blind_transfers: false,
        lock_holder_pause: false,
        nemesis: nemesis.parse::<NemesisSet>().unwrap(),
        nemesis_interval: Duration::from_millis(1500),
        clock_rate: jepsen_lite::clock::CLOCK_RATE_DEFAULT,
        seed: 42,
        out: dir.path().to_path_buf(),
        server_binary: server_binary().expect("raftkv-server binary"),
        server_args: fast_timing(),
        request_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(3),
        recovery_timeout: Duration::from_secs(30),
        slo: Slo {
            served_fraction_min: 0.0,
            recovery_ms_max: 30_000,
        },
        keep_data: false,
        tls: false,
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), which the node writes into its log file.
fn without_ansi_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn results_json(outcome: &runner::RunOutcome) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&outcome.results_path).unwrap()).unwrap()
}

/// The run's overall verdict is valid; otherwise fails with the whole results.json.
/// Lines of each node's log that a failed run prints.
const NODE_LOG_TAIL_LINES: usize = 30;

/// The last lines of every node's log in the run's `cluster/` directory, for a failure message.
fn node_log_tails(outcome: &runner::RunOutcome) -> String {
    let Some(cluster) = outcome.history_path.parent().map(|out| out.join("cluster")) else {
        return String::new();
    };
    let mut logs: Vec<_> = std::fs::read_dir(&cluster)
        .map(|items| {
            items
                .filter_map(|item| item.ok().map(|item| item.path()))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let mut text = String::new();
    for log in logs
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
    {
        let content = without_ansi_colours(&std::fs::read_to_string(log).unwrap_or_default());
        let lines: Vec<&str> = content.lines().collect();
        let tail = &lines[lines.len().saturating_sub(NODE_LOG_TAIL_LINES)..];
        text.push_str(&format!(
            "\n--- {} (last {} lines)\n{}\n",
            log.display(),
            tail.len(),
            tail.join("\n")
        ));
    }
    text
}

fn assert_valid(outcome: &runner::RunOutcome) {
    assert_eq!(
        outcome.results.verdict,
        Verdict::Valid,
        "{}{}",
        serde_json::to_string_pretty(&results_json(outcome)).unwrap(),
        node_log_tails(outcome)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_run_with_linearizable_reads_passes_under_partitions_kills_and_pauses() {
    // Every check must pass, with faults actually injected and operations actually acknowledged and refused.
    let dir = TempDir::new().unwrap();
    let config = short_config(
        &dir,
        3,
        WorkloadKind::Register,
        "partition-leader,kill,pause",
    );
    let outcome = runner::run(config).await.expect("the harness runs");
    let results = &outcome.results;
    assert_valid(&outcome);
    assert_eq!(results.exit_code, 0);
    assert_eq!(results.schedule.len(), 2, "two fault windows fit in 9 s");
    assert_eq!(results.availability.windows.len(), 2);
    let summary = &results.checks.summary;
    assert!(
        summary.ok > 100,
        "too few operations succeeded: {summary:?}"
    );
    let linearizable = results.checks.linearizable.as_ref().unwrap();
    assert_eq!(linearizable.keys, 3);
    assert!(results.checks.split_brain.observations > 50);
    assert!(results.checks.split_brain.acknowledged_writes_with_revision > 0);
    assert_eq!(results.liveness.verdict, Verdict::Valid);
    // The files are there and the history re-checks to the same verdict.
    let history = History::read_file(&outcome.history_path).unwrap();
    let recheck =
        jepsen_lite::checker::check_history(&history, jepsen_lite::checker::Model::Register)
            .unwrap();
    assert_eq!(recheck.verdict, results.checks.verdict);
    assert!(
        history
            .other_events
            .iter()
            .any(|event| event.value.get("f").and_then(|f| f.as_str()) == Some("start")),
        "no nemesis event in the history"
    );
    let report = std::fs::read_to_string(&outcome.report_path).unwrap();
    assert!(
        report.contains("partition-leader") || report.contains("kill") || report.contains("pause")
    );
    let json = results_json(&outcome);
    assert_eq!(json["verdict"], "valid");
    // Durations as the flags take them, in results.json and so in the report's config table.
    assert_eq!(json["config"]["time_limit"], "9s");
    assert_eq!(json["config"]["nemesis_interval"], "1500ms");
    assert!(
        !report.contains("nanos"),
        "a duration printed as serde's struct"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_run_over_mutual_tls_passes_through_the_proxy_mesh() {
    // The mesh relays TCP, so mutual TLS between peers goes through the proxies unchanged: peers verify the
    // fixed peer name, not the proxy address they dial. A partition of the leader and its heal must elect,
    // replicate and check out exactly as in plaintext, with no refused handshake in any node's log.
    let dir = TempDir::new().unwrap();
    let mut config = short_config(&dir, 3, WorkloadKind::Register, "partition-leader");
    config.tls = true;
    let outcome = runner::run(config).await.expect("the harness runs");
    let results = &outcome.results;
    assert_valid(&outcome);
    assert!(
        results.checks.summary.ok > 100,
        "too few operations succeeded: {:?}",
        results.checks.summary
    );
    assert!(results.checks.split_brain.observations > 50);
    assert_eq!(results.liveness.verdict, Verdict::Valid);
    assert!(dir.path().join("cluster/tls/ca.pem").exists());
    for id in 1..=3 {
        let log = without_ansi_colours(
            &std::fs::read_to_string(dir.path().join(format!("cluster/node{id}.log"))).unwrap(),
        );
        assert!(
            log.contains("tls=true"),
            "node {id} did not serve TLS:\n{log}"
        );
        assert!(
            !log.contains("refused a"),
            "node {id} refused a connection:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_run_on_five_nodes_loses_nothing_under_ring_and_bridge() {
    // Every acknowledged add is in the final read of every node; the majorities ring and the bridge elect no
    // second leader in a term.
    let dir = TempDir::new().unwrap();
    let config = short_config(&dir, 5, WorkloadKind::Set, "partition-ring,bridge");
    let outcome = runner::run(config).await.expect("the harness runs");
    let results = &outcome.results;
    assert_valid(&outcome);
    let set = results.checks.set.as_ref().unwrap();
    assert_eq!(set.verdict, Verdict::Valid);
    assert_eq!(set.reads_ok, 5, "one final read per node: {set:?}");
    assert!(set.adds_ok > 100, "{set:?}");
    assert_eq!(set.adds_ok_unverified, 0, "{set:?}");
    assert_eq!(set.lost_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_under_a_partition_are_caught_by_the_register_check() {
    // Negative control: stale reads on the minority side are not linearizable and the checker must say so,
    // while no split brain happened and every stale read's envelope told the truth about its staleness.
    // Whether a stale read happens at all is up to timing: on a loaded machine a run can go by with no write
    // committed on the majority while a minority node served reads. A run without one says nothing about
    // the checker, so it is repeated, a bounded number of times, until a read was behind.
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    let (_dir, outcome) = loop {
        attempt += 1;
        let dir = TempDir::new().unwrap();
        let mut config = short_config(&dir, 3, WorkloadKind::Register, "partition-halves");
        config.read_consistency = Consistency::Stale;
        config.time_limit = Duration::from_secs(10);
        config.nemesis_interval = Duration::from_secs(3);
        config.keys = 2;
        let outcome = runner::run(config).await.expect("the harness runs");
        let behind = outcome.results.checks.staleness.revisions_behind.as_ref();
        if behind.is_some_and(|behind| behind.max > 0) || attempt == ATTEMPTS {
            break (dir, outcome);
        }
    };
    let results = &outcome.results;
    let behind = results.checks.staleness.revisions_behind.as_ref().unwrap();
    assert!(
        behind.max > 0,
        "no read was behind in {ATTEMPTS} runs: {behind:?}"
    );
    let json = results_json(&outcome);
    let linearizable = results.checks.linearizable.as_ref().unwrap();
    assert_eq!(
        linearizable.verdict,
        Verdict::Invalid,
        "stale reads went unnoticed: {}",
        json["checks"]
    );
    assert!(linearizable.anomalies[0].counterexample.is_some());
    assert_eq!(results.verdict, Verdict::Invalid);
    assert_eq!(results.exit_code, 1);
    assert_eq!(results.checks.split_brain.verdict, Verdict::Valid);
    assert_eq!(results.checks.staleness.verdict, Verdict::Valid);
    assert!(results.checks.staleness.envelopes_checked > 0);
}

fn demo_config(dir: &TempDir) -> DemoConfig {
    DemoConfig {
        server_binary: server_binary().unwrap(),
        data_root: dir.path().to_path_buf(),
    }
}

/// A demo's narrative, once it is known that every step went as expected.
fn demo_text(passed: bool, output: Vec<u8>) -> String {
    let text = String::from_utf8(output).unwrap();
    assert!(passed, "{text}");
    assert!(!text.contains("UNEXPECTED"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_demo_shows_every_step_as_raft_promises() {
    // The demo checks each claim it prints; it returns false if any step went otherwise (e.g. a minority
    // follower of the deposed leader claiming a fresh leader contact).
    let dir = TempDir::new().unwrap();
    let mut output = Vec::new();
    let passed = demo::split_brain(demo_config(&dir), &mut output)
        .await
        .expect("the demo runs");
    let text = demo_text(passed, output);
    for needle in [
        "cannot commit",
        "refused",
        "elects a new leader",
        "too stale",
        "stepped down",
        "demo/minority absent",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// A run under the clock nemesis at the server's default timing: one window of 9 s (the skewed node's restart,
/// catch-up and slow takeover take about half of it, the cut the rest).
fn clock_config(dir: &TempDir, consistency: Consistency) -> RunConfig {
    let mut config = short_config(dir, 3, WorkloadKind::Register, "clock");
    config.read_consistency = consistency;
    config.server_args = Vec::new();
    config.nemesis_interval = Duration::from_secs(9);
    config.time_limit = Duration::from_secs(27);
    config.concurrency = 6;
    config.rate = 200.0;
    config.keys = 2;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clock_on_the_leader_breaks_lease_reads_but_not_linearizable_ones() {
    // The leader's clock runs at x0.25 (libfaketime), far past the drift margin, and it is cut off: its lease
    // outlasts the majority's election, so lease reads return values the new leader overwrote and the register
    // check must flag them. Under the same schedule (same seed) linearizable reads stay valid. Whether a lease
    // read falls in the window is up to timing (the clients pinned to the slow node may be waiting on a write
    // then), so the lease run is repeated, a bounded number of times, until one did.
    const ATTEMPTS: usize = 2;
    let mut attempt = 0;
    let (_dir, outcome) = loop {
        attempt += 1;
        let dir = TempDir::new().unwrap();
        let outcome = runner::run(clock_config(&dir, Consistency::Lease))
            .await
            .expect("the harness runs");
        if outcome.results.verdict == Verdict::Invalid || attempt == ATTEMPTS {
            break (dir, outcome);
        }
    };
    let results = &outcome.results;
    let window = &results.schedule[0];
    assert_eq!(window.fault, "clock");
    let described = &results.availability.windows[0].description;
    assert!(
        described.contains("x0.25") && described.contains("leading in term"),
        "{described:?}"
    );
    let linearizable = results.checks.linearizable.as_ref().unwrap();
    assert_eq!(
        linearizable.verdict,
        Verdict::Invalid,
        "no stale lease read was flagged in {ATTEMPTS} runs: {}",
        results_json(&outcome)["checks"]
    );
    assert!(linearizable.anomalies[0].counterexample.is_some());
    assert_eq!(results.exit_code, 1);
    // Stale, not split: the slow leader served reads, it never acknowledged a write the majority lacks.
    assert_eq!(results.checks.split_brain.verdict, Verdict::Valid);

    let dir = TempDir::new().unwrap();
    let outcome = runner::run(clock_config(&dir, Consistency::Linearizable))
        .await
        .expect("the harness runs");
    assert_valid(&outcome);
    assert_eq!(outcome.results.schedule[0].fault, "clock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_demo_shows_a_stale_lease_read_and_a_refusing_linearizable_one() {
    let dir = TempDir::new().unwrap();
    let mut output = Vec::new();
    let passed = demo::clock::clock(demo_config(&dir), &mut output)
        .await
        .expect("the demo runs");
    let text = demo_text(passed, output);
    for needle in [
        "a STALE read",
        "linearizable read on node",
        "With a true clock",
        "lease ended before",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_keeps_its_total_under_faults_and_blind_writes_are_caught() {
    // Transfers that compare revisions keep the total through a leader partition and kills.
    let dir = TempDir::new().unwrap();
    let mut config = short_config(&dir, 3, WorkloadKind::Bank, "partition-leader,kill");
    config.keys = 4;
    let outcome = runner::run(config).await.expect("the harness runs");
    assert_valid(&outcome);
    let bank = outcome.results.checks.bank.as_ref().unwrap();
    assert_eq!(bank.opening_total, Some(400));
    assert!(bank.transfers_ok > 20, "{bank:?}");
    assert!(bank.reads_checked > 20, "{bank:?}");
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        page.contains("Bank: the total over time"),
        "the report draws the total"
    );
    assert!(
        page.contains("; 0 reads saw another)"),
        "every read saw the opening total"
    );

    // Negative control: stale reads and blind writes (read, compute, put both without comparing) lose
    // updates between concurrent transfers, and money appears or vanishes: the bank check must say so.
    // Whether two transfers interleave is up to timing, so a run without an anomaly is repeated, a bounded
    // number of times.
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    let (dir, outcome) = loop {
        attempt += 1;
        let dir = TempDir::new().unwrap();
        let mut config = short_config(&dir, 3, WorkloadKind::Bank, "none");
        config.keys = 2;
        config.concurrency = 8;
        config.rate = 400.0;
        config.time_limit = Duration::from_secs(5);
        config.read_consistency = Consistency::Stale;
        config.blind_transfers = true;
        let outcome = runner::run(config).await.expect("the harness runs");
        // Caught as a read that saw another total (a lost transfer alone would not show in the chart).
        let bank = outcome.results.checks.bank.as_ref().unwrap();
        let caught = bank
            .anomalies
            .iter()
            .any(|anomaly| matches!(anomaly, BankAnomaly::WrongTotal { .. }));
        if caught || attempt == ATTEMPTS {
            break (dir, outcome);
        }
    };
    let bank = outcome.results.checks.bank.as_ref().unwrap();
    assert_eq!(
        bank.verdict,
        Verdict::Invalid,
        "blind transfers went unnoticed in {ATTEMPTS} runs: {bank:?}"
    );
    assert_eq!(outcome.results.verdict, Verdict::Invalid);
    assert_eq!(outcome.results.exit_code, 1);
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        !page.contains("; 0 reads saw another)"),
        "the report marks the reads that saw another total"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holds_never_overlap_and_fenced_writes_keep_order_under_faults() {
    // Clients take the lease-backed lock in turn through a leader partition and kills: no two holds overlap,
    // and every fenced write carries a token no lower than the one before it.
    let dir = TempDir::new().unwrap();
    let mut config = short_config(&dir, 3, WorkloadKind::Lock, "partition-leader,kill");
    config.concurrency = 3;
    let outcome = runner::run(config).await.expect("the harness runs");
    assert_valid(&outcome);
    let lock = outcome.results.checks.lock.as_ref().unwrap();
    assert!(lock.holds > 5, "{lock:?}");
    assert!(lock.fenced_writes_ok > 5, "{lock:?}");
    assert_eq!(lock.anomalies_count, 0);
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        page.contains("Lock: the holds over time"),
        "the report draws the holds"
    );
    assert!(
        page.contains("holds; 0 overlapped another"),
        "no hold overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_past_its_lease_overlaps_the_next_but_its_fenced_write_is_refused() {
    // Jepsen's finding about lease-based locks, shown: a holder that stalls past its lease's TTL (as in a
    // process pause) still believes it holds the lock when another client has taken it. The overlap is real and
    // the check must flag it; the fencing token is what keeps the protected writes in order anyway.
    use jepsen_lite::checker::lock::LockAnomaly;
    let dir = TempDir::new().unwrap();
    let mut config = short_config(&dir, 3, WorkloadKind::Lock, "none");
    config.concurrency = 3;
    config.lock_holder_pause = true;
    let outcome = runner::run(config).await.expect("the harness runs");
    let results = &outcome.results;
    let lock = results.checks.lock.as_ref().unwrap();
    assert_eq!(lock.verdict, Verdict::Invalid, "{lock:?}");
    assert!(
        lock.anomalies
            .iter()
            .any(|anomaly| matches!(anomaly, LockAnomaly::Overlap { .. })),
        "{lock:?}"
    );
    assert!(
        !lock
            .anomalies
            .iter()
            .any(|anomaly| matches!(anomaly, LockAnomaly::FenceBackwards { .. })),
        "a stalled holder's write went through: {lock:?}"
    );
    assert!(lock.fenced_writes_refused > 0, "{lock:?}");
    assert_eq!(results.exit_code, 1);
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        !page.contains("0 overlapped another"),
        "the report shows the overlap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_every_node_see_every_write_in_order_across_kills() {
    // One watcher per node while clients write: nodes are killed (a watcher whose node dies resumes on
    // another) and partitioned; every watcher sees every acknowledged write once, in order, as the others do.
    let dir = TempDir::new().unwrap();
    let config = short_config(&dir, 3, WorkloadKind::Watch, "kill,partition-halves");
    let outcome = runner::run(config).await.expect("the harness runs");
    assert_valid(&outcome);
    let watch = outcome.results.checks.watch.as_ref().unwrap();
    assert_eq!(watch.watchers_checked, 3, "{watch:?}");
    assert!(watch.writes_ok > 100, "{watch:?}");
    assert!(
        watch.watchers.iter().all(|watcher| watcher.events > 100),
        "{watch:?}"
    );
    // The report draws each watcher's lag, from the time each event was seen.
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
    assert!(
        page.contains("Watch: how far behind each watcher was"),
        "no lag chart"
    );
    assert!(page.contains("(3 watchers, "), "every watcher drawn");
}
