//! The integration tests of jepsen-lite, one binary: the history checkers on histories with known verdicts,
//! the proxy mesh on real sockets, partitions of real raftkv clusters, short `jepsen-lite run`s and the demo,
//! the HTML report, and the playground in a real browser.

mod checker;
mod net;
mod partition;
mod report;
mod run;
mod ui;

/// Sends SIGTERM to `child` and waits, at most `bound` for each, for `kill` and for the child to exit;
/// returns how it exited.
async fn terminate(
    child: &mut tokio::process::Child,
    bound: std::time::Duration,
) -> std::process::ExitStatus {
    let pid = child.id().expect("the child is running").to_string();
    let kill = tokio::time::timeout(
        bound,
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status(),
    )
    .await
    .expect("kill finishes in time")
    .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid} failed");
    tokio::time::timeout(bound, child.wait())
        .await
        .expect("the child exits in time after SIGTERM")
        .expect("the child can be waited for")
}
