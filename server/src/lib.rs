//! raftkv node: a Raft (openraft 0.9) replica of a key-value state machine, served over gRPC (tonic), its
//! Raft log in a write-ahead log of its own and its metadata in sled.
//!
//! The folders are the subsystems, in the order a request meets them:
//! - `api`: the client and admin gRPC services, the one place a domain error (`error`) becomes a status;
//! - `reads`: the read-consistency ladder, read-index rounds, the leader lease, the read envelope;
//! - `kv`: the pure key-value state machine and the leader's write batcher;
//! - `lease`: when leases expire (the leader's `Lessor`); `watch`: following changes;
//! - `raft`: what makes the nodes one replicated log: openraft's types, the peer network (client and
//!   server side), elections and pre-vote;
//! - `storage`: the only code that names sled or touches the data dir: the WAL, the log store, the applied
//!   state and its snapshots;
//! - `ops`: what operators see: the observer of openraft's metrics, health, Prometheus metrics.
//!
//! `node` builds the parts, spawns every long-lived task and knows the shutdown order; `config` turns flags
//! into a validated `NodeConfig`; `tls` loads certificates and runs handshakes. ARCHITECTURE.md walks a put and
//! a linearizable read through these modules and states the invariants.

pub mod api;
pub mod config;
pub mod error;
pub mod etcd;
pub mod kv;
pub mod lease;
pub mod node;
pub mod ops;
pub mod raft;
pub mod reads;
pub mod storage;
pub mod tls;
pub mod watch;
