//! `raftkv bench watch`: W watchers on every benchmark key (prefix `k`), on raftkv or (feature `etcd`) on
//! etcd through the etcd-client crate, while the writers put random keys (closed loop, or open loop at
//! `--rate`). Every put's value starts with when it was sent (microseconds since the run's epoch, both sides
//! on this machine's monotonic clock), so each watcher measures, per event, the latency from the put's start
//! to the event reaching it. Reported: events delivered per second (all watchers), that latency, the puts'
//! own latency, and the events that never arrived (`missed_event`, after a drain of `WATCH_DRAIN_MAX`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raftkv_client::{Client, ClientConfig, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::report;
use super::{BenchArgs, TargetKind, KEY_PREFIX};

/// Most watchers in one run.
pub const WATCHERS_MAX: usize = 10_000;
/// How long, after the last put, the watchers may take to receive every event before the rest count as
/// missed.
pub const WATCH_DRAIN_MAX: Duration = Duration::from_secs(10);
/// How often `finish` looks at the event count while it drains.
pub const WATCH_DRAIN_POLL: Duration = Duration::from_millis(20);
/// Bytes of a put's value that hold when it was sent.
pub const STAMP_BYTES: usize = 8;

/// The run's epoch: puts and watchers measure from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Writes into the first `STAMP_BYTES` of `value` the microseconds since the epoch.
pub fn stamp(value: &mut [u8]) {
    let micros = epoch().elapsed().as_micros() as u64;
    if let Some(head) = value.get_mut(..STAMP_BYTES) {
        head.copy_from_slice(&micros.to_be_bytes());
    }
}

/// Time since the put that wrote `value` was sent.
fn since_stamp(value: &[u8]) -> Option<Duration> {
    let micros = u64::from_be_bytes(value.get(..STAMP_BYTES)?.try_into().ok()?);
    Some(
        epoch()
            .elapsed()
            .saturating_sub(Duration::from_micros(micros)),
    )
}

/// One watcher's responses, each as its events' latencies (`None` for an event without a stamp), or why the
/// watch ended.
type Latencies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<Option<Duration>>, String>> + Send>>;

/// Counts and times one watcher's events until it ends or `stopped`; returns its histogram and why it ended
/// early, if it did.
async fn count_events(
    mut latencies: Latencies,
    events: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) -> (Histogram<u64>, Option<String>) {
    use futures::StreamExt as _;
    let mut latency = report::histogram();
    loop {
        let next = tokio::select! {
            next = latencies.next() => next,
            _ = stopped.wait_for(|stop| *stop) => return (latency, None),
        };
        match next {
            Some(Ok(response)) => {
                for since in response.iter().flatten() {
                    report::record(&mut latency, *since);
                }
                events.fetch_add(response.len() as u64, Ordering::Relaxed);
            }
            Some(Err(reason)) => return (latency, Some(reason)),
            None => return (latency, Some("watch_ended".to_string())),
        }
    }
}

/// What all the watchers saw.
pub struct Watched {
    pub events: u64,
    /// When the last expected event arrived, or the drain ended.
    pub completed: Instant,
    pub latency: Histogram<u64>,
    pub errors: Vec<String>,
}

/// The watchers of a run, counting events as they come.
pub struct Watchers {
    tasks: JoinSet<(Histogram<u64>, Option<String>)>,
    events: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Watchers {
    /// Starts `count` watchers of every benchmark key at `config.endpoints`, spread over the nodes; returns
    /// once each stream is open.
    pub async fn start(
        args: &BenchArgs,
        config: &ClientConfig,
        count: usize,
    ) -> Result<Watchers, String> {
        let _ = epoch();
        let events = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        match args.target {
            TargetKind::Raftkv => {
                let clients = (0..args.connections)
                    .map(|_| Client::new(config.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| error.to_string())?;
                let options = WatchOptions {
                    range_end: raftkv_client::txn::prefix_end(KEY_PREFIX.to_string().as_bytes()),
                    ..WatchOptions::default()
                };
                for index in 0..count {
                    let client = &clients[index % clients.len()];
                    let stream = client
                        .watch(KEY_PREFIX.to_string(), &options)
                        .await
                        .map_err(|error| format!("cannot start watcher {index}: {error}"))?;
                    // Each response as the latency of each of its events (`None`: no stamp).
                    let latencies = futures::stream::unfold(stream, |mut stream| async move {
                        let next = match stream.next().await {
                            Ok(Some(response)) => Ok(response
                                .events
                                .iter()
                                .map(|event| event.kv.as_ref().and_then(|kv| since_stamp(&kv.value)))
                                .collect()),
                            Ok(None) => Err("watch_ended".to_string()),
                            Err(error) => Err(error.kind().to_string()),
                        };
                        Some((next, stream))
                    });
                    tasks.spawn(count_events(
                        Box::pin(latencies),
                        events.clone(),
                        stopped.clone(),
                    ));
                }
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let mut clients = Vec::with_capacity(args.connections);
                for _ in 0..args.connections {
                    let options = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(config.connect_timeout);
                    clients.push(
                        etcd_client::Client::connect(&config.endpoints, Some(options))
                            .await
                            .map_err(|error| format!("cannot connect to etcd: {error}"))?,
                    );
                }
                for index in 0..count {
                    let mut client = clients[index % clients.len()].clone();
                    let stream = client
                        .watch(
                            KEY_PREFIX.to_string(),
                            Some(etcd_client::WatchOptions::new().with_prefix()),
                        )
                        .await
                        .map_err(|error| format!("cannot start watcher {index}: {error}"))?;
                    let latencies = futures::stream::unfold(stream, |mut stream| async move {
                        let next = match stream.message().await {
                            Ok(Some(response)) => Ok(response
                                .events()
                                .iter()
                                .map(|event| event.kv().and_then(|kv| since_stamp(kv.value())))
                                .collect()),
                            Ok(None) => Err("watch_ended".to_string()),
                            Err(error) => Err(super::etcd::error_kind(&error)),
                        };
                        Some((next, stream))
                    });
                    tasks.spawn(count_events(
                        Box::pin(latencies),
                        events.clone(),
                        stopped.clone(),
                    ));
                }
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => {
                return Err("this raftkv was built without etcd support: rebuild with `cargo build --release -p raftkv-client --features etcd`".to_string())
            }
        }
        Ok(Watchers {
            tasks,
            events,
            stop,
        })
    }

    /// Waits until `expected` events arrived (at most `WATCH_DRAIN_MAX`), stops the watchers and merges
    /// what they saw.
    pub async fn finish(mut self, expected: u64) -> Watched {
        let drained = Instant::now() + WATCH_DRAIN_MAX;
        while self.events.load(Ordering::Relaxed) < expected && Instant::now() < drained {
            tokio::time::sleep(WATCH_DRAIN_POLL).await;
        }
        let completed = Instant::now();
        let _ = self.stop.send(true);
        let mut watched = Watched {
            events: self.events.load(Ordering::Relaxed),
            completed,
            latency: report::histogram(),
            errors: Vec::new(),
        };
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((latency, error)) => {
                    watched
                        .latency
                        .add(&latency)
                        .expect("histograms share their bounds");
                    watched.errors.extend(error);
                }
                Err(error) => watched.errors.push(format!("watcher task: {error}")),
            }
        }
        watched
    }
}
