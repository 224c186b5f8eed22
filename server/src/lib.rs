//! raftkv node: a Raft (openraft) replica of a key-value state machine, served over gRPC (tonic) and stored
//! in sled. `node` wires the parts together; see ARCHITECTURE.md for the map and the invariants.

pub mod raft_types;
pub mod state_machine;
pub mod storage;
