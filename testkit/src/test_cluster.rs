//! [`TestCluster`]: a [`Cluster`] in a test's idiom. Every call that can fail panics with the kit's message
//! instead of returning it, and every wait is bounded by [`WAIT_MAX`]. Everything else (addresses, logs,
//! status, signals' bookkeeping) is the `Cluster`'s own, reached through `Deref`, so there is one
//! implementation of each operation and this file only decides how a failure is reported.

use std::ops::{Deref, DerefMut};
use std::process::ExitStatus;
use std::time::Duration;

use raftkv_client::{Client, StatusResponse};

use crate::cluster::{Cluster, ClusterSpec};
use crate::wait::WAIT_MAX;

/// A cluster for tests (see the module doc).
pub struct TestCluster(Cluster);

/// Unwraps `result`, panicking with the whole error (an `anyhow` chain in full).
#[track_caller]
fn expect<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("{error:#}"))
}

impl TestCluster {
    /// `nodes` nodes bootstrapped together in a temporary directory, each with `args`.
    #[track_caller]
    pub fn start(nodes: u64, args: &[String]) -> TestCluster {
        TestCluster::with_spec(ClusterSpec {
            args: args.to_vec(),
            ..ClusterSpec::new(nodes)
        })
    }

    /// A cluster as `spec` says.
    #[track_caller]
    pub fn with_spec(spec: ClusterSpec) -> TestCluster {
        TestCluster(expect(Cluster::start(spec)))
    }

    /// See [`Cluster::add_node`].
    #[track_caller]
    pub fn add_node(&mut self, id: u64, args: &[String]) -> String {
        expect(self.0.add_node(id, args))
    }

    /// See [`Cluster::kill`].
    #[track_caller]
    pub fn kill(&mut self, id: u64) {
        expect(self.0.kill(id))
    }

    /// See [`Cluster::kill_all`].
    #[track_caller]
    pub fn kill_all(&mut self) {
        expect(self.0.kill_all())
    }

    /// See [`Cluster::restart`].
    #[track_caller]
    pub fn restart(&mut self, id: u64) {
        expect(self.0.restart(id))
    }

    /// See [`Cluster::pause`].
    #[track_caller]
    pub fn pause(&mut self, id: u64) {
        expect(self.0.pause(id))
    }

    /// See [`Cluster::resume`].
    #[track_caller]
    pub fn resume(&mut self, id: u64) {
        expect(self.0.resume(id))
    }

    /// See [`Cluster::terminate`].
    pub async fn terminate(&mut self, id: u64, bound: Duration) -> ExitStatus {
        expect(self.0.terminate(id, bound).await)
    }

    /// Node `id`'s `--metrics-listen` address; panics if it serves none.
    #[track_caller]
    pub fn metrics_addr(&self, id: u64) -> String {
        self.0
            .metrics_addr(id)
            .unwrap_or_else(|| panic!("node {id} was started without --metrics-listen"))
    }

    /// A client of every node.
    #[track_caller]
    pub fn client(&self) -> Client {
        expect(self.0.client())
    }

    /// A client of node `id` only (it still follows leader hints for writes).
    #[track_caller]
    pub fn client_of(&self, id: u64) -> Client {
        expect(self.0.client_of(id))
    }

    /// See [`Cluster::wait_for_leader`].
    pub async fn wait_for_leader(&self, among: &[u64], min_term: u64) -> (u64, u64) {
        expect(self.0.wait_for_leader(among, min_term, WAIT_MAX).await)
    }

    /// See [`Cluster::wait_for_agreed_leader`].
    pub async fn wait_for_agreed_leader(&self, ids: &[u64], revision: u64) -> u64 {
        expect(self.0.wait_for_agreed_leader(ids, revision, WAIT_MAX).await)
    }

    /// See [`Cluster::wait_applied`].
    pub async fn wait_applied(&self, id: u64, revision: u64) -> StatusResponse {
        expect(self.0.wait_applied(id, revision, WAIT_MAX).await)
    }

    /// See [`Cluster::wait_applied_index`].
    pub async fn wait_applied_index(&self, id: u64, index: u64) -> StatusResponse {
        expect(self.0.wait_applied_index(id, index, WAIT_MAX).await)
    }

    /// See [`Cluster::wait_status`].
    pub async fn wait_status(
        &self,
        id: u64,
        what: &str,
        check: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        expect(self.0.wait_status(id, WAIT_MAX, what, check).await)
    }

    /// Waits until node `id` knows `leader` as its leader.
    pub async fn wait_knows_leader(&self, id: u64, leader: u64) -> StatusResponse {
        let what = format!("know node {leader} as leader");
        self.wait_status(id, &what, |status| status.leader_id == leader)
            .await
    }
}

impl Deref for TestCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}
