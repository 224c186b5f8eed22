//! `Client`: talks to a raftkv cluster through a list of endpoints, and `Session`: a serial writer and
//! reader that carries exactly-once numbering and read-your-writes forward.
//!
//! The client finds the leader and caches it, follows leader hints, fails over to other endpoints, and
//! retries with exponential backoff and jitter until an overall deadline. Every attempt has a connect deadline
//! and a request deadline. Every write carries a session id and sequence number, so retrying it after a
//! timeout or a lost connection applies it at most once; a write whose fate is unknown when the deadline
//! passes is `ClientError::Indeterminate`, never reported as failed.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_proto::kv;
use raftkv_proto::kv::admin_client::AdminClient;
use raftkv_proto::kv::kv_client::KvClient;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

use crate::breaker::Breakers;
use crate::error::{classify, from_status, never_connected, Attempt, ClientError};
use crate::tls::{handshake_failure, TlsConfig};

/// How long dialling a node may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(500);
/// Deadline of one attempt.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Deadline of a whole call, retries included.
pub const OVERALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// First retry delay; it doubles up to `BACKOFF_MAX`, with up to 50% random jitter.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(20);
/// Longest delay between retries.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Most attempts of one call, whatever the deadline.
pub const ATTEMPTS_MAX: usize = 64;
/// Largest response the client accepts (a big scan).
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How a client connects and how long it tries.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub overall_timeout: Duration,
    /// Dial nodes over TLS, trusting this CA (and presenting a certificate if it has one); plaintext when
    /// `None`.
    pub tls: Option<TlsConfig>,
}

impl ClientConfig {
    /// Defaults for the given endpoints (`HOST:PORT`).
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            overall_timeout: OVERALL_TIMEOUT_DEFAULT,
            tls: None,
        }
    }
}

/// Consistency a read asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    #[default]
    Linearizable,
    Lease,
    Stale,
}

/// Options of one read.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    pub consistency: Consistency,
    /// With `Stale`: refuse if the node has not heard from a leader within this bound.
    pub max_staleness: Option<Duration>,
    /// Wait until the node's store has reached at least this revision.
    pub min_revision: u64,
    /// Read the store as it was at this revision (0: the current one).
    pub revision: u64,
    /// Send the read to this endpoint only, with no failover.
    pub endpoint: Option<String>,
}

/// What a cas compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    Value(Vec<u8>),
    Revision(u64),
    Absent,
}

/// A key with its revisions.
pub type KeyValue = kv::KeyValue;
/// What a read got: who served it, how, how stale.
pub type ReadEnvelope = kv::ReadEnvelope;

/// A read of one key.
#[derive(Clone, Debug)]
pub struct GetResult {
    pub kv: Option<KeyValue>,
    pub envelope: ReadEnvelope,
}

/// A scan.
#[derive(Clone, Debug)]
pub struct ScanResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub envelope: ReadEnvelope,
}

/// The outcome of a cas.
#[derive(Clone, Debug)]
pub struct CasResult {
    pub swapped: bool,
    pub revision: u64,
    pub current: Option<KeyValue>,
}

