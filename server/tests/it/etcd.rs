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

/// Runs a long-lived etcdctl (e.g. `watch`) until it has printed `wanted` lines or `WATCH_WAIT_MAX` passed,
/// then stops it; returns the lines.
fn lines_of(endpoints: &[String], args: &[&str], wanted: usize) -> Vec<String> {
    lines_of_telling(endpoints, args, wanted, |_| {})
}

/// `lines_of`, calling `seen` with the count of lines read so far after each line.
fn lines_of_telling(
    endpoints: &[String],
    args: &[&str],
    wanted: usize,
    mut seen: impl FnMut(usize),
) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(ETCDCTL_TIMEOUTS)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcdctl");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WATCH_WAIT_MAX;
    let mut lines = Vec::new();
    while lines.len() < wanted {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                lines.push(line);
                seen(lines.len());
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// Longest a test waits for a long-lived etcdctl's output.
const WATCH_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(20);

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
    // An empty store is at revision 1, as etcd's: the five puts took revisions 2 to 6.
    assert_eq!(prefix["header"]["revision"], 6);
    assert_eq!(decode(&prefix["kvs"][0]["value"]), "4");
    assert_eq!(prefix["kvs"][0]["version"], 2);
    assert_eq!(prefix["kvs"][0]["create_revision"], 2);

    // A range [start, end), a past revision, limit with `more`, sorting, keys only.
    assert_eq!(
        keys(&json(&all, &["get", "app/a", "app/c"])),
        ["app/a", "app/b"]
    );
    let past = json(&all, &["get", "app/a", "--rev=2"]);
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
    cluster.wait_applied(follower, 6).await;
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
    // One revision per transaction: two transactions after revision 6.
    assert_eq!(after["header"]["revision"], 8);

    // etcdctl watch on a follower: the history from the first write (with the previous values), in order.
    let watched = lines_of(
        &on(follower),
        &["watch", "app/", "--prefix", "--rev=2", "--prev-kv"],
        12,
    );
    assert_eq!(
        watched[..9],
        ["PUT", "app/a", "1", "PUT", "app/b", "2", "PUT", "app/c", "3"],
        "{watched:?}"
    );
    assert_eq!(
        watched[9..],
        ["PUT", "app/a", "1"],
        "the previous value comes first: {watched:?}"
    );

    // Delete a prefix, returning what it deleted.
    let deleted = ok(&all, &["del", "app/", "--prefix", "--prev-kv"]);
    assert!(deleted.starts_with("3\n"), "{deleted}");
    assert!(deleted.contains("app/c\n3"), "{deleted}");
    assert!(keys(&json(&all, &["get", "app/", "--prefix"])).is_empty());

    // Compaction: older revisions are refused in etcd's words, newer ones beyond the store too.
    assert!(ok(&all, &["compaction", "8"]).contains("compacted revision 8"));
    for (revision, words) in [
        ("--rev=4", "required revision has been compacted"),
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
    // Moving a member to another address (the node would be restarted there).
    let moved = raftkv_testkit::free_addr()
        .expect("a free port")
        .to_string();
    let updated = ok(
        &[cluster.addr(follower)],
        &[
            "member",
            "update",
            "4",
            &format!("--peer-urls=http://{moved}"),
        ],
    );
    assert!(updated.contains("updated"), "{updated}");
    let listed = json(&all, &["member", "list"]);
    assert_eq!(
        listed["members"][3]["peerURLs"][0],
        format!("http://{moved}")
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

/// `etcdctl move-leader` hands leadership to the named member: every node then names it, and writes go on
/// there. The `etcd-client` crate asks a follower, which passes the request to the leader, and moves it back.
/// A member that does not exist is refused with etcd's message, and the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_moves_the_leader() {
    let cluster = TestCluster::start(3, &fast_timing());
    let first = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let all = cluster.endpoints();
    ok(&all, &["put", "before", "1"]);
    let target = [1, 2, 3].into_iter().find(|id| *id != first).unwrap();

    // etcdctl takes the member id in hex and asks the leader among the endpoints.
    let moved = ok(&all, &["move-leader", &format!("{target:x}")]);
    assert!(
        moved.contains(&format!(
            "Leadership transferred from {first:x} to {target:x}"
        )),
        "{moved}"
    );
    assert_eq!(cluster.wait_for_agreed_leader(&[1, 2, 3], 1).await, target);
    ok(&all, &["put", "after", "2"]);
    assert_eq!(
        ok(
            &[cluster.addr(first)],
            &["get", "after", "--print-value-only"]
        )
        .trim(),
        "2"
    );

    // Asked of a node that does not lead: it passes the request on.
    let bystander = [1, 2, 3]
        .into_iter()
        .find(|id| *id != first && *id != target)
        .unwrap();
    let mut client = etcd_client::Client::connect([cluster.addr(bystander)], None)
        .await
        .expect("connect");
    client.move_leader(first).await.expect("move leader back");
    assert_eq!(cluster.wait_for_agreed_leader(&[1, 2, 3], 2).await, first);

    // No member 99: refused in etcd's words, leadership stays.
    let refused = run(&all, &["move-leader", "63"], "");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bad leader transferee"), "{stderr}");
    let statuses = json(&all, &["endpoint", "status"]);
    for status in statuses.as_array().expect("one status per endpoint") {
        assert_eq!(status["Status"]["leader"], first, "{statuses}");
    }
    ok(&all, &["put", "still", "3"]);
}

/// The `etcd-client` crate (an etcd client library nobody here wrote) against raftkv, unchanged: writes on a
/// follower, prefix reads with count, a transaction, a delete returning what it deleted, compaction and the
/// error its clients match on, members and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_works_unchanged() {
    use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let mut client = etcd_client::Client::connect([cluster.addr(follower)], None)
        .await
        .expect("connect");

    for (key, value) in [("job/1", "queued"), ("job/2", "queued"), ("job/3", "done")] {
        client.put(key, value, None).await.expect("put");
    }
    let jobs = client
        .get("job/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .expect("get");
    assert_eq!(jobs.count(), 3);
    assert!(jobs.more());
    assert_eq!(jobs.kvs().len(), 2);
    assert_eq!(jobs.header().unwrap().revision(), 4);
    assert_eq!(jobs.header().unwrap().member_id(), follower);

    // Claim job 1 only if nobody changed it since it was queued.
    let claimed = client
        .txn(
            Txn::new()
                .when([Compare::mod_revision("job/1", CompareOp::Equal, 2)])
                .and_then([
                    TxnOp::put("job/1", "running", None),
                    TxnOp::get("job/1", None),
                ])
                .or_else([TxnOp::get("job/1", None)]),
        )
        .await
        .expect("txn");
    assert!(claimed.succeeded());
    assert_eq!(claimed.header().unwrap().revision(), 5);
    let again = client
        .txn(
            Txn::new()
                .when([Compare::mod_revision("job/1", CompareOp::Equal, 2)])
                .and_then([TxnOp::put("job/1", "running twice", None)]),
        )
        .await
        .expect("txn");
    assert!(!again.succeeded());

    // etcd's --max-txn-ops (128 unless set): one more operation is refused before anything is proposed.
    let too_wide = Txn::new().and_then(
        (0..129)
            .map(|index| TxnOp::put(format!("wide/{index}"), "v", None))
            .collect::<Vec<_>>(),
    );
    match client.txn(too_wide).await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                status.message(),
                "etcdserver: too many operations in txn request"
            );
        }
        other => panic!("a transaction of 129 operations should be refused: {other:?}"),
    }

    // Keeping the value of a key that does not exist: etcd's exact message, which clients match on.
    match client
        .put(
            "missing",
            "",
            Some(etcd_client::PutOptions::new().with_ignore_value()),
        )
        .await
    {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.message(), "etcdserver: key not found");
        }
        other => panic!("ignore_value on a missing key should be refused: {other:?}"),
    }

    let deleted = client
        .delete(
            "job/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(deleted.prev_kvs().len(), 3);
    assert_eq!(deleted.header().unwrap().revision(), 6);

    client.compact(6, None).await.expect("compact");
    let refused = client
        .get("job/1", Some(GetOptions::new().with_revision(3)))
        .await
        .expect_err("a compacted revision is refused");
    match refused {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::OutOfRange);
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: required revision has been compacted"
            );
        }
        other => panic!("not a gRPC status: {other}"),
    }

    let members = client.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 3);
    let status = client.status().await.expect("status");
    assert_eq!(status.leader(), leader);
    assert_eq!(status.header().unwrap().member_id(), follower);

    // No authentication yet: turning it on is refused in words, and nothing changes.
    match client.auth_enable().await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), tonic::Code::Unimplemented);
            assert!(status.message().contains("not supported"), "{status:?}");
        }
        other => panic!("auth enable should be refused: {other:?}"),
    }
    client
        .put("after-auth", "still open", None)
        .await
        .expect("put");
}

