//! What the page shows, kept live: every node's status (polled), the links of the mesh, a timeline of events
//! (elections, processes and links changed from elsewhere, all seen by the poller, and every action taken), a
//! background probe's operations per second and latency, and the windows during which a fault was in place.
//! One task polls, another probes; the page gets the whole picture as one JSON snapshot each time it changes
//! ([`Dashboard::subscribe`]), over server-sent events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_client::names::role_name;
use raftkv_client::{Client, ClientConfig, StatusResponse};
use serde::Serialize;
use tokio::sync::watch;

use super::backend::{Backend, ProcessState};
use crate::net::{LinkState, LinkStatus};

/// How often every node is asked for its status.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Deadline of one status call of the poller: a cut-off or paused node must not hold up the others.
pub const POLL_STATUS_TIMEOUT: Duration = Duration::from_millis(400);
/// Deadline of the probe's connection to a node.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
/// Pause between two probe writes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one probe write, retries included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Seconds of probe history kept (and drawn).
pub const PROBE_SECONDS_KEPT: usize = 120;
/// Events kept on the timeline.
pub const EVENTS_KEPT: usize = 200;
/// Fault spans kept (and shaded).
pub const FAULT_SPANS_KEPT: usize = 100;
/// The key the probe writes.
pub const PROBE_KEY: &str = "playground/probe";
/// Milliseconds without word from a leader (on a follower) or from a quorum (on a leader) after which the node
/// is shown as not serving: above the heartbeat interval of any sane timing, at most the shortest election
/// timeout of the server's defaults.
pub const LEADER_SILENCE_SHOWN_MS: u64 = 1_000;

/// One node as the page draws it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub address: String,
    pub process: ProcessState,
    /// Whether it answered the last status call.
    pub reachable: bool,
    pub role: String,
    pub term: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub ms_since_leader: Option<u64>,
    /// `serving`, `no leader`, `no quorum` (a leader no quorum has answered lately), `unreachable`, `paused`
    /// or `stopped`.
    pub health: String,
}

/// One directed link of the mesh.
#[derive(Clone, Debug, Serialize)]
pub struct LinkView {
    pub from: u64,
    pub to: u64,
    /// `pass`, `cut`, `one-way`, `reset` or `slow`.
    pub state: String,
    pub delay_ms: Option<u64>,
}

/// One line of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    /// Milliseconds since the playground started.
    pub at_ms: u64,
    /// `election`, `fault`, `heal`, `process`, `read`, `write`, `scenario` or `error`.
    pub kind: String,
    pub text: String,
}

/// One second of the probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeSecond {
    /// Seconds since the playground started.
    pub second: u64,
    pub ok: u32,
    pub failed: u32,
    /// Slowest successful write in the second.
    pub max_ms: f64,
    /// Mean successful write latency in the second.
    pub mean_ms: f64,
}

/// A span during which some fault was in place (network or process), for shading the chart.
#[derive(Clone, Debug, Serialize)]
pub struct FaultSpan {
    pub start_ms: u64,
    /// `None` while it lasts.
    pub end_ms: Option<u64>,
}

/// The whole picture, sent to the page as JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    pub mode: String,
    pub nodes: Vec<NodeView>,
    pub links: Vec<LinkView>,
    pub events: Vec<EventView>,
    pub probe: Vec<ProbeSecond>,
    pub faults: Vec<FaultSpan>,
}

#[derive(Default)]
struct State {
    nodes: Vec<NodeView>,
    links: Vec<LinkView>,
    events: VecDeque<EventView>,
    probe: VecDeque<ProbeSecond>,
    faults: Vec<FaultSpan>,
    /// The highest term in which a leader was told: each election is told once, and a cut-off leader of an
    /// older term is not told as new.
    leader_term_told: u64,
    /// Bumped by every change of links the page makes: a poll that fetched the links before it does not
    /// overwrite them with what it saw.
    links_version: u64,
}

/// The live picture of the cluster, shared by the poller, the actions and the page's streams.
pub struct Dashboard {
    started: Instant,
    mode: String,
    state: Mutex<State>,
    published: watch::Sender<String>,
}

