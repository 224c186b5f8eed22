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
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

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
    /// Connections currently proxied, kept by the accept loop (for `status`; not used for decisions).
    pub(crate) connections: Arc<AtomicUsize>,
}

impl Link {
    /// Binds the link's port and returns the link and the future that runs it until the link is dropped.
    pub(crate) async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<(Link, impl std::future::Future<Output = ()> + Send + 'static), NetError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| NetError::Bind {
                address: listen,
                source,
            })?;
        let listen = listener.local_addr().map_err(|source| NetError::Bind {
            address: listen,
            source,
        })?;
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

/// Proxies one accepted connection to the target until both directions end or the connection is aborted.
async fn proxy_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
) {
    // The target is dialled only once bytes may travel toward it: a handshake does not cross a cut. Until
    // then what the client sends is kept, and a client that gives up is forgotten, so connection attempts
    // abandoned during a long cut do not pile up.
    let mut early = Vec::new();
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
        );
        let backward = pump(
            upstream_read,
            client_write,
            Direction::Backward,
            state.clone(),
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

/// Copies one byte direction, holding and delaying segments as the link state says.
async fn pump<R, W>(
    mut source: R,
    mut destination: W,
    direction: Direction,
    mut state: watch::Receiver<LinkState>,
) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel::<Segment>(QUEUE_SEGMENTS_MAX);
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let segment = match source.read(&mut buffer).await {
                // End of stream: dropping the queue tells the writer, after it delivered everything queued.
                Ok(0) => return Ok::<(), Abort>(()),
                Ok(len) => Segment::Bytes {
                    arrival: Instant::now(),
                    data: buffer[..len].to_vec(),
                },
                Err(_) => Segment::Reset {
                    arrival: Instant::now(),
                },
            };
            let is_reset = matches!(segment, Segment::Reset { .. });
            if queue.send(segment).await.is_err() || is_reset {
                return Ok(());
            }
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
