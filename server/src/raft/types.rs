//! The openraft type configuration of raftkv, and short names for the openraft types the rest of the node
//! uses, so that no other module spells out generic parameters.

use crate::kv::state_machine::{Batch, BatchResponse};

openraft::declare_raft_types!(
    /// raftkv's Raft types: log entries carry a `state_machine::Batch` of
    /// client writes; nodes are `BasicNode { addr }`,
    /// where `addr` is the node's client-facing address (peers may be dialled elsewhere, see `--peer-route`).
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
