//! The names server and client must agree on beyond the .proto files: the gRPC metadata keys raftkv adds to
//! its statuses and the kinds of error it names there. Defined once, here, and used by both sides; a string
//! of the contract spelled anywhere else is a bug.

/// Metadata key naming the kind of error of a status a node sent (one of [`ErrorKind`]'s names). A status
/// without it came from the transport (a connection refused, a deadline), not from a node.
pub const ERROR_KIND_KEY: &str = "raftkv-error";
/// Metadata key of the leader's node id in a `not_leader` status.
pub const LEADER_ID_KEY: &str = "raftkv-leader-id";
/// Metadata key of the leader's client address in a `not_leader` status.
pub const LEADER_ADDR_KEY: &str = "raftkv-leader-addr";

/// etcd API request metadata: the consistency of a read (`linearizable`, `lease` or `stale`), beyond what
/// etcd's `serializable` flag can say.
pub const ETCD_CONSISTENCY_KEY: &str = "raftkv-consistency";
/// etcd API request metadata: a stale read's bound on how long ago its node heard from a leader (`500ms`,
/// `2s`).
pub const ETCD_MAX_STALENESS_KEY: &str = "raftkv-max-staleness";
/// etcd API request metadata: the store revision the serving node must have reached first.
pub const ETCD_MIN_REVISION_KEY: &str = "raftkv-min-revision";
/// etcd API response metadata: the read envelope, as comma-separated `field=value` pairs.
pub const ETCD_SERVED_KEY: &str = "raftkv-served";
/// etcd API request metadata a follower adds to a write it forwards to the leader.
pub const ETCD_FORWARDED_KEY: &str = "raftkv-forwarded";
/// Response metadata of `raftkv.v1.Kv/Watch`: the first revision the stream reports (a start revision of 0
/// resolved by the node), so a client can resume the watch elsewhere from the same point.
pub const WATCH_START_KEY: &str = "raftkv-watch-start";

/// Declares `ErrorKind` with its variants, `ALL` and `as_str` from one list, so that no kind can be missing
/// from `ALL` (which `from_name` searches) or lack a name.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $kind:ident = $name:literal,)*) => {
        /// The kinds of error a node names in `raftkv-error`. The gRPC code carries the class; the kind says
        /// exactly what happened and whether a write may have been applied.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $kind,)*
        }

        impl ErrorKind {
            /// Every kind, for tests and tools that list them.
            pub const ALL: [ErrorKind; [$($name),*].len()] = [$(ErrorKind::$kind),*];

            /// The name sent in `raftkv-error`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $name,)*
                }
            }
        }
    };
}

error_kinds! {
    /// The request is malformed or breaks a limit; nothing was written.
    InvalidArgument = "invalid_argument",
    /// The request asks for more than a limit allows; nothing was written.
    OutOfRange = "out_of_range",
    /// The node is overloaded (too many proposals or reads pending); nothing was written.
    Busy = "busy",
    /// This node is not the leader; the leader, if known, is in `raftkv-leader-id` / `raftkv-leader-addr`.
    NotLeader = "not_leader",
    /// No leader is known to this node.
    NoLeader = "no_leader",
    /// A quorum could not be reached (a read could not be confirmed, or a leader has lost its quorum); a write
    /// refused so was not proposed.
    NoQuorum = "no_quorum",
    /// A bounded stale read was refused: the node has not heard from a leader within the bound.
    TooStale = "too_stale",
    /// The node did not reach the requested revision (or read index) in time.
    RevisionTimeout = "revision_timeout",
    /// The read names a revision older than the oldest one kept (or a compaction asks for one already
    /// compacted); nothing changed.
    Compacted = "compacted",
    /// The read (or compaction) names a revision the store has not reached; nothing changed.
    FutureRevision = "future_revision",
    /// The write was proposed but its outcome is unknown: it may have been applied.
    Indeterminate = "indeterminate",
    /// A session's write carries a sequence older than the last one applied.
    SequenceTooOld = "sequence_too_old",
    /// A membership change or a leadership transfer was refused (or the transfer did not finish).
    Membership = "membership",
    /// The node is shutting down.
    ShuttingDown = "shutting_down",
    /// Something the node did not expect.
    Internal = "internal",
    /// The request names a lease that does not exist (never granted, revoked or expired); nothing changed.
    LeaseNotFound = "lease_not_found",
}

impl ErrorKind {
    /// The kind a `raftkv-error` value names; `None` for a name this version does not know.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_names_are_distinct() {
        let mut names = std::collections::BTreeSet::new();
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(kind));
            assert!(names.insert(kind.as_str()), "{kind} named twice");
        }
        assert_eq!(ErrorKind::from_name("no_such_kind"), None);
    }
}
