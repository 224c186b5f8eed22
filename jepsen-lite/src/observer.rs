//! The observer: polls every node's Raft status through the client API and records what it saw in the history,
//! for the split-brain checker (never two leaders in one term) and the report's leader/term timeline.
//!
//! One task per node, so a paused or partitioned node that does not answer delays only its own row. A poll that
//! gets no answer within `STATUS_TIMEOUT` is recorded as `{"type": "unreachable"}`; an answer as the observation
//! documented in [`crate::checker::split_brain`], with the node's commit and applied index as extra fields.

use std::sync::Arc;
use std::time::Duration;

use raftkv_client::names::role_name;
use raftkv_client::{Client, ClientConfig, StatusResponse, TlsConfig};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checker::split_brain::{OBSERVATION_TYPE, OBSERVER_PROCESS};
use crate::cluster::STATUS_TIMEOUT;
use crate::recorder::Recorder;

/// How often each node is polled.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(100);
/// The `type` of a poll that got no answer.
pub const UNREACHABLE_TYPE: &str = "unreachable";

/// The observation event of one status answer (without `time`, which the recorder sets).
pub fn observation(status: &StatusResponse) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("process".into(), OBSERVER_PROCESS.into());
    object.insert("type".into(), OBSERVATION_TYPE.into());
    object.insert("node".into(), status.node_id.into());
    object.insert("role".into(), role_name(status.role).into());
    object.insert("term".into(), status.term.into());
    object.insert(
        "leader".into(),
        if status.leader_id == 0 {
            Value::Null
        } else {
            status.leader_id.into()
        },
    );
    object.insert("commit_index".into(), status.commit_index.into());
    object.insert("applied_index".into(), status.applied_index.into());
    object
}

fn unreachable(node: u64, error: &str) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("process".into(), OBSERVER_PROCESS.into());
    object.insert("type".into(), UNREACHABLE_TYPE.into());
    object.insert("node".into(), node.into());
    object.insert("error".into(), error.into());
    object
}

/// Polls the given nodes until `stop` turns true. Returns the number of observations recorded.
pub async fn observe(
    nodes: Vec<(u64, String)>,
    tls: Option<TlsConfig>,
    recorder: Arc<Recorder>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut tasks = JoinSet::new();
    for (node, addr) in nodes {
        let mut config = ClientConfig::new(vec![addr.clone()]);
        config.tls = tls.clone();
        config.connect_timeout = STATUS_TIMEOUT;
        config.request_timeout = STATUS_TIMEOUT;
        config.overall_timeout = STATUS_TIMEOUT;
        let client = Client::new(config)?;
        let recorder = Arc::clone(&recorder);
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let mut observed = 0u64;
            let mut ticker = tokio::time::interval(OBSERVE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    _ = ticker.tick() => {}
                }
                let status = tokio::time::timeout(STATUS_TIMEOUT, client.status_of(&addr)).await;
                match status {
                    Ok(Ok(status)) => {
                        recorder.raw(observation(&status));
                    }
                    Ok(Err(error)) => {
                        recorder.raw(unreachable(node, &error.to_string()));
                    }
                    Err(_) => {
                        recorder.raw(unreachable(node, "status timed out"));
                    }
                }
                observed += 1;
            }
            observed
        });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined?;
    }
    Ok(total)
}
