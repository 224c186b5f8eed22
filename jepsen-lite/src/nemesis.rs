//! The nemesis: which faults a run injects, when, and how each is applied to and lifted from a [`Cluster`].
//!
//! The schedule is pure: [`Schedule::generate`] turns a seed, the chosen faults, the interval and the time limit
//! into a list of fault windows (a fault for one interval, then one interval of calm, and so on), so the same
//! seed always gives the same schedule. What a fault hits (which half, which node) is drawn from the same seeded
//! generator when the fault starts; only "the leader" depends on the cluster at that moment. Applying a fault is
//! [`apply`], which returns an [`ActiveFault`] that knows how to [`ActiveFault::heal`] exactly what it did.
//!
//! Faults never touch the nodes' configuration: partitions and latency go through the proxy mesh, kills and
//! pauses through signals to the node processes, and a clock skew restarts a node under libfaketime
//! ([`crate::clock`]) with the same flags.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;

use crate::clock;
use crate::cluster::Cluster;
use crate::net::Connectivity;

/// Smallest and largest latency the `latency` fault adds to every link, each way.
pub const LATENCY_MIN: Duration = Duration::from_millis(20);
pub const LATENCY_MAX: Duration = Duration::from_millis(150);
/// How long `partition-leader` and `kill`/`pause` of the leader wait to learn who the leader is before picking a
/// random node instead.
pub const LEADER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Two groups, the smaller a minority, chosen at random.
    PartitionHalves,
    /// The current leader alone on one side.
    PartitionLeader,
    /// Every node sees a majority, but no two nodes see the same one (a path on 3 nodes).
    PartitionRing,
    /// Two halves that only a bridge node connects.
    Bridge,
    /// SIGKILL one node (the leader or a random one), restart it when the fault ends.
    Kill,
    /// SIGSTOP one node (the leader or a random one), SIGCONT it when the fault ends.
    Pause,
    /// Extra latency on every link.
    Latency,
    /// One node's clock runs at `--clock-rate` (restarted under libfaketime); it is handed the leadership and
    /// cut off from the others. Healing lets every link pass and restarts it on a true clock.
    Clock,
}

impl Fault {
    /// Every fault but `clock`, in the order `all` cycles through them. `clock` is left out of `all`: it needs
    /// libfaketime, and setting it up (a restart, a catch-up, a leadership transfer on a slow clock) takes
    /// seconds of its window.
    pub const ALL: [Fault; 7] = [
        Fault::PartitionHalves,
        Fault::PartitionLeader,
        Fault::PartitionRing,
        Fault::Bridge,
        Fault::Kill,
        Fault::Pause,
        Fault::Latency,
    ];

    /// The name used on the command line and in the history.
    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionRing => "partition-ring",
            Fault::Bridge => "bridge",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Latency => "latency",
            Fault::Clock => "clock",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Why a nemesis list could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error("unknown nemesis {0:?} (expected none, partition-halves, partition-leader, partition-ring, bridge, kill, pause, latency, clock or all)")]
    Unknown(String),
    #[error("`none` cannot be combined with other nemeses")]
    NoneWithOthers,
}

/// The faults a run draws from: empty for `none`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NemesisSet(pub Vec<Fault>);

impl FromStr for NemesisSet {
    type Err = NemesisError;

    /// Parses a comma-separated list such as `partition-halves,kill`, `all` or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut faults = Vec::new();
        let mut saw_none = false;
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "none" => saw_none = true,
                "all" => faults.extend(Fault::ALL),
                _ => faults.push(
                    *Fault::ALL
                        .iter()
                        .chain([&Fault::Clock])
                        .find(|fault| fault.name() == name)
                        .ok_or_else(|| NemesisError::Unknown(name.to_string()))?,
                ),
            }
        }
        if saw_none && !faults.is_empty() {
            return Err(NemesisError::NoneWithOthers);
        }
        faults.sort();
        faults.dedup();
        Ok(NemesisSet(faults))
    }
}

impl fmt::Display for NemesisSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return formatter.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|fault| fault.name()).collect();
        formatter.write_str(&names.join(","))
    }
}

/// One planned fault: from `start` to `end`, measured from the start of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub fault: Fault,
    pub start: Duration,
    pub end: Duration,
}

/// The fault windows of a run, in time order, none overlapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<Window>,
}

impl Schedule {
    /// Plans faults over `time_limit`: calm for one `interval` first (so the workload has a baseline), then
    /// alternately a fault for one `interval` and calm for one `interval`, ending calm (so recovery after every
    /// fault is seen by the workload). Each window's fault is drawn from `faults` with `rng`. A window whose calm
    /// would end after `time_limit` is not planned.
    pub fn generate(
        rng: &mut StdRng,
        faults: &NemesisSet,
        interval: Duration,
        time_limit: Duration,
    ) -> Schedule {
        let mut windows = Vec::new();
        if faults.0.is_empty() || interval.is_zero() {
            return Schedule { windows };
        }
        let mut start = interval;
        while start + interval * 2 <= time_limit {
            let fault = faults.0[rng.random_range(0..faults.0.len())];
            windows.push(Window {
                fault,
                start,
                end: start + interval,
            });
            start += interval * 2;
        }
        Schedule { windows }
    }
}

