//! The integration tests of jepsen-lite, one binary: the history checkers on histories with known verdicts,
//! the proxy mesh on real sockets, and partitions of real raftkv clusters.

mod checker;
mod net;
mod partition;
