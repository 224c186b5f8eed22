//! The leader's write batcher: packs concurrent client writes into one log entry.
//!
//! openraft 0.9 appends a leader's entries one client request at a time and waits for each append to be
//! flushed before it takes the next (`RaftCore::append_to_log` blocks on the flush callback), so a log entry
//! per write costs a disk flush per write and caps the write rate at one over the flush time, whatever group
//! commit the log store does. The batcher puts every write that is waiting when a batch is formed into one
//! entry, so one flush (on the leader and on each follower) carries them all.
//!
//! Rules:
//! - a batch holds at most `WRITE_BATCH_WRITES_MAX` writes and, unless it holds a single write, at most
//!   `WRITE_BATCH_BYTES_MAX` bytes of keys and values;
//! - a batch never holds two writes to the same key: the later one waits for the next batch, keeping the
//!   order of same-key writes (the state machine would apply them in order within one entry too; the rule
//!   predates store-wide revisions and is kept until measured);
//! - at most `WRITE_BATCHES_IN_FLIGHT_MAX` (one) batch is proposed and not yet applied; while it is, new
//!   writes gather for the next batch. A lone write on an idle leader is proposed at once, alone.
//!
//! The writes of a batch take consecutive revisions, in order (docs/design.md, "Revisions"). Writes are
//! answered in order of the batch's responses; a batch that fails answers every write with the same error,
//! and all of its writes either committed together or not at all.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::kv::state_machine::{
    Batch, Request, Response, WRITE_BATCH_BYTES_MAX, WRITE_BATCH_WRITES_MAX,
};
use crate::ops::telemetry;
use crate::raft::types::Raft;

/// Client writes in flight on this node at once (the api holds a permit for each until it is answered); beyond it writes are refused (`ResourceExhausted`) before they
/// are proposed, so nothing is written.
pub const PROPOSALS_PENDING_MAX: usize = 4_096;
/// Batches proposed and not yet applied at once. One: while a batch commits, every write that arrives
/// gathers for the next, so batches are as large as the load makes them and the per-entry work (a flush on
/// each node, an AppendEntries per follower, a core round) is paid least often. Measured with 64 clients on
/// 3 nodes: 1 in flight gave 13.6-14.4k puts/s at 31 writes per entry, 2 gave 11.9-13.0k at 19, 3 and 4
/// about 12.3k at 13 and 10. A lone write on an idle leader is still proposed at once.
pub const WRITE_BATCHES_IN_FLIGHT_MAX: usize = 1;

/// Why a write was not answered with its response.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// Proposed, outcome unknown (the batch timed out, leadership moved, or raft stopped): it may or may not
    /// have committed.
    #[error("{0}")]
    Indeterminate(String),
    /// Not proposed: the batcher has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

type Reply = oneshot::Sender<Result<Response, WriteError>>;

/// One write waiting for a batch.
struct Waiting {
    request: Request,
    reply: Reply,
}

/// Handle to the batcher task; cheap to clone.
#[derive(Clone)]
pub struct WriteBatcher {
    sender: mpsc::Sender<Waiting>,
}

impl WriteBatcher {
    /// Starts the batcher for `raft`. `queue_max` bounds the writes that may wait (the API's proposal limit
    /// admits no more); `batch_timeout` bounds each batch's commit, after which its writes are indeterminate.
    /// The task ends when every handle is dropped, after answering every write it took.
    pub fn start(
        raft: Raft,
        queue_max: usize,
        batch_timeout: Duration,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::channel(queue_max);
        (WriteBatcher { sender }, run(raft, receiver, batch_timeout))
    }

