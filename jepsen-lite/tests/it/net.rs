//! Integration tests of the partition network over real sockets on 127.0.0.1, every port OS-assigned. Link
//! behaviour is tested on an in-process mesh of two nodes whose "nodes" are listeners held by the test, so the
//! test holds both ends of a proxied connection: node 1's end (`near`, dialled through link 1->2) and node 2's
//! end (`far`, accepted by node 2's listener). Every wait has a deadline; "nothing arrives" is observed for a
//! short bounded time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jepsen_lite::net::{
    request, serve_control, Attribution, Command, ControlError, LinkState, LinkStatus, MemberId,
    Mesh, NetError, PortLayout, RoutesFile, CONTROL_REQUEST_BYTES_MAX,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::{timeout, Instant};

/// Deadline for anything that must happen (bytes arriving, a connection closing, a process answering).
const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for bytes that must not arrive.
const QUIET: Duration = Duration::from_millis(300);
/// Interval between polls of a condition.
const POLL: Duration = Duration::from_millis(10);

/// A two-node mesh and one connection over link 1->2, both ends held by the test.
struct Pair {
    mesh: Mesh,
    node1: TcpListener,
    node2: TcpListener,
    near: TcpStream,
    far: TcpStream,
}

impl Pair {
    async fn start() -> Pair {
        let node1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nodes: BTreeMap<u64, SocketAddr> = [
            (1, node1.local_addr().unwrap()),
            (2, node2.local_addr().unwrap()),
        ]
        .into();
        let mesh = Mesh::start(nodes, PortLayout::OsAssigned).await.unwrap();
        let (near, far) = connect(&mesh, 1, &node2).await;
        Pair {
            mesh,
            node1,
            node2,
            near,
            far,
        }
    }

    fn state(&self, from: u64, to: u64) -> (LinkState, usize) {
        let link = self
            .mesh
            .snapshot()
            .into_iter()
            .find(|link| (link.from, link.to) == (from, to))
            .expect("link exists");
        (link.state, link.connections)
    }

    /// Waits until link `from`->`to` holds `connections` connections.
    async fn wait_for_connections(&self, from: u64, to: u64, connections: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, now) = self.state(from, to);
            if now == connections {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "link {from}->{to} holds {now} connections, expected {connections}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Dials node `from`'s route to the node behind `target` and accepts the proxied connection there.
async fn connect(mesh: &Mesh, from: u64, target: &TcpListener) -> (TcpStream, TcpStream) {
    let target_address = target.local_addr().unwrap();
    let to = *mesh
        .nodes()
        .iter()
        .find(|(_, address)| **address == target_address)
        .unwrap()
        .0;
    let via = route(mesh, from, to);
    let near = timeout(WAIT, TcpStream::connect(via))
        .await
        .expect("connect in time")
        .expect("connect");
    let (far, _) = timeout(WAIT, target.accept())
        .await
        .expect("the proxy dials the target in time")
        .unwrap();
    (near, far)
}

/// Stops the mesh within the deadline.
async fn stop(mesh: Mesh) {
    timeout(WAIT, mesh.shutdown())
        .await
        .expect("the mesh stops in time");
}

fn route(mesh: &Mesh, from: u64, to: u64) -> SocketAddr {
    mesh.route_for(from)
        .unwrap()
        .into_iter()
        .find(|(peer, _)| *peer == to)
        .unwrap()
        .1
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    timeout(WAIT, stream.write_all(bytes))
        .await
        .expect("write in time")
        .expect("write");
}

/// Reads exactly `expected` within the deadline.
async fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) {
    let mut buffer = vec![0u8; expected.len()];
    timeout(WAIT, stream.read_exact(&mut buffer))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{:?} did not arrive in time",
                String::from_utf8_lossy(expected)
            )
        })
        .expect("read");
    assert_eq!(buffer, expected);
}