/// `etcdctl snapshot save` against a raftkv node writes a backup; a new cluster started with
/// `--restore-from` on it holds the keyspace, revisions and history as they were, and goes on from there. A
/// damaged backup is refused in words and the node does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_restores_into_a_new_cluster() {
    let backups = tempfile::tempdir().expect("a temporary dir");
    let backup = backups.path().join("backup.db");
    let backup_arg = backup.to_str().expect("a UTF-8 path").to_string();
    {
        let cluster = TestCluster::start(3, &fast_timing());
        cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
        let all = cluster.endpoints();
        for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
            ok(&all, &["put", key, value]);
        }
        cluster.wait_applied(2, 4).await;
        let saved = run(&[cluster.addr(2)], &["snapshot", "save", &backup_arg], "");
        assert!(
            saved.status.success(),
            "{}",
            String::from_utf8_lossy(&saved.stderr)
        );
    }

    let mut args = fast_timing();
    args.extend(["--restore-from".to_string(), backup_arg.clone()]);
    let restored = TestCluster::start(3, &args);
    restored.wait_for_agreed_leader(&[1, 2, 3], 4).await;
    let all = restored.endpoints();
    let now = json(&all, &["get", "a"]);
    assert_eq!(decode(&now["kvs"][0]["value"]), "3");
    assert_eq!(now["kvs"][0]["version"], 2);
    assert_eq!(now["header"]["revision"], 4);
    assert_eq!(
        decode(&json(&all, &["get", "a", "--rev=2"])["kvs"][0]["value"]),
        "1"
    );
    let next = json(&all, &["put", "c", "4"]);
    assert_eq!(next["header"]["revision"], 5);
    drop(restored);

    // A backup cut short is refused before anything is written.
    let bytes = std::fs::read(&backup).expect("read the backup");
    std::fs::write(&backup, &bytes[..bytes.len() - 1]).expect("cut the backup short");
    let data_dir = backups.path().join("node");
    let addr = raftkv_testkit::free_addr()
        .expect("a free port")
        .to_string();
    let refused = Command::new(raftkv_testkit::server_binary().expect("raftkv-server"))
        .args(["--id", "1", "--listen", &addr])
        .args(["--initial-cluster", &format!("1={addr}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--restore-from", &backup_arg])
        .output()
        .expect("run raftkv-server");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot restore") && stderr.contains("damaged"),
        "{stderr}"
    );
}

