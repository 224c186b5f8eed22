//! etcd's own tool against raftkv: Debian's `etcdctl` (3.4) drives a 3-node cluster through the etcd v3 API,
//! unchanged, as an etcd user would. `.ci/run` installs it; `ETCDCTL_BIN` names another one.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use raftkv_testkit::{fast_timing, TestCluster};

/// Bounds every etcdctl call: it gives up on its own after these.
const ETCDCTL_TIMEOUTS: [&str; 2] = ["--dial-timeout=2s", "--command-timeout=8s"];

fn etcdctl_binary() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string())
}

/// Runs etcdctl against `endpoints` with `args`, feeding it `stdin`.
fn run(endpoints: &[String], args: &[&str], stdin: &str) -> Output {
    let binary = etcdctl_binary();
    let mut child = Command::new(&binary)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(ETCDCTL_TIMEOUTS)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {binary} ({error}): install Debian's etcd-client, or set ETCDCTL_BIN"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write etcdctl's stdin");
    child.wait_with_output().expect("wait for etcdctl")
}

/// Runs etcdctl and returns its output, failing the test if it failed.
fn ok(endpoints: &[String], args: &[&str]) -> String {
    ok_with_input(endpoints, args, "")
}

fn ok_with_input(endpoints: &[String], args: &[&str], stdin: &str) -> String {
    let output = run(endpoints, args, stdin);
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("etcdctl prints text")
}

fn json(endpoints: &[String], args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    let text = ok(endpoints, &args);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{args:?}: {error}: {text}"))
}

