//! The mesh: one [`Link`] per directed pair of nodes, the route map that tells each node which proxy to dial for
//! each peer (`--peer-route`), and the operations that set link states one by one or a whole topology at once.
//! The mesh owns every link and front task and stops them in [`Mesh::shutdown`].
//!
//! Attribution: how the mesh knows which node opened a connection, hence which link's state governs it. By
//! [`Attribution::Port`], each link has its own proxy and node i dials link i->j's port for peer j. By
//! [`Attribution::Header`], for systems whose members each advertise one peer address that every other member
//! dials (etcd), each node j has one proxy in front of it (its front) that every peer dials, and a connection
//! belongs to link i->j once one of its HTTP requests names its sender, a member id that
//! [`Mesh::set_member`] registered as node i.
//!
//! Port layout. With [`PortLayout::Base`], link i->j listens on [`link_port`]`(base, i, j) = base + 10*i + j`,
//! so node ids must be 1..=9 (`--base-port 7100`: link 1->2 on 7112, link 3->1 on 7131; the whole mesh fits in
//! base+12..=base+98); node j's front listens on [`front_port`]`(base, j) = base + j`. With
//! [`PortLayout::OsAssigned`] every link and front binds port 0, which tests use. They always listen on
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::link::{bind_listener, Front, FrontRoutes, Link, LinkState};
use super::sniff::MemberId;
use super::topology::Connectivity;
use super::NetError;

/// The address every link proxy listens on.
pub const LISTEN_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The largest node id the deterministic port layout supports (`base + 10*from + to` stays unique below 10).
pub const BASE_LAYOUT_NODE_ID_MAX: u64 = 9;

/// How the mesh tells which node opened a proxied connection (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attribution {
    /// One proxy per directed link: the port a node dialled says who it is.
    #[default]
    Port,
    /// One proxy per node: the `X-Server-From` header of the connection's requests says who dialled
    /// (plaintext HTTP/1.1, as etcd's peers speak without TLS).
    Header,
}

/// How each link's listening port is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortLayout {
    /// Every link binds port 0 and the OS picks a free port.
    OsAssigned,
    /// Link i->j listens on `link_port(base, i, j)`; node ids must be 1..=9.
    Base(u16),
}

/// The port of link `from`->`to` in the deterministic layout: `base + 10*from + to`, for ids 1..=9.
pub fn link_port(base: u16, from: u64, to: u64) -> Result<u16, NetError> {
    for id in [from, to] {
        if !(1..=BASE_LAYOUT_NODE_ID_MAX).contains(&id) {
            return Err(NetError::NodeIdOutsideLayout(id));
        }
    }
    let offset = (10 * from + to) as u16;
    base.checked_add(offset)
        .ok_or(NetError::BasePortTooHigh(base))
}

/// The port of node `node`'s front in the deterministic layout: `base + node`, for ids 1..=9.
pub fn front_port(base: u16, node: u64) -> Result<u16, NetError> {
    if !(1..=BASE_LAYOUT_NODE_ID_MAX).contains(&node) {
        return Err(NetError::NodeIdOutsideLayout(node));
    }
    base.checked_add(node as u16)
        .ok_or(NetError::BasePortTooHigh(base))
}

/// Parses a node map such as `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_nodes(spec: &str) -> Result<BTreeMap<u64, SocketAddr>, NetError> {
    let invalid = |reason: String| NetError::InvalidNodes {
        spec: spec.to_string(),
        reason,
    };
    let mut nodes = BTreeMap::new();
    for entry in spec.split(',').map(str::trim) {
        let (id, address) = entry
            .split_once('=')
            .ok_or_else(|| invalid(format!("{entry:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid(format!("{id:?} is not a node id")))?;
        let address: SocketAddr = address
            .trim()
            .parse()
            .map_err(|_| invalid(format!("{address:?} is not an IP:PORT address")))?;
        if nodes.insert(id, address).is_some() {
            return Err(invalid(format!("node {id} is listed twice")));
        }
    }
    Ok(nodes)
}

/// One link as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub from: u64,
    pub to: u64,
    /// Where the proxy listens: node `from` dials this to reach node `to`.
    pub listen: SocketAddr,
    /// Node `to`'s real address.
    pub target: SocketAddr,
    pub state: LinkState,
    /// Connections the proxy currently holds open.
    pub connections: usize,
}

/// How one node reaches its peers: pass each entry as `--peer-route PEER=VIA`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoutes {
    pub id: u64,
    /// The node's real address.
    pub address: SocketAddr,
    pub peer_routes: Vec<PeerRoute>,
}

/// Dial `via` to reach node `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRoute {
    pub peer: u64,
    pub via: SocketAddr,
}

