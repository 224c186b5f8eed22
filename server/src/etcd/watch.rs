//! etcd's Watch service: one bidirectional stream carries any number of watches, each a `watch::Watcher` of
//! this node, created and cancelled by the client. Every response has a header (etcd's Go client reads it
//! unconditionally); a watch starts with a `created` response, a compacted start revision ends it with
//! `compact_revision`, a progress request is answered, with `watch_id` -1, with the revision every watch of
//! the stream has delivered through.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use raftkv_proto::etcd::etcdserverpb::{
    self as pb, watch_create_request::FilterType, watch_request::RequestUnion,
};
use raftkv_proto::etcd::mvccpb;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::kv::to_mvcc;
use super::{to_etcd_status, EtcdApi};
use crate::error::ApiError;
use crate::kv::changes::HistoryEntry;
use crate::kv::state_machine::KeySpan;
use crate::watch::{changed_kv, previous_versions, WatchEnd, Watcher};

/// Responses of one stream waiting for the client to take them; a watch whose client reads no faster than
/// the store changes waits here (and falls back to reading the history when it is too far behind).
pub const WATCH_RESPONSES_QUEUED: usize = 64;
/// Most watches one stream may hold.
pub const WATCHES_PER_STREAM_MAX: usize = 1_024;
/// etcd's default interval of progress notifications (`--experimental-watch-progress-notify-interval`).
pub const PROGRESS_NOTIFY_INTERVAL_DEFAULT_MS: u64 = 10 * 60 * 1000;
/// The shortest interval `--watch-progress-notify-interval-ms` takes.
pub const PROGRESS_NOTIFY_INTERVAL_MIN_MS: u64 = 100;
/// The `watch_id` of responses that belong to no watch (progress), as etcd sends it.
const NO_WATCH: i64 = -1;

type Responses = mpsc::Sender<Result<pb::WatchResponse, Status>>;

impl EtcdApi {
    fn watch_response(&self, watch_id: i64, revision: u64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id,
            ..pb::WatchResponse::default()
        }
    }

    /// Runs one watch until it ends or its stream does: `created`, then batches of events.
    async fn run_watch(
        self,
        id: i64,
        create: pb::WatchCreateRequest,
        responses: Responses,
        delivered: Arc<AtomicU64>,
    ) {
        let store = self.api.reader.state_machine.clone();
        let span = KeySpan {
            key: create.key,
            range_end: create.range_end,
        };
        let no_put = create.filters.contains(&(FilterType::Noput as i32));
        let no_delete = create.filters.contains(&(FilterType::Nodelete as i32));
        let start = u64::try_from(create.start_revision).unwrap_or(0);
        let mut created = self.watch_response(id, store.applied_revision());
        created.created = true;
        let watcher = match span.validate() {
            Err(invalid) => Err(ended(WatchEnd::Failed(invalid.to_string()))),
            Ok(()) => Watcher::start(store.clone(), span, start).map_err(ended),
        };
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err((reason, compact_revision)) => {
                created.canceled = true;
                created.cancel_reason = reason;
                created.compact_revision = compact_revision;
                let _ = responses.send(Ok(created)).await;
                return;
            }
        };
        if responses.send(Ok(created)).await.is_err() {
            return;
        }
        delivered.store(watcher.delivered_through(), Ordering::Release);
        // With `progress_notify`, a response with no events whenever a whole interval passes without one.
        let interval = self.progress_notify_interval;
        let mut quiet_until = tokio::time::Instant::now() + interval;
        loop {
            let next = tokio::select! {
                next = watcher.next_batch() => next,
                _ = tokio::time::sleep_until(quiet_until), if create.progress_notify => {
                    let progress = self.watch_response(id, watcher.delivered_through());
                    if responses.send(Ok(progress)).await.is_err() {
                        return;
                    }
                    quiet_until = tokio::time::Instant::now() + interval;
                    continue;
                }
            };
            let changes = match next {
                Ok(changes) if changes.is_empty() => {
                    delivered.store(watcher.delivered_through(), Ordering::Release);
                    continue;
                }
                Ok(changes) => changes,
                Err(end) => {
                    let mut canceled = self.watch_response(id, store.applied_revision());
                    canceled.canceled = true;
                    (canceled.cancel_reason, canceled.compact_revision) = ended(end);
                    let _ = responses.send(Ok(canceled)).await;
                    return;
                }
            };
            let last = changes.last().map_or(0, |change| change.revision);
            let wanted: Vec<HistoryEntry> = changes
                .into_iter()
                .filter(|change| !(change.record.is_some() && no_put))
                .filter(|change| !(change.record.is_none() && no_delete))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let events = match self.events(wanted, create.prev_kv).await {
                Ok(events) => events,
                Err(reason) => {
                    let mut canceled = self.watch_response(id, last);
                    canceled.canceled = true;
                    canceled.cancel_reason = reason;
                    let _ = responses.send(Ok(canceled)).await;
                    return;
                }
            };
            let revision = last.max(store.applied_revision());
            for (events, more) in fragments(events, create.fragment, self.max_request_bytes) {
                let mut response = self.watch_response(id, revision);
                response.fragment = more;
                response.events = events;
                if responses.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            quiet_until = tokio::time::Instant::now() + interval;
            delivered.store(watcher.delivered_through(), Ordering::Release);
        }
    }

    /// etcd's events for `changes`, with each key's previous version if asked (read from the history).
    async fn events(
        &self,
        changes: Vec<HistoryEntry>,
        prev_kv: bool,
    ) -> Result<Vec<mvccpb::Event>, String> {
        let store = self.api.reader.state_machine.clone();
        let previous = if prev_kv {
            // Reads of the history: off the async threads.
            let changes = changes.clone();
            tokio::task::spawn_blocking(move || previous_versions(&store, &changes))
                .await
                .map_err(|error| error.to_string())??
        } else {
            vec![None; changes.len()]
        };
        Ok(changes
            .into_iter()
            .zip(previous)
            .map(|(change, prev)| {
                let (deleted, kv) = changed_kv(change);
                let kind = if deleted {
                    mvccpb::event::EventType::Delete
                } else {
                    mvccpb::event::EventType::Put
                };
                mvccpb::Event {
                    r#type: kind as i32,
                    kv: Some(to_mvcc(kv)),
                    prev_kv: prev.map(to_mvcc),
                }
            })
            .collect())
    }
}

