//! One directed link i->j of the partition mesh: a TCP proxy that listens on the link's own port and forwards
//! each accepted connection to node j's real address, obeying the link's current [`LinkState`].
//!
//! A connection accepted on link i->j was opened by node i, so it carries i's requests (the *forward* direction)
//! and j's responses (the *backward* direction). The link state governs both byte directions of those
//! connections; link j->i is a different proxy with its own state. Every connection watches the state through a
//! `watch` channel, so a change applies to existing connections at once, not only to new ones.
//!
//! Each byte direction is a reader and a writer joined by a bounded queue of segments. The reader stamps each
//! segment with its arrival time; the writer delivers it when the state allows: at once (`Pass`), no earlier
//! than arrival + delay (`Delay`), or not yet (`Cut`, and the forward direction of `OneWay`). Held segments are
//! kept, not dropped, and delivered in order after a heal, as TCP would after its retransmissions get through;
//! when the queue is full the reader stops reading and the kernel buffers push back on the sender. `Reset`
//! closes every connection with a TCP reset and resets new ones on accept.
//!
//! A mesh attributed by header has no proxy per link: a [`Front`] listens in front of node j, every other node
//! dials it, and each accepted connection is bound to link i->j once one of its requests names its sender i
//! (see `sniff` for the reading of request heads, which does no I/O). The connection then follows link i->j's
//! state exactly as a connection accepted on that link's own proxy would. The front dials nothing before the
//! connection's first request head is complete; requests that name no sender (etcd's RTT probes, `/version`)
//! pass on a connection not yet bound, and the first head that names a sender binds it before any of its bytes
//! go on. A sender whose member id is registered for no node yet passes until it is registered (members start
//! before their ids can be read, and cannot start without their peers), then binds at once.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::sniff::{parse_head, MemberId, RequestScanner, SniffError, Step, HEAD_BYTES_MAX};
use super::NetError;

/// Largest chunk read from a socket at once; one queued segment holds at most this many bytes.
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;

/// Segments queued per byte direction of one connection (at most `CHUNK_BYTES_MAX` each, so 1 MiB). When the
/// queue is full, because the link is cut or delayed, the reader stops reading and the sender's kernel buffer fills.
pub const QUEUE_SEGMENTS_MAX: usize = 64;

/// Open connections per link. A connection accepted beyond this is reset at once and a warning is logged;
/// a raftkv node keeps one connection per peer, so reaching this means something leaks connections.
pub const CONNECTIONS_PER_LINK_MAX: usize = 64;

/// Bytes kept from a new connection while its target cannot be dialled yet (the link is cut); beyond this the
/// proxy stops reading from it until the link passes.
pub const EARLY_BYTES_MAX: usize = 64 * 1024;

/// How long the proxy waits to dial the target node (and hand it the bytes kept meanwhile) before it resets
/// the accepted connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Open connections per front, bound to a link or not. An etcd member keeps a few per peer (two streams,
/// pipeline and probe connections), so reaching this means something leaks connections; a connection accepted
/// beyond it is reset at once and a warning is logged.
pub const CONNECTIONS_PER_FRONT_MAX: usize = 256;

/// How long a front waits for a new connection's first request head before it resets the connection.
pub const FIRST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

// A first head and the read that completed it fit in the bytes kept before dialling.
const _: () = assert!(HEAD_BYTES_MAX + CHUNK_BYTES_MAX <= EARLY_BYTES_MAX);

/// What a link does to the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    /// Bytes flow both ways, as fast as the proxy can copy them.
    #[default]
    Pass,
    /// No bytes flow either way; connections stay open and bytes are held until the link passes again. A new
    /// connection is accepted, but the target is not dialled until the link passes again.
    Cut,
    /// Every connection is closed with a TCP reset; a new one is reset as soon as it is accepted.
    Reset,
    /// Each chunk is delivered, in order, no earlier than its arrival plus this delay, in both directions, so
    /// a round trip over the link grows by at least twice the delay.
    Delay(Duration),
    /// Bytes from the dialling node toward the target are held (as in `Cut`); bytes back still flow. New
    /// connections wait, as a handshake cannot complete over a one-way cut.
    OneWay,
}

