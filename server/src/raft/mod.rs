//! What makes the nodes one replicated log, around openraft 0.9.
//!
//! openraft runs the protocol (log replication, votes, commit, membership changes) and calls out for I/O: the
//! log store and state machine (`storage`) and the network. This module holds raftkv's side of that network
//! and the parts openraft 0.9 lacks:
//! - `types`: openraft's type configuration and short names for its types;
//! - `network`: the client side of the peer API (the only holder of peer channels: AppendEntries on
//!   long-lived streams, votes, snapshots, pre-votes, read-index calls), and the check-quorum silence of a
//!   leader that lost its quorum;
//! - `peer_service`: the server side of the peer API, which checks every envelope before decoding;
//! - `election`: when this node campaigns (openraft's own timer is off);
//! - `pre_vote`: the question a node asks before it campaigns, and the pure rule a voter answers by;
//! - `quorum`: how long ago a quorum vouched for this node as leader, and the silence of a leader without one;
//! - `transfer`: leadership transfer (etcd's `MoveLeader`), with the state it shares in `handover`.
//!
//! The order of duties openraft relies on is kept by `storage`: a vote or an appended entry is durable before
//! openraft is told so.

pub mod election;
pub mod handover;
pub mod network;
pub mod peer_service;
pub mod pre_vote;
pub mod quorum;
pub mod transfer;
pub mod types;
