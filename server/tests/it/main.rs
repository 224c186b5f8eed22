//! The integration tests of raftkv-server, one binary: storage (openraft's suite and restarts), the state
//! machine scripts under `testdata/`, and clusters of real nodes over gRPC on 127.0.0.1, in plaintext and over
//! (mutual) TLS: behaviour, crash safety (every node SIGKILLed at once under load) and every limit at its edge.

mod client;
mod cluster;
mod crash;
mod etcd;
mod fuzz;
mod harness;
mod limits;
mod mvcc;
mod ops;
mod state_machine;
mod storage;
mod tls;
mod txn;