/// Reads watch responses until `count` events have come (or the stream ends, or the bound passes).
async fn watch_events(
    stream: &mut etcd_client::WatchStream,
    count: usize,
) -> Vec<(etcd_client::EventType, String, i64)> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while events.len() < count {
        let response = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("events within the bound")
            .expect("a watch response")
            .expect("the stream is open");
        assert!(!response.canceled(), "{}", response.cancel_reason());
        assert!(response.header().is_some(), "every response has a header");
        for event in response.events() {
            let kv = event.kv().expect("an event has its key");
            events.push((
                event.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
    events
}

/// A watch through the etcd-client crate: the history from a past revision, then live changes, each once and
/// in revision order, on a follower, also while many entries are applied and nobody reads the stream; a
/// compacted start revision ends the watch with the compaction point. (A watcher that falls behind the
/// applied changes altogether: `storage::a_watcher_that_falls_behind_reads_the_history_and_misses_nothing`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_history_then_follow_with_no_gaps() {
    use etcd_client::{EventType, WatchOptions};

    const MANY: usize = 300;
    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let mut writer = etcd_client::Client::connect([cluster.addr(leader)], None)
        .await
        .expect("connect");
    let mut watcher = etcd_client::Client::connect([cluster.addr(follower)], None)
        .await
        .expect("connect");
    writer.put("w/a", "1", None).await.expect("put");
    writer.put("elsewhere", "x", None).await.expect("put");

    let mut stream = watcher
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = stream.message().await.expect("created").expect("open");
    assert!(created.created());
    let replayed = watch_events(&mut stream, 1).await;
    assert_eq!(replayed, [(EventType::Put, "w/a".to_string(), 2)]);

    writer.put("w/a", "2", None).await.expect("put");
    writer.delete("w/a", None).await.expect("delete");
    let live = watch_events(&mut stream, 2).await;
    assert_eq!(
        live,
        [
            (EventType::Put, "w/a".to_string(), 4),
            (EventType::Delete, "w/a".to_string(), 5)
        ]
    );

    // Many entries while nobody reads the stream: the watcher falls behind and replays from sled.
    for index in 0..MANY {
        writer
            .put(format!("w/many/{index:05}"), "v", None)
            .await
            .expect("put");
    }
    let many = watch_events(&mut stream, MANY).await;
    assert_eq!(many.len(), MANY, "no duplicates");
    let revisions: Vec<i64> = many.iter().map(|(_, _, revision)| *revision).collect();
    let expected: Vec<i64> = (6..6 + MANY as i64).collect();
    assert_eq!(revisions, expected, "every revision once, in order");

    // Progress: no events, watch id -1, and the revision everything was delivered through.
    stream.request_progress().await.expect("ask for progress");
    let progress = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("progress within the bound")
        .expect("a response")
        .expect("open");
    assert_eq!(progress.watch_id(), -1);
    assert!(progress.events().is_empty());
    assert_eq!(progress.header().unwrap().revision(), 5 + MANY as i64);

    writer.compact(100, None).await.expect("compact");
    // A watch is served from what its node has applied: a linearizable read there first makes the follower
    // apply the compaction (its read index is past it).
    watcher.get("w/", None).await.expect("a linearizable read");
    let mut old = watcher
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await
        .expect("watch");
    let mut canceled = None;
    for _ in 0..2 {
        let response = old.message().await.expect("a response").expect("open");
        if response.canceled() {
            canceled = Some(response);
            break;
        }
    }
    let canceled = canceled.expect("a compacted start revision ends the watch");
    assert_eq!(canceled.compact_revision(), 100);
    assert!(canceled.cancel_reason().contains("compacted"));
}

/// The consistency ladder through the etcd API: raftkv's read modes ride in request metadata, the envelope
/// of what was served comes back in `raftkv-served`, and each rung refuses as it does in raftkv's own API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reads_choose_their_consistency_in_metadata() {
    use raftkv_proto::contract::{
        ETCD_CONSISTENCY_KEY, ETCD_MAX_STALENESS_KEY, ETCD_MIN_REVISION_KEY, ETCD_SERVED_KEY,
    };
    use raftkv_proto::etcd::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};

    let mut cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let mut kv = KvClient::connect(format!("http://{}", cluster.addr(follower)))
        .await
        .expect("connect");
    kv.put(PutRequest {
        key: b"ladder".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    })
    .await
    .expect("put through a follower");
    cluster.wait_applied(follower, 1).await;

    let range = |metadata: &[(&'static str, &str)], serializable: bool| {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"ladder".to_vec(),
            serializable,
            ..Default::default()
        });
        request.set_timeout(std::time::Duration::from_secs(5));
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, value.parse().expect("ascii metadata"));
        }
        request
    };
    let served = |response: &tonic::Response<_>| -> String {
        response
            .metadata()
            .get(ETCD_SERVED_KEY)
            .expect("the envelope comes back")
            .to_str()
            .expect("text")
            .to_string()
    };

    // Default: linearizable, served by the follower after a read index from the leader.
    let read = kv
        .range(range(&[], false))
        .await
        .expect("linearizable read");
    assert_eq!(read.get_ref().kvs[0].value, b"1");
    let envelope = served(&read);
    assert!(
        envelope.contains(&format!(
            "node={follower},role=follower,consistency=linearizable"
        )),
        "{envelope}"
    );
    // etcd's serializable is raftkv's stale read, with how long since the node heard from its leader.
    let envelope = served(&kv.range(range(&[], true)).await.expect("serializable read"));
    assert!(envelope.contains("consistency=stale"), "{envelope}");
    assert!(envelope.contains(&format!("leader={leader}")), "{envelope}");
    assert!(envelope.contains("millis_since_leader="), "{envelope}");
    let envelope = served(
        &kv.range(range(
            &[
                (ETCD_CONSISTENCY_KEY, "stale"),
                (ETCD_MAX_STALENESS_KEY, "5s"),
            ],
            false,
        ))
        .await
        .expect("bounded stale read"),
    );
    assert!(envelope.contains("consistency=stale"), "{envelope}");

    // Refusals, in words: a mode that does not exist, two modes at once, a revision the node has not reached.
    let refused = kv
        .range(range(&[(ETCD_CONSISTENCY_KEY, "eventual")], false))
        .await
        .expect_err("no such mode");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused
        .message()
        .contains("is not one of linearizable, lease, stale"));
    let refused = kv
        .range(range(&[(ETCD_CONSISTENCY_KEY, "lease")], true))
        .await
        .expect_err("serializable and lease");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = kv
        .range(range(&[(ETCD_MIN_REVISION_KEY, "1000000")], true))
        .await
        .expect_err("a revision far ahead");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("min_revision"), "{refused:?}");

    // The other two nodes frozen (so none is elected meanwhile): a bounded stale read on the follower refuses
    // once the bound has passed, an unbounded one is still served.
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    cluster.pause(leader);
    cluster.pause(other);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let refused = kv
        .range(range(
            &[
                (ETCD_CONSISTENCY_KEY, "stale"),
                (ETCD_MAX_STALENESS_KEY, "300ms"),
            ],
            false,
        ))
        .await
        .expect_err("staler than the bound");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("has not heard from a leader"),
        "{refused:?}"
    );
    let stale = kv
        .range(range(&[], true))
        .await
        .expect("unbounded stale read");
    assert_eq!(stale.get_ref().kvs[0].value, b"1");
    cluster.resume(leader);
    cluster.resume(other);
}

