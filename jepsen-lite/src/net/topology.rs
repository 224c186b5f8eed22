//! Which nodes can talk to which: the pure, I/O-free part of the partition network. A [`Connectivity`] is the
//! set of connected ordered pairs of nodes; the mesh turns it into link states (connected = `Pass`, otherwise
//! `Cut`). Partitions, isolation, the majorities ring and the bridge are all built here, and so is the parser for
//! group specs such as `1,2/3`, so every topology can be checked by unit tests without a socket.
//!
//! Every topology here is symmetric (i reaches j exactly when j reaches i); one-way faults are set per link.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::NetError;

/// The set of ordered pairs of distinct nodes that are connected. A node always reaches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connectivity {
    nodes: Vec<u64>,
    connected: BTreeSet<(u64, u64)>,
}

impl Connectivity {
    /// Every node reaches every other node.
    pub fn full(nodes: &[u64]) -> Connectivity {
        Connectivity::from_groups(nodes, &[nodes.to_vec()])
    }

    /// Nodes reach each other exactly when some group holds both. Groups may overlap (see [`Self::bridge`]).
    fn from_groups(nodes: &[u64], groups: &[Vec<u64>]) -> Connectivity {
        let mut connected = BTreeSet::new();
        for group in groups {
            for &from in group {
                for &to in group {
                    if from != to {
                        connected.insert((from, to));
                    }
                }
            }
        }
        Connectivity {
            nodes: sorted(nodes),
            connected,
        }
    }

    /// A partition into disjoint groups that together hold every node: links within a group pass, links
    /// between groups are cut both ways. Needs at least two groups.
    pub fn partition(nodes: &[u64], groups: &[Vec<u64>]) -> Result<Connectivity, NetError> {
        if groups.len() < 2 {
            return Err(NetError::TooFewGroups);
        }
        let known: BTreeSet<u64> = nodes.iter().copied().collect();
        let mut seen = BTreeSet::new();
        for group in groups {
            if group.is_empty() {
                return Err(NetError::EmptyGroup);
            }
            for &id in group {
                if !known.contains(&id) {
                    return Err(NetError::UnknownNode(id));
                }
                if !seen.insert(id) {
                    return Err(NetError::NodeInTwoGroups(id));
                }
            }
        }
        if let Some(&missing) = known.difference(&seen).next() {
            return Err(NetError::NodeInNoGroup(missing));
        }
        Ok(Connectivity::from_groups(nodes, groups))
    }

    /// `id` alone on one side, every other node together on the other.
    pub fn isolate(nodes: &[u64], id: u64) -> Result<Connectivity, NetError> {
        let rest: Vec<u64> = nodes.iter().copied().filter(|&n| n != id).collect();
        Connectivity::partition(nodes, &[vec![id], rest])
    }

    /// The majorities ring over `ring` (in that order): every node reaches a majority of the cluster, itself
    /// included, yet no two nodes see the same majority, so no node can lead with the blessing of a quorum that
    /// all its voters agree on. Node k is connected to the `r` nodes on each side of it around the ring, with
    /// `r = majority / 2` (integer division), so it sees `2r + 1 >= majority` nodes. For 5 nodes: each node and its
    /// two ring neighbours (`r = 1`); for 4: the square; for 6 and 7: two neighbours on each side.
    ///
    /// Needs at least 4 nodes: with 3 the only symmetric graph in which every node sees a majority (2 of 3) and the
    /// views differ does not exist (each node would need exactly one neighbour).
    pub fn ring(ring: &[u64]) -> Result<Connectivity, NetError> {
        let n = ring.len();
        if n < 4 {
            return Err(NetError::TooFewNodes {
                topology: "a majorities ring",
                needed: 4,
                nodes: n,
            });
        }
        let reach = majority(n) / 2;
        let mut connected = BTreeSet::new();
        for (k, &from) in ring.iter().enumerate() {
            for step in 1..=reach {
                let right = ring[(k + step) % n];
                let left = ring[(k + n - step) % n];
                connected.insert((from, right));
                connected.insert((from, left));
            }
        }
        Ok(Connectivity {
            nodes: sorted(ring),
            connected,
        })
    }

