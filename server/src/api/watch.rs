//! raftkv's own watch: `raftkv.v1.Kv/Watch`, a server stream of one `watch::Watcher`'s changes. A watch
//! that cannot go on (its start compacted, the node stopping) ends the stream with the error's status.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use raftkv_proto::kv;
use tokio::sync::mpsc;
use tonic::Status;

use super::{to_kv, to_status, Api, ApiError};
use crate::kv::changes::HistoryEntry;
use crate::kv::state_machine::{KeySpan, KeyValue};
use crate::storage::ReadError;
use crate::watch::{changed_kv, previous_versions, WatchEnd, Watcher};

/// How often, at most, a watch with nothing to deliver while the store changes tells its client how far it has
/// seen (an empty response): a client resuming the watch elsewhere then starts from there, not from its last
/// event, which may have been compacted away meanwhile.
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Responses waiting for a client that reads slower than the store changes; beyond it the watch waits (and
/// reads the history from sled once it has fallen too far behind the applied changes).
pub const WATCH_STREAM_QUEUED: usize = 16;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<kv::WatchResponse, Status>> + Send>>;

/// The error that ends a watch started at `start`.
fn ended(end: WatchEnd, start: u64) -> ApiError {
    match end {
        WatchEnd::Compacted { compact_revision } => ApiError::Revision(ReadError::Compacted {
            requested: start,
            compact_revision,
        }),
        WatchEnd::TooFarBehind { .. } => ApiError::OutOfRange(end.to_string()),
        WatchEnd::Closed => ApiError::ShuttingDown,
        WatchEnd::Failed(reason) => ApiError::Internal(reason),
    }
}

fn event(change: HistoryEntry, prev: Option<KeyValue>) -> kv::WatchEvent {
    let (deleted, kv) = changed_kv(change);
    let kind = if deleted {
        kv::EventKind::Delete
    } else {
        kv::EventKind::Put
    };
    kv::WatchEvent {
        kind: kind as i32,
        kv: Some(to_kv(kv)),
        prev_kv: prev.map(to_kv),
    }
}

impl Api {
    /// Starts the watch `request` asks for and streams its changes; also returns the first revision it
    /// reports (`WATCH_START_KEY`).
    pub(super) fn start_watch(
        &self,
        request: kv::WatchRequest,
    ) -> Result<(WatchStream, u64), ApiError> {
        super::refuse_if_draining(&self.draining)?;
        let span = KeySpan {
            key: request.key,
            range_end: request.range_end,
        };
        span.validate()
            .map_err(|invalid| ApiError::InvalidArgument(invalid.to_string()))?;
        let store = self.reader.state_machine.clone();
        let start = request.start_revision;
        let prev_kv = request.prev_kv;
        let mut watcher =
            Watcher::start(store.clone(), span, start).map_err(|end| ended(end, start))?;
        let first = watcher.delivered_through() + 1;
        let (sender, receiver) = mpsc::channel(WATCH_STREAM_QUEUED);
        tokio::spawn(async move {
            let mut reported = Instant::now();
            loop {
                let changes = match watcher.next_batch().await {
                    Ok(changes) if changes.is_empty() => {
                        if reported.elapsed() >= WATCH_PROGRESS_INTERVAL {
                            reported = Instant::now();
                            let progress = kv::WatchResponse {
                                events: Vec::new(),
                                revision: watcher.delivered_through(),
                            };
                            if sender.send(Ok(progress)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(changes) => changes,
                    Err(end) => {
                        let _ = sender.send(Err(to_status(ended(end, start)))).await;
                        return;
                    }
                };
                let last = changes.last().map_or(0, |change| change.revision);
                let previous = if prev_kv {
                    let (store, changes) = (store.clone(), changes.clone());
                    match tokio::task::spawn_blocking(move || previous_versions(&store, &changes))
                        .await
                    {
                        Ok(Ok(previous)) => previous,
                        Ok(Err(reason)) => {
                            let _ = sender
                                .send(Err(to_status(ApiError::Internal(reason))))
                                .await;
                            return;
                        }
                        Err(error) => {
                            let _ = sender
                                .send(Err(to_status(ApiError::Internal(error.to_string()))))
                                .await;
                            return;
                        }
                    }
                } else {
                    vec![None; changes.len()]
                };
                let events = changes
                    .into_iter()
                    .zip(previous)
                    .map(|(change, prev)| event(change, prev))
                    .collect();
                let response = kv::WatchResponse {
                    events,
                    revision: last.max(store.applied_revision()),
                };
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok((
            super::until_draining(
                tokio_stream::wrappers::ReceiverStream::new(receiver),
                self.draining.clone(),
                || to_status(ApiError::ShuttingDown),
            ),
            first,
        ))
    }
}