impl NodeRoutes {
    /// The node's `--peer-route` arguments, ready for a command line.
    pub fn peer_route_args(&self) -> Vec<String> {
        self.peer_routes
            .iter()
            .flat_map(|route| {
                [
                    "--peer-route".to_string(),
                    format!("{}={}", route.peer, route.via),
                ]
            })
            .collect()
    }
}

/// A running proxy mesh between a fixed set of nodes.
#[derive(Debug)]
pub struct Mesh {
    nodes: BTreeMap<u64, SocketAddr>,
    attribution: Attribution,
    links: BTreeMap<(u64, u64), Link>,
    /// Node id -> its front (attribution by header only).
    fronts: BTreeMap<u64, Front>,
    /// Member id -> node id, as registered with [`Mesh::set_member`] (attribution by header only).
    members: watch::Sender<BTreeMap<MemberId, u64>>,
    /// One task per link proxy or front (its accept loop and connections); each ends once its link or front
    /// is dropped.
    tasks: JoinSet<()>,
}

impl Mesh {
    /// Binds one proxy per directed pair of distinct nodes and starts them all, every link passing.
    pub async fn start(
        nodes: BTreeMap<u64, SocketAddr>,
        layout: PortLayout,
    ) -> Result<Mesh, NetError> {
        Mesh::start_attributed(nodes, layout, Attribution::Port).await
    }

    /// Starts a mesh attributed as asked, every link passing: by port, one proxy per directed pair of distinct
    /// nodes; by header, one front per node.
    pub async fn start_attributed(
        nodes: BTreeMap<u64, SocketAddr>,
        layout: PortLayout,
        attribution: Attribution,
    ) -> Result<Mesh, NetError> {
        if nodes.len() < 2 {
            return Err(NetError::TooFewNodes {
                topology: "a mesh",
                needed: 2,
                nodes: nodes.len(),
            });
        }
        let (members, _) = watch::channel(BTreeMap::new());
        let mut mesh = Mesh {
            nodes,
            attribution,
            links: BTreeMap::new(),
            fronts: BTreeMap::new(),
            members,
            tasks: JoinSet::new(),
        };
        match attribution {
            Attribution::Port => mesh.start_link_proxies(layout).await?,
            Attribution::Header => mesh.start_fronts(layout).await?,
        }
        Ok(mesh)
    }

    async fn start_link_proxies(&mut self, layout: PortLayout) -> Result<(), NetError> {
        for &from in self.nodes.keys() {
            for (&to, &target) in &self.nodes {
                if from == to {
                    continue;
                }
                let port = match layout {
                    PortLayout::OsAssigned => 0,
                    PortLayout::Base(base) => link_port(base, from, to)?,
                };
                let (link, run) = Link::bind(SocketAddr::new(LISTEN_IP, port), target).await?;
                self.tasks.spawn(run);
                self.links.insert((from, to), link);
            }
        }
        Ok(())
    }

    async fn start_fronts(&mut self, layout: PortLayout) -> Result<(), NetError> {
        let mut listeners = BTreeMap::new();
        for &node in self.nodes.keys() {
            let port = match layout {
                PortLayout::OsAssigned => 0,
                PortLayout::Base(base) => front_port(base, node)?,
            };
            listeners.insert(node, bind_listener(SocketAddr::new(LISTEN_IP, port)).await?);
        }
        for &from in self.nodes.keys() {
            for (&to, &target) in &self.nodes {
                if from != to {
                    let front = listeners[&to].1;
                    self.links
                        .insert((from, to), Link::behind_front(front, target));
                }
            }
        }
        for (node, (listener, listen)) in listeners {
            let routes = FrontRoutes {
                node,
                target: self.nodes[&node],
                links: self
                    .links
                    .iter()
                    .filter(|((_, to), _)| *to == node)
                    .map(|(&(from, _), link)| (from, link.watch()))
                    .collect(),
                members: self.members.subscribe(),
            };
            let (front, run) = Front::start(listener, listen, routes);
            self.tasks.spawn(run);
            self.fronts.insert(node, front);
        }
        Ok(())
    }

    /// How the mesh tells who opened a connection.
    pub fn attribution(&self) -> Attribution {
        self.attribution
    }

    /// Node `node`'s front address, where every peer dials it (attribution by header only).
    pub fn front(&self, node: u64) -> Option<SocketAddr> {
        self.fronts.get(&node).map(|front| front.listen)
    }

