//! Free ports on 127.0.0.1: bound to port 0, read, released. The port is free when this returns; another
//! process could take it before the node binds it, which is why every cluster asks the OS rather than picking
//! numbers (fixed ranges collide with benchmarks and other suites running on the same machine).

use std::net::{SocketAddr, TcpListener};

/// A free address on 127.0.0.1.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A free port on 127.0.0.1; panics if the OS has none to give (a test cannot go on without one).
pub fn free_port() -> u16 {
    free_addr()
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
        .port()
}