/// What a started fault did, so that healing undoes exactly that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActiveFault {
    /// Links were cut; healing lets every link pass.
    Network { description: String },
    /// A node was killed; healing restarts it.
    Killed { node: u64 },
    /// A node was paused; healing resumes it.
    Paused { node: u64 },
    /// A node runs on a skewed clock (and may be cut off); healing lets every link pass and sets its clock
    /// right.
    Skewed { node: u64, description: String },
}

impl ActiveFault {
    /// A one-line description for the history and the console.
    pub fn description(&self) -> String {
        match self {
            ActiveFault::Network { description } => description.clone(),
            ActiveFault::Killed { node } => format!("killed node {node}"),
            ActiveFault::Paused { node } => format!("paused node {node}"),
            ActiveFault::Skewed { description, .. } => description.clone(),
        }
    }

    /// Lifts the fault.
    pub async fn heal(&self, cluster: &mut Cluster) -> anyhow::Result<()> {
        match self {
            ActiveFault::Network { .. } => {
                cluster.mesh().heal();
                Ok(())
            }
            ActiveFault::Killed { node } => cluster
                .restart(*node)
                .with_context(|| format!("cannot restart node {node}")),
            ActiveFault::Paused { node } => cluster
                .resume(*node)
                .with_context(|| format!("cannot resume node {node}")),
            ActiveFault::Skewed { node, .. } => {
                cluster.mesh().heal();
                clock::restart_at_rate(cluster, *node, None).await
            }
        }
    }
}

/// Formats groups as `1,2 | 3,4,5`.
fn describe_groups(groups: &[Vec<u64>]) -> String {
    groups
        .iter()
        .map(|group| {
            group
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The current leader, if one answers within `LEADER_LOOKUP_TIMEOUT`.
async fn current_leader(cluster: &Cluster) -> Option<u64> {
    let up: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| cluster.is_up(*id))
        .collect();
    cluster
        .wait_for_leader(&up, 0, LEADER_LOOKUP_TIMEOUT)
        .await
        .ok()
        .map(|(leader, _)| leader)
}

/// The leader or, with even odds (or when there is none), a random node.
async fn leader_or_random(cluster: &Cluster, rng: &mut StdRng) -> u64 {
    let ids = cluster.ids();
    let random = ids[rng.random_range(0..ids.len())];
    if rng.random_bool(0.5) {
        current_leader(cluster).await.unwrap_or(random)
    } else {
        random
    }
}

/// How faults with a setting are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultSettings {
    /// The rate of a skewed clock (`clock`).
    pub clock_rate: f64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            clock_rate: clock::CLOCK_RATE_DEFAULT,
        }
    }
}

/// Starts `fault` on `cluster`, drawing its targets from `rng`.
pub async fn apply(
    fault: Fault,
    cluster: &mut Cluster,
    rng: &mut StdRng,
    settings: &FaultSettings,
) -> anyhow::Result<ActiveFault> {
    let mut ids = cluster.ids();
    let n = ids.len();
    match fault {
        Fault::PartitionHalves => {
            ids.shuffle(rng);
            let minority = (n - 1) / 2;
            let minority = minority.max(1).min(n - 1);
            let mut groups = vec![ids[..minority].to_vec(), ids[minority..].to_vec()];
            for group in &mut groups {
                group.sort_unstable();
            }
            cluster.mesh().partition(&groups)?;
            Ok(ActiveFault::Network {
                description: describe_groups(&groups),
            })
        }
        Fault::PartitionLeader => {
            let leader = match current_leader(cluster).await {
                Some(leader) => leader,
                None => ids[rng.random_range(0..n)],
            };
            cluster.mesh().isolate(leader)?;
            Ok(ActiveFault::Network {
                description: format!("isolated node {leader}"),
            })
        }
        Fault::PartitionRing => {
            ids.shuffle(rng);
            let connectivity = if n >= 4 {
                Connectivity::ring(&ids)?
            } else {
                // On three nodes the majorities ring is a path: the middle node sees both ends, each end sees
                // only the middle (still a majority of 2).
                Connectivity::bridge(&ids)?
            };
            cluster.mesh().apply(&connectivity);
            Ok(ActiveFault::Network {
                description: format!(
                    "majorities ring over {}",
                    ids.iter().map(u64::to_string).collect::<Vec<_>>().join("-")
                ),
            })
        }
        Fault::Bridge => {
            ids.shuffle(rng);
            cluster.mesh().apply(&Connectivity::bridge(&ids)?);
            let bridge = n / 2;
            let mut left = ids[..bridge].to_vec();
            let mut right = ids[bridge + 1..].to_vec();
            left.sort_unstable();
            right.sort_unstable();
            Ok(ActiveFault::Network {
                description: format!(
                    "{} | bridge {} | {}",
                    describe_groups(&[left]),
                    ids[bridge],
                    describe_groups(&[right])
                ),
            })
        }
        Fault::Kill => {
            let node = leader_or_random(cluster, rng).await;
            cluster.kill(node)?;
            Ok(ActiveFault::Killed { node })
        }
        Fault::Pause => {
            let node = leader_or_random(cluster, rng).await;
            cluster.pause(node)?;
            Ok(ActiveFault::Paused { node })
        }
        Fault::Latency => {
            let millis = rng.random_range(LATENCY_MIN.as_millis()..=LATENCY_MAX.as_millis()) as u64;
            cluster.mesh().delay_all(Duration::from_millis(millis));
            Ok(ActiveFault::Network {
                description: format!("{millis}ms added to every link, each way"),
            })
        }
        Fault::Clock => {
            let node = ids[rng.random_range(0..n)];
            skew_lead_and_isolate(cluster, node, settings.clock_rate).await
        }
    }
}