    /// Registers `member` as node `node`: requests that name it as their sender travel link `node`->j. A node
    /// has one member id; registering another replaces it. Only for a mesh attributed by header.
    pub fn set_member(&self, node: u64, member: MemberId) -> Result<(), NetError> {
        if self.attribution != Attribution::Header {
            return Err(NetError::MembersNeedHeaderAttribution);
        }
        self.check_node(node)?;
        let holder = self.members.borrow().get(&member).copied();
        match holder {
            Some(other) if other != node => Err(NetError::MemberTaken {
                member: member.to_string(),
                node: other,
            }),
            _ => {
                self.members.send_modify(|members| {
                    members.retain(|_, registered| *registered != node);
                    members.insert(member, node);
                });
                Ok(())
            }
        }
    }

    /// The registered member ids and their nodes.
    pub fn members(&self) -> BTreeMap<MemberId, u64> {
        self.members.borrow().clone()
    }

    /// The nodes and their real addresses.
    pub fn nodes(&self) -> &BTreeMap<u64, SocketAddr> {
        &self.nodes
    }

    /// Node ids in ascending order: the order `ring` and `bridge` use.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// For node `from`, each peer and the proxy address to dial for it (`--peer-route to=addr`).
    pub fn route_for(&self, from: u64) -> Result<Vec<(u64, SocketAddr)>, NetError> {
        self.check_node(from)?;
        Ok(self
            .links
            .iter()
            .filter(|((link_from, _), _)| *link_from == from)
            .map(|(&(_, to), link)| (to, link.listen))
            .collect())
    }

    /// Every node's routes, in ascending id order.
    pub fn routes(&self) -> Vec<NodeRoutes> {
        self.nodes
            .iter()
            .map(|(&id, &address)| NodeRoutes {
                id,
                address,
                peer_routes: self
                    .route_for(id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(peer, via)| PeerRoute { peer, via })
                    .collect(),
            })
            .collect()
    }

    /// Sets one link's state; existing connections on it follow at once.
    pub fn set_link(&self, from: u64, to: u64, state: LinkState) -> Result<(), NetError> {
        self.check_node(from)?;
        self.check_node(to)?;
        let link = self
            .links
            .get(&(from, to))
            .ok_or(NetError::NoSuchLink { from, to })?;
        link.state.send_replace(state);
        Ok(())
    }

    /// Sets every link from a connectivity matrix: connected pairs pass, the others are cut. This replaces
    /// every link's state, including delays and one-way cuts.
    pub fn apply(&self, connectivity: &Connectivity) {
        for (&(from, to), link) in &self.links {
            let state = if connectivity.is_connected(from, to) {
                LinkState::Pass
            } else {
                LinkState::Cut
            };
            link.state.send_replace(state);
        }
    }

    /// Cuts every link between the groups (both ways) and lets every link within a group pass. The groups must
    /// be disjoint and hold every node.
    pub fn partition(&self, groups: &[Vec<u64>]) -> Result<(), NetError> {
        let connectivity = Connectivity::partition(&self.node_ids(), groups)?;
        self.apply(&connectivity);
        Ok(())
    }

    /// Cuts node `id` off from every other node; the rest stay connected.
    pub fn isolate(&self, id: u64) -> Result<(), NetError> {
        self.check_node(id)?;
        self.apply(&Connectivity::isolate(&self.node_ids(), id)?);
        Ok(())
    }

    /// Lets every link pass again.
    pub fn heal(&self) {
        self.set_all(LinkState::Pass);
    }

    /// The majorities ring over the ids in ascending order (see [`Connectivity::ring`]; needs 4 or more nodes).
    pub fn ring(&self) -> Result<(), NetError> {
        self.apply(&Connectivity::ring(&self.node_ids())?);
        Ok(())
    }

    /// Two halves joined only through a bridge node, over the ids in ascending order (see
    /// [`Connectivity::bridge`]; needs 3 or more nodes).
    pub fn bridge(&self) -> Result<(), NetError> {
        self.apply(&Connectivity::bridge(&self.node_ids())?);
        Ok(())
    }

    /// Stops bytes from `from` toward `to` on link `from`->`to`; replies on it and link `to`->`from` are untouched.
    pub fn one_way(&self, from: u64, to: u64) -> Result<(), NetError> {
        self.set_link(from, to, LinkState::OneWay)
    }

    /// Delays every link by `delay` in each direction.
    pub fn delay_all(&self, delay: Duration) {
        self.set_all(LinkState::Delay(delay));
    }

