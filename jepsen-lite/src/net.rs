//! The partition network: a userspace TCP proxy mesh with one proxy per directed link i->j, inserted between
//! raftkv nodes with `--peer-route`, so faults can be injected without the nodes knowing. Each link can pass,
//! be cut (bytes held, connections open), be reset (connections closed, new ones reset), be delayed, or be cut
//! one way. Whole topologies (partitions, isolation, majorities ring, bridge) are set at once, and a small
//! line protocol lets another process (`jepsen-lite net ...`) drive a long-lived mesh.
//!
//! For systems whose members each advertise one peer address that every other member dials (etcd), the mesh
//! can instead be attributed by header: one proxy in front of each node, and each connection bound to link
//! i->j by the sender its HTTP requests name (see [`Attribution`]).
//!
//! Code map: `link` is one proxy (a link's own, or a node's front) and the meaning of each [`LinkState`];
//! `sniff` reads HTTP/1.1 request heads and framing to tell who sent a request; `topology` is the pure
//! connectivity matrix and the group-spec parser; `mesh` owns the links and fronts, the port layout and the
//! route map; `control` is the control protocol, its server and its client. Invariant: only `link` touches
//! proxied bytes, and `sniff` and `topology` do no I/O.

mod control;
mod link;
mod mesh;
mod sniff;
mod topology;

use std::net::SocketAddr;

pub use control::{
    parse_link, request, serve_control, Command, ControlError, Response, RoutesFile,
    CONTROL_REQUEST_BYTES_MAX, CONTROL_RESPONSE_BYTES_MAX, CONTROL_TIMEOUT,
};
pub use link::{
    format_duration, parse_duration, Direction, LinkState, ACCEPT_ERROR_BACKOFF, CHUNK_BYTES_MAX,
    CONNECTIONS_PER_FRONT_MAX, CONNECTIONS_PER_LINK_MAX, CONNECT_TIMEOUT, EARLY_BYTES_MAX,
    FIRST_HEAD_TIMEOUT, QUEUE_SEGMENTS_MAX,
};
pub use mesh::{
    front_port, link_port, parse_nodes, Attribution, LinkStatus, Mesh, NodeRoutes, PeerRoute,
    PortLayout, BASE_LAYOUT_NODE_ID_MAX, LISTEN_IP,
};
pub use sniff::{
    parse_head, Body, MemberId, RequestHead, RequestScanner, SniffError, Step,
    CHUNK_LINE_BYTES_MAX, HEADER_LINES_MAX, HEAD_BYTES_MAX, METHOD_BYTES_MAX, SENDER_HEADER,
};
pub use topology::{majority, parse_groups, Connectivity};

/// Everything that can go wrong building or driving the mesh, or reading its input.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {address} (is the port free? try another --base-port)")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("node {0} is not in the mesh")]
    UnknownNode(u64),
    #[error("there is no link from node {from} to node {to}")]
    NoSuchLink { from: u64, to: u64 },
    #[error("{topology} needs at least {needed} nodes, the mesh has {nodes}")]
    TooFewNodes {
        topology: &'static str,
        needed: usize,
        nodes: usize,
    },
    #[error("a partition needs at least two groups")]
    TooFewGroups,
    #[error("a partition group is empty")]
    EmptyGroup,
    #[error("node {0} is in two partition groups; list each node once")]
    NodeInTwoGroups(u64),
    #[error("node {0} is in no partition group; list every node (e.g. 1,2/3,4,5)")]
    NodeInNoGroup(u64),
    #[error("invalid group spec {spec:?}: {reason} (expected e.g. 1,2/3)")]
    InvalidGroupSpec { spec: String, reason: String },
    #[error(
        "invalid node map {spec:?}: {reason} (expected e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002)"
    )]
    InvalidNodes { spec: String, reason: String },
    #[error("node id {0} does not fit the --base-port layout, which needs ids 1..=9; omit --base-port to let the OS pick ports")]
    NodeIdOutsideLayout(u64),
    #[error("base port {0} is too high: the mesh needs ports up to base + 98")]
    BasePortTooHigh(u16),
    #[error("invalid duration {0:?}: expected a whole number and a unit (us, ms, s), e.g. 50ms")]
    InvalidDuration(String),
    #[error("invalid link {0:?}: expected FROM-TO, e.g. 1-2")]
    InvalidLink(String),
    #[error("invalid link state {0:?}: expected pass, cut, reset, one-way or delay DURATION")]
    InvalidLinkState(String),
    #[error("invalid control command {line:?}: {reason}")]
    InvalidCommand { line: String, reason: String },
    #[error("member ids mean something only to a mesh attributed by header; start it with `net serve --attribute header`")]
    MembersNeedHeaderAttribution,
    #[error("member {member} is already registered as node {node}; a member is one node")]
    MemberTaken { member: String, node: u64 },
}
