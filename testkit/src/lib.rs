//! raftkv-testkit: starting real raftkv clusters, once, for every suite that needs one.
//!
//! What it owns: finding the `raftkv-server` and `raftkv` binaries ([`binary`]), free ports on 127.0.0.1
//! ([`ports`]), the fast election timing tests run with ([`timing`]), bounded condition polls ([`wait`]),
//! throwaway TLS certificates ([`certs`]), and N `raftkv-server` processes started, signalled, restarted, asked
//! for their status and stopped by pid ([`cluster`]).
//!
//! Why a crate of its own: the server's integration tests, the client's CLI tests and jepsen-lite all start
//! real clusters. Each used to carry its own harness, and their free ports, waits, binary lookup, timing flags
//! and certificates had drifted apart. A library crate is the one place all three can reach: the server and
//! the client take it as a dev-dependency, and jepsen-lite as a normal dependency, because its `run`, `demo` and
//! `certs` subcommands start clusters and make certificates at run time, not only in tests.
//!
//! Why it looks the way it does:
//! - It depends on `raftkv-client` (status calls, `TlsConfig`) and never on the server: the server is a
//!   process it runs, found as a binary, which keeps the workspace rule that nothing depends on the server.
//!   It never depends on jepsen-lite either: the proxy mesh stays there, and plugs in through
//!   [`Cluster::plan`] and [`Cluster::route_peers`] (`--peer-route`), before the nodes start.
//! - [`Cluster`] returns errors, because jepsen-lite runs experiments with it and reports a failure in words;
//!   [`TestCluster`] wraps it for test suites, where a failure is a panic naming what went wrong and every
//!   wait is bounded by [`WAIT_MAX`].
//! - Processes are `std::process::Child`ren, tracked by pid and killed when the cluster is dropped, so a
//!   panicking test leaves nothing running. Signals go through `kill(1)`, as before, with no new crate.
//! - Every wait polls a condition every [`POLL_INTERVAL`] until a deadline, and its error (or panic) says what
//!   it waited for, for how long, and what it saw last.

pub mod binary;
pub mod certs;
pub mod cluster;
pub mod ports;
pub mod test_cluster;
pub mod timing;
pub mod wait;

pub use binary::{cli_binary, server_binary, Binary, CLI, SERVER};
pub use certs::{Authority, CertFiles, KeyPairFiles, Usage};
pub use cluster::{Cluster, ClusterSpec};
pub use ports::{free_addr, free_port};
pub use test_cluster::TestCluster;
pub use timing::{fast_timing, FAST_TIMING};
pub use wait::{poll_until, poll_until_blocking, wait_until, TimedOut, POLL_INTERVAL, WAIT_MAX};
