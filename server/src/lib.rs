//! raftkv node: a Raft (openraft) replica of a key-value state machine, served over gRPC (tonic), its log in
//! a write-ahead log of its own (`wal`) and its metadata in sled. `node` wires the parts together; see
//! ARCHITECTURE.md for the map and the invariants.

pub mod api;
pub mod config;
pub mod election;
pub mod health;
pub mod network;
pub mod node;
pub mod observer;
pub mod peer_service;
pub mod pre_vote;
pub mod raft_types;
pub mod read_index;
pub mod reads;
pub mod state_machine;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod write_batch;
