//! `jepsen-lite demo clock`: a guided clock skew on three real nodes that shows why a `lease` read depends on
//! clocks and a `linearizable` read does not, and checks every claim it prints.
//!
//! The story: one node is restarted with its clock running at a quarter of real time (libfaketime, see
//! [`crate::clock`]) and handed the leadership, then cut off from the others. The majority waits its election
//! timeout by true clocks, elects a new leader and overwrites a key; the slow leader, counting its lease by its
//! own clock, still believes the lease holds and serves the old value to a `lease` read, while a
//! `linearizable` read on it (which asks a quorum) is refused. Then the same node runs again with a true clock
//! and the same cut: its lease runs out before the majority can elect, and the `lease` read is refused too.
//! There is no "now" shared by the nodes: a lease is a promise about clock rates, and the drift margin says
//! how wrong a clock may be.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use raftkv_client::names::role_name;
use raftkv_client::{Client, ClientConfig, Consistency, Role};

use super::{pinned_client, read_options, show_value, value_of, DemoConfig, Narrator};
use super::{ELECTION_WAIT, FINAL_READ_TIMEOUT, READ_TIMEOUT};
use crate::clock::{move_leader_to, restart_at_rate, CATCH_UP_TIMEOUT};
use crate::cluster::{Cluster, ClusterConfig};

/// Nodes in the clock demo's cluster.
pub const CLOCK_DEMO_NODES: u64 = 3;
/// The skewed node's clock rate: one of its seconds lasts four real ones.
pub const CLOCK_DEMO_RATE: f64 = 0.25;
/// The demo's timing: an election timeout long enough that a slowed node's `TimeoutNow` takeover (one
/// election timeout by its own clock) still fits the leader's transfer deadline, and a drift margin of a tenth.
pub const CLOCK_DEMO_TIMING: [&str; 8] = [
    "--heartbeat-interval-ms",
    "50",
    "--election-timeout-min-ms",
    "1000",
    "--election-timeout-max-ms",
    "2000",
    "--lease-drift-margin-ms",
    "100",
];
/// The lease the demo's timing gives a leader, by its own clock: the shortest election timeout less the margin.
pub const CLOCK_DEMO_LEASE: Duration = Duration::from_millis(900);
/// Pause between lease reads on a leader that has no lease yet.
pub const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The key the demo reads and overwrites.
const KEY: &str = "demo/clock";

/// Runs the clock demo, writing the narrative to `out`. Returns whether every expectation held.
pub async fn clock(config: DemoConfig, out: &mut dyn Write) -> anyhow::Result<bool> {
    let mut narrator = Narrator {
        out,
        step: 0,
        failures: Vec::new(),
    };
    crate::clock::libfaketime()?;
    narrator.step(&format!(
        "Start three raftkv nodes: election timeout 1,000-2,000 ms, lease {} ms (the shortest election timeout less a 100 ms drift margin)",
        CLOCK_DEMO_LEASE.as_millis()
    ))?;
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: CLOCK_DEMO_NODES,
        server_binary: config.server_binary,
        data_root: config.data_root,
        extra_args: CLOCK_DEMO_TIMING.iter().map(|s| s.to_string()).collect(),
        tls: false,
    })
    .await?;
    let result = story(&mut cluster, &mut narrator).await;
    narrator
        .conclude(
            cluster,
            result,
            "Every step went as expected: a lease read trusts the leader's clock, a linearizable read trusts only a quorum.",
            "Some steps did not go as expected:",
        )
        .await
}

