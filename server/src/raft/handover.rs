//! What a leadership transfer (`transfer`) leaves in shared state while it lasts: on the leader the
//! `Handover` (writes refused, then silence towards the followers, pre-votes granted only to the target), on
//! the target the `TakeoverRequest` its elector acts on, and the `TimeoutNow` message between them.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::raft::types::NodeId;

/// The longest a takeover request holds on the target, whatever the leader asked: a transfer lasts a few
/// election timeouts.
pub const TAKEOVER_HOLD_MAX: Duration = Duration::from_secs(60);

/// The transfer a leader is making, if any: read by the write path (refuse), the network (silent) and the
/// pre-vote rule (grant only the target).
#[derive(Default)]
pub struct Handover(Mutex<Option<Handing>>);

#[derive(Clone, Copy, Debug)]
struct Handing {
    target: NodeId,
    /// Set once the target matched the log: nothing is sent to followers from then on.
    silent: bool,
}

impl Handover {
    /// The node leadership is being handed to.
    pub fn target(&self) -> Option<NodeId> {
        self.lock().map(|handing| handing.target)
    }

    /// True while the leader must send nothing to its followers.
    pub fn is_silent(&self) -> bool {
        self.lock().is_some_and(|handing| handing.silent)
    }

    fn lock(&self) -> Option<Handing> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts handing over to `target` (writes are refused from now on); `Err` names the target of a
    /// handover already under way.
    pub fn begin(&self, target: NodeId) -> Result<HandoverGuard<'_>, NodeId> {
        let mut current = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handing) = *current {
            return Err(handing.target);
        }
        *current = Some(Handing {
            target,
            silent: false,
        });
        Ok(HandoverGuard(self))
    }

    /// From now on nothing is sent to the followers, until the handover ends.
    pub fn fall_silent(&self) {
        if let Some(handing) = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            handing.silent = true;
        }
    }
}

/// Ends the handover when the transfer returns, however it returns.
pub struct HandoverGuard<'a>(&'a Handover);

impl Drop for HandoverGuard<'_> {
    fn drop(&mut self) {
        *self
            .0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// What the leader sends the target (`TimeoutNow` in the peer API, postcard-encoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The term being handed over: the target acts only while it is still in it.
    pub term: u64,
    /// How long the request holds, in milliseconds: after it the target waits its ordinary election timeout.
    pub within_ms: u64,
}

/// On the target: a leader asked this node to take over in `term` (`TimeoutNow`). The elector then campaigns
/// as soon as the voters' lease allows, and the pre-vote rule grants no other candidate meanwhile.
#[derive(Default)]
pub struct TakeoverRequest {
    asked: Mutex<Option<(u64, Instant)>>,
    notify: Notify,
}

impl TakeoverRequest {
    /// Records the request, to hold for `within` (at most `TAKEOVER_HOLD_MAX`), and wakes the elector.
    pub fn ask(&self, term: u64, within: Duration) {
        *self
            .asked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((term, Instant::now() + within.min(TAKEOVER_HOLD_MAX)));
        self.notify.notify_one();
    }

    /// True while a request for `term` holds.
    pub fn holds_for(&self, term: u64) -> bool {
        self.asked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|(asked, until)| asked == term && Instant::now() < until)
    }

    /// Resolves when a request arrives (or arrived since the last call).
    pub async fn arrived(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_is_exclusive_and_ends_with_its_guard() {
        let handover = Handover::default();
        assert_eq!(handover.target(), None);
        {
            let _guard = handover.begin(2).expect("first transfer");
            assert_eq!(handover.target(), Some(2));
            assert!(
                !handover.is_silent(),
                "silent only once the target caught up"
            );
            assert_eq!(handover.begin(3).err(), Some(2));
            handover.fall_silent();
            assert!(handover.is_silent());
        }
        assert_eq!(handover.target(), None);
        assert!(!handover.is_silent());
    }

    #[tokio::test]
    async fn a_takeover_request_holds_for_its_term_and_time() {
        let request = TakeoverRequest::default();
        assert!(!request.holds_for(4));
        request.ask(4, Duration::from_secs(60));
        assert!(request.holds_for(4));
        assert!(!request.holds_for(5), "a new term is a new election");
        // The elector, waiting later, still learns of a request made before it waited.
        tokio::time::timeout(Duration::from_secs(1), request.arrived())
            .await
            .expect("the request wakes the elector");
        request.ask(4, Duration::ZERO);
        assert!(!request.holds_for(4), "an expired request holds no more");
    }
}
