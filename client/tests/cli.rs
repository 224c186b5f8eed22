//! CLI tests: run the `raftkv` binary against a real three-node cluster of `raftkv-server` processes and
//! check every command in table and JSON form, the exit codes, the error line when no node is reachable, and
//! `--ca` against a TLS node (certificates from a throwaway CA made in the test).
//!
//! Clusters, binaries, ports and certificates come from raftkv-testkit; what is left here is running the CLI
//! against a cluster and reading what it prints. The kit finds `raftkv-server` next to the test executable in
//! the target directory (`cargo test --workspace` builds it); the client crate does not depend on the server
//! crate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use raftkv_testkit::{cli_binary, free_port, Authority, ClusterSpec, TestCluster, WAIT_MAX};
use serde_json::Value;

/// A cluster and the flags every `raftkv` call against it gets.
struct Cluster {
    nodes: TestCluster,
    /// Flags every `raftkv` call of the cluster gets (e.g. `--ca`).
    cli_args: Vec<String>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(ClusterSpec::new(3), Vec::new())
    }

    /// Starts the cluster `spec` describes and waits for a leader; `raftkv` calls get `cli_args`.
    fn start_with(spec: ClusterSpec, cli_args: Vec<String>) -> Cluster {
        let nodes = TestCluster::with_spec(spec);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to wait for the leader");
        runtime.block_on(nodes.wait_for_leader(&nodes.ids(), 1));
        Cluster { nodes, cli_args }
    }

    fn endpoints(&self) -> String {
        self.nodes.endpoints().join(",")
    }

    fn raftkv(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = self
            .cli_args
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        raftkv(&self.endpoints(), &args, None)
    }
}

/// The `raftkv` binary under test.
fn raftkv_binary() -> PathBuf {
    cli_binary().unwrap_or_else(|error| panic!("{error:#}"))
}