/// One byte direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the node that dialled (i on link i->j) toward the target node j: requests.
    Forward,
    /// From the target node j back to the dialling node i: responses.
    Backward,
}

/// What a link state means for a segment travelling in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Deliver { delay: Duration },
    Hold,
    Close,
}

impl LinkState {
    fn action(self, direction: Direction) -> Action {
        match (self, direction) {
            (LinkState::Pass, _) => Action::Deliver {
                delay: Duration::ZERO,
            },
            (LinkState::Delay(delay), _) => Action::Deliver { delay },
            (LinkState::Cut, _) | (LinkState::OneWay, Direction::Forward) => Action::Hold,
            (LinkState::OneWay, Direction::Backward) => Action::Deliver {
                delay: Duration::ZERO,
            },
            (LinkState::Reset, _) => Action::Close,
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Pass => f.write_str("pass"),
            LinkState::Cut => f.write_str("cut"),
            LinkState::Reset => f.write_str("reset"),
            LinkState::OneWay => f.write_str("one-way"),
            LinkState::Delay(delay) => write!(f, "delay {}", format_duration(*delay)),
        }
    }
}

impl FromStr for LinkState {
    type Err = NetError;

    /// Parses what `Display` writes: `pass`, `cut`, `reset`, `one-way`, `delay 50ms`.
    fn from_str(text: &str) -> Result<Self, NetError> {
        match text.trim() {
            "pass" => Ok(LinkState::Pass),
            "cut" => Ok(LinkState::Cut),
            "reset" => Ok(LinkState::Reset),
            "one-way" => Ok(LinkState::OneWay),
            other => match other.strip_prefix("delay ") {
                Some(delay) => Ok(LinkState::Delay(parse_duration(delay)?)),
                None => Err(NetError::InvalidLinkState(text.to_string())),
            },
        }
    }
}

impl Serialize for LinkState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinkState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a duration written as a whole number and a unit: `250us`, `50ms`, `2s`.
pub fn parse_duration(text: &str) -> Result<Duration, NetError> {
    let text = text.trim();
    let invalid = || NetError::InvalidDuration(text.to_string());
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        _ => Err(invalid()),
    }
}

/// Writes a duration so that [`parse_duration`] reads it back exactly (sub-microsecond parts are dropped).
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros.is_multiple_of(1_000_000) {
        format!("{}s", micros / 1_000_000)
    } else if micros.is_multiple_of(1_000) {
        format!("{}ms", micros / 1_000)
    } else {
        format!("{micros}us")
    }
}

/// The shared handle to one running link: its addresses, its state and its connection count.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) listen: SocketAddr,
    pub(crate) target: SocketAddr,
    /// Dropping the sender is how the mesh stops the link: every watcher sees the channel close.
    pub(crate) state: watch::Sender<LinkState>,
    /// Connections currently proxied, kept by the accept loop, or by the front connections bound to the link
    /// (for `status`; not used for decisions).
    pub(crate) connections: Arc<AtomicUsize>,
}

impl Link {
    /// Binds the link's port and returns the link and the future that runs it until the link is dropped.
    pub(crate) async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<(Link, impl std::future::Future<Output = ()> + Send + 'static), NetError> {
        let (listener, listen) = bind_listener(listen).await?;
        let (state, state_rx) = watch::channel(LinkState::Pass);
        let connections = Arc::new(AtomicUsize::new(0));
        let run = accept_loop(listener, target, state_rx, Arc::clone(&connections));
        let link = Link {
            listen,
            target,
            state,
            connections,
        };
        Ok((link, run))
    }

