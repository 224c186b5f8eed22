//! Clock skew without root: a node restarted under libfaketime so that every clock it reads, the monotonic
//! clock behind tokio's timers and `Instant` included, runs at a chosen rate of real time.
//!
//! libfaketime is a preload library (Debian's `libfaketime`); its multithreaded build, `libfaketimeMT`, is the
//! one a tokio program needs. `FAKETIME="+0 xRATE"` fixes the rate when the process starts (changing it while
//! the process runs needs `FAKETIME_NO_CACHE`, which makes every clock read cost a file read), so a node is
//! skewed by restarting it under the library and set right by restarting it without. Raft tolerates any
//! clock rate for safety, except where raftkv trusts time: a leader serves `lease` reads while its lease holds,
//! and the lease is measured by the leader's clock. A leader whose clock runs slower than
//! `--lease-drift-margin-ms` allows believes its lease lasts longer than the followers wait before electing
//! another leader: a `lease` read can then return a value the new leader has already overwritten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use raftkv_client::{Client, Consistency, ReadOptions};

use crate::cluster::Cluster;

/// Names the libfaketime library to use instead of looking in the usual places.
pub const LIBFAKETIME_ENV: &str = "RAFTKV_LIBFAKETIME";
/// Where Debian and a `make install` of libfaketime put the multithreaded library.
pub const LIBFAKETIME_CANDIDATES: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];
/// The rate of a skewed clock unless told otherwise: one of the node's seconds lasts four real ones.
pub const CLOCK_RATE_DEFAULT: f64 = 0.25;
/// Slowest and fastest rate accepted: beyond these a node's timers stop being useful at all.
pub const CLOCK_RATE_MIN: f64 = 0.05;
pub const CLOCK_RATE_MAX: f64 = 20.0;
/// How long a node restarted onto another clock may take to serve again and catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times leadership is asked to move to a skewed node before giving up: a slow node takes over
/// slowly (its election timeout runs by its own clock), a transfer that ran out of time leaves the old
/// leader in charge, and asking again is harmless.
pub const MOVE_LEADER_ATTEMPTS: usize = 3;
/// How long to wait for a leader after a transfer.
pub const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Deadline of the read that renews a leader's lease.
pub const RENEW_LEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// The key that read asks for (any key does: the round, not the value, renews the lease).
pub const RENEW_LEASE_KEY: &str = "jepsen-lite/lease-renewal";
/// How long a node restarted onto another clock may take to exit after SIGTERM.
pub const RESTART_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The libfaketime library to preload: `RAFTKV_LIBFAKETIME`, or the first of `LIBFAKETIME_CANDIDATES` that
/// exists.
pub fn libfaketime() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(LIBFAKETIME_ENV) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{LIBFAKETIME_ENV} names {}, which is not a file",
            path.display()
        );
        return Ok(path);
    }
    LIBFAKETIME_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "libfaketime is not installed (looked for {}): install Debian's `libfaketime` package, or set {LIBFAKETIME_ENV} to the path of libfaketimeMT.so.1",
                LIBFAKETIME_CANDIDATES.join(", ")
            )
        })
}

/// Checks a clock rate given on the command line.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (a clock rate such as 0.2 or 3)"))?;
    check_rate(rate)?;
    Ok(rate)
}

/// Refuses a clock rate outside `CLOCK_RATE_MIN..=CLOCK_RATE_MAX`.
pub fn check_rate(rate: f64) -> Result<(), String> {
    match (CLOCK_RATE_MIN..=CLOCK_RATE_MAX).contains(&rate) {
        true => Ok(()),
        false => Err(format!(
            "a clock rate must be between {CLOCK_RATE_MIN} and {CLOCK_RATE_MAX}, not {rate}"
        )),
    }
}

/// The environment that runs a process's clocks at `rate` under `library`.
pub fn skewed_env(library: &Path, rate: f64) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".to_string(), library.display().to_string()),
        ("FAKETIME".to_string(), format!("+0 x{rate}")),
    ]
}

/// Restarts node `id` (SIGTERM, then start) with its clocks at `rate`, or at the real rate for `None`. Does not
/// wait for it to serve.
pub async fn restart_at_rate(
    cluster: &mut Cluster,
    id: u64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let env = match rate {
        Some(rate) => skewed_env(&libfaketime()?, rate),
        None => Vec::new(),
    };
    if cluster.pid(id).is_some() {
        // A node that does not exit in time is SIGKILLed by `terminate`: stopped either way.
        if let Err(error) = cluster.terminate(id, RESTART_EXIT_TIMEOUT).await {
            tracing::warn!(node = id, error = %format!("{error:#}"), "restarting onto another clock");
        }
    }
    cluster.set_env(id, env)?;
    cluster
        .restart(id)
        .with_context(|| format!("cannot restart node {id} on its new clock"))
}

/// Asks the cluster to move the leadership to `node` until it leads (at most `MOVE_LEADER_ATTEMPTS` times);
/// returns its term.
pub async fn move_leader_to(cluster: &Cluster, node: u64) -> anyhow::Result<u64> {
    let client = cluster.client()?;
    let ids = cluster.ids();
    let mut last_error = None;
    for _ in 0..MOVE_LEADER_ATTEMPTS {
        match client.move_leader(node).await {
            Ok(_) => {
                let (leader, term) = cluster.wait_for_leader(&ids, 0, LEADER_WAIT).await?;
                if leader == node {
                    return Ok(term);
                }
                last_error = Some(format!("node {leader} leads instead"));
            }
            Err(error) => last_error = Some(error.to_string()),
        }
    }
    anyhow::bail!(
        "node {node} did not take the leadership after {MOVE_LEADER_ATTEMPTS} attempts: {}",
        last_error.unwrap_or_default()
    )
}

/// Has leader `node` renew its lease now: a linearizable read on it runs a quorum round, and a lease counts
/// from the start of the last round a quorum acknowledged.
pub async fn renew_lease(cluster: &Cluster, node: u64) -> anyhow::Result<()> {
    let addr = cluster.addr(node);
    let mut config = cluster.client_config(vec![addr.clone()]);
    config.overall_timeout = RENEW_LEASE_TIMEOUT;
    config.request_timeout = RENEW_LEASE_TIMEOUT;
    let options = ReadOptions {
        consistency: Consistency::Linearizable,
        endpoint: Some(addr),
        ..Default::default()
    };
    Client::new(config)?
        .get(RENEW_LEASE_KEY, &options)
        .await
        .with_context(|| format!("node {node} could not renew its lease"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_numbers_within_bounds() {
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert_eq!(parse_rate(" 3 "), Ok(3.0));
        assert!(parse_rate("fast").unwrap_err().contains("not a number"));
        assert!(parse_rate("0").unwrap_err().contains("between"));
        assert!(parse_rate("100").unwrap_err().contains("between"));
        assert!(parse_rate("NaN").is_err());
    }

    #[test]
    fn the_skewed_environment_preloads_the_library_with_the_rate() {
        let env = skewed_env(Path::new("/lib/libfaketimeMT.so.1"), 0.25);
        assert_eq!(
            env,
            vec![
                (
                    "LD_PRELOAD".to_string(),
                    "/lib/libfaketimeMT.so.1".to_string()
                ),
                ("FAKETIME".to_string(), "+0 x0.25".to_string()),
            ]
        );
    }
}