fn raftkv(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let timeout: &[&str] = if args.contains(&"--timeout") {
        &[]
    } else {
        &["--timeout", "5s"]
    };
    let mut child = Command::new(raftkv_binary())
        .args(["--endpoints", endpoints])
        .args(timeout)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

/// Every command in simple, table and JSON form, with the exit codes of docs/design.md.
#[test]
fn every_command_in_each_format_with_exit_codes() {
    let cluster = Cluster::start();

    let put = cluster.raftkv(&["put", "greeting", "hello"]);
    assert_exit(&put, 0);
    assert!(stdout(&put).starts_with("OK revision="), "{}", stdout(&put));
    let put = cluster.raftkv(&["-w", "json", "put", "other", "x"]);
    assert_exit(&put, 0);
    let revision = json_lines(&put)[0]["revision"].as_u64().unwrap();
    assert!(revision > 0);
    assert_exit(&cluster.raftkv(&["-w", "table", "put", "third", "y"]), 0);
    let from_stdin = raftkv(&cluster.endpoints(), &["put", "piped"], Some(b"from stdin"));
    assert_exit(&from_stdin, 0);

    let get = cluster.raftkv(&["get", "piped"]);
    assert_exit(&get, 0);
    assert_eq!(stdout(&get), "from stdin\n");
    let get = cluster.raftkv(&["-w", "json", "get", "greeting"]);
    assert_exit(&get, 0);
    let row = &json_lines(&get)[0];
    assert_eq!(row["kv"]["value"], "hello");
    assert_eq!(row["envelope"]["consistency"], "linearizable");
    assert!(row["envelope"]["revision"].as_u64().unwrap() >= revision);
    let get = cluster.raftkv(&[
        "-w",
        "table",
        "get",
        "greeting",
        "--consistency",
        "stale",
        // A stale read on a follower may not have the write yet; wait for it (read-your-writes).
        "--min-revision",
        &revision.to_string(),
        "--endpoint",
        &cluster.nodes.addr(3),
    ]);
    assert_exit(&get, 0);
    assert!(
        stdout(&get).contains("SERVED BY") && stdout(&get).contains("node 3"),
        "{}",
        stdout(&get)
    );
    // A read pinned to a node that refuses it names the node (it cannot reach a revision that far ahead).
    let pinned = cluster.nodes.addr(3);
    let refused = cluster.raftkv(&[
        "get",
        "greeting",
        "--consistency",
        "stale",
        "--min-revision",
        "1000000000",
        "--endpoint",
        &pinned,
    ]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).starts_with(&format!(
            "raftkv: {pinned} refused the read: revision not reached"
        )),
        "{}",
        stderr(&refused)
    );
    assert_exit(&cluster.raftkv(&["get", "missing"]), 1);
    let missing = cluster.raftkv(&["-w", "json", "get", "missing"]);
    assert_exit(&missing, 1);
    assert_eq!(json_lines(&missing)[0]["found"], false);

    let cas = cluster.raftkv(&["cas", "greeting", "bye", "--expected", "wrong"]);
    assert_exit(&cas, 1);
    assert!(stdout(&cas).contains("NOT SWAPPED"), "{}", stdout(&cas));
    let cas = cluster.raftkv(&[
        "-w",
        "json",
        "cas",
        "greeting",
        "bye",
        "--expected",
        "hello",
    ]);
    assert_exit(&cas, 0);
    assert_eq!(json_lines(&cas)[0]["swapped"], true);
    assert_exit(
        &cluster.raftkv(&["-w", "table", "cas", "fresh", "1", "--absent"]),
        0,
    );
    assert_exit(
        &cluster.raftkv(&["cas", "fresh", "2", "--expected-revision", "1"]),
        1,
    );
    assert_exit(&cluster.raftkv(&["cas", "fresh", "2"]), 2);

    let delete = cluster.raftkv(&["-w", "json", "delete", "other"]);
    assert_exit(&delete, 0);
    assert_eq!(json_lines(&delete)[0]["deleted"], true);
    assert_exit(&cluster.raftkv(&["-w", "table", "delete", "other"]), 0);

    let scan = cluster.raftkv(&["-w", "json", "scan", "--prefix", "g"]);
    assert_exit(&scan, 0);
    let rows = json_lines(&scan);
    assert_eq!(rows[0]["kv"]["key"], "greeting");
    assert_eq!(rows.last().unwrap()["count"], 1);
    let scan = cluster.raftkv(&["-w", "table", "scan", "--start", "a", "--limit", "2"]);
    assert_exit(&scan, 0);
    assert!(
        stdout(&scan).contains("more keys in range"),
        "{}",
        stdout(&scan)
    );
    assert_exit(&cluster.raftkv(&["scan", "--limit", "1000000"]), 2);

    let status = cluster.raftkv(&["-w", "table", "status"]);
    assert_exit(&status, 0);
    assert_eq!(stdout(&status).lines().count(), 4, "{}", stdout(&status));
    assert_eq!(
        stdout(&status).matches("leader ").count() + stdout(&status).matches("leader\t").count(),
        1,
        "{}",
        stdout(&status)
    );
    let status = cluster.raftkv(&["-w", "json", "status"]);
    let rows = json_lines(&status);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|row| row["role"] == "leader").count(), 1);

    let members = cluster.raftkv(&["-w", "json", "members"]);
    assert_exit(&members, 0);
    assert_eq!(json_lines(&members).len(), 3);
    assert_exit(&cluster.raftkv(&["-w", "table", "members", "list"]), 0);

    // Leadership moves to a follower, which every status row then names; a non-member is refused in words.
    let follower = rows
        .iter()
        .find(|row| row["role"] != "leader")
        .and_then(|row| row["id"].as_u64())
        .expect("a follower");
    let moved = cluster.raftkv(&[
        "-w",
        "json",
        "members",
        "move-leader",
        &follower.to_string(),
    ]);
    assert_exit(&moved, 0);
    assert_eq!(json_lines(&moved)[0]["leader_id"], follower);
    let status = cluster.raftkv(&["-w", "json", "status"]);
    let leaders: Vec<Value> = json_lines(&status)
        .iter()
        .filter(|row| row["role"] == "leader")
        .map(|row| row["id"].clone())
        .collect();
    assert_eq!(leaders, [Value::from(follower)], "{}", stdout(&status));
    let refused = cluster.raftkv(&["members", "move-leader", "99"]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("node 99 cannot lead: it is not a voter"),
        "{}",
        stderr(&refused)
    );
}

