//! The integration tests of raftkv-server, one binary: storage (openraft's suite and restarts), the state
//! machine scripts under `testdata/`, and clusters of real nodes over gRPC on 127.0.0.1, in plaintext and over
//! (mutual) TLS.

mod client;
mod cluster;
mod harness;
mod ops;
mod state_machine;
mod storage;
mod tls;
