//! The guided demonstrations. `jepsen-lite demo split-brain` (here): a guided partition on five real nodes that shows, step by step, what each
//! side of a partition can and cannot do, and checks every claim it prints.
//!
//! The story: the leader and one follower are cut off from the other three. The minority keeps a node that still
//! believes it is leader, yet it cannot commit a write nor serve a linearizable read; it still serves stale reads,
//! and says how stale they are. The majority elects a new leader in a higher term and goes on. After healing, the
//! old leader steps down, the minority's unacknowledged write is gone, and every acknowledged write is on every
//! node. Each step prints what happened and whether it matched the expectation; the demo fails (exit 1) if any did
//! not.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use raftkv_client::names::role_name;
use raftkv_client::{Client, ClientConfig, ClientError, Consistency, GetResult, ReadOptions, Role};

use raftkv_testkit::fast_timing;

use crate::cluster::{Cluster, ClusterConfig};

pub mod clock;

/// Nodes in the demo cluster.
pub const DEMO_NODES: u64 = 5;
/// How long to wait for an election or a step-down.
pub const ELECTION_WAIT: Duration = Duration::from_secs(15);
/// Deadline of the minority's write attempt: long enough for many election timeouts.
pub const MINORITY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one demo read pinned to a node (a refusal comes well within it).
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of the final reads after healing, when nodes may still be catching up.
pub const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dialling one node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes of each node's log printed when a step cannot be carried out.
pub const FAILED_DEMO_LOG_TAIL_BYTES: usize = 8 * 1024;
/// The bound of the demo's bounded stale read: far below how long the minority has been cut off by then.
pub const STALENESS_BOUND: Duration = Duration::from_millis(200);

/// Where the demo keeps its nodes, and which server it runs.
pub struct DemoConfig {
    pub server_binary: PathBuf,
    pub data_root: PathBuf,
}

/// Prints the steps and tallies expectations.
struct Narrator<'a> {
    out: &'a mut dyn Write,
    step: usize,
    failures: Vec<String>,
}

impl Narrator<'_> {
    fn step(&mut self, title: &str) -> anyhow::Result<()> {
        self.step += 1;
        writeln!(self.out, "\n{}. {title}", self.step)?;
        Ok(())
    }

    fn say(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.out, "   {text}")?;
        Ok(())
    }

    /// Ends a demo whose story returned `result` on `cluster`: the nodes' log tails on stderr if a step could not
    /// be carried out, the cluster shut down, then `passed` or `failed` and the failed expectations. Returns
    /// whether every expectation held.
    async fn conclude(
        &mut self,
        cluster: Cluster,
        result: anyhow::Result<()>,
        passed: &str,
        failed: &str,
    ) -> anyhow::Result<bool> {
        if result.is_err() {
            // Why a step could not be carried out is in the nodes' logs, which go with the data root.
            eprint!("{}", cluster.log_tails(FAILED_DEMO_LOG_TAIL_BYTES));
        }
        cluster.shutdown().await;
        result?;
        writeln!(self.out)?;
        if self.failures.is_empty() {
            writeln!(self.out, "{passed}")?;
            return Ok(true);
        }
        writeln!(self.out, "{failed}")?;
        for failure in &self.failures {
            writeln!(self.out, "  - {failure}")?;
        }
        Ok(false)
    }

    /// Prints one observation with a mark saying whether it was what Raft promises.
    fn expect(&mut self, held: bool, text: &str) -> anyhow::Result<()> {
        let mark = if held { "ok      " } else { "UNEXPECTED" };
        writeln!(self.out, "   [{mark}] {text}")?;
        if !held {
            self.failures.push(format!("step {}: {text}", self.step));
        }
        Ok(())
    }
}

/// A client that can reach only `endpoint`: no failover to the other side.
fn pinned_client(endpoint: &str, timeout: Duration) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(vec![endpoint.to_string()]);
    config.connect_timeout = CONNECT_TIMEOUT;
    config.request_timeout = timeout;
    config.overall_timeout = timeout;
    Ok(Client::new(config)?)
}