async fn story(cluster: &mut Cluster, narrator: &mut Narrator<'_>) -> anyhow::Result<()> {
    let ids = cluster.ids();
    let (leader, term) = cluster
        .wait_for_leader(&ids, 0, ELECTION_WAIT)
        .await
        .context("the cluster elected no leader")?;
    narrator.say(&format!("node {leader} is the leader in term {term}"))?;
    let everyone = cluster.client()?;
    let revision = everyone
        .put(KEY, "before")
        .await
        .context("cannot write the first value")?;
    narrator.say(&format!(
        "wrote {KEY} = \"before\": acknowledged at revision {revision}"
    ))?;
    let skewed = *ids.iter().find(|&&id| id != leader).expect("three nodes");

    narrator.step(&format!(
        "Slow node {skewed}'s clock to x{CLOCK_DEMO_RATE} with libfaketime (no root: the node is restarted under it)"
    ))?;
    restart_at_rate(cluster, skewed, Some(CLOCK_DEMO_RATE)).await?;
    cluster
        .wait_status(skewed, CATCH_UP_TIMEOUT, "serve and catch up", |status| {
            status.revision >= revision
        })
        .await?;
    narrator.say(&format!(
        "node {skewed} serves again; every clock it reads, its timers included, runs at x{CLOCK_DEMO_RATE}: one of its seconds lasts {} real ones. The drift margin covers a leader clock down to x0.9",
        1.0 / CLOCK_DEMO_RATE
    ))?;

    let outcome = lease_round(cluster, narrator, skewed, "after", true).await?;
    narrator.step("Heal: the slow node hears of the new term and steps down")?;
    heal_and_wait_step_down(cluster, narrator, skewed, outcome.new_term).await?;

    narrator.step(&format!(
        "Set node {skewed}'s clock right (restart without libfaketime) and make the same cut"
    ))?;
    restart_at_rate(cluster, skewed, None).await?;
    cluster
        .wait_status(skewed, CATCH_UP_TIMEOUT, "serve and catch up", |status| {
            status.revision >= outcome.revision
        })
        .await?;
    narrator.say(&format!("node {skewed} serves again at the real rate"))?;
    let outcome = lease_round(cluster, narrator, skewed, "again", false).await?;
    narrator.step("Heal, and check that every node ends with the last acknowledged value")?;
    heal_and_wait_step_down(cluster, narrator, skewed, outcome.new_term).await?;
    for &node in &ids {
        cluster
            .wait_status(node, CATCH_UP_TIMEOUT, "catch up", |status| {
                status.revision >= outcome.revision
            })
            .await?;
        let addr = cluster.addr(node);
        let read = pinned_client(&addr, FINAL_READ_TIMEOUT)?
            .get(KEY, &read_options(Consistency::Stale, &addr))
            .await;
        let value = read.as_ref().ok().and_then(value_of);
        narrator.expect(
            value.as_deref() == Some("again"),
            &format!("node {node}: {KEY} = {value:?}"),
        )?;
    }
    narrator.say("there is no \"now\" that the nodes share: a lease read is as good as the clocks under it, a linearizable read asks a quorum every time")?;
    Ok(())
}

/// What one round of "lead, cut off, overwrite" ended with.
struct RoundOutcome {
    /// The term of the majority's new leader.
    new_term: u64,
    /// The revision of the majority's overwrite.
    revision: u64,
}

