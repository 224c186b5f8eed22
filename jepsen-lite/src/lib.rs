//! jepsen-lite: runs partition experiments against a real raftkv cluster and checks what clients saw.

pub mod availability;
pub mod checker;
pub mod clock;
pub mod cluster;
pub mod demo;
pub mod faults;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod observer;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod ui;
pub mod workload;