/// The `clock` fault on `node`: restarted at `rate`, caught up, handed the leadership, its lease renewed, cut
/// off. A node that
/// would not take the leadership is cut off all the same (and the description says so): the fault is the
/// skewed clock, the lead is what makes it matter.
async fn skew_lead_and_isolate(
    cluster: &mut Cluster,
    node: u64,
    rate: f64,
) -> anyhow::Result<ActiveFault> {
    let up: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != node && cluster.is_up(*id))
        .collect();
    let mut revision = 0;
    for id in up {
        if let Some(status) = cluster.status(id).await {
            revision = revision.max(status.revision);
        }
    }
    clock::restart_at_rate(cluster, node, Some(rate)).await?;
    let caught_up = cluster
        .wait_status(
            node,
            clock::CATCH_UP_TIMEOUT,
            "serve and catch up",
            |status| status.leader_id != 0 && status.revision >= revision,
        )
        .await;
    let lead = match caught_up {
        Ok(_) => clock::move_leader_to(cluster, node)
            .await
            .map(|term| format!("leading in term {term}")),
        Err(error) => Err(anyhow::anyhow!(error)),
    };
    if lead.is_ok() {
        // A quorum read renews the leader's lease: the cut then comes when the lease is at its longest, the
        // case a clock-rate assumption has to cover.
        let _ = clock::renew_lease(cluster, node).await;
    }
    cluster.mesh().isolate(node)?;
    let lead = lead.unwrap_or_else(|error| format!("not leading ({error:#})"));
    Ok(ActiveFault::Skewed {
        node,
        description: format!("node {node}'s clock at x{rate}, {lead}, cut off from the others"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn nemesis_lists_parse_all_none_and_names() {
        // The CLI's --nemesis goes through FromStr: names, `all`, `none`, and errors for the rest.
        assert_eq!("none".parse::<NemesisSet>().unwrap(), NemesisSet(vec![]));
        assert_eq!(
            "all".parse::<NemesisSet>().unwrap().0.len(),
            Fault::ALL.len()
        );
        assert_eq!(
            "kill,partition-halves,kill".parse::<NemesisSet>().unwrap(),
            NemesisSet(vec![Fault::PartitionHalves, Fault::Kill])
        );
        assert!("partition".parse::<NemesisSet>().is_err());
        // `clock` is named on its own; `all` leaves it out (it needs libfaketime and seconds of setup).
        assert_eq!(
            "clock".parse::<NemesisSet>().unwrap(),
            NemesisSet(vec![Fault::Clock])
        );
        assert!(!"all"
            .parse::<NemesisSet>()
            .unwrap()
            .0
            .contains(&Fault::Clock));
        assert!("none,kill".parse::<NemesisSet>().is_err());
        assert_eq!(
            "kill,pause".parse::<NemesisSet>().unwrap().to_string(),
            "kill,pause"
        );
    }

    #[test]
    fn schedule_is_reproducible_from_the_seed_and_alternates_fault_and_calm() {
        // Same seed, same windows; windows never overlap and each is one interval long after a calm interval.
        let faults: NemesisSet = "all".parse().unwrap();
        let interval = Duration::from_secs(2);
        let limit = Duration::from_secs(22);
        let first = Schedule::generate(&mut StdRng::seed_from_u64(7), &faults, interval, limit);
        let second = Schedule::generate(&mut StdRng::seed_from_u64(7), &faults, interval, limit);
        assert_eq!(first, second);
        assert_eq!(first.windows.len(), 5);
        for (k, window) in first.windows.iter().enumerate() {
            assert_eq!(window.start, interval * (2 * k as u32 + 1));
            assert_eq!(window.end, window.start + interval);
            assert!(window.end + interval <= limit);
        }
        let other = Schedule::generate(&mut StdRng::seed_from_u64(8), &faults, interval, limit);
        let faults_of = |s: &Schedule| s.windows.iter().map(|w| w.fault).collect::<Vec<_>>();
        // Not a proof of randomness, but two seeds giving the same 5 draws from 7 faults would be a bug.
        assert_ne!(faults_of(&first), faults_of(&other));
    }

    #[test]
    fn no_nemesis_means_no_windows() {
        let schedule = Schedule::generate(
            &mut StdRng::seed_from_u64(1),
            &NemesisSet::default(),
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        assert!(schedule.windows.is_empty());
    }
}
