//! The election and lease timing every test cluster and every short experiment runs with: one list, so the
//! suites cannot drift apart. Elections settle in well under a second, yet a loaded machine (two cores, a
//! benchmark beside the tests) does not make a healthy leader look dead.

/// `raftkv-server` flags for fast elections (heartbeat, election timeout range, lease drift margin).
pub const FAST_TIMING: [&str; 8] = [
    "--heartbeat-interval-ms",
    "50",
    "--election-timeout-min-ms",
    "300",
    "--election-timeout-max-ms",
    "600",
    "--lease-drift-margin-ms",
    "100",
];

/// [`FAST_TIMING`] as owned flags, ready to extend.
pub fn fast_timing() -> Vec<String> {
    FAST_TIMING.iter().map(|flag| flag.to_string()).collect()
}