    /// A link with no proxy of its own, for a mesh attributed by header: the front of the target node,
    /// listening on `front`, binds connections to it.
    pub(crate) fn behind_front(front: SocketAddr, target: SocketAddr) -> Link {
        let (state, _) = watch::channel(LinkState::Pass);
        Link {
            listen: front,
            target,
            state,
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What a front needs to bind a connection to this link.
    pub(crate) fn watch(&self) -> LinkWatch {
        LinkWatch {
            state: self.state.subscribe(),
            connections: Arc::clone(&self.connections),
        }
    }
}

/// Binds a listener on `listen` and returns it with the address it got (the port, when `listen` asks for 0).
pub(crate) async fn bind_listener(
    listen: SocketAddr,
) -> Result<(TcpListener, SocketAddr), NetError> {
    let bind_error = |source| NetError::Bind {
        address: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    Ok((listener, address))
}

/// A link's state and connection count, as a front connection bound to the link follows them.
#[derive(Debug, Clone)]
pub(crate) struct LinkWatch {
    state: watch::Receiver<LinkState>,
    connections: Arc<AtomicUsize>,
}

/// What a front needs to attribute its connections: the node behind it, the link into that node from each
/// other node, and which node each registered member id is.
#[derive(Debug)]
pub(crate) struct FrontRoutes {
    pub(crate) node: u64,
    pub(crate) target: SocketAddr,
    /// Link `from`->`node` for each other node `from`.
    pub(crate) links: BTreeMap<u64, LinkWatch>,
    pub(crate) members: watch::Receiver<BTreeMap<MemberId, u64>>,
}

/// The shared handle to one running front: the proxy in front of one node in a mesh attributed by header.
#[derive(Debug)]
pub(crate) struct Front {
    pub(crate) listen: SocketAddr,
    /// The state of connections that have named no sender yet: always `Pass`. Dropping it stops the front.
    unattributed: watch::Sender<LinkState>,
}

impl Front {
    /// Starts a front on a bound listener; returns it and the future that runs it until the front is dropped.
    pub(crate) fn start(
        listener: TcpListener,
        listen: SocketAddr,
        routes: FrontRoutes,
    ) -> (
        Front,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (unattributed, unattributed_rx) = watch::channel(LinkState::Pass);
        let run = front_accept_loop(listener, Arc::new(routes), unattributed_rx);
        (
            Front {
                listen,
                unattributed,
            },
            run,
        )
    }

    /// Stops the front: its listener closes and every connection not bound to a link ends.
    pub(crate) fn stop(self) {
        drop(self.unattributed);
    }
}

/// Accepts connections until the link's state sender is dropped, then waits for its connections to close.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    connections: Arc<AtomicUsize>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let current = *state.borrow();
                    if current == LinkState::Reset {
                        debug!(%peer, %target, "link is reset; resetting new connection");
                        reset(stream);
                    } else if tasks.len() >= CONNECTIONS_PER_LINK_MAX {
                        warn!(%peer, %target, limit = CONNECTIONS_PER_LINK_MAX, "too many connections on link; resetting");
                        reset(stream);
                    } else {
                        tasks.spawn(proxy_connection(stream, target, state.clone()));
                    }
                }
                Err(error) => {
                    warn!(%error, %target, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        connections.store(tasks.len(), Ordering::Relaxed);
    }
    drop(listener);
    // Every connection watches the same (now closed) channel and ends on its own.
    while tasks.join_next().await.is_some() {}
    connections.store(0, Ordering::Relaxed);
}

/// Why a proxied connection ended early.
#[derive(Debug)]
enum Abort {
    /// The link was set to `Reset`.
    LinkReset,
    /// The mesh is shutting down.
    MeshStopped,
    /// One side reset its connection (or failed to read); passed on to the other side when deliverable.
    PeerReset,
    /// Writing to one side failed.
    Write(io::Error),
    /// A front connection's request cannot be read or its sender is no node of the mesh.
    Unattributable(String),
}

/// A piece of one byte direction, stamped with when the proxy read it.
enum Segment {
    Bytes { arrival: Instant, data: Vec<u8> },
    Reset { arrival: Instant },
}

impl Segment {
    fn arrival(&self) -> Instant {
        match self {
            Segment::Bytes { arrival, .. } | Segment::Reset { arrival } => *arrival,
        }
    }
}

/// Proxies one connection accepted on a link's own port to the target until both directions end or the
/// connection is aborted.
async fn proxy_connection(
    client: TcpStream,
    target: SocketAddr,
    state: watch::Receiver<LinkState>,
) {
    relay(client, target, state, Vec::new(), None).await;
}

/// Proxies a connection under `state`, starting with the bytes the client already sent (`early`); with a
/// sniffer, the client's bytes go through it until it binds the connection to a link.
async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    mut early: Vec<u8>,
    sniffer: Option<Sniffer>,
) {
    // The target is dialled only once bytes may travel toward it: a handshake does not cross a cut. Until
    // then what the client sends is kept, and a client that gives up is forgotten, so connection attempts
    // abandoned during a long cut do not pile up.
    match wait_to_dial(&mut client, &mut state, &mut early).await {
        Ok(()) => {}
        Err(Abort::MeshStopped | Abort::PeerReset) => return,
        Err(_) => return reset(client),
    }
    let dial = async {
        let mut upstream = TcpStream::connect(target).await?;
        upstream.write_all(&early).await?;
        Ok::<_, io::Error>(upstream)
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            debug!(%error, %target, "cannot reach target node; resetting connection");
            return reset(client);
        }
        Err(_elapsed) => {
            debug!(%target, "dialling target node timed out; resetting connection");
            return reset(client);
        }
    };
    // gRPC sends small frames; Nagle's algorithm in the proxy would add latency no real link has.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let forward = pump(
            client_read,
            upstream_write,
            Direction::Forward,
            state.clone(),
            sniffer,
        );
        let backward = pump(
            upstream_read,
            client_write,
            Direction::Backward,
            state.clone(),
            None,
        );
        tokio::select! {
            result = async { tokio::try_join!(forward, backward) } => result.map(|_| ()),
            abort = until_reset(state) => Err(abort),
        }
    };
    match outcome {
        Ok(()) | Err(Abort::MeshStopped) => {}
        Err(Abort::LinkReset | Abort::PeerReset) => {
            reset(client);
            reset(upstream);
        }
        Err(Abort::Write(error)) => {
            debug!(%error, %target, "proxied connection failed");
            reset(client);
            reset(upstream);
        }
        Err(Abort::Unattributable(reason)) => {
            warn!(%target, %reason, "cannot tell which node sent a request; resetting its connection");
            reset(client);
            reset(upstream);
        }
    }
}