/// Reads at a past revision, on every node and in every mode; `compact` through the CLI; a read below the
/// compaction point or above the store's revision exits 1 with the reason in words, and changes nothing.
#[test]
fn reads_at_a_revision_and_compaction() {
    let cluster = Cluster::start();
    let revision_of = |output: &Output| json_lines(output)[0]["revision"].as_u64().unwrap();
    let first = revision_of(&cluster.raftkv(&["-w", "json", "put", "h", "one"]));
    let second = revision_of(&cluster.raftkv(&["-w", "json", "put", "h", "two"]));
    let deleted = revision_of(&cluster.raftkv(&["-w", "json", "delete", "h"]));
    assert_eq!(
        (second, deleted),
        (first + 1, first + 2),
        "one revision per change"
    );

    for consistency in ["linearizable", "lease", "stale"] {
        let at = |revision: u64| {
            cluster.raftkv(&[
                "get",
                "h",
                "--consistency",
                consistency,
                "--min-revision",
                &deleted.to_string(),
                "--revision",
                &revision.to_string(),
            ])
        };
        assert_eq!(stdout(&at(first)), "one\n", "{consistency} at {first}");
        assert_eq!(stdout(&at(second)), "two\n", "{consistency} at {second}");
        assert_exit(&at(deleted), 1);
    }
    let scan = cluster.raftkv(&[
        "-w",
        "json",
        "scan",
        "--prefix",
        "h",
        "--revision",
        &second.to_string(),
    ]);
    assert_exit(&scan, 0);
    let rows = json_lines(&scan);
    assert_eq!(rows[0]["kv"]["value"], "two");
    assert_eq!(rows[0]["kv"]["mod_revision"], second);
    assert_eq!(rows[1]["envelope"]["revision"], deleted);

    let future = cluster.raftkv(&["get", "h", "--revision", &(deleted + 1_000).to_string()]);
    assert_exit(&future, 1);
    assert!(
        stderr(&future).contains("is a future revision"),
        "{}",
        stderr(&future)
    );

    let compact = cluster.raftkv(&["-w", "json", "compact", &second.to_string()]);
    assert_exit(&compact, 0);
    assert_eq!(json_lines(&compact)[0]["compact_revision"], second);
    let compacted = cluster.raftkv(&["get", "h", "--revision", &first.to_string()]);
    assert_exit(&compacted, 1);
    assert!(
        stderr(&compacted).contains(&format!(
            "revision {first} has been compacted: the oldest revision still readable is {second}"
        )),
        "{}",
        stderr(&compacted)
    );
    // The compaction point stays readable; compacting again to it is refused and changes nothing.
    let kept = cluster.raftkv(&["get", "h", "--revision", &second.to_string()]);
    assert_eq!(stdout(&kept), "two\n");
    let again = cluster.raftkv(&["compact", &second.to_string()]);
    assert_exit(&again, 1);
    assert!(
        stderr(&again).contains("has been compacted"),
        "{}",
        stderr(&again)
    );
    let beyond = cluster.raftkv(&["compact", &(deleted + 1_000).to_string()]);
    assert_exit(&beyond, 1);
    assert!(
        stderr(&beyond).contains("future revision"),
        "{}",
        stderr(&beyond)
    );
    // Every node compacts to the same point (followers apply it a heartbeat later: poll, bounded).
    let mut rows = Vec::new();
    for _ in 0..STATUS_POLLS_MAX {
        rows = json_lines(&cluster.raftkv(&["-w", "json", "status"]));
        if rows.iter().all(|row| row["compact_revision"] == second) {
            break;
        }
        std::thread::sleep(STATUS_POLL_PAUSE);
    }
    for row in rows {
        assert_eq!(
            row["compact_revision"], second,
            "every node compacted to one point: {row}"
        );
        assert_eq!(row["revision"], deleted, "nothing changed the store: {row}");
    }
}