/// Moves the leadership to `node`, cuts it off, lets the majority elect and overwrite `KEY` with `value`, then
/// reads `KEY` on `node` in `lease` and `linearizable` consistency. With `expect_stale`, the lease read must
/// answer with the value the majority overwrote; otherwise it must be refused.
async fn lease_round(
    cluster: &mut Cluster,
    narrator: &mut Narrator<'_>,
    node: u64,
    value: &str,
    expect_stale: bool,
) -> anyhow::Result<RoundOutcome> {
    narrator.step(&format!("Hand node {node} the leadership"))?;
    let term = move_leader_to(cluster, node).await?;
    let addr = cluster.addr(node);
    // A new leader holds a lease once a quorum has acknowledged it in its term: a moment after it leads.
    let reader = pinned_client(&addr, READ_TIMEOUT)?;
    let first_lease = Instant::now();
    let before = loop {
        let read = reader
            .get(KEY, &read_options(Consistency::Lease, &addr))
            .await;
        if read.is_ok() || first_lease.elapsed() >= ELECTION_WAIT {
            break read;
        }
        tokio::time::sleep(LEASE_RETRY_PAUSE).await;
    };
    let old_value = before.as_ref().ok().and_then(value_of);
    narrator.expect(
        before.is_ok(),
        &match &before {
            Ok(result) => format!(
                "node {node} leads in term {term}; lease read: {}",
                show_value(result)
            ),
            Err(error) => {
                format!("node {node} leads in term {term}, but a lease read failed: {error}")
            }
        },
    )?;

    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != node).collect();
    narrator.step(&format!(
        "Cut node {node} off from nodes {others:?}; the majority elects a leader and overwrites {KEY}"
    ))?;
    cluster.mesh().isolate(node)?;
    let cut = Instant::now();
    let (new_leader, new_term) = cluster
        .wait_for_leader(&others, term + 1, ELECTION_WAIT)
        .await
        .context("the majority elected no new leader")?;
    let majority = Client::new(ClientConfig::new(
        others.iter().map(|&id| cluster.addr(id)).collect(),
    ))?;
    let revision = majority
        .put(KEY, value)
        .await
        .context("the majority could not write")?;
    narrator.say(&format!(
        "{} ms after the cut: node {new_leader} leads in term {new_term}; {KEY} = {value:?} acknowledged at revision {revision}",
        cut.elapsed().as_millis()
    ))?;

    let lease_read = pinned_client(&addr, READ_TIMEOUT)?
        .get(KEY, &read_options(Consistency::Lease, &addr))
        .await;
    let since = cut.elapsed().as_millis();
    if expect_stale {
        narrator.step(&format!(
            "Node {node}'s slow clock says its lease still holds"
        ))?;
        let stale = matches!(&lease_read, Ok(result) if value_of(result) == old_value && result.envelope.revision < revision);
        narrator.expect(
            stale,
            &match &lease_read {
                Ok(result) => format!(
                    "lease read on node {node}, {since} ms after the cut: {}; the majority overwrote it at revision {revision}: a STALE read, which the {} ms lease allowed only because node {node}'s clock ran slow",
                    show_value(result),
                    CLOCK_DEMO_LEASE.as_millis()
                ),
                Err(error) => format!(
                    "lease read on node {node}, {since} ms after the cut, was refused ({error}): the slow clock's lease had run out before the read"
                ),
            },
        )?;
    } else {
        narrator.step(&format!(
            "With a true clock, node {node}'s lease ran out first"
        ))?;
        narrator.expect(
            lease_read.is_err(),
            &match &lease_read {
                Err(error) => format!(
                    "lease read on node {node}, {since} ms after the cut, refused: {error} (its {} ms lease ended before the majority's election timeout of at least 1,000 ms)",
                    CLOCK_DEMO_LEASE.as_millis()
                ),
                Ok(result) => format!(
                    "lease read on node {node}, {since} ms after the cut, ANSWERED: {}",
                    show_value(result)
                ),
            },
        )?;
    }
    let linearizable = pinned_client(&addr, READ_TIMEOUT)?
        .get(KEY, &read_options(Consistency::Linearizable, &addr))
        .await;
    narrator.expect(
        linearizable.is_err(),
        &match &linearizable {
            Err(error) => format!(
                "linearizable read on node {node} refused: {error} (it asks a quorum, which node {node} cannot reach)"
            ),
            Ok(result) => format!(
                "linearizable read on node {node} ANSWERED: {}",
                show_value(result)
            ),
        },
    )?;
    Ok(RoundOutcome { new_term, revision })
}

/// Heals the mesh and waits until `node` no longer leads, in `term` or later.
async fn heal_and_wait_step_down(
    cluster: &mut Cluster,
    narrator: &mut Narrator<'_>,
    node: u64,
    term: u64,
) -> anyhow::Result<()> {
    cluster.mesh().heal();
    let stepped_down = cluster
        .wait_status(node, ELECTION_WAIT, "step down", |status| {
            status.role != Role::Leader as i32 && status.term >= term
        })
        .await;
    narrator.expect(
        stepped_down.is_ok(),
        &match &stepped_down {
            Ok(status) => format!(
                "node {node} is {} in term {}, following node {}",
                role_name(status.role),
                status.term,
                status.leader_id
            ),
            Err(error) => format!("node {node} did not step down: {error}"),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_lease_is_the_shortest_election_timeout_less_the_margin() {
        let flag = |name: &str| -> u64 {
            let at = CLOCK_DEMO_TIMING.iter().position(|f| *f == name).unwrap();
            CLOCK_DEMO_TIMING[at + 1].parse().unwrap()
        };
        let lease = flag("--election-timeout-min-ms") - flag("--lease-drift-margin-ms");
        assert_eq!(Duration::from_millis(lease), CLOCK_DEMO_LEASE);
        // The skewed lease outlasts the longest election timeout by true clocks; a true one does not reach the
        // shortest: the two rounds of the demo depend on both.
        let skewed = CLOCK_DEMO_LEASE.div_f64(CLOCK_DEMO_RATE);
        assert!(skewed > Duration::from_millis(flag("--election-timeout-max-ms")));
        assert!(CLOCK_DEMO_LEASE < Duration::from_millis(flag("--election-timeout-min-ms")));
    }
}