fn decode(value: &Value) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// The keys of a `get -w json`, in order.
fn keys(response: &Value) -> Vec<String> {
    response["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| decode(&kv["key"])).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_writes_and_transacts_on_any_node() {
    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let all = cluster.endpoints();
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let on = |id: u64| vec![cluster.addr(id)];

    // Writes sent to followers reach the leader: each node takes one.
    for (id, key, value) in [(1, "app/a", "1"), (2, "app/b", "2"), (3, "app/c", "3")] {
        assert_eq!(ok(&on(id), &["put", key, value]).trim(), "OK");
    }
    ok(&on(follower), &["put", "app/a", "4"]);
    ok(&all, &["put", "other", "x"]);

    let prefix = json(&all, &["get", "app/", "--prefix"]);
    assert_eq!(keys(&prefix), ["app/a", "app/b", "app/c"]);
    assert_eq!(prefix["count"], 3);
    assert_eq!(prefix["header"]["revision"], 5);
    assert_eq!(decode(&prefix["kvs"][0]["value"]), "4");
    assert_eq!(prefix["kvs"][0]["version"], 2);
    assert_eq!(prefix["kvs"][0]["create_revision"], 1);

    // A range [start, end), a past revision, limit with `more`, sorting, keys only.
    assert_eq!(
        keys(&json(&all, &["get", "app/a", "app/c"])),
        ["app/a", "app/b"]
    );
    let past = json(&all, &["get", "app/a", "--rev=1"]);
    assert_eq!(decode(&past["kvs"][0]["value"]), "1");
    let limited = json(
        &all,
        &[
            "get",
            "app/",
            "--prefix",
            "--limit=2",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ],
    );
    assert_eq!(keys(&limited), ["app/a", "app/c"]);
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);
    let keys_only = ok(&all, &["get", "app/", "--prefix", "--keys-only"]);
    assert_eq!(
        keys_only.split_whitespace().collect::<Vec<_>>(),
        ["app/a", "app/b", "app/c"]
    );
    let everything = json(&all, &["get", "", "--from-key"]);
    assert_eq!(keys(&everything), ["app/a", "app/b", "app/c", "other"]);

    // A serializable read is served by the node asked, from its own state.
    cluster.wait_applied(follower, 5).await;
    let serial = json(&on(follower), &["get", "other", "--consistency=s"]);
    assert_eq!(serial["header"]["member_id"], follower);
    assert_eq!(decode(&serial["kvs"][0]["value"]), "x");

    // A transaction from stdin, in etcdctl's interactive syntax: both branches.
    let txn = "value(\"app/b\") = \"2\"\n\nput app/b 20\nget app/c\n\nput app/b nope\n\n";
    let taken = ok_with_input(&on(follower), &["txn"], txn);
    assert!(taken.starts_with("SUCCESS"), "{taken}");
    assert!(taken.contains("app/c\n3"), "{taken}");
    let not_taken = ok_with_input(&all, &["txn"], txn);
    assert!(not_taken.starts_with("FAILURE"), "{not_taken}");
    let after = json(&all, &["get", "app/b"]);
    assert_eq!(decode(&after["kvs"][0]["value"]), "nope");
    // One revision per transaction: two transactions after revision 5.
    assert_eq!(after["header"]["revision"], 7);

    // Delete a prefix, returning what it deleted.
    let deleted = ok(&all, &["del", "app/", "--prefix", "--prev-kv"]);
    assert!(deleted.starts_with("3\n"), "{deleted}");
    assert!(deleted.contains("app/c\n3"), "{deleted}");
    assert!(keys(&json(&all, &["get", "app/", "--prefix"])).is_empty());

    // Compaction: older revisions are refused in etcd's words, newer ones beyond the store too.
    assert!(ok(&all, &["compaction", "7"]).contains("compacted revision 7"));
    for (revision, words) in [
        ("--rev=3", "required revision has been compacted"),
        ("--rev=100", "required revision is a future revision"),
    ] {
        let refused = run(&all, &["get", "other", revision], "");
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(words), "{revision}: {stderr}");
    }
    // Bad input is refused in words and changes nothing.
    let refused = run(&all, &["put", "k", "v", "--lease=1234"], "");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("requested lease not found"));
    assert!(keys(&json(&all, &["get", "k"])).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sees_and_changes_the_membership() {
    let mut cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let all = cluster.endpoints();
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();

    // endpoint status: every node names the same leader, which alone says it leads.
    let statuses = json(&all, &["endpoint", "status"]);
    let statuses = statuses.as_array().expect("one status per endpoint");
    assert_eq!(statuses.len(), 3);
    for status in statuses {
        let status = &status["Status"];
        assert_eq!(status["leader"], leader);
        assert!(status["raftTerm"].as_u64().unwrap() >= 1);
        assert!(status["dbSize"].as_u64().unwrap() > 0);
    }
    let table = ok(
        &[cluster.addr(follower)],
        &["endpoint", "status", "-w", "table"],
    );
    assert!(
        table.contains("false"),
        "a follower says it does not lead: {table}"
    );
    let health = json(&all, &["endpoint", "health"]);
    let healthy = health.as_array().expect("one line per endpoint");
    assert_eq!(healthy.len(), 3, "{health}");
    assert!(
        healthy.iter().all(|endpoint| endpoint["health"] == true),
        "{health}"
    );

    let members = json(&all, &["member", "list"]);
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["raftkv-1", "raftkv-2", "raftkv-3"]);
    let listed = ok(&all, &["member", "list"]);
    assert_eq!(listed.matches("started").count(), 3, "{listed}");

    // A fourth node joins as a learner, is promoted, then removed; asked of a follower each time.
    let address = cluster.add_node(4, &fast_timing());
    let url = format!("--peer-urls=http://{address}");
    let added = ok(
        &[cluster.addr(follower)],
        &["member", "add", "n4", "--learner", &url],
    );
    assert!(added.contains("Member                4 added"), "{added}");
    let learner = json(&all, &["member", "list"]);
    assert_eq!(learner["members"][3]["isLearner"], true);
    cluster.wait_applied(4, 0).await;
    let promoted = ok(&[cluster.addr(follower)], &["member", "promote", "4"]);
    assert!(promoted.contains("promoted"), "{promoted}");
    let voters = json(&all, &["member", "list"]);
    assert!(
        voters["members"][3]["isLearner"].is_null() || voters["members"][3]["isLearner"] == false
    );
    let removed = ok(&[cluster.addr(follower)], &["member", "remove", "4"]);
    assert!(removed.contains("removed"), "{removed}");
    assert_eq!(
        json(&all, &["member", "list"])["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Promoting a member that is not a learner is refused.
    let refused = run(&all, &["member", "promote", "1"], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("can only promote a learner"));
}
