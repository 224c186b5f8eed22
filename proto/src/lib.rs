//! Generated gRPC types and services of raftkv: `kv` (client and admin API), `peer` (Raft traffic between
//! nodes) and `etcd` (etcd's v3 API), and the `contract`: the metadata keys and error kinds both sides must spell alike. The only crate
//! both `server` and `client` share; it holds no logic.

pub mod contract;

/// The client-facing key-value and admin API (`raftkv.v1`).
pub mod kv {
    tonic::include_proto!("raftkv.v1");
}

/// The node-to-node API (`raftkv.peer.v1`).
pub mod peer {
    tonic::include_proto!("raftkv.peer.v1");
}

/// etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb`, `v3electionpb`), wire-compatible, which
/// every node also serves.
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

/// The encoded descriptor set of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftkv_descriptor.bin"));