/// Waits until the link lets bytes toward the target, keeping what the client sends meanwhile in `early`
/// (up to `EARLY_BYTES_MAX`, then it stops reading). `PeerReset` if the client closes or fails first.
async fn wait_to_dial(
    client: &mut TcpStream,
    state: &mut watch::Receiver<LinkState>,
    early: &mut Vec<u8>,
) -> Result<(), Abort> {
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        let room = EARLY_BYTES_MAX
            .saturating_sub(early.len())
            .min(CHUNK_BYTES_MAX);
        tokio::select! {
            ready = wait_deliverable(state, Direction::Forward, Instant::now()) => return ready,
            read = client.read(&mut buffer[..room]), if room > 0 => match read {
                Ok(0) | Err(_) => return Err(Abort::PeerReset),
                Ok(len) => early.extend_from_slice(&buffer[..len]),
            },
        }
    }
}

/// Copies one byte direction, holding and delaying segments as the link state says. With a sniffer (the
/// forward direction of a front connection not bound yet), read bytes are queued only once the sniffer lets
/// them go; an unfinished request head at the end of the stream is dropped, as the target could not act on it.
async fn pump<R, W>(
    mut source: R,
    mut destination: W,
    direction: Direction,
    mut state: watch::Receiver<LinkState>,
    mut sniffer: Option<Sniffer>,
) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel::<Segment>(QUEUE_SEGMENTS_MAX);
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        // Bytes the sniffer kept from before the target was dialled go first.
        let mut read_len = 0;
        loop {
            let data = match sniffer.as_mut() {
                None => buffer[..read_len].to_vec(),
                Some(sniff) => {
                    let (ready, bound) = sniff.admit(&buffer[..read_len]).await?;
                    if bound {
                        sniffer = None;
                    }
                    ready
                }
            };
            let arrival = Instant::now();
            for piece in data.chunks(CHUNK_BYTES_MAX) {
                let segment = Segment::Bytes {
                    arrival,
                    data: piece.to_vec(),
                };
                if queue.send(segment).await.is_err() {
                    return Ok(());
                }
            }
            read_len = match source.read(&mut buffer).await {
                // End of stream: dropping the queue tells the writer, after it delivered everything queued.
                Ok(0) => return Ok::<(), Abort>(()),
                Ok(len) => len,
                Err(_) => {
                    let _ = queue
                        .send(Segment::Reset {
                            arrival: Instant::now(),
                        })
                        .await;
                    return Ok(());
                }
            };
        }
    };
    let write = async move {
        while let Some(segment) = queued.recv().await {
            wait_deliverable(&mut state, direction, segment.arrival()).await?;
            match segment {
                Segment::Bytes { data, .. } => {
                    destination.write_all(&data).await.map_err(Abort::Write)?
                }
                Segment::Reset { .. } => return Err(Abort::PeerReset),
            }
        }
        // Pass the end of stream on (a half-close); the other direction may still be running.
        let _ = destination.shutdown().await;
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits until a segment that arrived at `arrival` may be delivered in `direction` under the link's state.
async fn wait_deliverable(
    state: &mut watch::Receiver<LinkState>,
    direction: Direction,
    arrival: Instant,
) -> Result<(), Abort> {
    loop {
        let current = *state.borrow_and_update();
        match current.action(direction) {
            Action::Deliver { delay } => {
                let due = arrival + delay;
                if Instant::now() >= due {
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => return Ok(()),
                    changed = state.changed() => changed.map_err(|_| Abort::MeshStopped)?,
                }
            }
            Action::Hold => state.changed().await.map_err(|_| Abort::MeshStopped)?,
            Action::Close => return Err(Abort::LinkReset),
        }
    }
}

/// Accepts connections on a front until it is stopped, then waits for its connections to close.
async fn front_accept_loop(
    listener: TcpListener,
    routes: Arc<FrontRoutes>,
    mut unattributed: watch::Receiver<LinkState>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if tasks.len() >= CONNECTIONS_PER_FRONT_MAX {
                        warn!(%peer, node = routes.node, limit = CONNECTIONS_PER_FRONT_MAX, "too many connections on a front; resetting");
                        reset(stream);
                    } else {
                        tasks.spawn(proxy_front_connection(stream, Arc::clone(&routes), unattributed.clone()));
                    }
                }
                Err(error) => {
                    warn!(%error, node = routes.node, "accept failed on a front");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            changed = unattributed.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    drop(listener);
    // Bound connections end with their link, the others with the front's state channel (now closed).
    while tasks.join_next().await.is_some() {}
}

/// Why a front connection has no first request head to be attributed by.
enum FirstHead {
    /// The client closed or failed before a complete head.
    Closed,
    /// The bytes are no request head the front can read.
    Unreadable(SniffError),
}

/// Proxies one connection accepted on a front: reads its first request head before dialling, binds the
/// connection to the link its sender travels (or leaves it unbound, with a sniffer that binds it later) and
/// relays it.
async fn proxy_front_connection(
    mut client: TcpStream,
    routes: Arc<FrontRoutes>,
    unattributed: watch::Receiver<LinkState>,
) {
    let node = routes.node;
    let mut early = Vec::new();
    let mut stopped = unattributed.clone();
    let first = tokio::select! {
        first = tokio::time::timeout(FIRST_HEAD_TIMEOUT, read_first_head(&mut client, &mut early)) => first,
        _ = stopped.changed() => return,
    };
    let sender = match first {
        Ok(Ok(sender)) => sender,
        Ok(Err(FirstHead::Closed)) => return,
        Ok(Err(FirstHead::Unreadable(error))) => {
            warn!(node, %error, "a connection to a front is not HTTP/1.1 the mesh can read; resetting it");
            return reset(client);
        }
        Err(_elapsed) => {
            debug!(node, timeout = ?FIRST_HEAD_TIMEOUT, "no request head on a front connection in time; resetting it");
            return reset(client);
        }
    };
    if let Some(member) = sender {
        if let Sender::FrontNode = lookup(&routes, member) {
            warn!(node, %member, "a request names the front's own node as its sender; resetting its connection");
            return reset(client);
        }
    }
    let (state, state_rx) = watch::channel(LinkState::Pass);
    let (rebind, rebinds) = mpsc::channel(1);
    // A first head that names its sender binds the connection before anything is dialled; otherwise the
    // sniffer reads on from the start, the first head included.
    let sniffer = sender.is_none().then(|| Sniffer {
        scanner: RequestScanner::new(),
        pending: std::mem::take(&mut early),
        node,
        rebind,
    });
    let binding = Binding::start(state, Arc::clone(&routes), unattributed, sender);
    tokio::select! {
        () = binding.follow(rebinds) => {}
        () = relay(client, routes.target, state_rx, early, sniffer) => {}
    }
}

/// Reads until `early` holds a complete first request head and returns the sender it names, if any.
async fn read_first_head(
    client: &mut TcpStream,
    early: &mut Vec<u8>,
) -> Result<Option<MemberId>, FirstHead> {
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        match parse_head(early) {
            Ok(Some(head)) => return Ok(head.sender),
            Ok(None) => {}
            Err(error) => return Err(FirstHead::Unreadable(error)),
        }
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return Err(FirstHead::Closed),
            Ok(len) => early.extend_from_slice(&buffer[..len]),
        }
    }
}

