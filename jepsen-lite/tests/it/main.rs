//! The integration tests of jepsen-lite, one binary: the history checkers on histories with known verdicts,
//! the proxy mesh on real sockets, partitions of real raftkv clusters, short `jepsen-lite run`s and the demo,
//! the HTML report, and the playground in a real browser.

mod checker;
mod net;
mod partition;
mod report;
mod run;
mod ui;