/// Sends a request from `near` and a reply from `far` over a link that holds traffic: neither arrives (each
/// side's `what` says where it was watched) until the mesh heals, then both do.
async fn held_both_ways_until_heal(
    mesh: &Mesh,
    (near, near_what): (&mut TcpStream, &str),
    (far, far_what): (&mut TcpStream, &str),
) {
    send(far, b"held reply").await;
    send(near, b"held request").await;
    expect_silence(near, near_what).await;
    expect_silence(far, far_what).await;
    mesh.heal();
    expect_bytes(near, b"held reply").await;
    expect_bytes(far, b"held request").await;
}

/// Watches the stream for `QUIET`: nothing may arrive, and it must not close.
async fn expect_silence(stream: &mut TcpStream, what: &str) {
    let mut buffer = [0u8; 64];
    match timeout(QUIET, stream.read(&mut buffer)).await {
        Err(_elapsed) => {}
        Ok(Ok(0)) => panic!("{what}: the connection closed"),
        Ok(Ok(len)) => panic!(
            "{what}: {:?} arrived",
            String::from_utf8_lossy(&buffer[..len])
        ),
        Ok(Err(error)) => panic!("{what}: the connection failed: {error}"),
    }
}

/// Reads until the stream ends (end of stream or an error such as a reset) within the deadline.
async fn expect_closed(stream: &mut TcpStream, what: &str) {
    let deadline = Instant::now() + WAIT;
    let mut buffer = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout(remaining, stream.read(&mut buffer)).await {
            Err(_elapsed) => panic!("{what}: still open after {WAIT:?}"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn cut_link_passes_nothing_either_way_keeps_the_connection_and_delivers_after_heal() {
    // Over an established connection: cut, write both ways, see nothing arrive and nothing close; heal, see
    // the held bytes arrive in order.
    let mut pair = Pair::start().await;
    send(&mut pair.near, b"request").await;
    expect_bytes(&mut pair.far, b"request").await;
    send(&mut pair.far, b"reply").await;
    expect_bytes(&mut pair.near, b"reply").await;

    pair.mesh.set_link(1, 2, LinkState::Cut).unwrap();
    send(&mut pair.near, b"held-request-1 ").await;
    send(&mut pair.near, b"held-request-2").await;
    send(&mut pair.far, b"held-reply").await;
    expect_silence(&mut pair.far, "toward node 2 over a cut link").await;
    expect_silence(&mut pair.near, "toward node 1 over a cut link").await;
    assert_eq!(pair.state(1, 2), (LinkState::Cut, 1));

    pair.mesh.heal();
    expect_bytes(&mut pair.far, b"held-request-1 held-request-2").await;
    expect_bytes(&mut pair.near, b"held-reply").await;
    send(&mut pair.near, b"after").await;
    expect_bytes(&mut pair.far, b"after").await;
    stop(pair.mesh).await;
}

#[tokio::test]
async fn new_connection_over_a_cut_link_reaches_the_target_only_after_heal() {
    // The proxy accepts, but does not dial node 2 while the link is cut; after heal the bytes get through.
    let pair = Pair::start().await;
    pair.mesh.set_link(1, 2, LinkState::Cut).unwrap();
    let mut late = TcpStream::connect(route(&pair.mesh, 1, 2)).await.unwrap();
    send(&mut late, b"hello").await;
    assert!(
        timeout(QUIET, pair.node2.accept()).await.is_err(),
        "node 2 was dialled over a cut link"
    );

    pair.mesh.heal();
    let (mut far, _) = timeout(WAIT, pair.node2.accept()).await.unwrap().unwrap();
    expect_bytes(&mut far, b"hello").await;
    stop(pair.mesh).await;
}

#[tokio::test]
async fn connection_attempts_abandoned_over_a_cut_link_are_released() {
    // Clients that give up while the link is cut must not pile up in the proxy: the count goes back to the one
    // established connection, and node 2 never hears of them.
    let pair = Pair::start().await;
    pair.mesh.set_link(1, 2, LinkState::Cut).unwrap();
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let mut attempt = TcpStream::connect(route(&pair.mesh, 1, 2)).await.unwrap();
        send(&mut attempt, b"preface").await;
        attempts.push(attempt);
    }
    pair.wait_for_connections(1, 2, 4).await;
    drop(attempts);
    pair.wait_for_connections(1, 2, 1).await;
    assert!(
        timeout(QUIET, pair.node2.accept()).await.is_err(),
        "node 2 was dialled over a cut link"
    );
    stop(pair.mesh).await;
}

#[tokio::test]
async fn reset_closes_existing_connections_and_new_ones_until_heal() {
    // Reset an established connection (both ends see it end), then dial again: closed at once, node 2 never
    // dialled. After heal a new connection carries bytes.
    let mut pair = Pair::start().await;
    send(&mut pair.near, b"x").await;
    expect_bytes(&mut pair.far, b"x").await;

    pair.mesh.set_link(1, 2, LinkState::Reset).unwrap();
    expect_closed(&mut pair.near, "node 1's end after reset").await;
    expect_closed(&mut pair.far, "node 2's end after reset").await;
    pair.wait_for_connections(1, 2, 0).await;

    // A refused connect is as good as one that is closed straight after the handshake.
    if let Ok(mut again) = TcpStream::connect(route(&pair.mesh, 1, 2)).await {
        let _ = again.write_all(b"ignored").await;
        expect_closed(&mut again, "a new connection over a reset link").await;
    }
    assert!(
        timeout(QUIET, pair.node2.accept()).await.is_err(),
        "node 2 was dialled over a reset link"
    );

    pair.mesh.heal();
    let (mut near, mut far) = connect(&pair.mesh, 1, &pair.node2).await;
    send(&mut near, b"back").await;
    expect_bytes(&mut far, b"back").await;
    stop(pair.mesh).await;
}

#[tokio::test]
async fn delay_adds_at_least_the_configured_latency_each_way() {
    // Delay an established connection and time one round trip: each direction adds the delay, so the round
    // trip takes at least twice the delay. Several writes arrive in order.
    let delay = Duration::from_millis(150);
    let mut pair = Pair::start().await;
    pair.mesh.set_link(1, 2, LinkState::Delay(delay)).unwrap();

    let start = Instant::now();
    send(&mut pair.near, b"one ").await;
    send(&mut pair.near, b"two ").await;
    send(&mut pair.near, b"three").await;
    expect_bytes(&mut pair.far, b"one two three").await;
    let forward = start.elapsed();
    send(&mut pair.far, b"reply").await;
    expect_bytes(&mut pair.near, b"reply").await;
    let round_trip = start.elapsed();

    assert!(
        forward >= delay,
        "one way took {forward:?}, delay {delay:?}"
    );
    assert!(
        round_trip >= 2 * delay,
        "round trip took {round_trip:?}, delay {delay:?} each way"
    );
    stop(pair.mesh).await;
}

#[tokio::test]
async fn one_way_cut_holds_requests_but_passes_replies_and_leaves_the_reverse_link_alone() {
    // One-way cut 1->2: node 1's bytes do not reach node 2, node 2's replies reach node 1; a connection over
    // link 2->1 still works both ways; after heal the held request arrives.
    let mut pair = Pair::start().await;
    pair.mesh.one_way(1, 2).unwrap();
    assert_eq!(pair.state(1, 2).0, LinkState::OneWay);
    assert_eq!(pair.state(2, 1).0, LinkState::Pass);

    send(&mut pair.near, b"request").await;
    send(&mut pair.far, b"reply").await;
    expect_bytes(&mut pair.near, b"reply").await;
    expect_silence(&mut pair.far, "toward node 2 over a one-way cut").await;

    let (mut reverse_near, mut reverse_far) = connect(&pair.mesh, 2, &pair.node1).await;
    send(&mut reverse_near, b"2 to 1").await;
    expect_bytes(&mut reverse_far, b"2 to 1").await;
    send(&mut reverse_far, b"1 to 2").await;
    expect_bytes(&mut reverse_near, b"1 to 2").await;

    pair.mesh.heal();
    expect_bytes(&mut pair.far, b"request").await;
    stop(pair.mesh).await;
}

#[tokio::test]
async fn shutdown_closes_every_proxied_connection() {
    // Stopping the mesh ends its connections rather than leaving them half alive.
    let mut pair = Pair::start().await;
    send(&mut pair.near, b"x").await;
    expect_bytes(&mut pair.far, b"x").await;
    stop(pair.mesh).await;
    expect_closed(&mut pair.near, "node 1's end after shutdown").await;
    expect_closed(&mut pair.far, "node 2's end after shutdown").await;
}

#[tokio::test]
async fn control_requests_change_links_and_bad_ones_are_refused() {
    // A control server over a real socket: a partition request changes the links and answers with all of
    // them; a partition that names an unknown node, a garbled line and an oversized line are refused and
    // change nothing.
    let nodes: BTreeMap<u64, SocketAddr> = (1..=3)
        .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 1))))
        .collect();
    let mesh = Mesh::start(nodes, PortLayout::OsAssigned).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = serve_control(listener, &mesh);
    let client = async {
        let links = request(&address, &Command::Partition(vec![vec![1, 2], vec![3]]))
            .await
            .unwrap();
        let cut: Vec<(u64, u64)> = links
            .iter()
            .filter(|link| link.state == LinkState::Cut)
            .map(|link| (link.from, link.to))
            .collect();
        assert_eq!(cut, vec![(1, 3), (2, 3), (3, 1), (3, 2)]);

        let refused = request(&address, &Command::Partition(vec![vec![1], vec![4]]))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, ControlError::Refused(reason) if reason.contains("node 4 is not in the mesh")),
            "{refused}"
        );

        for line in [
            "explode\n".to_string(),
            "x".repeat(CONTROL_REQUEST_BYTES_MAX + 1),
        ] {
            let mut stream = TcpStream::connect(&address).await.unwrap();
            send(&mut stream, line.as_bytes()).await;
            let mut answer = String::new();
            timeout(WAIT, stream.read_to_string(&mut answer))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(answer.starts_with("{\"ok\":false"), "{answer}");
        }

        let links = request(&address, &Command::Status).await.unwrap();
        assert_eq!(links.len(), 6);
        assert_eq!(
            links
                .iter()
                .filter(|link| link.state == LinkState::Cut)
                .count(),
            4
        );
    };
    tokio::select! {
        () = server => panic!("the control server stopped"),
        () = client => {}
    }
    stop(mesh).await;
}