/// Which link a member's requests to a front travel.
enum Sender {
    /// The member is registered as node i: link i->front's node.
    Link(LinkWatch),
    /// No node is registered with this member id (yet).
    Unregistered,
    /// The member is the node behind the front, which never dials itself.
    FrontNode,
}

fn lookup(routes: &FrontRoutes, member: MemberId) -> Sender {
    let from = routes.members.borrow().get(&member).copied();
    match from {
        None => Sender::Unregistered,
        Some(from) => routes
            .links
            .get(&from)
            .cloned()
            .map_or(Sender::FrontNode, Sender::Link),
    }
}

/// Reads the request bytes of a front connection not bound to a link yet, and hands the sender of the first
/// request head that names one to the connection's binding.
struct Sniffer {
    scanner: RequestScanner,
    /// Bytes read but not let go yet: the start of a head or of a chunk line (under `HEAD_BYTES_MAX` plus one
    /// read, as the scanner refuses longer heads and lines).
    pending: Vec<u8>,
    /// The node behind the front, for messages.
    node: u64,
    rebind: mpsc::Sender<Rebind>,
}

impl Sniffer {
    /// Takes bytes the client sent; returns the bytes that may be queued now and whether the sniffer is done
    /// (the connection's sender is known, so every later byte goes straight on). Bytes let go before the head
    /// that names the sender are queued with it, after the binding, so they never overtake it.
    async fn admit(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, bool), Abort> {
        self.pending.extend_from_slice(bytes);
        let mut settled = 0;
        loop {
            match self.scanner.step(&self.pending[settled..]) {
                Ok(Step::Forward(len)) => settled += len,
                Ok(Step::NeedMore) => {
                    let rest = self.pending.split_off(settled);
                    return Ok((std::mem::replace(&mut self.pending, rest), false));
                }
                Ok(Step::Sender { sender, .. }) => {
                    let (done, bound) = oneshot::channel();
                    self.rebind
                        .send(Rebind {
                            member: sender,
                            done,
                        })
                        .await
                        .map_err(|_| Abort::MeshStopped)?;
                    if !bound.await.map_err(|_| Abort::MeshStopped)? {
                        return Err(Abort::Unattributable(format!(
                            "a request names member {sender}, node {} itself, as its sender",
                            self.node
                        )));
                    }
                    return Ok((std::mem::take(&mut self.pending), true));
                }
                Err(error) => {
                    return Err(Abort::Unattributable(format!(
                        "a request to node {} cannot be read: {error}",
                        self.node
                    )))
                }
            }
        }
    }
}