/// Status polls of `reads_at_a_revision_and_compaction`, and the pause between them.
const STATUS_POLLS_MAX: usize = 50;
const STATUS_POLL_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// With no node reachable: exit 2 and one line that says what to do, at once rather than after the whole
/// `--timeout` (every endpoint refused a connection, so there is nothing to wait for); a read pinned to a dead
/// node fails fast.
#[test]
fn unreachable_cluster_gives_one_clear_line_and_exit_2() {
    // Far longer than the command may take: it must not wait its deadline out.
    const TIMEOUT_GIVEN: Duration = Duration::from_secs(120);
    let dead = format!("127.0.0.1:{}", free_port());
    let all_dead = [
        dead.clone(),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ]
    .join(",");
    let started = Instant::now();
    for (endpoints, args) in [
        (&dead, &["--timeout", "1s", "put", "a", "b"][..]),
        (&all_dead, &["--timeout", "120s", "put", "a", "b"][..]),
        (
            &all_dead,
            &["--timeout", "120s", "get", "a", "--consistency", "stale"][..],
        ),
    ] {
        let output = raftkv(endpoints, args, None);
        assert_exit(&output, 2);
        let message = stderr(&output);
        assert!(
            message.starts_with(&format!("raftkv: no leader reachable among {endpoints}")),
            "{message}"
        );
        assert!(message.contains("is the cluster up?"), "{message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    }
    assert!(started.elapsed() < TIMEOUT_GIVEN / 2);

    let output = raftkv(
        &dead,
        &["get", "a", "--consistency", "stale", "--endpoint", &dead],
        None,
    );
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains(&format!("cannot reach {dead}")),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() < WAIT_MAX);

    let status = raftkv(&dead, &["-w", "json", "status"], None);
    assert_exit(&status, 2);
    assert!(json_lines(&status)[0]["error"].as_str().is_some());
}

/// A write whose only reachable node freezes (SIGSTOP) after the request was sent exits 3 with the UNKNOWN line.
#[test]
fn write_to_frozen_leader_exits_3() {
    let mut cluster = Cluster::start();
    let status = cluster.raftkv(&["-w", "json", "status"]);
    let leader = json_lines(&status)
        .into_iter()
        .find(|row| row["role"] == "leader")
        .expect("a leader");
    let id = leader["id"].as_u64().unwrap();
    cluster.nodes.pause(id);
    let output = raftkv(
        &cluster.nodes.addr(id),
        &["--timeout", "1500ms", "put", "frozen", "maybe"],
        None,
    );
    cluster.nodes.resume(id);
    assert_exit(&output, 3);
    assert!(
        stderr(&output).starts_with("raftkv: UNKNOWN: the write may have been applied"),
        "{}",
        stderr(&output)
    );
}

/// `completions` prints a script for the shell.
#[test]
fn completions_print_a_script() {
    let output = raftkv("127.0.0.1:1", &["completions", "bash"], None);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("raftkv"));
}