/// The lease id etcdctl prints in `lease 694d71ddacfda227 granted with TTL(2s)`.
fn granted_lease(output: &str) -> String {
    let words: Vec<&str> = output.split_whitespace().collect();
    assert!(
        words.first() == Some(&"lease") && output.contains("granted with TTL"),
        "not a grant: {output}"
    );
    words[1].to_string()
}

/// Leases with etcdctl: grant, put with a lease, time-to-live with its keys, list, keep-alive, revoke, and
/// expiry: the leader revokes a lease nobody keeps alive through Raft, and a watcher on another node sees the
/// deletion. A put or revoke naming an unknown lease is refused with etcd's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases_expire_through_raft() {
    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let mut others = [1, 2, 3].into_iter().filter(|id| *id != leader);
    let (follower, watcher_node) = (others.next().unwrap(), others.next().unwrap());
    let on_follower = [cluster.addr(follower)];

    // Asked of a follower: passed to the leader. The fast timing's minimum TTL is 2 s.
    let lease = granted_lease(&ok(&on_follower, &["lease", "grant", "1"]));
    assert!(
        ok(&on_follower, &["lease", "timetolive", &lease]).contains("granted with TTL(2s)"),
        "the TTL is raised to the minimum"
    );
    ok(
        &on_follower,
        &["put", "session/a", "1", &format!("--lease={lease}")],
    );
    let ttl = ok(&on_follower, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([session/a])"), "{ttl}");
    assert!(ok(&on_follower, &["lease", "list"]).contains(&lease));
    let got = json(&on_follower, &["get", "session/a"]);
    assert_eq!(
        got["kvs"][0]["lease"].as_i64(),
        i64::from_str_radix(&lease, 16).ok(),
        "{got}"
    );

    // Nobody keeps it alive: it expires, and a watcher on the third node sees the key go.
    let events = lines_of(&[cluster.addr(watcher_node)], &["watch", "session/a"], 2);
    assert_eq!(
        events,
        ["DELETE", "session/a"],
        "the expiry deletes the key"
    );
    assert!(ok(&on_follower, &["get", "session/a"]).is_empty());
    assert!(ok(&on_follower, &["lease", "timetolive", &lease]).contains("already expired"));

    // Kept alive past its TTL, the key stays; revoked, it goes at once.
    let kept = granted_lease(&ok(&on_follower, &["lease", "grant", "2"]));
    ok(
        &on_follower,
        &["put", "session/b", "1", &format!("--lease={kept}")],
    );
    for _ in 0..8 {
        let renewed = ok(&on_follower, &["lease", "keep-alive", "--once", &kept]);
        assert!(renewed.contains("keepalived with TTL(2)"), "{renewed}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        ok(&on_follower, &["get", "session/b", "--print-value-only"]).trim(),
        "1",
        "kept alive for 4 s, twice its TTL"
    );
    assert!(ok(&on_follower, &["lease", "revoke", &kept]).contains("revoked"));
    assert!(ok(&on_follower, &["get", "session/b"]).is_empty());

    // Unknown leases: refused in etcd's words, nothing written.
    let refused = run(&on_follower, &["put", "session/c", "1", "--lease=1234"], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("requested lease not found"));
    let refused = run(&on_follower, &["lease", "revoke", &kept], "");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("requested lease not found"));
    assert!(ok(&on_follower, &["get", "session/c"]).is_empty());
}