/// The sniffer found the connection's sender; `done` answers once the connection follows its link or waits
/// for the member to be registered (`true`), or when the member is the front's own node (`false`).
struct Rebind {
    member: MemberId,
    done: oneshot::Sender<bool>,
}

/// Counts a connection on a link for as long as it lives.
struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    fn new(connections: Arc<AtomicUsize>) -> ConnectionCount {
        connections.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(connections)
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which state a front connection follows: the front's own (always `Pass`) until its sender is known and
/// registered as a node, then that node's link into the front's node.
struct Binding {
    /// The connection's own state, which its pumps watch.
    state: watch::Sender<LinkState>,
    routes: Arc<FrontRoutes>,
    members: watch::Receiver<BTreeMap<MemberId, u64>>,
    source: watch::Receiver<LinkState>,
    /// A sender not registered yet: the connection binds as soon as it is.
    waiting_for: Option<MemberId>,
    count: Option<ConnectionCount>,
}

impl Binding {
    fn start(
        state: watch::Sender<LinkState>,
        routes: Arc<FrontRoutes>,
        unattributed: watch::Receiver<LinkState>,
        sender: Option<MemberId>,
    ) -> Binding {
        let members = routes.members.clone();
        let mut binding = Binding {
            state,
            routes,
            members,
            source: unattributed,
            waiting_for: None,
            count: None,
        };
        if let Some(member) = sender {
            // The caller has refused a first head that names the front's own node.
            binding.bind(member);
        }
        binding
            .state
            .send_replace(*binding.source.borrow_and_update());
        binding
    }

    /// Follows the member's link when it is registered, or waits for it to be. False, and nothing changes, when
    /// the member is the front's own node.
    fn bind(&mut self, member: MemberId) -> bool {
        match lookup(&self.routes, member) {
            Sender::Link(link) => {
                self.source = link.state;
                self.count = Some(ConnectionCount::new(link.connections));
                self.waiting_for = None;
                true
            }
            Sender::Unregistered => {
                debug!(node = self.routes.node, %member, "a request names a member registered for no node yet; it passes until registered");
                self.waiting_for = Some(member);
                true
            }
            Sender::FrontNode => false,
        }
    }

    /// Keeps the connection's state equal to its source's, binding it when the sniffer finds its sender or
    /// when that sender is registered. Returns when the source closes (the mesh stops), which ends the
    /// connection.
    async fn follow(mut self, mut rebinds: mpsc::Receiver<Rebind>) {
        let mut rebinds_open = true;
        let mut members_open = true;
        loop {
            self.state.send_replace(*self.source.borrow_and_update());
            tokio::select! {
                changed = self.source.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                rebind = rebinds.recv(), if rebinds_open => match rebind {
                    Some(Rebind { member, done }) => {
                        let bound = self.bind(member);
                        self.state.send_replace(*self.source.borrow_and_update());
                        let _ = done.send(bound);
                    }
                    None => rebinds_open = false,
                },
                changed = self.members.changed(), if members_open && self.waiting_for.is_some() => {
                    match (changed, self.waiting_for) {
                        (Ok(()), Some(member)) => {
                            // Registered as the front's own node: it stays unbound; the mesh refuses nothing
                            // else a misconfigured member id could mean.
                            if !self.bind(member) {
                                warn!(node = self.routes.node, %member, "a connection's sender was registered as the front's own node; it stays unbound");
                                self.waiting_for = None;
                            }
                        }
                        _ => members_open = false,
                    }
                }
            }
        }
    }
}

/// Resolves when the link is set to `Reset` (or the mesh stops), whatever the connection is doing.
async fn until_reset(mut state: watch::Receiver<LinkState>) -> Abort {
    loop {
        if *state.borrow_and_update() == LinkState::Reset {
            return Abort::LinkReset;
        }
        if state.changed().await.is_err() {
            return Abort::MeshStopped;
        }
    }
}

/// Closes a socket with a TCP reset rather than an orderly close, as a middlebox that drops state would.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_state_text_round_trips() {
        for state in [
            LinkState::Pass,
            LinkState::Cut,
            LinkState::Reset,
            LinkState::OneWay,
            LinkState::Delay(Duration::from_millis(50)),
            LinkState::Delay(Duration::from_secs(2)),
            LinkState::Delay(Duration::from_micros(1500)),
        ] {
            let text = state.to_string();
            assert_eq!(text.parse::<LinkState>().unwrap(), state, "{text}");
        }
        assert!("blocked".parse::<LinkState>().is_err());
        assert!("delay fast".parse::<LinkState>().is_err());
    }

    #[test]
    fn durations_need_a_number_and_a_known_unit() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        for bad in ["", "50", "ms", "5 ms", "-5ms", "1.5s", "5m", "5msx"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn one_way_holds_only_the_forward_direction() {
        let hold = Action::Hold;
        let pass = Action::Deliver {
            delay: Duration::ZERO,
        };
        assert_eq!(LinkState::OneWay.action(Direction::Forward), hold);
        assert_eq!(LinkState::OneWay.action(Direction::Backward), pass);
        assert_eq!(LinkState::Cut.action(Direction::Backward), hold);
        assert_eq!(LinkState::Reset.action(Direction::Forward), Action::Close);
    }
}
