//! jepsen-lite: runs partition experiments against a real raftkv cluster and checks what clients saw.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod net;
pub mod report;