/// A lease outlives the death of the leader that granted it: the new leader renews every lease when it takes
/// over, so the key is still there after the old deadline; nobody keeps it alive, so it expires later. A
/// leader that loses its quorum expires nothing while it has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_leader_or_a_lost_quorum_never_expires_a_lease_early() {
    use std::time::{Duration, Instant};
    const TTL_SECONDS: i64 = 5;

    let mut cluster = TestCluster::start(3, &fast_timing());
    let first = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != first).collect();
    let endpoints: Vec<String> = survivors.iter().map(|id| cluster.addr(*id)).collect();
    let mut client = etcd_client::Client::connect(endpoints.clone(), None)
        .await
        .expect("connect");
    let granted = client.lease_grant(TTL_SECONDS, None).await.expect("grant");
    let put = etcd_client::PutOptions::new().with_lease(granted.id());
    client.put("owned", "1", Some(put)).await.expect("put");
    let granted_at = Instant::now();

    // The leader dies a second in: its deadline for the lease was TTL_SECONDS after the grant, the new
    // leader's is at least TTL_SECONDS after the kill.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(first);
    let old_deadline = granted_at + Duration::from_secs(TTL_SECONDS as u64);
    tokio::time::sleep_until((old_deadline + Duration::from_millis(500)).into()).await;
    let still = client.get("owned", None).await.expect("get");
    assert_eq!(
        still.kvs().len(),
        1,
        "the lease expired by the old leader's clock"
    );

    // Not kept alive, it does expire, through the new leader.
    let bound = Instant::now() + Duration::from_secs(3 * TTL_SECONDS as u64);
    loop {
        let now = client.get("owned", None).await.expect("get");
        if now.kvs().is_empty() {
            break;
        }
        assert!(Instant::now() < bound, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ttl = client
        .lease_time_to_live(granted.id(), None)
        .await
        .expect("time to live");
    assert_eq!(ttl.ttl(), -1, "an expired lease reports TTL -1");

    // The two survivors: one leads. With its only follower frozen past the TTL it has no quorum, and expires
    // nothing; once the follower is back, the lease has a full TTL again.
    let leader = cluster.wait_for_agreed_leader(&survivors, 0).await;
    let follower = survivors.into_iter().find(|id| *id != leader).unwrap();
    let mut on_leader = etcd_client::Client::connect([cluster.addr(leader)], None)
        .await
        .expect("connect");
    let granted = on_leader.lease_grant(2, None).await.expect("grant");
    let put = etcd_client::PutOptions::new().with_lease(granted.id());
    on_leader.put("held", "1", Some(put)).await.expect("put");
    cluster.pause(follower);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.resume(follower);
    // A revoke proposed meanwhile would commit now; the renewed lease lasts 2 s from here.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = on_leader
        .get(
            "held",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .expect("a local read");
    assert_eq!(
        still.kvs().len(),
        1,
        "a leader without a quorum expired a lease"
    );
}

/// `etcdctl lock` (etcd's client-side recipe: a lease, a key per waiter, the lowest create revision holds,
/// each waiter watching its predecessor): two holders run their commands one after the other, never at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_etcdctl_locks_are_never_held_at_once() {
    let cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let dir = tempfile::tempdir().expect("a temporary dir");
    let marks = dir.path().display().to_string();
    // Inside the lock: fail loudly if the other holder is inside too, stay a while, leave.
    let critical = format!(
        "if [ -e {marks}/inside ]; then touch {marks}/overlap; fi; touch {marks}/inside; \
         sleep 0.6; rm {marks}/inside; echo \"$1\" >> {marks}/done"
    );
    let holders: Vec<std::process::Child> = [1, 2]
        .into_iter()
        .map(|holder| {
            Command::new(etcdctl_binary())
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", cluster.addr(holder)))
                .args(ETCDCTL_TIMEOUTS)
                .args([
                    "lock",
                    "jobs",
                    "--",
                    "sh",
                    "-c",
                    &critical,
                    "sh",
                    &holder.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run etcdctl lock")
        })
        .collect();
    for holder in holders {
        let output = holder.wait_with_output().expect("etcdctl lock ends");
        assert!(
            output.status.success(),
            "etcdctl lock failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let done = std::fs::read_to_string(dir.path().join("done")).expect("both ran");
    assert_eq!(done.lines().count(), 2, "{done}");
    assert!(
        !dir.path().join("overlap").exists(),
        "both holders were inside the lock at once"
    );
    // Each holder's key went with its session.
    assert!(ok(&cluster.endpoints(), &["get", "jobs", "--prefix"]).is_empty());
}

/// `etcdctl elect`: the first candidate leads and an observer sees it; when it resigns (interrupted), the
/// waiting candidate takes over and the observer sees that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_hands_leadership_to_the_next_candidate() {
    use std::io::BufRead;
    let cluster = TestCluster::start(3, &fast_timing());
    cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let candidate = |node: u64, proposal: &str| {
        let mut child = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.addr(node)))
            .args(ETCDCTL_TIMEOUTS)
            .args(["elect", "primary", proposal])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl elect");
        let (lines, receiver) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        (child, receiver)
    };
    let next_line = |receiver: &std::sync::mpsc::Receiver<String>| {
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("etcdctl elect printed a line in time")
    };
    let (mut alpha, alpha_lines) = candidate(1, "alpha");
    assert!(next_line(&alpha_lines).starts_with("primary/"));
    assert_eq!(next_line(&alpha_lines), "alpha");
    let (mut beta, beta_lines) = candidate(2, "beta");
    let observed = lines_of(&[cluster.addr(3)], &["elect", "--listen", "primary"], 2);
    assert_eq!(observed[1], "alpha", "{observed:?}");
    assert!(
        beta_lines
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "the second candidate must wait"
    );

    // The leader resigns on SIGINT; the other candidate is elected.
    let _ = Command::new("kill")
        .args(["-INT", &alpha.id().to_string()])
        .status();
    let _ = alpha.wait();
    assert!(next_line(&beta_lines).starts_with("primary/"));
    assert_eq!(next_line(&beta_lines), "beta");
    let observed = lines_of(&[cluster.addr(3)], &["elect", "--listen", "primary"], 2);
    assert_eq!(observed[1], "beta", "{observed:?}");
    let _ = beta.kill();
    let _ = beta.wait();
}

/// The `v3lock` and `v3election` services through the `etcd-client` crate, asked of followers: a second lock
/// waits until the first is unlocked and gets a later key (a fencing token that only grows); a campaign
/// leads, proclaims, is observed, resigns, and the next campaigner leads; a resigned leader cannot proclaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3lock_and_v3election_serve_etcd_clients() {
    use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
    use std::time::Duration;

    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let mut followers = [1, 2, 3].into_iter().filter(|id| *id != leader);
    let (first, second) = (followers.next().unwrap(), followers.next().unwrap());
    let connect = |id: u64| etcd_client::Client::connect([cluster.addr(id)], None);
    let mut one = connect(first).await.expect("connect");
    let mut two = connect(second).await.expect("connect");

    let lease_one = one.lease_grant(30, None).await.expect("grant").id();
    let lease_two = two.lease_grant(30, None).await.expect("grant").id();
    let held = one
        .lock("jobs", Some(LockOptions::new().with_lease(lease_one)))
        .await
        .expect("lock");
    let held_key = held.key().to_vec();
    let mut waiting = tokio::spawn(async move {
        two.lock("jobs", Some(LockOptions::new().with_lease(lease_two)))
            .await
            .map(|response| response.key().to_vec())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut waiting)
            .await
            .is_err(),
        "the second lock must wait for the first"
    );
    // A third would-be holder gives up (its request is cancelled): its key does not stay queued.
    let mut three = connect(second).await.expect("connect");
    let lease_three = three.lease_grant(30, None).await.expect("grant").id();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        three.lock("jobs", Some(LockOptions::new().with_lease(lease_three))),
    )
    .await;
    assert!(gave_up.is_err(), "the third lock must wait");
    let queued = |lease: i64| format!("jobs/{lease:x}");
    let bound = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = one
            .get(
                "jobs/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("get");
        let gone = keys
            .kvs()
            .iter()
            .all(|kv| kv.key_str().unwrap() != queued(lease_three));
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < bound,
            "a cancelled lock left its key queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.unlock(held_key.clone()).await.expect("unlock");
    let next_key = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second lock is granted once the first is released")
        .expect("the task")
        .expect("lock");
    let create = |key: &[u8]| {
        let key = key.to_vec();
        let mut client = one.clone();
        async move { client.get(key, None).await.expect("get").kvs()[0].create_revision() }
    };
    assert!(
        create(&next_key).await > 0 && next_key != held_key,
        "a different key holds the lock now"
    );

    // Elections.
    let mut alpha = connect(first).await.expect("connect");
    let mut beta = connect(second).await.expect("connect");
    let lease_alpha = alpha.lease_grant(30, None).await.expect("grant").id();
    let lease_beta = beta.lease_grant(30, None).await.expect("grant").id();
    let won = alpha
        .campaign("primary", "alpha", lease_alpha)
        .await
        .expect("campaign");
    let alpha_key = won.leader().expect("a leader key").clone();
    let mut observer = connect(leader).await.expect("connect");
    let mut observed = observer.observe("primary").await.expect("observe");
    let now = observed.message().await.expect("a response").expect("open");
    assert_eq!(now.kv().unwrap().value(), b"alpha");
    alpha
        .proclaim(
            "alpha, again",
            Some(ProclaimOptions::new().with_leader(alpha_key.clone())),
        )
        .await
        .expect("proclaim");
    let now = observed.message().await.expect("a response").expect("open");
    assert_eq!(now.kv().unwrap().value(), b"alpha, again");
    let mut campaign = tokio::spawn(async move {
        beta.campaign("primary", "beta", lease_beta)
            .await
            .map(|response| response.leader().cloned())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut campaign)
            .await
            .is_err(),
        "the second campaigner must wait"
    );
    assert_eq!(
        alpha
            .leader("primary")
            .await
            .expect("leader")
            .kv()
            .unwrap()
            .value(),
        b"alpha, again"
    );
    alpha
        .resign(Some(ResignOptions::new().with_leader(alpha_key.clone())))
        .await
        .expect("resign");
    let beta_key = tokio::time::timeout(Duration::from_secs(10), campaign)
        .await
        .expect("the next campaigner leads")
        .expect("the task")
        .expect("campaign")
        .expect("a leader key");
    assert!(beta_key.rev() > alpha_key.rev());
    let now = observed.message().await.expect("a response").expect("open");
    assert_eq!(now.kv().unwrap().value(), b"beta");
    match alpha
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(alpha_key)))
        .await
    {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.message(), "election: not leader")
        }
        other => panic!("a resigned leader must not proclaim: {other:?}"),
    }
}