/// Against a TLS node: `--ca` (or `RAFTKV_CA`) works for writes, reads and status; without it, or with
/// another CA, or with an unreadable CA file, the CLI exits 2 with one line that says to pass the right CA.
#[test]
fn ca_flag_reaches_a_tls_node_and_its_absence_is_explained() {
    let pki = Authority::temporary("cluster CA").unwrap();
    let ca = pki.ca();
    let ca_arg = ca.display().to_string();
    let node = pki.node(1, &[]).unwrap();
    let cluster = Cluster::start_with(
        ClusterSpec {
            node_args: BTreeMap::from([(1, pki.server_args(&node))]),
            client_tls: Some(pki.client_tls().unwrap()),
            ..ClusterSpec::new(1)
        },
        vec!["--ca".to_string(), ca_arg],
    );

    assert_exit(&cluster.raftkv(&["put", "greeting", "hello"]), 0);
    let get = cluster.raftkv(&["-w", "json", "get", "greeting"]);
    assert_exit(&get, 0);
    assert_eq!(json_lines(&get)[0]["kv"]["value"], "hello");
    let status = cluster.raftkv(&["-w", "json", "status"]);
    assert_exit(&status, 0);
    assert_eq!(json_lines(&status)[0]["role"], "leader");

    let from_env = Command::new(raftkv_binary())
        .args(["--endpoints", &cluster.endpoints(), "get", "greeting"])
        .env("RAFTKV_CA", ca)
        .output()
        .unwrap();
    assert_exit(&from_env, 0);
    assert_eq!(stdout(&from_env), "hello\n");

    let one_line = |output: &Output, needles: &[&str]| {
        assert_exit(output, 2);
        let message = stderr(output);
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    };
    let started = Instant::now();
    one_line(
        &raftkv(&cluster.endpoints(), &["put", "greeting", "plain"], None),
        &["TLS", "--ca"],
    );
    let other = Authority::temporary("another CA").unwrap();
    let other_ca = other.ca();
    one_line(
        &raftkv(
            &cluster.endpoints(),
            &[
                "--ca",
                &other_ca.display().to_string(),
                "put",
                "greeting",
                "untrusted",
            ],
            None,
        ),
        &["not trusted", "--ca"],
    );
    // Refusals are immediate, not retried until the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let missing = pki.dir().join("missing.pem");
    one_line(
        &raftkv(
            &cluster.endpoints(),
            &["--ca", &missing.display().to_string(), "get", "greeting"],
            None,
        ),
        &["cannot read the CA file", "missing.pem"],
    );
    let get = cluster.raftkv(&["get", "greeting"]);
    assert_exit(&get, 0);
    assert_eq!(stdout(&get), "hello\n", "a refused write was applied");
}

/// `raftkv bench` runs a small workload against a real cluster: every operation is counted once, none fails,
/// and the JSON report has throughput and ordered percentiles. `get` preloads the key space first, so every
/// read finds its key (a missing key would count as a `not_found` error).
#[test]
fn bench_runs_a_small_workload_and_reports_it_as_json() {
    let cluster = Cluster::start();
    for (args, operations) in [
        (
            &["put", "--total", "200", "--clients", "8"][..],
            &["put"][..],
        ),
        (
            &[
                "get",
                "--total",
                "150",
                "--clients",
                "4",
                "--key-space",
                "50",
                "--consistency",
                "lease",
            ][..],
            &["get"][..],
        ),
        (
            &[
                "mixed",
                "--total",
                "100",
                "--clients",
                "4",
                "--connections",
                "2",
                "--key-space",
                "20",
                "--read-ratio",
                "0.5",
                "--consistency",
                "stale",
                "--rate",
                "1000",
            ][..],
            &["get", "put"][..],
        ),
    ] {
        let mut command = vec!["-w", "json", "bench"];
        command.extend_from_slice(args);
        let output = cluster.raftkv(&command);
        assert_exit(&output, 0);
        let report = &json_lines(&output)[0];
        let total: u64 = args[2].parse().unwrap();
        assert_eq!(report["workload"], args[0], "{report}");
        assert_eq!(report["ops"], total, "{report}");
        assert_eq!(report["ok"], total, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["latency"]["count"], total, "{report}");
        assert!(
            report["throughput_ops_per_s"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let latency = &report["latency"];
        let percentiles: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|name| latency[name].as_u64().unwrap())
            .collect();
        assert!(percentiles[0] > 0, "{report}");
        assert!(
            percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
            "{report}"
        );
        let counted: Vec<&str> = report["ok_by_operation"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(counted, operations, "{report}");
    }

    let table = cluster.raftkv(&[
        "-w",
        "table",
        "bench",
        "put",
        "--total",
        "20",
        "--clients",
        "2",
    ]);
    assert_exit(&table, 0);
    assert!(stdout(&table).starts_with("TARGET"), "{}", stdout(&table));
    assert!(stdout(&table).contains("raftkv"), "{}", stdout(&table));
}

/// `bench watch`: every put reaches every watcher (no `missed_event`), counted and timed per event.
#[test]
fn bench_watch_delivers_every_event_to_every_watcher() {
    let cluster = Cluster::start();
    let output = cluster.raftkv(&[
        "-w",
        "json",
        "bench",
        "watch",
        "--watchers",
        "5",
        "--total",
        "40",
        "--clients",
        "2",
    ]);
    assert_exit(&output, 0);
    let report = &json_lines(&output)[0];
    assert_eq!(report["workload"], "watch");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["ok_by_operation"]["event"], 200, "{report}");
    assert_eq!(report["latency"]["count"], 200, "{report}");
    assert_eq!(
        report["latency_by_operation"]["put"]["count"], 40,
        "{report}"
    );
}

/// Flags that cannot make a run are refused before anything is sent, with exit 2 and what to change.
#[test]
fn bench_refuses_bad_flags_with_exit_2() {
    let dead = format!("127.0.0.1:{}", free_port());
    let output = raftkv(&dead, &["bench", "put", "--clients", "0"], None);
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("--clients"), "{}", stderr(&output));
    let output = raftkv(&dead, &["bench", "put", "--total", "5"], None);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("is the cluster up?"),
        "{}",
        stderr(&output)
    );
}