/// The `jepsen-lite` binary Cargo built for these tests.
const BINARY: &str = env!("CARGO_BIN_EXE_jepsen-lite");

/// Runs `jepsen-lite ARGS` to completion within the deadline; returns (exit code, stdout, stderr).
async fn jepsen_lite(args: &[&str]) -> (i32, String, String) {
    let output = timeout(
        WAIT,
        tokio::process::Command::new(BINARY)
            .args(args)
            .env_remove("JEPSEN_LITE_CONTROL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("jepsen-lite {args:?} did not finish in time"))
    .expect("run jepsen-lite");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Reads `net serve` output up to its `ready` line; returns the route lines and the control address.
async fn read_until_ready(serve: &mut Child) -> (Vec<String>, String) {
    let stdout = serve.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut routes = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = timeout(remaining, lines.next_line())
            .await
            .expect("net serve printed `ready` in time")
            .unwrap()
            .expect("net serve exited before `ready`");
        match line.strip_prefix("ready control=") {
            Some(control) => return (routes, control.to_string()),
            None => routes.push(line),
        }
    }
}

#[tokio::test]
async fn net_serve_process_is_driven_by_the_client_commands_and_stops_on_sigterm() {
    // The real binary: serve a 3-node mesh on OS-assigned ports, check the printed routes and the routes file,
    // partition 1,2/3 through `net partition`, read it back with `net status --json`, see bytes pass within the
    // majority and not across, refuse bad input with one line and exit 2, and stop cleanly on SIGTERM.
    let node_listeners = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let nodes = node_listeners
        .iter()
        .enumerate()
        .map(|(index, listener)| format!("{}={}", index + 1, listener.local_addr().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let routes_file =
        std::env::temp_dir().join(format!("jepsen-lite-net-test-{}.json", std::process::id()));
    let mut serve = tokio::process::Command::new(BINARY)
        .args([
            "net",
            "serve",
            "--nodes",
            &nodes,
            "--control",
            "127.0.0.1:0",
            "--routes-file",
        ])
        .arg(&routes_file)
        .env_remove("JEPSEN_LITE_CONTROL")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start net serve");
    let (route_lines, control) = read_until_ready(&mut serve).await;

    assert_eq!(route_lines.len(), 3, "{route_lines:?}");
    assert!(
        route_lines[0].starts_with("node 1 --peer-route 2=127.0.0.1:"),
        "{route_lines:?}"
    );
    let file: RoutesFile =
        serde_json::from_str(&std::fs::read_to_string(&routes_file).unwrap()).unwrap();
    std::fs::remove_file(&routes_file).unwrap();
    assert_eq!(file.control.to_string(), control);
    for (node, line) in file.nodes.iter().zip(&route_lines) {
        assert_eq!(
            *line,
            format!("node {} {}", node.id, node.peer_route_args().join(" "))
        );
    }
    let via = |from: u64, to: u64| {
        file.nodes[from as usize - 1]
            .peer_routes
            .iter()
            .find(|route| route.peer == to)
            .unwrap()
            .via
    };

    let (code, _, stderr) =
        jepsen_lite(&["net", "partition", "1,2/3", "--control", &control]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        jepsen_lite(&["net", "status", "--json", "--control", &control]).await;
    assert_eq!(code, 0, "{stderr}");
    let links: Vec<LinkStatus> = serde_json::from_str(&stdout).unwrap();
    let states: Vec<(u64, u64, LinkState)> = links
        .iter()
        .map(|link| (link.from, link.to, link.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (1, 2, LinkState::Pass),
            (1, 3, LinkState::Cut),
            (2, 1, LinkState::Pass),
            (2, 3, LinkState::Cut),
            (3, 1, LinkState::Cut),
            (3, 2, LinkState::Cut),
        ]
    );

    // Bytes from node 1 reach node 2 but not node 3.
    let mut to_two = TcpStream::connect(via(1, 2)).await.unwrap();
    send(&mut to_two, b"majority").await;
    let (mut at_two, _) = timeout(WAIT, node_listeners[1].accept())
        .await
        .unwrap()
        .unwrap();
    expect_bytes(&mut at_two, b"majority").await;
    let mut to_three = TcpStream::connect(via(1, 3)).await.unwrap();
    send(&mut to_three, b"minority").await;
    assert!(
        timeout(QUIET, node_listeners[2].accept()).await.is_err(),
        "node 3 was reached across the partition"
    );

    for bad in [
        vec!["net", "partition", "1,2/9", "--control", &control],
        vec!["net", "partition", "1,2", "--control", &control],
        vec!["net", "isolate", "two", "--control", &control],
        vec!["net", "delay", "fast", "--control", &control],
    ] {
        let (code, stdout, stderr) = jepsen_lite(&bad).await;
        assert_eq!(code, 2, "{bad:?}: {stdout}{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{bad:?}: {stderr}");
    }

    let (code, _, stderr) = jepsen_lite(&["net", "heal", "--control", &control]).await;
    assert_eq!(code, 0, "{stderr}");
    let status = crate::terminate(&mut serve, WAIT).await;
    assert!(status.success(), "net serve exited with {status}");
}

// --- a mesh attributed by header (etcd's peers) ---------------------------------------------------------------

/// Member ids the header tests register for nodes 1, 2 and 3.
const MEMBERS: [MemberId; 3] = [MemberId(0xa1), MemberId(0xb2), MemberId(0xc3)];

/// A request head as etcd's stream reader sends it, naming `sender` when given.
fn request_head(target: &str, sender: Option<MemberId>) -> Vec<u8> {
    let from = sender.map_or(String::new(), |member| {
        format!("X-Server-From: {member}\r\n")
    });
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{from}Accept-Encoding: gzip\r\n\r\n")
        .into_bytes()
}

/// Three node listeners behind a mesh attributed by header; `register` members registered for nodes 1..=3.
async fn header_mesh(register: bool) -> (Mesh, Vec<TcpListener>) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let nodes: BTreeMap<u64, SocketAddr> = listeners
        .iter()
        .zip(1..)
        .map(|(listener, id)| (id, listener.local_addr().unwrap()))
        .collect();
    let mesh = Mesh::start_attributed(nodes, PortLayout::OsAssigned, Attribution::Header)
        .await
        .unwrap();
    if register {
        for (node, member) in (1..).zip(MEMBERS) {
            mesh.set_member(node, member).unwrap();
        }
    }
    (mesh, listeners)
}

/// Dials node `to`'s front, sends `first`, and accepts the proxied connection at node `to`.
async fn through_front(
    mesh: &Mesh,
    listeners: &[TcpListener],
    to: u64,
    first: &[u8],
) -> (TcpStream, TcpStream) {
    let front = mesh.front(to).expect("a front per node");
    let mut near = timeout(WAIT, TcpStream::connect(front))
        .await
        .expect("connect in time")
        .expect("connect");
    send(&mut near, first).await;
    let (mut far, _) = timeout(WAIT, listeners[to as usize - 1].accept())
        .await
        .expect("the front dials the target in time")
        .unwrap();
    expect_bytes(&mut far, first).await;
    (near, far)
}

/// Waits until link `from`->`to` of `mesh` holds `connections` connections.
async fn wait_for_link_connections(mesh: &Mesh, from: u64, to: u64, connections: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = mesh
            .snapshot()
            .into_iter()
            .find(|link| (link.from, link.to) == (from, to))
            .expect("link exists")
            .connections;
        if now == connections {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "link {from}->{to} holds {now} connections, expected {connections}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn front_binds_a_connection_to_the_link_its_sender_travels() {
    // Node 1's stream request to node 2's front binds the connection to link 1->2: cutting link 2->1 leaves it
    // alone, cutting 1->2 holds bytes both ways with the connection open, heal delivers them in order.
    let (mesh, listeners) = header_mesh(true).await;
    let (mut near, mut far) = through_front(
        &mesh,
        &listeners,
        2,
        &request_head("/raft/stream/message/a1", Some(MEMBERS[0])),
    )
    .await;
    wait_for_link_connections(&mesh, 1, 2, 1).await;

    mesh.set_link(2, 1, LinkState::Cut).unwrap();
    send(&mut far, b"stream bytes").await;
    expect_bytes(&mut near, b"stream bytes").await;

    mesh.isolate(1).unwrap();
    held_both_ways_until_heal(
        &mesh,
        (&mut near, "toward node 1 while it is isolated"),
        (&mut far, "toward node 2 while node 1 is isolated"),
    )
    .await;
    stop(mesh).await;
}

#[tokio::test]
async fn front_passes_requests_without_a_sender_until_one_names_it() {
    // A probe opens the connection while link 1->2 is cut: it names no sender, so it passes. The next request
    // on the same connection names node 1: it is held until heal, and the connection counts on link 1->2.
    let (mesh, listeners) = header_mesh(true).await;
    mesh.set_link(1, 2, LinkState::Cut).unwrap();
    let (mut near, mut far) =
        through_front(&mesh, &listeners, 2, &request_head("/raft/probing", None)).await;
    send(&mut far, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    expect_bytes(&mut near, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    wait_for_link_connections(&mesh, 1, 2, 0).await;

    let pipeline = request_head("/raft", Some(MEMBERS[0]));
    send(&mut near, &pipeline).await;
    expect_silence(&mut far, "a request naming node 1 over cut link 1->2").await;
    wait_for_link_connections(&mesh, 1, 2, 1).await;

    mesh.heal();
    expect_bytes(&mut far, &pipeline).await;
    stop(mesh).await;
}

#[tokio::test]
async fn front_binds_a_connection_as_soon_as_its_sender_is_registered() {
    // Members start before their ids can be read (and cannot start without their peers), so a request from a
    // member registered for no node passes; once registered, the connection follows its link at once.
    let (mesh, listeners) = header_mesh(false).await;
    mesh.isolate(3).unwrap();
    let (mut near, mut far) = through_front(
        &mesh,
        &listeners,
        1,
        &request_head("/raft/stream/msgappv2/c3", Some(MEMBERS[2])),
    )
    .await;
    wait_for_link_connections(&mesh, 3, 1, 0).await;

    mesh.set_member(3, MEMBERS[2]).unwrap();
    wait_for_link_connections(&mesh, 3, 1, 1).await;
    held_both_ways_until_heal(
        &mesh,
        (&mut near, "toward node 3 once registered and isolated"),
        (&mut far, "toward node 1 from node 3 once registered"),
    )
    .await;
    stop(mesh).await;
}

#[tokio::test]
async fn front_resets_connections_it_cannot_attribute() {
    // Bytes that are no HTTP/1.1 request (a TLS hello), a malformed sender, a member that is the front's own
    // node, and, on connections not bound yet, a malformed request or one from the front's own node later on:
    // each connection is closed and, for the first three, the node behind the front is never dialled.
    let (mesh, listeners) = header_mesh(true).await;
    let front = mesh.front(2).unwrap();
    for (first, what) in [
        (b"\x16\x03\x01\x02\x00\x01\x00".to_vec(), "a TLS hello"),
        (
            b"GET /raft HTTP/1.1\r\nX-Server-From: node-1\r\n\r\n".to_vec(),
            "a malformed sender",
        ),
        (
            request_head("/raft", Some(MEMBERS[1])),
            "node 2 dialling itself",
        ),
    ] {
        let mut near = TcpStream::connect(front).await.unwrap();
        send(&mut near, &first).await;
        expect_closed(&mut near, what).await;
    }
    assert!(
        timeout(QUIET, listeners[1].accept()).await.is_err(),
        "node 2 was dialled for a connection the front cannot attribute"
    );

    let (mut near, mut far) =
        through_front(&mesh, &listeners, 2, &request_head("/version", None)).await;
    send(
        &mut near,
        b"POST /raft HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    )
    .await;
    expect_closed(&mut near, "a malformed second request").await;
    expect_closed(&mut far, "node 2's end of a malformed second request").await;

    let (mut near, mut far) =
        through_front(&mesh, &listeners, 2, &request_head("/version", None)).await;
    send(&mut near, &request_head("/raft", Some(MEMBERS[1]))).await;
    expect_closed(&mut near, "a second request from node 2 to itself").await;
    expect_closed(&mut far, "node 2's end of a request from itself").await;
    stop(mesh).await;
}

#[tokio::test]
async fn members_belong_to_header_meshes_one_node_each() {
    let (mesh, _listeners) = header_mesh(true).await;
    assert!(matches!(
        mesh.set_member(2, MEMBERS[0]),
        Err(NetError::MemberTaken { node: 1, .. })
    ));
    assert!(matches!(
        mesh.set_member(4, MemberId(0xd4)),
        Err(NetError::UnknownNode(4))
    ));
    // Registering node 1 again replaces its id.
    mesh.set_member(1, MemberId(0xd4)).unwrap();
    let members: Vec<(MemberId, u64)> = mesh.members().into_iter().collect();
    assert_eq!(
        members,
        vec![(MEMBERS[1], 2), (MEMBERS[2], 3), (MemberId(0xd4), 1)]
    );
    stop(mesh).await;

    let nodes: BTreeMap<u64, SocketAddr> = (1..=2)
        .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 1))))
        .collect();
    let port_mesh = Mesh::start(nodes, PortLayout::OsAssigned).await.unwrap();
    assert!(matches!(
        port_mesh.set_member(1, MEMBERS[0]),
        Err(NetError::MembersNeedHeaderAttribution)
    ));
    assert_eq!(port_mesh.front(1), None);
    stop(port_mesh).await;
}

#[tokio::test]
async fn shutdown_closes_front_connections_bound_or_not() {
    let (mesh, listeners) = header_mesh(true).await;
    let (mut bound_near, mut bound_far) = through_front(
        &mesh,
        &listeners,
        3,
        &request_head("/raft/stream/message/a1", Some(MEMBERS[0])),
    )
    .await;
    let (mut unbound_near, mut unbound_far) =
        through_front(&mesh, &listeners, 3, &request_head("/raft/probing", None)).await;
    stop(mesh).await;
    expect_closed(&mut bound_near, "a bound connection's client end").await;
    expect_closed(&mut bound_far, "a bound connection's node end").await;
    expect_closed(&mut unbound_near, "an unbound connection's client end").await;
    expect_closed(&mut unbound_far, "an unbound connection's node end").await;
}

#[tokio::test]
async fn net_serve_attributed_by_header_routes_every_peer_to_one_front_and_takes_members() {
    // The binary with --attribute header: every route to node j is j's one front, whoever dials it;
    // `net member` registers ids and refuses a malformed or taken one with one line and exit 2.
    let mut node_listeners = Vec::new();
    for _ in 0..3 {
        node_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let nodes = node_listeners
        .iter()
        .zip(1..)
        .map(|(listener, id)| format!("{id}={}", listener.local_addr().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let mut serve = tokio::process::Command::new(BINARY)
        .args(["net", "serve", "--attribute", "header", "--nodes", &nodes])
        .args(["--control", "127.0.0.1:0"])
        .env_remove("JEPSEN_LITE_CONTROL")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start net serve");
    let (route_lines, control) = read_until_ready(&mut serve).await;
    // "node 1 --peer-route 2=ADDR --peer-route 3=ADDR": (from, to) -> ADDR.
    let mut routes = BTreeMap::new();
    for line in &route_lines {
        let words: Vec<&str> = line.split(' ').collect();
        let from: u64 = words[1].parse().unwrap();
        for route in words[2..].chunks(2) {
            assert_eq!(route[0], "--peer-route", "{line}");
            let (to, via) = route[1].split_once('=').unwrap();
            routes.insert((from, to.parse::<u64>().unwrap()), via.to_string());
        }
    }
    assert_eq!(routes.len(), 6, "{route_lines:?}");
    for to in 1..=3u64 {
        let vias: std::collections::BTreeSet<&String> = routes
            .iter()
            .filter(|((_, target), _)| *target == to)
            .map(|(_, via)| via)
            .collect();
        assert_eq!(
            vias.len(),
            1,
            "node {to} has more than one front: {route_lines:?}"
        );
    }

    let (code, _, stderr) = jepsen_lite(&["net", "member", "1", "a1", "--control", &control]).await;
    assert_eq!(code, 0, "{stderr}");
    for (bad, reason) in [
        (["net", "member", "2", "not-hex"], "invalid member id"),
        (["net", "member", "2", "a1"], "already registered as node 1"),
    ] {
        let mut args = bad.to_vec();
        args.extend(["--control", control.as_str()]);
        let (code, _, stderr) = jepsen_lite(&args).await;
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.contains(reason), "{bad:?}: {stderr}");
    }
    serve.kill().await.unwrap();
}