/// A watch created with `progress_notify` gets a response with no events, at the revision it has seen
/// through, each time an interval passes with nothing for it; a watch without it gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_says_how_far_a_quiet_watch_has_seen() {
    use etcd_client::WatchOptions;
    use std::time::Duration;

    let mut args = fast_timing();
    args.extend([
        "--watch-progress-notify-interval-ms".to_string(),
        "300".to_string(),
    ]);
    let cluster = TestCluster::start(1, &args);
    cluster.wait_for_agreed_leader(&[1], 0).await;
    let mut client = etcd_client::Client::connect([cluster.addr(1)], None)
        .await
        .expect("connect");
    let mut notified = client
        .watch(
            "quiet/",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        )
        .await
        .expect("watch");
    let mut silent = client
        .watch("quiet/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = notified.message().await.expect("created").expect("open");
    assert!(created.created());
    silent.message().await.expect("created").expect("open");
    let written = client.put("elsewhere", "x", None).await.expect("put");
    let revision = written.header().unwrap().revision();

    let bound = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let progress = tokio::time::timeout_at(bound, notified.message())
            .await
            .expect("a progress notification within the bound")
            .expect("a response")
            .expect("open");
        assert!(progress.events().is_empty());
        if progress.header().unwrap().revision() >= revision {
            break;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(800), silent.message())
            .await
            .is_err(),
        "a watch without progress_notify gets no progress"
    );
}