    /// Two halves that cannot reach each other, both fully connected to one bridge node. Over `order`, the
    /// bridge is `order[n / 2]`; the first half is the nodes before it, the second half those after it
    /// (5 nodes `1..=5`: `{1,2}` and `{4,5}` bridged by 3; 3 nodes: `{1}` and `{3}` bridged by 2). Needs at least
    /// 3 nodes.
    pub fn bridge(order: &[u64]) -> Result<Connectivity, NetError> {
        let n = order.len();
        if n < 3 {
            return Err(NetError::TooFewNodes {
                topology: "a bridge",
                needed: 3,
                nodes: n,
            });
        }
        let bridge = n / 2;
        let left = order[..=bridge].to_vec();
        let right = order[bridge..].to_vec();
        Ok(Connectivity::from_groups(order, &[left, right]))
    }

    /// The nodes, in ascending order.
    pub fn nodes(&self) -> &[u64] {
        &self.nodes
    }

    /// Whether `from` reaches `to` (a node always reaches itself).
    pub fn is_connected(&self, from: u64, to: u64) -> bool {
        from == to || self.connected.contains(&(from, to))
    }

    /// The matrix as text, one row per `from` node: `+` connected, `x` cut, `.` the node itself. For a
    /// partition `1,2/3`: `"1: . + x\n2: + . x\n3: x x .\n"`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for &from in &self.nodes {
            let _ = write!(text, "{from}:");
            for &to in &self.nodes {
                let cell = if from == to {
                    '.'
                } else if self.is_connected(from, to) {
                    '+'
                } else {
                    'x'
                };
                let _ = write!(text, " {cell}");
            }
            text.push('\n');
        }
        text
    }
}

/// The smallest number of nodes that is more than half of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Parses a group spec: groups separated by `/`, node ids in a group separated by `,` (`1,2/3,4,5`). Needs at
/// least two groups; a node may appear only once. Whether the ids exist is checked against the mesh later.
pub fn parse_groups(spec: &str) -> Result<Vec<Vec<u64>>, NetError> {
    let invalid = |reason: String| NetError::InvalidGroupSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut groups = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, group_text) in spec.trim().split('/').enumerate() {
        let group_text = group_text.trim();
        if group_text.is_empty() {
            return Err(invalid(format!("group {} is empty", index + 1)));
        }
        let mut group = Vec::new();
        for id_text in group_text.split(',') {
            let id_text = id_text.trim();
            let id: u64 = id_text
                .parse()
                .map_err(|_| invalid(format!("{id_text:?} is not a node id")))?;
            if !seen.insert(id) {
                return Err(invalid(format!("node {id} is listed twice")));
            }
            group.push(id);
        }
        groups.push(group);
    }
    if groups.len() < 2 {
        return Err(invalid(
            "a partition needs at least two groups separated by '/'".to_string(),
        ));
    }
    Ok(groups)
}