    /// Every link's state, ordered by (from, to).
    pub fn snapshot(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|(&(from, to), link)| LinkStatus {
                from,
                to,
                listen: link.listen,
                target: link.target,
                state: *link.state.borrow(),
                connections: link.connections.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops every link and front: listeners close, proxied connections close, and every task is awaited.
    pub async fn shutdown(self) {
        let Mesh {
            links,
            fronts,
            members,
            mut tasks,
            ..
        } = self;
        // Dropping the state senders is the stop signal every link, front and connection watches.
        drop(links);
        fronts.into_values().for_each(Front::stop);
        drop(members);
        while tasks.join_next().await.is_some() {}
    }

    fn set_all(&self, state: LinkState) {
        for link in self.links.values() {
            link.state.send_replace(state);
        }
    }

    fn check_node(&self, id: u64) -> Result<(), NetError> {
        if self.nodes.contains_key(&id) {
            Ok(())
        } else {
            Err(NetError::UnknownNode(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_layout_gives_each_link_its_own_port() {
        assert_eq!(link_port(7100, 1, 2).unwrap(), 7112);
        assert_eq!(link_port(7100, 3, 1).unwrap(), 7131);
        assert_eq!(link_port(7100, 9, 8).unwrap(), 7198);
        let mut ports = std::collections::BTreeSet::new();
        for from in 1..=9 {
            for to in 1..=9 {
                if from != to {
                    assert!(ports.insert(link_port(7100, from, to).unwrap()));
                }
            }
        }
        assert!(matches!(
            link_port(7100, 10, 1),
            Err(NetError::NodeIdOutsideLayout(10))
        ));
        assert!(matches!(
            link_port(7100, 0, 1),
            Err(NetError::NodeIdOutsideLayout(0))
        ));
        assert!(link_port(65500, 9, 8).is_err());
    }

    #[test]
    fn node_maps_parse_and_reject_bad_entries() {
        let nodes = parse_nodes("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(nodes[&1], "127.0.0.1:7001".parse().unwrap());
        assert_eq!(nodes.len(), 2);
        for (spec, reason) in [
            ("1=127.0.0.1:7001,1=127.0.0.1:7002", "listed twice"),
            ("1:127.0.0.1:7001", "is not ID=HOST:PORT"),
            ("x=127.0.0.1:7001", "is not a node id"),
            ("1=localhost", "is not an IP:PORT address"),
            ("", "is not ID=HOST:PORT"),
        ] {
            let error = parse_nodes(spec).unwrap_err().to_string();
            assert!(error.contains(reason), "{spec:?}: {error}");
        }
    }

    #[tokio::test]
    async fn topology_helpers_set_the_matching_link_states() {
        let nodes = (1..=5)
            .map(|id| (id, SocketAddr::new(LISTEN_IP, 1)))
            .collect();
        let mesh = Mesh::start(nodes, PortLayout::OsAssigned).await.unwrap();
        let states = |mesh: &Mesh| -> BTreeMap<(u64, u64), LinkState> {
            mesh.snapshot()
                .into_iter()
                .map(|link| ((link.from, link.to), link.state))
                .collect()
        };
        let expect = |connectivity: Connectivity| -> BTreeMap<(u64, u64), LinkState> {
            let mut expected = BTreeMap::new();
            for from in 1..=5 {
                for to in (1..=5).filter(|&to| to != from) {
                    let state = if connectivity.is_connected(from, to) {
                        LinkState::Pass
                    } else {
                        LinkState::Cut
                    };
                    expected.insert((from, to), state);
                }
            }
            expected
        };
        let ids = mesh.node_ids();
        assert_eq!(states(&mesh).len(), 20);

        mesh.partition(&[vec![1, 2], vec![3, 4, 5]]).unwrap();
        assert_eq!(
            states(&mesh),
            expect(Connectivity::partition(&ids, &[vec![1, 2], vec![3, 4, 5]]).unwrap())
        );
        mesh.ring().unwrap();
        assert_eq!(states(&mesh), expect(Connectivity::ring(&ids).unwrap()));
        mesh.bridge().unwrap();
        assert_eq!(states(&mesh), expect(Connectivity::bridge(&ids).unwrap()));
        mesh.isolate(4).unwrap();
        assert_eq!(
            states(&mesh),
            expect(Connectivity::isolate(&ids, 4).unwrap())
        );
        mesh.heal();
        assert_eq!(states(&mesh), expect(Connectivity::full(&ids)));

        mesh.one_way(2, 3).unwrap();
        let after = states(&mesh);
        assert_eq!(after[&(2, 3)], LinkState::OneWay);
        assert_eq!(after[&(3, 2)], LinkState::Pass);
        assert!(matches!(mesh.isolate(6), Err(NetError::UnknownNode(6))));
        assert!(matches!(
            mesh.set_link(1, 1, LinkState::Cut),
            Err(NetError::NoSuchLink { from: 1, to: 1 })
        ));

        let routes = mesh.route_for(1).unwrap();
        assert_eq!(
            routes.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        mesh.shutdown().await;
    }
}