    /// Proposes `request` in the next batch and waits for its response.
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        let (reply, response) = oneshot::channel();
        self.sender
            .send(Waiting { request, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        // A dropped reply means the batcher stopped after taking the write: it may have been proposed.
        response.await.unwrap_or_else(|_| {
            Err(WriteError::Indeterminate(
                "the node stopped while the write was pending".to_string(),
            ))
        })
    }
}

async fn run(raft: Raft, mut receiver: mpsc::Receiver<Waiting>, batch_timeout: Duration) {
    // Writes taken from the channel but left for a later batch (same key as one in the batch, or no room).
    let mut carried: VecDeque<Waiting> = VecDeque::new();
    let mut in_flight = JoinSet::new();
    let mut open = true;
    while open || !carried.is_empty() {
        if in_flight.len() >= WRITE_BATCHES_IN_FLIGHT_MAX {
            in_flight.join_next().await;
            continue;
        }
        if carried.is_empty() {
            tokio::select! {
                waiting = receiver.recv() => match waiting {
                    Some(waiting) => carried.push_back(waiting),
                    None => open = false,
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
            continue;
        }
        let batch = gather(&mut carried, &mut receiver);
        in_flight.spawn(propose(raft.clone(), batch, batch_timeout));
    }
    while in_flight.join_next().await.is_some() {}
}

/// Forms the next batch from the carried writes, then from the channel, by the rules in the module docs.
fn gather(carried: &mut VecDeque<Waiting>, receiver: &mut mpsc::Receiver<Waiting>) -> Vec<Waiting> {
    let mut batch = Vec::new();
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    let mut bytes = 0;
    let mut left = VecDeque::new();
    loop {
        if batch.len() == WRITE_BATCH_WRITES_MAX {
            break;
        }
        let Some(waiting) = carried.pop_front().or_else(|| receiver.try_recv().ok()) else {
            break;
        };
        let size = waiting.request.command.payload_bytes();
        let key = waiting.request.command.key();
        let fits = batch.is_empty() || bytes + size <= WRITE_BATCH_BYTES_MAX;
        if !fits {
            left.push_back(waiting);
            break;
        }
        if keys.contains(key) {
            left.push_back(waiting);
            if left.len() == WRITE_BATCH_WRITES_MAX {
                // Many writes to keys already in the batch: stop looking, they go first next time.
                break;
            }
            continue;
        }
        keys.insert(key.to_vec());
        bytes += size;
        batch.push(waiting);
    }
    // What was left keeps its place ahead of anything still carried.
    left.append(carried);
    *carried = left;
    batch
}

/// Proposes one batch and answers each of its writes.
async fn propose(raft: Raft, batch: Vec<Waiting>, timeout: Duration) {
    let (writes, replies): (Vec<Request>, Vec<Reply>) = batch
        .into_iter()
        .map(|waiting| (waiting.request, waiting.reply))
        .unzip();
    let count = writes.len();
    let outcome = match tokio::time::timeout(timeout, raft.client_write(Batch { writes })).await {
        Err(_) => Err(WriteError::Indeterminate(format!(
            "not committed within {timeout:?}"
        ))),
        Ok(Ok(response)) if response.data.responses.len() == count => Ok(response.data.responses),
        // Committed, but which response is whose is unknown: the outcome of each write is.
        Ok(Ok(response)) => Err(WriteError::Indeterminate(format!(
            "a batch of {count} writes was answered with {} responses",
            response.data.responses.len()
        ))),
        // openraft answers ForwardToLeader both to a write it refused at the door (this node had just lost
        // leadership) and to one it had appended and then cut from its log when a new leader's entries
        // replaced it. The second may still commit: another node may hold the entry and be elected with it.
        // Nothing tells the two apart, so both are indeterminate (the api checked leadership just before, so
        // the first is a narrow race); a retry with the same session is applied at most once.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(WriteError::Indeterminate(format!(
                "leadership moved while the write was pending{}: it may have been appended here and may still commit",
                forward
                    .leader_id
                    .map(|id| format!(" (node {id} leads now)"))
                    .unwrap_or_default()
            )))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error)))) => {
            Err(WriteError::Internal(error.to_string()))
        }
        Ok(Err(RaftError::Fatal(error))) => Err(WriteError::Indeterminate(format!(
            "raft stopped while the write was pending: {error}"
        ))),
    };
    match outcome {
        Ok(responses) => {
            metrics::counter!(telemetry::WRITE_BATCHES).increment(1);
            metrics::counter!(telemetry::WRITE_BATCH_WRITES).increment(count as u64);
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::state_machine::Command;

    fn put(key: &str, value_bytes: usize) -> Waiting {
        let (reply, _) = oneshot::channel();
        Waiting {
            request: Request {
                session: None,
                command: Command::Put {
                    key: key.as_bytes().to_vec(),
                    value: vec![b'v'; value_bytes],
                },
            },
            reply,
        }
    }

    fn keys(writes: &[Waiting]) -> Vec<String> {
        writes
            .iter()
            .map(|waiting| String::from_utf8(waiting.request.command.key().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_key_already_in_the_batch_waits_for_the_next_in_order() {
        let (sender, mut receiver) = mpsc::channel(16);
        for key in ["a", "b", "a", "c", "a"] {
            sender.try_send(put(key, 1)).ok().unwrap();
        }
        let mut carried = VecDeque::new();
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["a", "b", "c"]);
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["a"]);
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["a"]);
        assert!(gather(&mut carried, &mut receiver).is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_write_and_byte_limits() {
        let (sender, mut receiver) = mpsc::channel(2 * WRITE_BATCH_WRITES_MAX);
        for index in 0..WRITE_BATCH_WRITES_MAX + 3 {
            sender.try_send(put(&format!("k{index}"), 1)).ok().unwrap();
        }
        let mut carried = VecDeque::new();
        assert_eq!(
            gather(&mut carried, &mut receiver).len(),
            WRITE_BATCH_WRITES_MAX
        );
        assert_eq!(gather(&mut carried, &mut receiver).len(), 3);

        // Values of a quarter of the byte limit: three fit with their keys, the fourth would not.
        let quarter = WRITE_BATCH_BYTES_MAX / 4;
        for index in 0..5 {
            sender
                .try_send(put(&format!("q{index}"), quarter))
                .ok()
                .unwrap();
        }
        let first = gather(&mut carried, &mut receiver);
        assert_eq!(keys(&first), ["q0", "q1", "q2"]);
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["q3", "q4"]);
    }

    #[test]
    fn a_write_over_the_byte_limit_goes_alone() {
        let (sender, mut receiver) = mpsc::channel(16);
        let mut carried = VecDeque::new();
        carried.push_back(put("big", WRITE_BATCH_BYTES_MAX + 1));
        sender.try_send(put("small", 1)).ok().unwrap();
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["big"]);
        assert_eq!(keys(&gather(&mut carried, &mut receiver)), ["small"]);
    }
}