/// The events of one response, cut (if the watch asked for `fragment`) into parts of at most `bytes`
/// encoded bytes each (a single larger event is a part of its own); each part with whether more follow.
fn fragments(
    events: Vec<mvccpb::Event>,
    fragment: bool,
    bytes: usize,
) -> Vec<(Vec<mvccpb::Event>, bool)> {
    if !fragment {
        return vec![(events, false)];
    }
    let mut parts: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
    let mut size = 0;
    for event in events {
        let event_size = prost::Message::encoded_len(&event);
        let current = parts.last_mut().expect("one part at least");
        if !current.is_empty() && size + event_size > bytes {
            parts.push(vec![event]);
            size = event_size;
        } else {
            current.push(event);
            size += event_size;
        }
    }
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| (part, index < last))
        .collect()
}

/// Why a watch ended, in etcd's words, and the compaction point to report (0 unless it was compacted).
fn ended(end: WatchEnd) -> (String, i64) {
    match end {
        WatchEnd::Compacted { compact_revision } => (
            "etcdserver: mvcc: required revision has been compacted".to_string(),
            i64::try_from(compact_revision).unwrap_or(i64::MAX),
        ),
        other => (format!("etcdserver: raftkv: {other}"), 0),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for EtcdApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        crate::api::refuse_if_draining(&self.api.draining).map_err(to_etcd_status)?;
        let mut requests = request.into_inner();
        let (responses, receiver) = mpsc::channel(WATCH_RESPONSES_QUEUED);
        let api = self.clone();
        tokio::spawn(async move {
            // Each watch with how far it has delivered (for progress answers).
            let mut watches: HashMap<i64, (AbortHandle, Arc<AtomicU64>)> = HashMap::new();
            let mut next_id: i64 = 0;
            while let Ok(Some(request)) = requests.message().await {
                watches.retain(|_, (watch, _)| !watch.is_finished());
                match request.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        // Ids the stream chooses are never used twice: a late event of a cancelled watch
                        // must not be taken for a new one's (etcd does the same).
                        let id = if create.watch_id != 0 {
                            create.watch_id
                        } else {
                            while watches.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id += 1;
                            next_id - 1
                        };
                        if watches.contains_key(&id) || watches.len() >= WATCHES_PER_STREAM_MAX {
                            let mut refused = api.watch_response(id, 0);
                            refused.created = true;
                            refused.canceled = true;
                            refused.cancel_reason = if watches.contains_key(&id) {
                                format!("etcdserver: watch id {id} is in use on this stream")
                            } else {
                                format!("etcdserver: raftkv: a stream holds at most {WATCHES_PER_STREAM_MAX} watches")
                            };
                            let _ = responses.send(Ok(refused)).await;
                            continue;
                        }
                        // Until it has started, a watch vouches for nothing.
                        let delivered = Arc::new(AtomicU64::new(0));
                        let task = tokio::spawn(api.clone().run_watch(
                            id,
                            create,
                            responses.clone(),
                            delivered.clone(),
                        ));
                        watches.insert(id, (task.abort_handle(), delivered));
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some((watch, _)) = watches.remove(&cancel.watch_id) {
                            watch.abort();
                            let mut canceled = api.watch_response(
                                cancel.watch_id,
                                api.api.reader.state_machine.applied_revision(),
                            );
                            canceled.canceled = true;
                            let _ = responses.send(Ok(canceled)).await;
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // No further than every watch of the stream has delivered: etcd's clients resume
                        // each watch after the revision a progress response names.
                        let revision = watches
                            .values()
                            .map(|(_, delivered)| delivered.load(Ordering::Acquire))
                            .min()
                            .unwrap_or_else(|| api.api.reader.state_machine.applied_revision());
                        let progress = api.watch_response(NO_WATCH, revision);
                        let _ = responses.send(Ok(progress)).await;
                    }
                    None => {}
                }
            }
            for (watch, _) in watches.values() {
                watch.abort();
            }
        });
        Ok(GrpcResponse::new(crate::api::until_draining(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            self.api.draining.clone(),
            || to_etcd_status(ApiError::ShuttingDown),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value_bytes: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec(),
                value: vec![b'v'; value_bytes],
                ..mvccpb::KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_stay_under_the_size_and_say_whether_more_follow() {
        let size = prost::Message::encoded_len(&event(100));
        let parts = fragments(vec![event(100), event(100), event(100)], true, 2 * size);
        let shape: Vec<(usize, bool)> = parts
            .iter()
            .map(|(events, more)| (events.len(), *more))
            .collect();
        assert_eq!(shape, [(2, true), (1, false)]);
        let whole = fragments(vec![event(100), event(100), event(100)], false, size);
        assert_eq!(whole.len(), 1, "no fragments unless the watch asked");
        assert!(!whole[0].1);
        let oversized = fragments(vec![event(1000), event(10)], true, size);
        let shape: Vec<(usize, bool)> = oversized
            .iter()
            .map(|(events, more)| (events.len(), *more))
            .collect();
        assert_eq!(shape, [(1, true), (1, false)], "a larger event goes alone");
    }
}
