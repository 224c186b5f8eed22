//! Crash safety: concurrent writers against a cluster whose nodes are all SIGKILLed at once, at seeded
//! random moments, then restarted on the same data dirs; after every restart the cluster must hold every
//! acknowledged write, and what survived of each writer must be a gap-free prefix of what it wrote.
//!
//! Each writer writes its own keys `w<writer>/<n>` in order, one at a time, moving to `n + 1` only once `n`
//! is acknowledged. So after a crash the writer's surviving keys must be exactly `0..=k` where `k` is its
//! last acknowledged key or the one after it (in flight, indeterminate: may or may not be there); a hole, a
//! lost acknowledged key, a different value or revision, or revisions out of write order is a failure.
//! Every node must also agree with the leader on every key at the leader's revision, and with the other
//! nodes at earlier revisions still readable.
//!
//! While the writers run, a compactor compacts the history to a little behind the store's revision, and the
//! nodes snapshot every few entries and keep a short log behind it, so compactions, snapshot builds and
//! snapshot installs (a node restarted behind the others catches up by one) all race the kills.
//!
//! The suite runs a short seeded run. `RAFTKV_CRASH_SEED` picks another seed (a failure prints the seed that
//! reproduces it) and `RAFTKV_CRASH_ROUNDS` runs more crash rounds:
//! `RAFTKV_CRASH_ROUNDS=50 cargo test -p raftkv-server --test it crash -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use raftkv_client::{Client, Consistency, KeyValue, ReadOptions, ScanRange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;

use raftkv_testkit::{fast_timing, TestCluster, WAIT_MAX};

/// Seed when `RAFTKV_CRASH_SEED` is not set.
const SEED_DEFAULT: u64 = 0x5eed_0009;
/// Crash rounds when `RAFTKV_CRASH_ROUNDS` is not set: enough to cross restarts twice, short for the suite.
const ROUNDS_DEFAULT: u64 = 3;
/// Concurrent writers, each on its own key sequence.
const WRITERS: usize = 4;
/// A round kills the cluster after a seeded random number of acknowledged writes in `0..=` this.
const ACKS_PER_ROUND_MAX: u64 = 120;
/// Revisions of history the compactor keeps behind the store's revision.
const COMPACTION_KEEP: u64 = 10;
/// Pause between two compactions.
const COMPACTION_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// Flags that make nodes snapshot and purge their log often.
const FREQUENT_SNAPSHOTS: [&str; 4] = ["--snapshot-after-entries", "20", "--log-keep-entries", "5"];
/// Keys asked for per scan page when reading a writer's keys back.
const SCAN_PAGE_KEYS: u32 = 1_000;

/// What one writer has written and what the cluster has acknowledged.
#[derive(Debug, Default)]
struct WriterLog {
    /// Acknowledged keys: sequence number -> revision the acknowledgement carried.
    acknowledged: BTreeMap<u64, u64>,
    /// The write sent and not answered yet: indeterminate if the cluster dies now.
    in_flight: Option<u64>,
    /// Sequence numbers that were sent more than once (a failed attempt, then a retry): such a key may have
    /// been applied twice, so its final revision may be above the acknowledged one.
    retried: BTreeSet<u64>,
    /// Next sequence number to write.
    next: u64,
}

fn key(writer: usize, sequence: u64) -> String {
    format!("w{writer}/{sequence:08}")
}