/// `etcdctl watch --prefix --rev --prev-kv` on a follower prints the history from the revision asked, then a
/// write another etcdctl process makes while it watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_sees_history_then_another_process_writing() {
    let cluster = TestCluster::start(3, &fast_timing());
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], 0).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let all = cluster.endpoints();
    ok(&all, &["put", "w/a", "1"]);
    ok(&all, &["put", "w/a", "2"]);
    let on_follower = vec![cluster.addr(follower)];
    // The two historical events: a PUT (3 lines), then a PUT with its previous value (5 lines).
    const HISTORY_LINES: usize = 8;
    let (history_printed, history_seen) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        lines_of_telling(
            &on_follower,
            &["watch", "w/", "--prefix", "--rev=2", "--prev-kv"],
            11,
            |count| {
                if count == HISTORY_LINES {
                    let _ = history_printed.send(());
                }
            },
        )
    });
    // Once the history is printed the watch is live; the writer is another process, started then.
    history_seen
        .recv_timeout(WATCH_WAIT_MAX)
        .expect("etcdctl printed the history within the wait");
    ok(&all, &["put", "w/b", "3"]);
    let lines = watcher.join().expect("the watcher thread");
    assert_eq!(
        lines,
        ["PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "PUT", "w/b", "3"],
        "history (the second put with its previous value), then the live write"
    );
}