/// `raftkv txn` reads etcdctl's syntax from stdin: the branch taken runs atomically at one revision, exit 0
/// if the compares held and 1 if the other branch ran; a mistake in the text is exit 2 and changes nothing.
#[test]
fn txn_runs_one_branch_at_one_revision() {
    let cluster = Cluster::start();
    let endpoints = cluster.endpoints();
    assert_exit(&cluster.raftkv(&["put", "stock", "3"]), 0);
    let order = b"value(\"stock\") = \"3\"\nmod(\"order/7\") = \"0\"\n\nput stock 2\nput order/7 \"two apples\"\nget stock\n\nget stock\n";

    let taken = raftkv(&endpoints, &["-w", "json", "txn"], Some(order));
    assert_exit(&taken, 0);
    let taken = &json_lines(&taken)[0];
    assert_eq!(taken["succeeded"], true);
    assert_eq!(taken["revision"], 3, "two puts, one revision");
    assert_eq!(
        taken["results"][2]["kvs"][0]["value"], "2",
        "a get sees the puts before it"
    );

    // Again: the compares no longer hold, so the else branch runs and the exit code says so.
    let not_taken = raftkv(&endpoints, &["txn"], Some(order));
    assert_exit(&not_taken, 1);
    assert_eq!(stdout(&not_taken), "FAILURE\nstock\n2\n");

    let got = cluster.raftkv(&["-w", "json", "get", "order/7"]);
    assert_eq!(json_lines(&got)[0]["kv"]["value"], "two apples");
    assert_eq!(json_lines(&got)[0]["kv"]["mod_revision"], 3);

    let mistaken = raftkv(
        &endpoints,
        &["txn"],
        Some(b"value(\"stock\") ~ \"2\"\n\nput stock 9\n"),
    );
    assert_exit(&mistaken, 2);
    assert!(
        stderr(&mistaken).contains("line 1: unknown operator"),
        "{}",
        stderr(&mistaken)
    );
    let duplicate = raftkv(&endpoints, &["txn"], Some(b"\nput a 1\nput a 2\n"));
    assert_exit(&duplicate, 2);
    assert!(
        stderr(&duplicate).contains("duplicate key"),
        "{}",
        stderr(&duplicate)
    );
    let unchanged = cluster.raftkv(&["-w", "json", "get", "stock"]);
    assert_eq!(json_lines(&unchanged)[0]["kv"]["value"], "2");
    assert_eq!(json_lines(&unchanged)[0]["envelope"]["revision"], 3);
}

