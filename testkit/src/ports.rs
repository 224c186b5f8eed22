//! Free ports on 127.0.0.1 for test nodes: a port is found free (bound, read, released) and then left for a
//! node to bind. Two things could take it in between, and both made suites fail now and then ("Address
//! already in use", or two nodes of one cluster given one port):
//! - the OS hands out ports of its ephemeral range (32768-60999 on Linux) to every `bind(0)` and outgoing
//!   connection, and may hand a just-released one out again; so ports come from `TEST_PORTS`, below that range
//!   and away from the local cluster's 7001+ and etcd's 2379/2380;
//! - tests run in parallel threads of one process; so no port is handed out twice by one process.
//!
//! Another process picking the same port in the moment between the check and the node's bind is still
//! possible, and unlikely: ports are drawn at random from the range.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where test nodes' ports come from: below Linux's ephemeral range, above every fixed port of this
/// project (local cluster 7001+, scripts 6400-6600, etcd 2379/2380).
pub const TEST_PORTS: Range<u16> = 20_000..32_000;
/// Ports tried before giving up.
pub const FREE_PORT_ATTEMPTS: usize = 1_000;

/// Every port this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free address on 127.0.0.1, never one this process handed out before.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut draw = Draw::seeded();
    for _ in 0..FREE_PORT_ATTEMPTS {
        let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
        let port = TEST_PORTS.start + (draw.next() % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            let addr = listener.local_addr()?;
            handed_out.insert(port);
            return Ok(addr);
        }
    }
    Err(std::io::Error::other(format!(
        "no free port in {TEST_PORTS:?} after {FREE_PORT_ATTEMPTS} tries"
    )))
}

/// A free port on 127.0.0.1; panics if none is left to give (a test cannot go on without one).
pub fn free_port() -> u16 {
    free_addr()
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
        .port()
}

/// A small generator of port numbers (xorshift), seeded from the clock and the process id so that two
/// processes start at different places.
struct Draw(u64);

impl Draw {
    fn seeded() -> Draw {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Draw((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_in_the_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|port| TEST_PORTS.contains(port)));
    }
}
