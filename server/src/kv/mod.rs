//! The key-value side of a node: the state machine every node applies committed entries to (pure: no I/O,
//! clock or randomness, so every node computes the same state and responses), and the leader's write
//! batcher, which packs concurrent client writes into one log entry.

pub mod state_machine;
pub mod write_batch;
