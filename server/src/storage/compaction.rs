//! The physical compaction: deleting, after a compaction was applied, the versions of the history no read can
//! see any more, on a thread of its own, a bounded step at a time (`keyspace::compact_history`).
//!
//! Snapshot builds pin the compaction point they started from (`Pin`): a build at revision R with compaction
//! point C streams the versions a read at C or later sees, so while it runs the physical compaction goes no
//! further than C, even if a later compaction moved the point past R. When the last pin of a point goes, the
//! thread catches up. Steps also take the maintenance lock that builds and installs hold, so no step runs on
//! a tree an install is replacing.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};

use super::keyspace::compact_history;

/// What the compaction thread is told.
enum Message {
    /// Compact this keyspace tree to this point (the newest job replaces any older one).
    Job(sled::Tree, u64),
    /// A pin was released: finish a job it held back.
    Unpinned,
}

/// Compaction points pinned by snapshot builds in progress, with how many builds pin each.
#[derive(Default)]
struct Pins(Mutex<BTreeMap<u64, usize>>);

impl Pins {
    fn lowest(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .next()
            .copied()
    }
}

/// Handle to the compaction thread; clones share it. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub(super) struct Compactor {
    sender: mpsc::Sender<Message>,
    pins: Arc<Pins>,
    maintenance: Arc<Mutex<()>>,
}

/// Keeps the physical compaction at or below a compaction point while it lives (see the module docs).
pub(super) struct Pin {
    point: u64,
    compactor: Compactor,
}

impl Drop for Pin {
    fn drop(&mut self) {
        {
            let mut pins = self
                .compactor
                .pins
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = pins.get_mut(&self.point) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&self.point);
                }
            }
        }
        // The thread ends only when every handle is gone, and then nothing is left to finish.
        let _ = self.compactor.sender.send(Message::Unpinned);
    }
}

impl Compactor {
    /// Starts the compaction thread of node `node_id`; `maintenance` is the lock builds and installs hold.
    pub(super) fn start(node_id: u64, maintenance: Arc<Mutex<()>>) -> std::io::Result<Compactor> {
        let (sender, messages) = mpsc::channel();
        let compactor = Compactor {
            sender,
            pins: Arc::default(),
            maintenance,
        };
        let (pins, maintenance) = (compactor.pins.clone(), compactor.maintenance.clone());
        std::thread::Builder::new()
            .name(format!("raftkv-compact-{node_id}"))
            .spawn(move || run(messages, &pins, &maintenance))?;
        Ok(compactor)
    }

    /// Has the thread compact `tree` to `point`.
    pub(super) fn request(&self, tree: sled::Tree, point: u64) {
        // The thread ends only when every handle is gone.
        let _ = self.sender.send(Message::Job(tree, point));
    }

    /// Pins `point` until the returned guard is dropped.
    pub(super) fn pin(&self, point: u64) -> Pin {
        *self
            .pins
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(point)
            .or_default() += 1;
        Pin {
            point,
            compactor: self.clone(),
        }
    }

    /// Compacts `tree` to `point` now, on the caller's thread, as far as the pins allow; returns the point
    /// reached.
    pub(super) fn compact_now(&self, tree: &sled::Tree, point: u64) -> Result<u64, String> {
        compact_to(tree, point, &self.pins, &self.maintenance)
    }
}

/// Compacts `tree` to `point`, or to the lowest pinned point if that is lower, step by step under the
/// maintenance lock; returns the point reached.
fn compact_to(
    tree: &sled::Tree,
    point: u64,
    pins: &Pins,
    maintenance: &Mutex<()>,
) -> Result<u64, String> {
    let mut resume = Vec::new();
    loop {
        // Read at every step: a build that starts meanwhile pins a point the steps must respect.
        let reach = pins.lowest().map_or(point, |pinned| pinned.min(point));
        let step = {
            let _maintenance = maintenance
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            compact_history(tree, reach, &resume)?
        };
        match step {
            Some(next) => resume = next,
            None => return Ok(reach),
        }
    }
}

/// The thread: does the newest job, as far as the pins allow, and keeps a job held back by a pin until the
/// pin goes. Holds a tree only while a job is unfinished.
fn run(messages: mpsc::Receiver<Message>, pins: &Pins, maintenance: &Mutex<()>) {
    let mut job: Option<(sled::Tree, u64)> = None;
    while let Ok(message) = messages.recv() {
        let mut newest = message;
        loop {
            if let Message::Job(tree, point) = newest {
                job = Some((tree, point));
            }
            match messages.try_recv() {
                Ok(next) => newest = next,
                Err(_) => break,
            }
        }
        let Some((tree, point)) = job.take() else {
            continue;
        };
        match compact_to(&tree, point, pins, maintenance) {
            Ok(reached) if reached < point => job = Some((tree, point)),
            Ok(_) => tracing::debug!(compact_revision = point, "history compacted"),
            // An install dropped the tree; it asks again for the new one.
            Err(error) => tracing::debug!(%error, "compaction stopped"),
        }
    }
}