/// What a scan covers.
#[derive(Clone, Debug)]
pub enum ScanRange {
    Prefix(Vec<u8>),
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

/// A write as sent, kept so a retry sends exactly the same request.
#[derive(Clone, Debug)]
enum Write {
    Put(kv::PutRequest),
    Delete(kv::DeleteRequest),
    Cas(kv::CasRequest),
    Compact(kv::CompactRequest),
    Txn(kv::TxnRequest),
}

/// A write's response.
#[derive(Clone, Debug)]
enum Written {
    Put(kv::PutResponse),
    Delete(kv::DeleteResponse),
    Cas(kv::CasResponse),
    Compact(kv::CompactResponse),
    Txn(kv::TxnResponse),
}

struct Shared {
    config: ClientConfig,
    /// Known endpoints: the configured ones, plus leaders learned from hints.
    endpoints: Mutex<Vec<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Index into `endpoints` of the node believed to be the leader.
    leader: Mutex<Option<String>>,
    /// Rotates the first endpoint tried when no leader is known.
    next_endpoint: AtomicU64,
    /// Endpoints that refused a connection lately, skipped for a cool-down. A std mutex, never held across
    /// an await.
    breakers: Mutex<Breakers>,
}

/// A handle to a cluster. Cheap to clone; clones share channels and the leader cache.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// The tonic endpoint for `endpoint` (`HOST:PORT`): `https` with the configured TLS, else `http`.
fn endpoint_for(config: &ClientConfig, endpoint: &str) -> Result<Endpoint, ClientError> {
    let bad = |error: tonic::transport::Error| {
        ClientError::InvalidArgument(format!("bad endpoint {endpoint:?}: {error}"))
    };
    match &config.tls {
        Some(tls) => Endpoint::from_shared(format!("https://{endpoint}"))
            .map_err(bad)?
            .tls_config(tls.tonic())
            .map_err(|error| {
                ClientError::TlsConfig(format!(
                    "cannot use the TLS settings for {endpoint}: {error}"
                ))
            }),
        None => Endpoint::from_shared(format!("http://{endpoint}")).map_err(bad),
    }
}

fn random_session_id() -> u64 {
    rand::rng().random_range(1..u64::MAX)
}

fn consistency(consistency: Consistency) -> kv::Consistency {
    match consistency {
        Consistency::Linearizable => kv::Consistency::Linearizable,
        Consistency::Lease => kv::Consistency::Lease,
        Consistency::Stale => kv::Consistency::Stale,
    }
}

fn read_options(options: &ReadOptions) -> kv::ReadOptions {
    kv::ReadOptions {
        consistency: consistency(options.consistency) as i32,
        max_staleness_ms: options
            .max_staleness
            .map_or(0, |bound| bound.as_millis().max(1) as u64),
        min_revision: options.min_revision,
        revision: options.revision,
    }
}

impl Client {
    /// A client for the given configuration. Connects lazily: no node needs to be up yet.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no endpoints given".to_string(),
            ));
        }
        for endpoint in &config.endpoints {
            endpoint_for(&config, endpoint)?;
        }
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints: Mutex::new(config.endpoints.clone()),
                config,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next_endpoint: AtomicU64::new(0),
                breakers: Mutex::new(Breakers::default()),
            }),
        })
    }

    /// A client with default timeouts.
    pub fn connect(endpoints: Vec<String>) -> Result<Self, ClientError> {
        Client::new(ClientConfig::new(endpoints))
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// A new session: a serial writer with its own exactly-once numbering and read-your-writes tracking.
    pub fn session(&self) -> Session {
        Session {
            client: self.clone(),
            client_id: random_session_id(),
            sequence: 0,
            min_revision: 0,
        }
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, ClientError> {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = endpoint_for(&self.shared.config, endpoint)?
            .connect_timeout(self.shared.config.connect_timeout)
            .timeout(self.shared.config.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    pub(crate) fn kv_client(&self, endpoint: &str) -> Result<KvClient<Channel>, ClientError> {
        Ok(KvClient::new(self.channel(endpoint)?).max_decoding_message_size(RESPONSE_BYTES_MAX))
    }

    fn admin_client(&self, endpoint: &str) -> Result<AdminClient<Channel>, ClientError> {
        Ok(AdminClient::new(self.channel(endpoint)?).max_decoding_message_size(RESPONSE_BYTES_MAX))
    }

    fn endpoints(&self) -> Vec<String> {
        self.shared
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The endpoint to try next: the cached leader if `prefer_leader` and it is not cooling down after a
    /// failure, else the next endpoint in turn that is not. `None` when every endpoint is cooling down.
    fn pick(&self, prefer_leader: bool) -> Option<String> {
        let now = Instant::now();
        let leader = if prefer_leader {
            self.shared
                .leader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        } else {
            None
        };
        let endpoints = self.endpoints();
        let mut breakers = self
            .shared
            .breakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(leader) = leader {
            if breakers.admit(&leader, now) {
                return Some(leader);
            }
        }
        let first = self.shared.next_endpoint.fetch_add(1, Ordering::Relaxed) as usize;
        (0..endpoints.len())
            .map(|offset| &endpoints[(first + offset) % endpoints.len()])
            .find(|endpoint| breakers.admit(endpoint, now))
            .cloned()
    }

    /// Whether `endpoint` is not cooling down after a failed connection (a leader hint to a node that just
    /// refused one is not followed: the hint is older than the failure).
    fn may_try(&self, endpoint: &str) -> bool {
        self.shared
            .breakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(endpoint, Instant::now())
    }

    /// Records how an attempt on `endpoint` ended for its breaker: a connection that could not be made or
    /// broke trips it; any answer closes it.
    fn record_attempt(&self, endpoint: &str, result: Result<(), &tonic::Status>) {
        let mut breakers = self
            .shared
            .breakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Err(status) if is_connection_failure(status) => {
                breakers.failed(endpoint, Instant::now())
            }
            _ => breakers.succeeded(endpoint),
        }
    }

    fn set_leader(&self, leader: Option<String>) {
        if let Some(addr) = &leader {
            let mut endpoints = self
                .shared
                .endpoints
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !endpoints.contains(addr) {
                endpoints.push(addr.clone());
            }
        }
        *self
            .shared
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = leader;
    }

    /// A read answered by a node that says it is the leader names the leader: later linearizable and lease
    /// reads go straight to it (writes teach the same; without it, a client that only reads would send
    /// two reads in three to followers, which must ask the leader for every one).
    ///
    /// Only a read the node confirmed with a quorum (linearizable, or lease) counts: a deposed leader that
    /// has not learnt it yet still answers stale reads as leader. A read from the cached leader that says it
    /// is no longer leader forgets it.
    fn learn_leader_from(&self, endpoint: &str, envelope: &kv::ReadEnvelope) {
        let confirmed = envelope.consistency == kv::Consistency::Linearizable as i32
            || envelope.consistency == kv::Consistency::Lease as i32;
        let mut leader = self
            .shared
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if envelope.role == kv::Role::Leader as i32 {
            if confirmed && leader.as_deref() != Some(endpoint) {
                *leader = Some(endpoint.to_string());
            }
        } else if leader.as_deref() == Some(endpoint) {
            *leader = None;
        }
    }

    fn forget_leader(&self, endpoint: &str) {
        let mut leader = self
            .shared
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if leader.as_deref() == Some(endpoint) {
            *leader = None;
        }
    }

    pub(crate) fn request<T>(&self, message: T, deadline: Instant) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let remaining = deadline.saturating_duration_since(Instant::now());
        request.set_timeout(
            remaining
                .min(self.shared.config.request_timeout)
                .max(Duration::from_millis(1)),
        );
        request
    }

    /// Runs `call` against endpoints until it succeeds, fails for good, or the deadline passes.
    /// `pinned` sends every attempt to one endpoint and does not retry transport failures. Without it, an
    /// attempt goes to the leader if `prefer_leader` and one is known, else to the endpoints in turn, skipping
    /// those cooling down after a failed connection: when every endpoint refused a connection during this call it
    /// ends at once; when some cool down after failures of earlier calls it waits for the first to be let through.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        is_write: bool,
        prefer_leader: bool,
        pinned: Option<&str>,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.shared.config.overall_timeout;
        let mut backoff = BACKOFF_INITIAL;
        let mut may_have_applied = false;
        let mut last_error = String::new();
        let mut hinted: Option<String> = None;
        let mut every_endpoint_down = false;
        // Endpoints that refused a connection (or broke it) during this call.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for _ in 0..ATTEMPTS_MAX {
            let endpoint = match (pinned, hinted.take()) {
                (Some(pinned), _) => pinned.to_string(),
                (None, Some(hint)) => hint,
                (None, None) => match self.pick(prefer_leader) {
                    Some(endpoint) => endpoint,
                    None => {
                        let endpoints = self.endpoints();
                        if endpoints.iter().all(|endpoint| refused.contains(endpoint)) {
                            // Every node refused a connection during this call: say so now, not at the deadline.
                            every_endpoint_down = true;
                            break;
                        }
                        // The others cool down after failures of earlier calls, or are being probed: wait for the
                        // first to be let through, within the deadline.
                        let now = Instant::now();
                        let wake = self
                            .shared
                            .breakers
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .next_admission(&endpoints, now)
                            .max(now + BACKOFF_INITIAL);
                        if wake >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(wake.into()).await;
                        continue;
                    }
                },
            };
            let result = call(endpoint.clone(), deadline).await;
            match result {
                Ok(value) => {
                    self.record_attempt(&endpoint, Ok(()));
                    if pinned.is_none() && is_write {
                        self.set_leader(Some(endpoint));
                    }
                    return Ok(value);
                }
                Err(status) => {
                    if let Some(error) = handshake_failure(&status, &endpoint) {
                        // The node is up; the TLS settings are wrong, and no other node will differ.
                        return Err(error);
                    }
                    self.record_attempt(&endpoint, Err(&status));
                    if is_connection_failure(&status) {
                        refused.insert(endpoint.clone());
                    }
                    last_error = format!("{endpoint}: {}", status.message());
                    match classify(&status, is_write) {
                        Attempt::Fail => return Err(from_status(&status)),
                        Attempt::Retry {
                            leader_addr,
                            may_have_applied: maybe,
                        } => {
                            may_have_applied |= maybe;
                            if let Some(pinned) = pinned {
                                if !crate::error::from_node(&status) {
                                    return Err(ClientError::Connection {
                                        endpoint: pinned.to_string(),
                                        message: status.message().to_string(),
                                    });
                                }
                                return Err(from_status(&status));
                            }
                            self.forget_leader(&endpoint);
                            let hint = leader_addr
                                .filter(|leader| *leader != endpoint)
                                .filter(|leader| self.may_try(leader));
                            if let Some(leader) = hint {
                                // Follow the hint at once: the request was not applied anywhere.
                                self.set_leader(Some(leader.clone()));
                                hinted = Some(leader);
                                continue;
                            }
                            if is_connection_failure(&status) {
                                // Another node may answer at once; the breaker keeps this one out.
                                continue;
                            }
                        }
                    }
                }
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            let pause = backoff.mul_f64(jitter);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        if may_have_applied {
            return Err(ClientError::Indeterminate {
                message: last_error,
            });
        }
        if is_write || every_endpoint_down {
            return Err(ClientError::Unavailable {
                message: last_error,
                endpoints: self.endpoints(),
            });
        }
        Err(ClientError::DeadlineExceeded {
            elapsed: started.elapsed(),
            last_error,
        })
    }

    async fn write(&self, write: Write) -> Result<Written, ClientError> {
        self.with_retries(true, true, None, |endpoint, deadline| {
            let write = write.clone();
            async move {
                let mut client = self
                    .kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?;
                match write {
                    Write::Put(request) => client
                        .put(self.request(request, deadline))
                        .await
                        .map(|r| Written::Put(r.into_inner())),
                    Write::Delete(request) => client
                        .delete(self.request(request, deadline))
                        .await
                        .map(|r| Written::Delete(r.into_inner())),
                    Write::Cas(request) => client
                        .cas(self.request(request, deadline))
                        .await
                        .map(|r| Written::Cas(r.into_inner())),
                    Write::Compact(request) => client
                        .compact(self.request(request, deadline))
                        .await
                        .map(|r| Written::Compact(r.into_inner())),
                    Write::Txn(request) => client
                        .txn(self.request(request, deadline))
                        .await
                        .map(|r| Written::Txn(r.into_inner())),
                }
            }
        })
        .await
    }

    /// Writes `value` under `key` in a one-write session; returns the write's revision.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, ClientError> {
        self.session().put(key, value).await
    }

    /// Puts `key` attached to lease `lease` (0: none): the key is deleted when the lease ends. An unknown
    /// lease is refused (`LeaseNotFound`), nothing written.
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<u64, ClientError> {
        self.session().put_with_lease(key, value, lease).await
    }

    /// Deletes `key`; returns the revision and whether it existed.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<(u64, bool), ClientError> {
        self.session().delete(key).await
    }

    /// Compare-and-swap.
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Expected,
        new_value: impl Into<Vec<u8>>,
    ) -> Result<CasResult, ClientError> {
        self.session().cas(key, expected, new_value).await
    }

    /// Watches `key` (or the range `options.range_end` makes of it) from `options.start_revision`: every
    /// change once, in revision order. Starting the stream is retried like a read; the stream itself lasts as
    /// long as it is read (no deadline).
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: &WatchOptions,
    ) -> Result<Watch, ClientError> {
        let request = kv::WatchRequest {
            key: key.into(),
            range_end: options.range_end.clone(),
            start_revision: options.start_revision,
            prev_kv: options.prev_kv,
        };
        let pinned = options.endpoint.clone();
        let (stream, next) = self.open_watch(&request, pinned.as_deref()).await?;
        Ok(Watch {
            client: self.clone(),
            request,
            pinned,
            stream,
            next,
        })
    }

    /// Starts a watch stream on the first node that serves it (or on `pinned` only); returns it with the first
    /// revision it reports.
    async fn open_watch(
        &self,
        request: &kv::WatchRequest,
        pinned: Option<&str>,
    ) -> Result<(tonic::Streaming<kv::WatchResponse>, u64), ClientError> {
        self.with_retries(false, false, pinned, |endpoint, _deadline| {
            let request = request.clone();
            async move {
                let mut client = self
                    .kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?;
                let response = client.watch(tonic::Request::new(request.clone())).await?;
                // The node resolves a start revision of 0; an older node does not say, and a resumed watch
                // then starts from the one asked for.
                let first = response
                    .metadata()
                    .get(raftkv_proto::contract::WATCH_START_KEY)
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                    .unwrap_or(request.start_revision);
                Ok((response.into_inner(), first))
            }
        })
        .await
    }

    /// Runs a transaction in a one-write session: its compares, then the branch they choose, at one revision.
    pub async fn txn(&self, txn: crate::txn::Txn) -> Result<kv::TxnResponse, ClientError> {
        self.session().txn(txn).await
    }

    /// Discards the history before `revision` (through Raft, on every node). Returns the store's revision
    /// when it was applied. Refused (`Compacted`, `FutureRevision`) if the history is already compacted that
    /// far or the store has not reached `revision`.
    pub async fn compact(&self, revision: u64) -> Result<kv::CompactResponse, ClientError> {
        match self
            .write(Write::Compact(kv::CompactRequest { revision }))
            .await?
        {
            Written::Compact(response) => Ok(response),
            _ => Err(ClientError::Other(
                "the node answered a compaction with another response".to_string(),
            )),
        }
    }

    /// Reads one key.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: &ReadOptions,
    ) -> Result<GetResult, ClientError> {
        let key = key.into();
        let prefer_leader = matches!(
            options.consistency,
            Consistency::Linearizable | Consistency::Lease
        );
        let request = kv::GetRequest {
            key,
            read: Some(read_options(options)),
        };
        let pinned = options.endpoint.as_deref();
        self.with_retries(false, prefer_leader, pinned, |endpoint, deadline| {
            let request = request.clone();
            async move {
                let mut client = self
                    .kv_client(&endpoint)
                    .map_err(|error| tonic::Status::internal(error.to_string()))?;
                let response = client
                    .get(self.request(request, deadline))
                    .await?
                    .into_inner();
                let envelope = response.envelope.unwrap_or_default();
                if prefer_leader && options.endpoint.is_none() {
                    self.learn_leader_from(&endpoint, &envelope);
                }
                Ok(GetResult {
                    kv: response.kv,
                    envelope,
                })
            }
        })
        .await
    }

    /// Reads the keys in a range or with a prefix, at most `limit` (0: the server's default).
    pub async fn scan(
        &self,
        range: ScanRange,
        limit: u32,
        options: &ReadOptions,
    ) -> Result<ScanResult, ClientError> {
        let (prefix, start, end) = match range {
            ScanRange::Prefix(prefix) => (prefix, Vec::new(), Vec::new()),
            ScanRange::Range { start, end } => (Vec::new(), start, end.unwrap_or_default()),
        };
        let request = kv::ScanRequest {
            prefix,
            start,
            end,
            limit,
            read: Some(read_options(options)),
        };
        self.with_retries(
            false,
            true,
            options.endpoint.as_deref(),
            |endpoint, deadline| {
                let request = request.clone();
                async move {
                    let mut client = self
                        .kv_client(&endpoint)
                        .map_err(|error| tonic::Status::internal(error.to_string()))?;
                    let response = client
                        .scan(self.request(request, deadline))
                        .await?
                        .into_inner();
                    let envelope = response.envelope.unwrap_or_default();
                    if options.endpoint.is_none() {
                        self.learn_leader_from(&endpoint, &envelope);
                    }
                    Ok(ScanResult {
                        kvs: response.kvs,
                        more: response.more,
                        envelope,
                    })
                }
            },
        )
        .await
    }

    /// The status of one node, asked directly (no failover).
    pub async fn status_of(&self, endpoint: &str) -> Result<kv::StatusResponse, ClientError> {
        let mut client = self.admin_client(endpoint)?;
        let deadline = Instant::now() + self.shared.config.request_timeout;
        match client
            .status(self.request(kv::StatusRequest {}, deadline))
            .await
        {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if !crate::error::from_node(&status) => Err(handshake_failure(
                &status, endpoint,
            )
            .unwrap_or_else(|| match status.code() {
                tonic::Code::Unauthenticated => {
                    ClientError::Unauthenticated(status.message().to_string())
                }
                _ => ClientError::Connection {
                    endpoint: endpoint.to_string(),
                    message: status.message().to_string(),
                },
            })),
            Err(status) => Err(from_status(&status)),
        }
    }

    /// The status of every configured endpoint, each with its own result, asked concurrently.
    pub async fn status_all(&self) -> Vec<(String, Result<kv::StatusResponse, ClientError>)> {
        let endpoints = self.shared.config.endpoints.clone();
        let calls = endpoints.iter().map(|endpoint| self.status_of(endpoint));
        let results = futures::future::join_all(calls).await;
        endpoints.into_iter().zip(results).collect()
    }

    async fn admin<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminClient<Channel>, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_retries(false, true, None, |endpoint, deadline| {
            let client = self.admin_client(&endpoint);
            let call = client.map(|client| call(client, deadline));
            async move {
                match call {
                    Ok(call) => call.await,
                    Err(error) => Err(tonic::Status::internal(error.to_string())),
                }
            }
        })
        .await
    }

    /// The cluster's members, as the leader (or any node) sees them.
    pub async fn members(&self) -> Result<kv::MembersResponse, ClientError> {
        self.admin(|mut client, deadline| async move {
            Ok(client
                .list_members(self.request(kv::ListMembersRequest {}, deadline))
                .await?
                .into_inner())
        })
        .await
    }

    /// Adds a node as a learner; it catches up in the background.
    pub async fn add_learner(
        &self,
        node_id: u64,
        address: &str,
    ) -> Result<kv::MembersResponse, ClientError> {
        let request = kv::AddLearnerRequest {
            node_id,
            address: address.to_string(),
        };
        self.admin(|mut client, deadline| {
            let request = request.clone();
            async move {
                Ok(client
                    .add_learner(self.request(request, deadline))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, node_id: u64) -> Result<kv::MembersResponse, ClientError> {
        self.admin(|mut client, deadline| async move {
            Ok(client
                .promote(self.request(kv::PromoteRequest { node_id }, deadline))
                .await?
                .into_inner())
        })
        .await
    }

    /// Hands leadership to the voter `node_id`; returns once it leads.
    pub async fn move_leader(&self, node_id: u64) -> Result<kv::MoveLeaderResponse, ClientError> {
        self.admin(|mut client, deadline| async move {
            Ok(client
                .move_leader(self.request(kv::MoveLeaderRequest { node_id }, deadline))
                .await?
                .into_inner())
        })
        .await
    }

    /// Removes a node from the cluster.
    pub async fn remove_member(&self, node_id: u64) -> Result<kv::MembersResponse, ClientError> {
        self.admin(|mut client, deadline| async move {
            Ok(client
                .remove_member(self.request(kv::RemoveMemberRequest { node_id }, deadline))
                .await?
                .into_inner())
        })
        .await
    }
}

/// True when a status says the node could not be reached at all: the connection was refused or never made,
/// or it broke. Such a node is skipped for a cool-down. A node that answered, even with an error, is alive;
/// a request that ran out of time proves nothing about the node and does not count.
fn is_connection_failure(status: &tonic::Status) -> bool {
    !crate::error::from_node(status)
        && (never_connected(status) || status.code() == tonic::Code::Unavailable)
}

/// What a watch asks for besides its key.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Empty: just the key; a single zero byte: every key from it on; otherwise the keys in [key, range_end)
    /// (`txn::prefix_end` gives a prefix's end).
    pub range_end: Vec<u8>,
    /// The first revision to report (0: changes after the current one).
    pub start_revision: u64,
    /// Give each event the key's previous version.
    pub prev_kv: bool,
    /// Watch on this node (HOST:PORT) only; otherwise the first node that answers serves the stream.
    pub endpoint: Option<String>,
}

/// Times one `Watch::next` call resumes a watch on another node before it gives up.
pub const WATCH_RESUMES_MAX: usize = 8;

/// A stream of changes (`Client::watch`), served by one node at a time.
pub struct Watch {
    client: Client,
    request: kv::WatchRequest,
    pinned: Option<String>,
    stream: tonic::Streaming<kv::WatchResponse>,
    /// The first revision not yet delivered: where a resumed stream starts.
    next: u64,
}

impl Watch {
    /// The next changes, in revision order; waits for them (a response without events is a progress report,
    /// sent while the store changes with nothing for this watch). When the serving node goes away (its connection
    /// breaks, it shuts down) the watch resumes on another node from the first revision not yet delivered,
    /// so no change is lost or repeated (at most `WATCH_RESUMES_MAX` times per call; a pinned watch does not
    /// resume). `None` once a pinned node ended the stream; an error (e.g. `Compacted` for a start revision
    /// below the compaction point) ends the watch.
    pub async fn next(&mut self) -> Result<Option<kv::WatchResponse>, ClientError> {
        let mut resumes = 0;
        loop {
            let ended = match self.stream.message().await {
                Ok(Some(response)) => {
                    match response.events.last().and_then(|event| event.kv.as_ref()) {
                        Some(last) => self.next = last.mod_revision + 1,
                        // A progress report: everything through `revision` is delivered.
                        None if response.events.is_empty() => {
                            self.next = self.next.max(response.revision + 1)
                        }
                        None => {}
                    }
                    return Ok(Some(response));
                }
                Ok(None) => None,
                Err(status) => Some(status),
            };
            let resumable = self.pinned.is_none()
                && ended.as_ref().is_none_or(|status| {
                    matches!(
                        crate::error::kind(status),
                        None | Some(raftkv_proto::contract::ErrorKind::ShuttingDown)
                    )
                });
            if !resumable || resumes >= WATCH_RESUMES_MAX {
                return match ended {
                    None => Ok(None),
                    Some(status) => Err(from_status(&status)),
                };
            }
            resumes += 1;
            self.request.start_revision = self.next;
            let (stream, _) = self.client.open_watch(&self.request, None).await?;
            self.stream = stream;
        }
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next
    }
}

/// A serial client session: numbers its writes for exactly-once application and carries the highest revision
/// it wrote or read into every later read (`min_revision`), giving read-your-writes and monotonic reads on any
/// node. One write at a time (methods take `&mut self`).
pub struct Session {
    client: Client,
    client_id: u64,
    sequence: u64,
    min_revision: u64,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.client_id
    }

    /// The highest revision this session has written or read.
    pub fn min_revision(&self) -> u64 {
        self.min_revision
    }

    fn next(&mut self) -> Option<kv::Session> {
        self.sequence += 1;
        Some(kv::Session {
            client_id: self.client_id,
            sequence: self.sequence,
        })
    }

    fn saw(&mut self, revision: u64) {
        self.min_revision = self.min_revision.max(revision);
    }

    /// Writes `value` under `key`; returns the revision.
    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, ClientError> {
        self.put_with_lease(key, value, 0).await
    }

    /// Puts `key` attached to lease `lease` (0: none).
    pub async fn put_with_lease(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<u64, ClientError> {
        let request = kv::PutRequest {
            key: key.into(),
            value: value.into(),
            session: self.next(),
            lease,
        };
        match self.client.write(Write::Put(request)).await? {
            Written::Put(response) => {
                self.saw(response.revision);
                Ok(response.revision)
            }
            other => Err(ClientError::Other(format!("put answered with {other:?}"))),
        }
    }

    /// Deletes `key`; returns the revision and whether it existed.
    pub async fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<(u64, bool), ClientError> {
        let request = kv::DeleteRequest {
            key: key.into(),
            session: self.next(),
        };
        match self.client.write(Write::Delete(request)).await? {
            Written::Delete(response) => {
                self.saw(response.revision);
                Ok((response.revision, response.deleted))
            }
            other => Err(ClientError::Other(format!(
                "delete answered with {other:?}"
            ))),
        }
    }

    /// Compare-and-swap.
    pub async fn cas(
        &mut self,
        key: impl Into<Vec<u8>>,
        expected: Expected,
        new_value: impl Into<Vec<u8>>,
    ) -> Result<CasResult, ClientError> {
        let expected = Some(match expected {
            Expected::Value(value) => kv::cas_request::Expected::ExpectedValue(value),
            Expected::Revision(revision) => kv::cas_request::Expected::ExpectedRevision(revision),
            Expected::Absent => kv::cas_request::Expected::ExpectedAbsent(true),
        });
        let request = kv::CasRequest {
            key: key.into(),
            new_value: new_value.into(),
            expected,
            session: self.next(),
        };
        match self.client.write(Write::Cas(request)).await? {
            Written::Cas(response) => {
                self.saw(response.revision);
                Ok(CasResult {
                    swapped: response.swapped,
                    revision: response.revision,
                    current: response.current,
                })
            }
            other => Err(ClientError::Other(format!("cas answered with {other:?}"))),
        }
    }

    /// Runs a transaction, exactly once (a retry gets the first attempt's response).
    pub async fn txn(&mut self, txn: crate::txn::Txn) -> Result<kv::TxnResponse, ClientError> {
        let request = txn.into_request(self.next());
        match self.client.write(Write::Txn(request)).await? {
            Written::Txn(response) => {
                self.saw(response.revision);
                Ok(response)
            }
            other => Err(ClientError::Other(format!(
                "a transaction was answered with {other:?}"
            ))),
        }
    }

    /// Reads `key` at no older a revision than this session has seen.
    pub async fn get(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: &ReadOptions,
    ) -> Result<GetResult, ClientError> {
        let mut options = options.clone();
        options.min_revision = options.min_revision.max(self.min_revision);
        let result = self.client.get(key, &options).await?;
        self.saw(result.envelope.revision);
        Ok(result)
    }
}
