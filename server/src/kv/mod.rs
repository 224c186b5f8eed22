//! The key-value side of a node: the state machine's rules (pure: no I/O, clock or randomness, so every node
//! computes the same state, revisions and responses), their data types, the view and change set through which
//! they meet the storage, and the leader's write batcher, which packs concurrent client writes into one log entry.

pub mod changes;
pub mod record;
pub mod state_machine;
pub mod txn;
pub mod types;
pub mod write_batch;
