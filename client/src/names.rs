//! Display names of the wire enums a reader sees in read envelopes and status answers (role, consistency), one
//! spelling for the CLI's output, jepsen-lite's histories and anything else that prints them.

use raftkv_proto::kv::{Consistency, Role};

/// `leader`, `follower`, `candidate`, `learner`, `shutdown`, or `unknown` for a value this version does not know.
pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::Learner) => "learner",
        Ok(Role::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

/// `linearizable`, `lease` or `stale` (unspecified reads are served linearizably, so they are named so).
pub fn consistency_name(consistency: i32) -> &'static str {
    match Consistency::try_from(consistency) {
        Ok(Consistency::Lease) => "lease",
        Ok(Consistency::Stale) => "stale",
        _ => "linearizable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_wire_values() {
        assert_eq!(role_name(Role::Leader as i32), "leader");
        assert_eq!(role_name(99), "unknown");
        assert_eq!(consistency_name(Consistency::Stale as i32), "stale");
        assert_eq!(
            consistency_name(Consistency::Unspecified as i32),
            "linearizable"
        );
    }
}