/// `raftkv watch` prints the history from `--rev`, then live changes, each once and in revision order, and
/// exits after `--count` events; a compacted start revision is exit 1 with the compaction point.
#[test]
fn watch_prints_history_then_live_changes() {
    let cluster = Cluster::start();
    let endpoints = cluster.endpoints();
    assert_exit(&cluster.raftkv(&["put", "job/1", "queued"]), 0);
    assert_exit(&cluster.raftkv(&["put", "job/1", "running"]), 0);
    assert_exit(&cluster.raftkv(&["put", "other", "x"]), 0);

    let mut watch = Command::new(raftkv_binary())
        .args([
            "--endpoints",
            &endpoints,
            "-w",
            "json",
            "watch",
            "job/",
            "--prefix",
        ])
        .args(["--rev", "2", "--prev-kv", "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_exit(&cluster.raftkv(&["put", "job/2", "queued"]), 0);
    assert_exit(&cluster.raftkv(&["delete", "job/1"]), 0);
    let started = Instant::now();
    while watch.try_wait().unwrap().is_none() {
        if started.elapsed() > WAIT_MAX {
            let _ = watch.kill();
            panic!("raftkv watch did not exit after 4 events within {WAIT_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = watch.wait_with_output().unwrap();
    assert_exit(&output, 0);
    let events: Vec<(String, String, u64)> = json_lines(&output)
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_string(),
                event["key"].as_str().unwrap().to_string(),
                event["mod_revision"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("put", "job/1", 2),
        ("put", "job/1", 3),
        ("put", "job/2", 5),
        ("delete", "job/1", 6),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(kind, key, revision)| (kind.to_string(), key.to_string(), *revision))
        .collect();
    assert_eq!(events, expected);
    let deleted = &json_lines(&output)[3];
    assert_eq!(deleted["prev_kv"]["value"], "running");

    assert_exit(&cluster.raftkv(&["compact", "6"]), 0);
    // A watch is served from what its node has applied: a linearizable read on every node first makes each
    // apply the compaction (their read index is past it), whichever node the watch goes to.
    for endpoint in cluster.endpoints().split(',') {
        assert_exit(
            &cluster.raftkv(&["get", "job/2", "--endpoint", endpoint]),
            0,
        );
    }
    let compacted = cluster.raftkv(&["watch", "job/", "--prefix", "--rev", "3", "--count", "1"]);
    assert_exit(&compacted, 1);
    assert!(
        stderr(&compacted).contains("compacted"),
        "{}",
        stderr(&compacted)
    );
}

/// `raftkv lease`: a grant (its id in hex, as etcdctl writes it), a put with the lease, its time to live with
/// the keys, the list, a keep-alive, a revoke that deletes the key; then every refusal: an unknown lease (exit
/// 1, nothing written) and ids or TTLs that are not numbers (exit 2).
#[test]
fn lease_commands_grant_attach_keep_alive_and_revoke() {
    let cluster = Cluster::start();
    let granted = cluster.raftkv(&["-w", "json", "lease", "grant", "2"]);
    assert_exit(&granted, 0);
    let granted = &json_lines(&granted)[0];
    let id = granted["id"].as_str().expect("a hex id").to_string();
    assert_eq!(granted["ttl"], 2);

    assert_exit(
        &cluster.raftkv(&["put", "job/owner", "me", "--lease", &id]),
        0,
    );
    let got = cluster.raftkv(&["-w", "json", "get", "job/owner"]);
    assert_eq!(json_lines(&got)[0]["kv"]["lease"], id.as_str());
    let ttl = cluster.raftkv(&["lease", "ttl", &id, "--keys"]);
    assert_exit(&ttl, 0);
    assert!(
        stdout(&ttl).contains("attached keys(job/owner)"),
        "{}",
        stdout(&ttl)
    );
    assert!(stdout(&cluster.raftkv(&["lease", "list"])).contains(&id));
    let kept = cluster.raftkv(&["lease", "keep-alive", "--once", &id]);
    assert_exit(&kept, 0);
    assert_eq!(
        stdout(&kept),
        format!("lease {id} keepalived with TTL(2)\n")
    );

    assert_exit(&cluster.raftkv(&["lease", "revoke", &id]), 0);
    assert_exit(&cluster.raftkv(&["get", "job/owner"]), 1);
    let gone = cluster.raftkv(&["lease", "ttl", &id]);
    assert_exit(&gone, 1);
    assert_eq!(stdout(&gone), format!("lease {id} already expired\n"));
    assert_exit(&cluster.raftkv(&["lease", "keep-alive", &id]), 1);

    let refused = cluster.raftkv(&["put", "job/owner", "me", "--lease", &id]);
    assert_exit(&refused, 1);
    assert!(
        stderr(&refused).contains(&format!(
            "lease {} not found",
            i64::from_str_radix(&id, 16).unwrap()
        )),
        "{}",
        stderr(&refused)
    );
    assert_exit(&cluster.raftkv(&["get", "job/owner"]), 1);
    assert_exit(&cluster.raftkv(&["lease", "grant", "0"]), 2);
    let refused = cluster.raftkv(&["lease", "revoke", "zz"]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("is not a lease id"),
        "{}",
        stderr(&refused)
    );
}

/// `raftkv lock NAME -- CMD`: two holders run their commands one after the other, never at once, each with
/// a fencing token in its environment, the second's above the first's; the command's exit code is the
/// lock's.
#[test]
fn lock_runs_commands_one_at_a_time_with_growing_fencing_tokens() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().display().to_string();
    let critical = format!(
        "if [ -e {marks}/inside ]; then touch {marks}/overlap; fi; touch {marks}/inside; \
         sleep 0.6; rm {marks}/inside; echo \"$RAFTKV_LOCK_REVISION\" >> {marks}/tokens; exit 7"
    );
    let holders: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new(raftkv_binary())
                .args(["--endpoints", &cluster.endpoints()])
                .args(["lock", "jobs", "--wait", "20s", "--", "sh", "-c", &critical])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for holder in holders {
        let output = holder.wait_with_output().unwrap();
        assert_exit(&output, 7);
    }
    assert!(
        !dir.path().join("overlap").exists(),
        "both held the lock at once"
    );
    let tokens: Vec<u64> = std::fs::read_to_string(dir.path().join("tokens"))
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 2);
    assert!(tokens[0] < tokens[1], "fencing tokens grow: {tokens:?}");
    // Both leases were revoked: no key is left.
    let left = cluster.raftkv(&["scan", "--prefix", "jobs/"]);
    assert_eq!(stdout(&left), "");
}

/// A holder paused past its lease is no longer the holder: another takes the lock, with a higher fencing
/// token; when the first wakes up it learns it lost the lock, stops its command and exits 1.
#[test]
fn a_holder_paused_past_its_lease_loses_the_lock() {
    let cluster = Cluster::start();
    let mut first = Command::new(raftkv_binary())
        .args(["--endpoints", &cluster.endpoints(), "-w", "json"])
        .args(["lock", "jobs", "--ttl", "2", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let held: Value = serde_json::from_str(&line).unwrap();
    let first_token = held["revision"].as_u64().unwrap();

    // Frozen (a GC pause, a stopped VM): nobody renews its lease, which expires.
    let pid = first.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let second = cluster.raftkv(&[
        "-w",
        "json",
        "--timeout",
        "20s",
        "lock",
        "jobs",
        "--wait",
        "15s",
        "--",
        "true",
    ]);
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert_exit(&second, 0);
    let second_token = json_lines(&second)[0]["revision"].as_u64().unwrap();
    assert!(
        second_token > first_token,
        "{first_token} then {second_token}"
    );

    let started = Instant::now();
    while first.try_wait().unwrap().is_none() {
        if started.elapsed() > WAIT_MAX {
            let _ = first.kill();
            panic!("the paused holder did not notice it lost the lock");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = first.wait_with_output().unwrap();
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("lost lock jobs"),
        "{}",
        stderr(&output)
    );
}
