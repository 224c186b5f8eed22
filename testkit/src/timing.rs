//! The election and lease timing every test cluster and every short experiment runs with: one list, so the
//! suites cannot drift apart. Elections settle in about a second, yet a loaded machine (two cores, several
//! clusters of the suite at once) does not make a healthy leader look dead: with 300-600 ms a test that
//! assumed one leader throughout saw it change under load now and then.

/// `raftkv-server` flags for fast elections (heartbeat, election timeout range, lease drift margin).
pub const FAST_TIMING: [&str; 8] = [
    "--heartbeat-interval-ms",
    "50",
    "--election-timeout-min-ms",
    "500",
    "--election-timeout-max-ms",
    "1000",
    "--lease-drift-margin-ms",
    "100",
];

/// [`FAST_TIMING`] as owned flags, ready to extend.
pub fn fast_timing() -> Vec<String> {
    FAST_TIMING.iter().map(|flag| flag.to_string()).collect()
}