fn read_options(consistency: Consistency, endpoint: &str) -> ReadOptions {
    ReadOptions {
        consistency,
        endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

fn show_value(result: &GetResult) -> String {
    let value = result.kv.as_ref().map_or("(absent)".to_string(), |kv| {
        format!("{:?}", String::from_utf8_lossy(&kv.value))
    });
    let envelope = &result.envelope;
    format!(
        "{value}, served by node {} as {} at revision {} (applied index {}), term {}, {} since it heard from a leader",
        envelope.node_id,
        role_name(envelope.role),
        envelope.revision,
        envelope.applied_index,
        envelope.term,
        envelope
            .millis_since_leader
            .map_or("never".to_string(), |ms| format!("{ms} ms"))
    )
}

fn value_of(result: &GetResult) -> Option<String> {
    result
        .kv
        .as_ref()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Runs the demo, writing the narrative to `out`. Returns whether every expectation held.
pub async fn split_brain(config: DemoConfig, out: &mut dyn Write) -> anyhow::Result<bool> {
    let mut narrator = Narrator {
        out,
        step: 0,
        failures: Vec::new(),
    };
    narrator
        .step("Start five raftkv nodes, each dialling its peers through the partition proxy")?;
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: DEMO_NODES,
        server_binary: config.server_binary,
        data_root: config.data_root,
        extra_args: fast_timing(),
        tls: false,
    })
    .await?;
    let result = story(&mut cluster, &mut narrator).await;
    narrator
        .conclude(
            cluster,
            result,
            "Every step went as Raft promises: no split brain, nothing acknowledged was lost.",
            "Some steps did not go as Raft promises:",
        )
        .await
}

async fn story(cluster: &mut Cluster, narrator: &mut Narrator<'_>) -> anyhow::Result<()> {
    let ids = cluster.ids();
    let (old_leader, old_term) = cluster
        .wait_for_leader(&ids, 0, ELECTION_WAIT)
        .await
        .context("the cluster elected no leader")?;
    narrator.say(&format!(
        "node {old_leader} is the leader in term {old_term}"
    ))?;
    let everyone = cluster.client()?;
    everyone
        .put("demo/before", "written before the partition")
        .await
        .context("cannot write before the partition")?;
    narrator.say("wrote demo/before through the leader: acknowledged")?;

    let follower = *ids
        .iter()
        .find(|&&id| id != old_leader)
        .expect("five nodes");
    let minority = [old_leader, follower];
    let majority: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !minority.contains(id))
        .collect();
    narrator.step(&format!(
        "Partition: nodes {old_leader} (the leader) and {follower} on one side, {majority:?} on the other"
    ))?;
    cluster
        .mesh()
        .partition(&[minority.to_vec(), majority.clone()])?;
    narrator.say(
        "peer traffic between the sides is cut at the proxies; clients still reach every node",
    )?;

    narrator.step("The minority side: the old leader cannot commit")?;
    let leader_addr = cluster.addr(old_leader);
    let to_old_leader = pinned_client(&leader_addr, MINORITY_WRITE_TIMEOUT)?;
    let write = to_old_leader
        .put("demo/minority", "written to the old leader")
        .await;
    let (held, text) = match &write {
        Err(ClientError::Indeterminate { .. }) => (true, "the write to the old leader timed out: UNKNOWN, not acknowledged (it cannot reach a majority)".to_string()),
        Err(error) => (true, format!("the write to the old leader was refused: {error}")),
        Ok(revision) => (false, format!("the old leader ACKNOWLEDGED a write at revision {revision} without a majority")),
    };
    narrator.expect(held, &text)?;
    for &node in &minority {
        let addr = cluster.addr(node);
        let client = pinned_client(&addr, READ_TIMEOUT)?;
        let read = client
            .get(
                "demo/before",
                &read_options(Consistency::Linearizable, &addr),
            )
            .await;
        let (held, text) = match &read {
            Err(error) => (
                true,
                format!("linearizable read on node {node} refused: {error}"),
            ),
            Ok(result) => (
                false,
                format!(
                    "linearizable read on node {node} ANSWERED: {}",
                    show_value(result)
                ),
            ),
        };
        narrator.expect(held, &text)?;
    }

    narrator.step("The majority side elects a new leader in a higher term and goes on")?;
    let (new_leader, new_term) = cluster
        .wait_for_leader(&majority, old_term + 1, ELECTION_WAIT)
        .await
        .context("the majority elected no new leader")?;
    narrator.expect(
        majority.contains(&new_leader) && new_term > old_term,
        &format!("node {new_leader} is leader in term {new_term} (> {old_term})"),
    )?;
    if let Some(status) = cluster.status(old_leader).await {
        narrator.say(&format!(
            "meanwhile node {old_leader} still says it is {} in term {}: two nodes call themselves leader, but in different terms, and only the one with a majority can commit",
            role_name(status.role),
            status.term
        ))?;
    }
    let majority_client = Client::new(ClientConfig::new(
        majority.iter().map(|&id| cluster.addr(id)).collect(),
    ))?;
    let after = majority_client
        .put("demo/after", "written during the partition")
        .await;
    narrator.expect(
        after.is_ok(),
        &match &after {
            Ok(revision) => {
                format!("wrote demo/after on the majority: acknowledged at revision {revision}")
            }
            Err(error) => format!("the majority could not write: {error}"),
        },
    )?;
    let new_leader_addr = cluster.addr(new_leader);
    let read = majority_client
        .get(
            "demo/after",
            &read_options(Consistency::Linearizable, &new_leader_addr),
        )
        .await;
    narrator.expect(
        read.as_ref().ok().and_then(value_of).is_some(),
        &match &read {
            Ok(result) => format!("linearizable read on the majority: {}", show_value(result)),
            Err(error) => format!("linearizable read on the majority failed: {error}"),
        },
    )?;

    narrator.step("The minority side still serves stale reads, and says how stale they are")?;
    for &node in &minority {
        let addr = cluster.addr(node);
        let client = pinned_client(&addr, READ_TIMEOUT)?;
        let read = client
            .get("demo/after", &read_options(Consistency::Stale, &addr))
            .await;
        match &read {
            Ok(result) => narrator.expect(
                result.kv.is_none(),
                &format!(
                    "stale read of demo/after on node {node}: {} (the write from the majority is not there yet)",
                    show_value(result)
                ),
            )?,
            Err(error) => narrator.expect(false, &format!("stale read on node {node} failed: {error}"))?,
        }
    }
    let bounded = pinned_client(&cluster.addr(follower), READ_TIMEOUT)?
        .get(
            "demo/before",
            &ReadOptions {
                consistency: Consistency::Stale,
                max_staleness: Some(STALENESS_BOUND),
                endpoint: Some(cluster.addr(follower)),
                ..Default::default()
            },
        )
        .await;
    narrator.expect(
        matches!(bounded, Err(ClientError::TooStale(_))),
        &match &bounded {
            Err(error) => {
                format!(
                    "a stale read bounded to {} ms on node {follower} is refused: {error}",
                    STALENESS_BOUND.as_millis()
                )
            }
            Ok(result) => format!(
                "a stale read bounded to {} ms on node {follower} ANSWERED: {}",
                STALENESS_BOUND.as_millis(),
                show_value(result)
            ),
        },
    )?;

    narrator.step("Heal the partition")?;
    cluster.mesh().heal();
    let stepped_down = cluster
        .wait_status(old_leader, ELECTION_WAIT, "step down", |status| {
            status.role != Role::Leader as i32 && status.term >= new_term
        })
        .await;
    narrator.expect(
        stepped_down.is_ok(),
        &match &stepped_down {
            Ok(status) => format!(
                "node {old_leader} stepped down: {} in term {}, following node {}",
                role_name(status.role),
                status.term,
                status.leader_id
            ),
            Err(error) => format!("node {old_leader} did not step down: {error}"),
        },
    )?;

    narrator.step("Nothing acknowledged was lost, and the unacknowledged write is gone")?;
    let (leader, _) = cluster
        .wait_for_leader(&ids, new_term, ELECTION_WAIT)
        .await?;
    let revision = everyone
        .put("demo/healed", "written after healing")
        .await
        .context("cannot write after healing")?;
    for &node in &ids {
        cluster
            .wait_status(node, ELECTION_WAIT, "catch up", |status| {
                status.revision >= revision
            })
            .await?;
    }
    narrator.say(&format!(
        "node {leader} leads; every node applied revision {revision}"
    ))?;
    for &node in &ids {
        let addr = cluster.addr(node);
        let client = pinned_client(&addr, FINAL_READ_TIMEOUT)?;
        let stale = read_options(Consistency::Stale, &addr);
        let before = client.get("demo/before", &stale).await.ok();
        let after = client.get("demo/after", &stale).await.ok();
        let minority_write = client.get("demo/minority", &stale).await.ok();
        let has = |result: &Option<GetResult>| result.as_ref().and_then(value_of).is_some();
        narrator.expect(
            has(&before) && has(&after) && minority_write.as_ref().is_some_and(|r| r.kv.is_none()),
            &format!(
                "node {node}: demo/before {}, demo/after {}, demo/minority {}",
                if has(&before) { "present" } else { "MISSING" },
                if has(&after) { "present" } else { "MISSING" },
                match &minority_write {
                    Some(result) if result.kv.is_none() =>
                        "absent (discarded with the old leader's log)",
                    Some(_) => "PRESENT",
                    None => "unreadable",
                }
            ),
        )?;
    }
    Ok(())
}