impl Dashboard {
    pub fn new(mode: &str) -> Arc<Dashboard> {
        let (published, _) = watch::channel(String::from("{}"));
        Arc::new(Dashboard {
            started: Instant::now(),
            mode: mode.to_string(),
            state: Mutex::new(State::default()),
            published,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The snapshot JSON, each time it changes (the current one first).
    pub fn subscribe(&self) -> watch::Receiver<String> {
        let mut receiver = self.published.subscribe();
        receiver.mark_changed();
        receiver
    }

    /// Adds a line to the timeline and publishes.
    pub fn event(&self, kind: &str, text: impl Into<String>) {
        {
            let mut state = self.state.lock().expect("dashboard lock");
            let at_ms = self.now_ms();
            state.events.push_back(EventView {
                at_ms,
                kind: kind.to_string(),
                text: text.into(),
            });
            while state.events.len() > EVENTS_KEPT {
                state.events.pop_front();
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let snapshot = {
            let state = self.state.lock().expect("dashboard lock");
            Snapshot {
                now_ms: self.now_ms(),
                mode: self.mode.clone(),
                nodes: state.nodes.clone(),
                links: state.links.clone(),
                events: state.events.iter().cloned().collect(),
                probe: state.probe.iter().cloned().collect(),
                faults: state.faults.clone(),
            }
        };
        let json = serde_json::to_string(&snapshot)
            .expect("a snapshot is plain data and always serialises");
        self.published.send_replace(json);
    }

    /// Takes in the links after a network command, and opens or closes the fault span.
    pub fn set_links(&self, links: &[LinkStatus]) {
        {
            let mut state = self.state.lock().expect("dashboard lock");
            state.links = links.iter().map(link_view).collect();
            state.links_version += 1;
            let now = self.now_ms();
            state.track_fault(now);
        }
        self.publish();
    }

    /// The version of the links as the page last set them (see `State::links_version`).
    fn links_version(&self) -> u64 {
        self.state.lock().expect("dashboard lock").links_version
    }

    /// Records a process state the page itself caused, so that the next poll does not tell it again.
    pub fn set_process(&self, node: u64, process: ProcessState) {
        let mut state = self.state.lock().expect("dashboard lock");
        if let Some(view) = state.nodes.iter_mut().find(|view| view.id == node) {
            view.process = process;
        }
    }

    /// One poll: process states, every node's status, the links (when `links` is given, fetched when the
    /// page's links were at `links_version`); elections seen since the last poll go on the timeline.
    async fn poll(&self, backend: &Backend, links: Option<Vec<LinkStatus>>, links_version: u64) {
        let processes = backend.process_states().await;
        let statuses = futures::future::join_all(backend.nodes().iter().map(|(&id, address)| {
            let config = status_config(backend, address);
            async move {
                let status = match Client::new(config) {
                    Ok(client) => client.status_of(address).await.ok(),
                    Err(_) => None,
                };
                (id, address.clone(), status)
            }
        }))
        .await;
        let views: Vec<NodeView> = statuses
            .into_iter()
            .map(|(id, address, status)| {
                let process = processes.get(&id).copied().unwrap_or(ProcessState::Stopped);
                node_view(id, address, process, status.as_ref())
            })
            .collect();
        // What changed since the last poll without the page asking (elections, and processes or links changed
        // from a terminal): told on the timeline.
        let mut seen = Vec::new();
        {
            let mut state = self.state.lock().expect("dashboard lock");
            for node in views
                .iter()
                .filter(|node| node.role == "leader" && node.health == "serving")
            {
                if node.term > state.leader_term_told {
                    state.leader_term_told = node.term;
                    seen.push((
                        "election",
                        format!("node {} leads in term {}", node.id, node.term),
                    ));
                }
            }
            for (before, after) in state.nodes.iter().zip(&views) {
                if before.process != after.process {
                    let word = match after.process {
                        ProcessState::Running => "is running",
                        ProcessState::Paused => "is paused",
                        ProcessState::Stopped => "stopped",
                    };
                    seen.push(("process", format!("node {} {word}", after.id)));
                }
            }
            state.nodes = views;
            if let Some(links) = links
                .as_ref()
                .filter(|_| state.links_version == links_version)
            {
                let views: Vec<LinkView> = links.iter().map(link_view).collect();
                let changed = !state.links.is_empty()
                    && views.iter().zip(&state.links).any(|(now, then)| {
                        now.state != then.state || now.delay_ms != then.delay_ms
                    });
                if changed {
                    let passing = views.iter().all(|link| link.state == "pass");
                    seen.push(match passing {
                        true => (
                            "heal",
                            "every link passes (changed outside the page)".to_string(),
                        ),
                        false => (
                            "fault",
                            format!(
                                "links changed outside the page: {}",
                                views
                                    .iter()
                                    .filter(|link| link.state != "pass")
                                    .map(|link| format!("{}→{} {}", link.from, link.to, link.state))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ),
                    });
                }
                state.links = views;
            }
            let now = self.now_ms();
            state.track_fault(now);
        }
        for (kind, text) in seen {
            self.event(kind, text);
        }
        self.publish();
    }

    fn record_probe(&self, ok: bool, latency: Duration) {
        let second = self.started.elapsed().as_secs();
        let mut state = self.state.lock().expect("dashboard lock");
        if state.probe.back().map(|last| last.second) != Some(second) {
            state.probe.push_back(ProbeSecond {
                second,
                ok: 0,
                failed: 0,
                max_ms: 0.0,
                mean_ms: 0.0,
            });
            while state.probe.len() > PROBE_SECONDS_KEPT {
                state.probe.pop_front();
            }
        }
        let bucket = state.probe.back_mut().expect("just pushed");
        if ok {
            let ms = latency.as_secs_f64() * 1000.0;
            bucket.mean_ms = (bucket.mean_ms * bucket.ok as f64 + ms) / (bucket.ok as f64 + 1.0);
            bucket.max_ms = bucket.max_ms.max(ms);
            bucket.ok += 1;
        } else {
            bucket.failed += 1;
        }
    }
}

impl State {
    /// Opens a fault span when a link does not pass or a node does not run and none is open; closes the open
    /// one when all is well again.
    fn track_fault(&mut self, now_ms: u64) {
        let faulty = self.links.iter().any(|link| link.state != "pass")
            || self
                .nodes
                .iter()
                .any(|node| node.process != ProcessState::Running);
        let open = self.faults.last().is_some_and(|span| span.end_ms.is_none());
        match (faulty, open) {
            (true, false) => {
                self.faults.push(FaultSpan {
                    start_ms: now_ms,
                    end_ms: None,
                });
                if self.faults.len() > FAULT_SPANS_KEPT {
                    self.faults.remove(0);
                }
            }
            (false, true) => {
                if let Some(span) = self.faults.last_mut() {
                    span.end_ms = Some(now_ms);
                }
            }
            _ => {}
        }
    }
}

fn status_config(backend: &Backend, address: &str) -> ClientConfig {
    let mut config = backend.client_config(vec![address.to_string()]);
    config.connect_timeout = POLL_STATUS_TIMEOUT;
    config.request_timeout = POLL_STATUS_TIMEOUT;
    config.overall_timeout = POLL_STATUS_TIMEOUT;
    config
}

fn link_view(link: &LinkStatus) -> LinkView {
    let (state, delay_ms) = match link.state {
        LinkState::Pass => ("pass", None),
        LinkState::Cut => ("cut", None),
        LinkState::OneWay => ("one-way", None),
        LinkState::Reset => ("reset", None),
        LinkState::Delay(delay) => ("slow", Some(delay.as_millis() as u64)),
    };
    LinkView {
        from: link.from,
        to: link.to,
        state: state.to_string(),
        delay_ms,
    }
}

fn node_view(
    id: u64,
    address: String,
    process: ProcessState,
    status: Option<&StatusResponse>,
) -> NodeView {
    let health = match (process, status) {
        (ProcessState::Stopped, _) => "stopped",
        (ProcessState::Paused, _) => "paused",
        (ProcessState::Running, None) => "unreachable",
        (ProcessState::Running, Some(status)) => {
            let silent = status
                .millis_since_leader
                .is_none_or(|ms| ms > LEADER_SILENCE_SHOWN_MS);
            match (status.leader_id, silent) {
                (0, _) => "no leader",
                (leader, true) if leader == status.node_id => "no quorum",
                (_, true) => "no leader",
                (_, false) => "serving",
            }
        }
    };
    NodeView {
        id,
        address,
        process,
        reachable: status.is_some(),
        role: status.map_or("unknown".to_string(), |s| role_name(s.role).to_string()),
        term: status.map_or(0, |s| s.term),
        leader: status.map_or(0, |s| s.leader_id),
        commit_index: status.map_or(0, |s| s.commit_index),
        applied_index: status.map_or(0, |s| s.applied_index),
        revision: status.map_or(0, |s| s.revision),
        ms_since_leader: status.and_then(|s| s.millis_since_leader),
        health: health.to_string(),
    }
}

/// Polls the cluster every `POLL_INTERVAL` until `stop` is set; fetches the links every time (cheap: one
/// control request or a lock on the in-process mesh).
pub async fn run_poller(
    dashboard: Arc<Dashboard>,
    backend: Arc<Backend>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let version = dashboard.links_version();
        let links = backend.net(&crate::net::Command::Status).await.ok();
        dashboard.poll(&backend, links, version).await;
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Writes `PROBE_KEY` through every node, one write at a time, until `stop` is set, recording each outcome.
pub async fn run_probe(
    dashboard: Arc<Dashboard>,
    backend: Arc<Backend>,
    mut stop: watch::Receiver<bool>,
) {
    let mut config = backend.client_config(backend.nodes().values().cloned().collect());
    config.connect_timeout = PROBE_CONNECT_TIMEOUT;
    config.request_timeout = PROBE_TIMEOUT;
    config.overall_timeout = PROBE_TIMEOUT;
    let client = match Client::new(config) {
        Ok(client) => client,
        Err(error) => {
            dashboard.event(
                "error",
                format!("the probe could not build a client: {error}"),
            );
            return;
        }
    };
    let mut count: u64 = 0;
    loop {
        count += 1;
        let started = Instant::now();
        let ok = client.put(PROBE_KEY, count.to_string()).await.is_ok();
        dashboard.record_probe(ok, started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}
