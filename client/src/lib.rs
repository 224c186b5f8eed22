//! raftkv client library: leader discovery, failover, retries with backoff under a deadline, exactly-once
//! write sessions, typed errors, and reads that return their read envelope. The `raftkv` CLI is built on it.

mod breaker;
mod client;
pub mod error;
mod lease;
mod lock;
pub mod names;
mod tls;
pub mod txn;

pub use breaker::{ENDPOINT_COOLDOWN_INITIAL, ENDPOINT_COOLDOWN_MAX};
pub use client::{
    CasResult, Client, ClientConfig, Consistency, Expected, GetResult, KeyValue, ReadEnvelope,
    ReadOptions, ScanRange, ScanResult, Session, Watch, WatchOptions, ATTEMPTS_MAX,
    BACKOFF_INITIAL, BACKOFF_MAX, CONNECT_TIMEOUT_DEFAULT, OVERALL_TIMEOUT_DEFAULT,
    REQUEST_TIMEOUT_DEFAULT, WATCH_RESUMES_MAX,
};
pub use error::ClientError;
pub use lease::LeaseStatus;
pub use lock::{lock_prefix, LockHold, LOCK_RECHECK_INTERVAL, LOCK_WAITERS_MAX};
pub use raftkv_proto::kv::{
    EventKind, Member, MembersResponse, Role, StatusResponse, WatchEvent, WatchResponse,
};
pub use tls::{TlsConfig, TLS_HANDSHAKE_TIMEOUT};