fn value(writer: usize, sequence: u64) -> String {
    format!("{writer}:{sequence}")
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Writes `w<writer>/<n>` for n = next, next + 1, ... one at a time until aborted, retrying a write that
/// failed under the same key (and value) before moving on.
async fn run_writer(
    client: Client,
    writer: usize,
    logs: Arc<Mutex<Vec<WriterLog>>>,
    acks: watch::Sender<u64>,
) {
    let mut sequence = logs.lock().unwrap()[writer].next;
    loop {
        {
            let mut logs = logs.lock().unwrap();
            let log = &mut logs[writer];
            if log.in_flight == Some(sequence) {
                log.retried.insert(sequence);
            }
            log.in_flight = Some(sequence);
        }
        if let Ok(revision) = client
            .put(key(writer, sequence), value(writer, sequence))
            .await
        {
            {
                let mut logs = logs.lock().unwrap();
                let log = &mut logs[writer];
                log.acknowledged.insert(sequence, revision);
                log.in_flight = None;
                log.next = sequence + 1;
            }
            acks.send_modify(|count| *count += 1);
            sequence += 1;
        }
    }
}

/// Reads back every key of `writer` with a linearizable scan, page by page.
async fn read_writer_keys(client: &Client, writer: usize) -> Vec<KeyValue> {
    let prefix = format!("w{writer}/");
    let end = format!("w{writer}0").into_bytes(); // '0' follows '/': the first key past the prefix
    let mut start = prefix.into_bytes();
    let mut kvs = Vec::new();
    loop {
        let page = client
            .scan(
                ScanRange::Range {
                    start: start.clone(),
                    end: Some(end.clone()),
                },
                SCAN_PAGE_KEYS,
                &ReadOptions::default(),
            )
            .await
            .expect("linearizable scan after restart");
        if let Some(last) = page.kvs.last() {
            start = last.key.clone();
            start.push(0);
        }
        let more = page.more;
        kvs.extend(page.kvs);
        if !more {
            return kvs;
        }
    }
}

/// Checks one writer's surviving keys against its log and folds the survivors into the log (an
/// indeterminate write that survived counts as written; one that did not will be written again).
/// Returns a description of the first violation.
fn check_writer(writer: usize, log: &mut WriterLog, kvs: &[KeyValue]) -> Result<(), String> {
    let mut survivors: BTreeMap<u64, &KeyValue> = BTreeMap::new();
    for kv in kvs {
        let text = String::from_utf8_lossy(&kv.key);
        let sequence: u64 = text
            .strip_prefix(&format!("w{writer}/"))
            .and_then(|number| number.parse().ok())
            .ok_or_else(|| format!("unexpected key {text:?}"))?;
        survivors.insert(sequence, kv);
    }
    // Gap-free: the survivors are exactly 0..count.
    let count = survivors.len() as u64;
    if let Some((sequence, _)) = survivors.iter().find(|(sequence, _)| **sequence >= count) {
        let missing = (0..count).find(|n| !survivors.contains_key(n)).unwrap_or(0);
        return Err(format!(
            "writer {writer}: key {} survived but key {} did not (a hole)",
            key(writer, *sequence),
            key(writer, missing)
        ));
    }
    // Nothing acknowledged is lost; at most the one in-flight write beyond them survived.
    let acknowledged = log
        .acknowledged
        .keys()
        .next_back()
        .map_or(0, |last| last + 1);
    if count < acknowledged {
        return Err(format!(
            "writer {writer}: acknowledged key {} (revision {}) is lost ({count} keys survived, the last at revision {})",
            key(writer, count),
            log.acknowledged.get(&count).copied().unwrap_or(0),
            survivors.values().next_back().map_or(0, |kv| kv.mod_revision),
        ));
    }
    if count > acknowledged + 1
        || (count == acknowledged + 1 && log.in_flight != Some(acknowledged))
    {
        return Err(format!(
            "writer {writer}: {count} keys survived but only {acknowledged} were acknowledged and {:?} was in flight",
            log.in_flight
        ));
    }
    let mut previous_revision = 0;
    for (sequence, kv) in &survivors {
        if kv.value != value(writer, *sequence).as_bytes() {
            return Err(format!(
                "writer {writer}: key {} holds {:?}",
                key(writer, *sequence),
                String::from_utf8_lossy(&kv.value)
            ));
        }
        if let Some(acknowledged) = log.acknowledged.get(sequence) {
            let retried = log.retried.contains(sequence);
            if (!retried && kv.mod_revision != *acknowledged)
                || (retried && kv.mod_revision < *acknowledged)
            {
                return Err(format!(
                    "writer {writer}: key {} is at revision {}, acknowledged at {acknowledged}",
                    key(writer, *sequence),
                    kv.mod_revision
                ));
            }
        }
        if kv.create_revision <= previous_revision {
            return Err(format!(
                "writer {writer}: key {} was created at revision {}, not after the key before it ({previous_revision})",
                key(writer, *sequence),
                kv.create_revision
            ));
        }
        previous_revision = kv.create_revision;
        log.acknowledged.insert(*sequence, kv.mod_revision);
    }
    log.in_flight = None;
    log.next = count;
    Ok(())
}

/// Every node holds the same keys at the same revisions: now (at the leader's revision) and in its history
/// (at a few earlier revisions still readable).
async fn check_replicas_agree(cluster: &TestCluster, client: &Client) -> Result<(), String> {
    let leader_view = client
        .scan(
            ScanRange::Prefix(Vec::new()),
            raftkv_server::kv::state_machine::SCAN_LIMIT_MAX as u32,
            &ReadOptions::default(),
        )
        .await
        .map_err(|error| format!("linearizable scan of every key: {error}"))?;
    let now = leader_view.envelope.revision;
    let oldest = leader_view.envelope.compact_revision.max(1);
    let mut revisions = vec![now];
    if now > oldest {
        revisions.extend([
            oldest,
            oldest + (now - oldest) / 3,
            oldest + 2 * (now - oldest) / 3,
        ]);
    }
    let scan_at = |id: u64, revision: u64| {
        let options = ReadOptions {
            consistency: Consistency::Stale,
            min_revision: now,
            revision,
            endpoint: Some(cluster.addr(id)),
            ..Default::default()
        };
        async move {
            client
                .scan(
                    ScanRange::Prefix(Vec::new()),
                    raftkv_server::kv::state_machine::SCAN_LIMIT_MAX as u32,
                    &options,
                )
                .await
                .map(|view| view.kvs)
                .map_err(|error| format!("stale scan of node {id} at revision {revision}: {error}"))
        }
    };
    for revision in revisions {
        let mut reference: Option<(u64, Vec<KeyValue>)> = None;
        if revision == now {
            reference = Some((0, leader_view.kvs.clone()));
        }
        for id in &cluster.ids() {
            cluster.wait_applied(*id, now).await;
            let view = scan_at(*id, revision).await?;
            match &reference {
                None => reference = Some((*id, view)),
                Some((from, expected)) if *expected != view => {
                    let from = if *from == 0 {
                        "the leader".to_string()
                    } else {
                        format!("node {from}")
                    };
                    return Err(format!(
                        "node {id} disagrees with {from} at revision {revision} (the store is at {now})"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Compacts the history to `COMPACTION_KEEP` revisions behind the store's, every `COMPACTION_EVERY`, until
/// aborted. Failures (no leader during a kill, a compaction that raced another) are expected and ignored.
async fn run_compactor(client: Client) {
    loop {
        tokio::time::sleep(COMPACTION_EVERY).await;
        let stale = ReadOptions {
            consistency: Consistency::Stale,
            ..Default::default()
        };
        if let Ok(read) = client.get("w0/00000000", &stale).await {
            let target = read.envelope.revision.saturating_sub(COMPACTION_KEEP);
            if target > read.envelope.compact_revision {
                let _ = client.compact(target).await;
            }
        }
    }
}

/// Runs the crash rounds on a cluster of `size` nodes; panics naming the seed on the first violation.
async fn crash_rounds(size: u64) {
    let seed = env_u64("RAFTKV_CRASH_SEED", SEED_DEFAULT);
    let rounds = env_u64("RAFTKV_CRASH_ROUNDS", ROUNDS_DEFAULT);
    let rerun = format!(
        "seed {seed}; rerun with RAFTKV_CRASH_SEED={seed} RAFTKV_CRASH_ROUNDS={rounds} cargo test -p raftkv-server --test it crash"
    );
    let mut rng = StdRng::seed_from_u64(seed ^ size);
    let members: Vec<u64> = (1..=size).collect();
    let mut args = fast_timing();
    args.extend(FREQUENT_SNAPSHOTS.iter().map(|flag| flag.to_string()));
    let mut cluster = TestCluster::start(size, &args);
    let logs: Arc<Mutex<Vec<WriterLog>>> = Arc::new(Mutex::new(
        (0..WRITERS).map(|_| WriterLog::default()).collect(),
    ));
    let mut total_acknowledged = 0;

    for round in 1..=rounds {
        cluster.wait_for_leader(&members, 1).await;
        let client = cluster.client();
        let (acks, mut acks_seen) = watch::channel(0u64);
        let mut writers = JoinSet::new();
        for writer in 0..WRITERS {
            writers.spawn(run_writer(
                client.clone(),
                writer,
                logs.clone(),
                acks.clone(),
            ));
        }
        writers.spawn(run_compactor(client.clone()));
        let kill_after = rng.random_range(0..=ACKS_PER_ROUND_MAX);
        tokio::time::timeout(WAIT_MAX, acks_seen.wait_for(|count| *count >= kill_after))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: {kill_after} writes not acknowledged in {WAIT_MAX:?} ({rerun})"
                )
            })
            .unwrap();
        cluster.kill_all();
        writers.abort_all();
        while writers.join_next().await.is_some() {}
        total_acknowledged += *acks_seen.borrow();

        for id in &members {
            cluster.restart(*id);
        }
        cluster.wait_for_leader(&members, 1).await;
        let client = cluster.client();
        for writer in 0..WRITERS {
            let kvs = read_writer_keys(&client, writer).await;
            let checked = check_writer(writer, &mut logs.lock().unwrap()[writer], &kvs);
            if let Err(violation) = checked {
                let mut statuses = Vec::new();
                for id in &members {
                    statuses.push(cluster.status(*id).await);
                }
                panic!("round {round} (killed after {kill_after} acknowledged writes): {violation} ({rerun}); node status: {statuses:?}");
            }
        }
        if let Err(violation) = check_replicas_agree(&cluster, &client).await {
            panic!("round {round}: {violation} ({rerun})");
        }
        eprintln!(
            "crash round {round}/{rounds} on {size} node(s): killed after {kill_after} acknowledged writes, every one survived"
        );
    }
    assert!(
        total_acknowledged > 0,
        "no write was acknowledged in {rounds} rounds: the test checked nothing ({rerun})"
    );
    let compacted = cluster
        .status(1)
        .await
        .map_or(0, |status| status.compact_revision);
    assert!(
        compacted > 0,
        "the compactor never compacted: the rounds did not exercise compaction ({rerun})"
    );
    eprintln!("{rounds} crash rounds on {size} node(s), {total_acknowledged} acknowledged writes, none lost, history compacted to {compacted} ({rerun})");
}

/// Three nodes SIGKILLed together at seeded random moments under four concurrent writers keep every
/// acknowledged write, as a gap-free prefix per writer, and agree with each other after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_three_nodes_loses_no_acknowledged_write() {
    crash_rounds(3).await;
}

/// The same on one node, where no replica can hide a missing flush: an acknowledged write exists only in
/// that node's own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_single_node_loses_no_acknowledged_write() {
    crash_rounds(1).await;
}