fn sorted(nodes: &[u64]) -> Vec<u64> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &[u64] = &[1, 2, 3];
    const FIVE: &[u64] = &[1, 2, 3, 4, 5];

    /// Checks a topology against the expected matrix (rows of `render`, leading spaces trimmed).
    fn check(actual: Result<Connectivity, NetError>, expected: &str) {
        let actual = actual.expect("topology").render();
        let expected: String = expected
            .trim()
            .lines()
            .map(|line| format!("{}\n", line.trim()))
            .collect();
        assert_eq!(actual, expected, "\nactual:\n{actual}expected:\n{expected}");
    }

    #[test]
    fn full_connects_every_pair() {
        check(
            Ok(Connectivity::full(THREE)),
            "
            1: . + +
            2: + . +
            3: + + .",
        );
    }

    #[test]
    fn partition_cuts_between_groups_and_passes_within() {
        check(
            Connectivity::partition(THREE, &[vec![1, 2], vec![3]]),
            "
            1: . + x
            2: + . x
            3: x x .",
        );
        check(
            Connectivity::partition(FIVE, &[vec![1, 2], vec![3, 4, 5]]),
            "
            1: . + x x x
            2: + . x x x
            3: x x . + +
            4: x x + . +
            5: x x + + .",
        );
        check(
            Connectivity::partition(FIVE, &[vec![1], vec![3, 5], vec![2, 4]]),
            "
            1: . x x x x
            2: x . x + x
            3: x x . x +
            4: x + x . x
            5: x x + x .",
        );
    }

    #[test]
    fn isolate_cuts_one_node_from_all_others() {
        check(
            Connectivity::isolate(THREE, 2),
            "
            1: . x +
            2: x . x
            3: + x .",
        );
        check(
            Connectivity::isolate(FIVE, 5),
            "
            1: . + + + x
            2: + . + + x
            3: + + . + x
            4: + + + . x
            5: x x x x .",
        );
    }

    #[test]
    fn ring_of_five_connects_each_node_to_its_two_neighbours() {
        check(
            Connectivity::ring(FIVE),
            "
            1: . + x x +
            2: + . + x x
            3: x + . + x
            4: x x + . +
            5: + x x + .",
        );
    }

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        for n in 4..=9u64 {
            let nodes: Vec<u64> = (1..=n).collect();
            let ring = Connectivity::ring(&nodes).unwrap();
            let mut views = BTreeSet::new();
            for &from in &nodes {
                let view: Vec<u64> = nodes
                    .iter()
                    .copied()
                    .filter(|&to| ring.is_connected(from, to))
                    .collect();
                assert!(view.len() >= majority(nodes.len()), "n={n} node {from}");
                assert!(views.insert(view), "n={n}: node {from} shares a view");
                for &to in &nodes {
                    assert_eq!(ring.is_connected(from, to), ring.is_connected(to, from));
                }
            }
        }
    }

    #[test]
    fn ring_needs_four_nodes() {
        assert!(matches!(
            Connectivity::ring(THREE),
            Err(NetError::TooFewNodes { needed: 4, .. })
        ));
    }

    #[test]
    fn bridge_connects_both_halves_only_through_the_bridge_node() {
        check(
            Connectivity::bridge(THREE),
            "
            1: . + x
            2: + . +
            3: x + .",
        );
        check(
            Connectivity::bridge(FIVE),
            "
            1: . + + x x
            2: + . + x x
            3: + + . + +
            4: x x + . +
            5: x x + + .",
        );
        assert!(Connectivity::bridge(&[1, 2]).is_err());
    }

    #[test]
    fn partition_rejects_groups_that_do_not_cover_the_nodes_once() {
        let partition = |groups: &[Vec<u64>]| Connectivity::partition(THREE, groups).unwrap_err();
        assert!(matches!(
            partition(&[vec![1, 2], vec![4]]),
            NetError::UnknownNode(4)
        ));
        assert!(matches!(
            partition(&[vec![1, 2], vec![2, 3]]),
            NetError::NodeInTwoGroups(2)
        ));
        assert!(matches!(
            partition(&[vec![1], vec![2]]),
            NetError::NodeInNoGroup(3)
        ));
        assert!(matches!(
            partition(&[vec![1, 2, 3]]),
            NetError::TooFewGroups
        ));
        assert!(matches!(
            partition(&[vec![1, 2, 3], vec![]]),
            NetError::EmptyGroup
        ));
    }

    #[test]
    fn group_specs_parse_into_groups() {
        assert_eq!(parse_groups("1,2/3").unwrap(), vec![vec![1, 2], vec![3]]);
        assert_eq!(
            parse_groups(" 1, 2 / 3,4,5 ").unwrap(),
            vec![vec![1, 2], vec![3, 4, 5]]
        );
        assert_eq!(
            parse_groups("1/2/3").unwrap(),
            vec![vec![1], vec![2], vec![3]]
        );
    }

    #[test]
    fn bad_group_specs_say_what_is_wrong() {
        for (spec, reason) in [
            ("", "group 1 is empty"),
            ("1,2,3", "at least two groups"),
            ("1,2//3", "group 2 is empty"),
            ("1,a/3", "\"a\" is not a node id"),
            ("1,/3", "\"\" is not a node id"),
            ("1,2/2", "node 2 is listed twice"),
            ("1,-2/3", "\"-2\" is not a node id"),
        ] {
            let error = parse_groups(spec).unwrap_err().to_string();
            assert!(error.contains(reason), "{spec:?}: {error}");
            assert!(error.contains(spec), "{spec:?}: {error}");
        }
    }
}
