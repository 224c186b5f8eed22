//! TLS on real nodes: a mutual-TLS cluster end to end, and every way in without the right certificate refused
//! with a clear error on the caller's side and a warning in the node's log. Certificates are made in each test
//! with the test kit's throwaway CAs (`Authority`); nothing is read from the repository.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftkv_client::{Client, ClientConfig, ClientError, Consistency, ReadOptions, Role, TlsConfig};
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::ReadIndexRequest;
use raftkv_testkit::certs::PEER_SERVER_NAME;
use raftkv_testkit::{
    wait_until, Authority, ClusterSpec, KeyPairFiles, TestCluster, Usage, WAIT_MAX,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ops::{check_startup_error, node_args, with};

/// Deadline of one raw peer call in these tests.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A CA made for one test, issuing into a temporary directory.
fn authority(name: &str) -> Authority {
    Authority::temporary(name).expect("a throwaway CA")
}

/// Node `id`'s certificate from `pki`: the peer name and the local addresses.
fn node_cert(pki: &Authority, id: u64) -> KeyPairFiles {
    pki.node(id, &[]).expect("a node certificate")
}

/// A TLS cluster of `size` nodes, each with its own certificate from `pki`.
fn tls_cluster(pki: &Authority, size: u64) -> TestCluster {
    TestCluster::with_spec(ClusterSpec {
        node_args: (1..=size)
            .map(|id| (id, pki.server_args(&node_cert(pki, id))))
            .collect(),
        client_tls: Some(pki.client_tls().unwrap()),
        ..ClusterSpec::new(size)
    })
}

/// Waits until node `id`'s log contains `needle`.
async fn wait_for_log(cluster: &TestCluster, id: u64, needle: &str) {
    wait_until(&format!("node {id} logs {needle:?}"), WAIT_MAX, || async {
        cluster.log(id).contains(needle).then_some(())
    })
    .await
}

/// A raw peer client of `addr` over TLS trusting `ca`, presenting `identity` if given: what a node would
/// be, without the node.
async fn raw_peer(
    addr: &str,
    ca: &Path,
    identity: Option<&KeyPairFiles>,
) -> Result<PeerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(PEER_SERVER_NAME);
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&issued.cert).unwrap(),
            std::fs::read(&issued.key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(PEER_CALL_TIMEOUT)
        .timeout(PEER_CALL_TIMEOUT)
        .connect()
        .await?;
    Ok(PeerClient::new(channel))
}

/// A read-index call as a node 99 of the default cluster would make it to node `to`.
async fn read_index_call(
    peer: &mut PeerClient<tonic::transport::Channel>,
    to: u64,
) -> Result<(), tonic::Status> {
    peer.read_index(ReadIndexRequest {
        cluster_id: "raftkv".to_string(),
        from: 99,
        to,
    })
    .await
    .map(|_| ())
}

/// Three nodes with their own certificates elect a leader over mutual TLS, take a write, serve a
/// linearizable read on a follower (which asks the leader's read index over the peer API), and elect a new
/// leader when the old one is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_writes_reads_on_a_follower_and_elects_a_new_leader() {
    let pki = authority("cluster CA");
    let mut cluster = tls_cluster(&pki, 3);
    cluster.wait_for_leader(&[1, 2, 3], 1).await;
    let client = cluster.client();
    let revision = client
        .put("greeting", "hello")
        .await
        .expect("write over TLS");
    // The write may have committed before a follower's TLS link to the leader was up, and an election right
    // after start-up can move leadership: wait for the leader every node names.
    let leader = cluster.wait_for_agreed_leader(&[1, 2, 3], revision).await;
    let term = cluster.wait_knows_leader(leader, leader).await.term;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let read = client
        .get(
            "greeting",
            &ReadOptions {
                consistency: Consistency::Linearizable,
                endpoint: Some(cluster.addr(follower)),
                ..Default::default()
            },
        )
        .await
        .expect("linearizable read on a follower");
    assert_eq!(read.kv.unwrap().value, b"hello");
    assert_eq!(read.envelope.node_id, follower);
    assert_eq!(read.envelope.role, Role::Follower as i32);
    assert!(read.envelope.revision >= revision);

    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (new_leader, new_term) = cluster.wait_for_leader(&survivors, term + 1).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    let client =
        Client::new(cluster.client_config(survivors.iter().map(|id| cluster.addr(*id)).collect()))
            .unwrap();
    client
        .put("greeting", "again")
        .await
        .expect("write after the election");
    let read = client
        .get("greeting", &ReadOptions::default())
        .await
        .expect("read after the election");
    assert_eq!(read.kv.unwrap().value, b"again");
    for id in &survivors {
        let log = cluster.log(*id);
        for refusal in [
            "refused a tls handshake",
            "refused a peer call",
            "refused a plaintext",
        ] {
            assert!(
                !log.contains(refusal),
                "node {id} {refusal} in a healthy TLS cluster:\n{log}"
            );
        }
    }
}

/// A client that does not trust the cluster CA gets a clear, immediate error saying to pass --ca, for a write
/// (never "indeterminate": nothing was sent) and a read, both when it speaks plaintext and when it trusts
/// another CA; the node logs a warning for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_the_ca_is_refused_with_a_clear_error() {
    let pki = authority("cluster CA");
    let cluster = tls_cluster(&pki, 1);
    cluster.wait_for_leader(&[1], 1).await;
    let endpoint = cluster.addr(1);

    let plaintext = Client::new(ClientConfig::new(vec![endpoint.clone()])).unwrap();
    match plaintext.put("k", "v").await {
        Err(ClientError::Unauthenticated(message)) => {
            assert!(
                message.contains("TLS") && message.contains("--ca"),
                "{message}"
            )
        }
        other => panic!("a plaintext write to a TLS node: {other:?}"),
    }
    match plaintext.status_of(&endpoint).await {
        Err(ClientError::Unauthenticated(message)) => {
            assert!(message.contains("--ca"), "{message}")
        }
        other => panic!("a plaintext status call to a TLS node: {other:?}"),
    }
    wait_for_log(&cluster, 1, "refused a plaintext connection").await;

    let other_ca = authority("another CA");
    let mut config = ClientConfig::new(vec![endpoint.clone()]);
    config.tls = Some(other_ca.client_tls().unwrap());
    let untrusting = Client::new(config).unwrap();
    match untrusting.put("k", "v").await {
        Err(ClientError::Tls { message, .. }) => {
            assert!(message.contains("certificate of"), "{message}");
            assert!(message.contains("not trusted"), "{message}");
            assert!(message.contains("--ca"), "{message}");
        }
        other => panic!("a write trusting another CA: {other:?}"),
    }
    match untrusting.get("k", &ReadOptions::default()).await {
        Err(ClientError::Tls { message, .. }) => assert!(message.contains("not trusted")),
        other => panic!("a read trusting another CA: {other:?}"),
    }
    wait_for_log(&cluster, 1, "refused a tls handshake").await;

    // The right CA works, and nothing above was written.
    let read = cluster
        .client()
        .get("k", &ReadOptions::default())
        .await
        .unwrap();
    assert!(read.kv.is_none(), "a refused write was applied");
}

/// The peer API admits only a certificate from the cluster CA issued for the peer name: a TLS connection
/// without a client certificate, or with a cluster-CA client certificate for another name, gets
/// `Unauthenticated` from the peer service (and a warning in the log); a node's own certificate gets
/// through to the envelope checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_a_peer_certificate_is_refused_by_the_peer_service() {
    let pki = authority("cluster CA");
    let cluster = tls_cluster(&pki, 1);
    cluster.wait_for_leader(&[1], 1).await;
    let addr = cluster.addr(1);

    let mut anonymous = raw_peer(&addr, pki.ca(), None)
        .await
        .expect("TLS without a client certificate is allowed on the port");
    let refused = read_index_call(&mut anonymous, 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("no client certificate"),
        "{refused:?}"
    );
    wait_for_log(&cluster, 1, "refused a peer call").await;

    let client_cert = pki
        .issue("a-client", &["raftkv-client"], Usage::Client)
        .unwrap();
    let mut client_as_peer = raw_peer(&addr, pki.ca(), Some(&client_cert)).await.unwrap();
    let refused = read_index_call(&mut client_as_peer, 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("not issued for raftkv-node"),
        "{refused:?}"
    );

    // With a node certificate the call passes authentication and meets the envelope check instead (node 99
    // is not a member).
    let mut peer = raw_peer(&addr, pki.ca(), Some(&node_cert(&pki, 99)))
        .await
        .unwrap();
    let checked = read_index_call(&mut peer, 1).await.unwrap_err();
    assert_eq!(
        checked.code(),
        tonic::Code::FailedPrecondition,
        "{checked:?}"
    );
    assert!(checked.message().contains("not a member"), "{checked:?}");
}

/// A "peer" whose certificate (with the right name) comes from another CA fails the TLS handshake: the
/// request never reaches a service, and the node logs the refused handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_a_certificate_from_another_ca_fails_the_handshake() {
    let pki = authority("cluster CA");
    let cluster = tls_cluster(&pki, 1);
    cluster.wait_for_leader(&[1], 1).await;
    let other_ca = authority("another CA");
    let impostor = node_cert(&other_ca, 2);

    // TLS 1.3 lets the client finish its side before the server checks its certificate, so the refusal
    // surfaces when connecting or on the first call: as the server's alert, or as the connection closing
    // under the request, whichever the client reads first. Either way no service answered.
    let refused = match raw_peer(&cluster.addr(1), pki.ca(), Some(&impostor)).await {
        Err(error) => format!("{error:?}"),
        Ok(mut peer) => {
            let status = read_index_call(&mut peer, 1).await.unwrap_err();
            assert_ne!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            assert!(
                status
                    .metadata()
                    .get(raftkv_proto::contract::ERROR_KIND_KEY)
                    .is_none(),
                "a node service answered: {status:?}"
            );
            format!("{status:?}")
        }
    };
    wait_for_log(&cluster, 1, "refused a tls handshake").await;
    let log = cluster.log(1);
    assert!(
        log.contains("UnknownIssuer") || log.contains("invalid peer certificate"),
        "{log}\ncaller saw: {refused}"
    );
    assert!(!log.contains("refused a peer call"), "{log}");
}

/// A client certificate is enough for the client API of a node started with --tls-require-client-cert, and
/// a client without one is refused in the handshake with an error saying to pass --cert and --key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificate_is_asked_for_clearly() {
    let pki = authority("cluster CA");
    let client_cert = pki
        .issue("a-client", &["raftkv-client"], Usage::Client)
        .unwrap();
    let mut required = pki.server_args(&node_cert(&pki, 1));
    required.push("--tls-require-client-cert".to_string());
    let cluster = TestCluster::with_spec(ClusterSpec {
        node_args: BTreeMap::from([(1, required)]),
        client_tls: Some(
            TlsConfig::from_files(pki.ca(), Some(&client_cert.cert), Some(&client_cert.key))
                .unwrap(),
        ),
        ..ClusterSpec::new(1)
    });
    cluster.wait_for_leader(&[1], 1).await;
    cluster
        .client()
        .put("k", "v")
        .await
        .expect("a client with a certificate");

    let mut config = ClientConfig::new(vec![cluster.addr(1)]);
    config.tls = Some(pki.client_tls().unwrap());
    match Client::new(config).unwrap().put("k", "w").await {
        Err(ClientError::Tls { message, .. }) => {
            assert!(
                message.contains("--cert") && message.contains("--key"),
                "{message}"
            )
        }
        other => panic!("a client without a certificate: {other:?}"),
    }
}

/// Every TLS configuration mistake stops the node at start with one line that says what to change.
#[test]
fn tls_config_errors_stop_the_node_with_one_line() {
    let pki = authority("cluster CA");
    let node = node_cert(&pki, 1);
    let other_node = node_cert(&pki, 2);
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let base = || node_args(1, &data);
    let s = |path: &Path| path.display().to_string();
    // The node's flags with TLS files: certificate, key, CA.
    let tls = |cert: &Path, key: &Path, ca: &Path| {
        with(
            base(),
            &[
                "--tls-cert",
                &s(cert),
                "--tls-key",
                &s(key),
                "--tls-ca",
                &s(ca),
            ],
        )
    };

    check_startup_error(
        &with(base(), &["--tls-cert", &s(&node.cert)]),
        2,
        &[
            "TLS needs --tls-cert, --tls-key and --tls-ca together",
            "add --tls-key and --tls-ca",
        ],
    );
    check_startup_error(
        &with(base(), &["--tls-require-client-cert"]),
        2,
        &["--tls-require-client-cert needs TLS"],
    );
    let missing = dir.path().join("missing.pem");
    check_startup_error(
        &tls(&missing, &node.key, pki.ca()),
        1,
        &[&format!("cannot read --tls-cert {}", missing.display())],
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    check_startup_error(
        &tls(&node.cert, &node.key, &garbage),
        1,
        &["--tls-ca", "holds no certificate", "pass a PEM file"],
    );
    check_startup_error(
        &tls(&node.cert, &garbage, pki.ca()),
        1,
        &["--tls-key", "holds no private key"],
    );
    check_startup_error(
        &tls(&node.cert, &other_node.key, pki.ca()),
        1,
        &[
            "does not fit --tls-cert",
            "pass the key the certificate was issued for",
        ],
    );
    let unnamed = pki
        .issue("unnamed", &["localhost", "127.0.0.1"], Usage::Node)
        .unwrap();
    check_startup_error(
        &tls(&unnamed.cert, &unnamed.key, pki.ca()),
        1,
        &["would be refused by peers", "raftkv-node"],
    );
    let other_ca = authority("another CA");
    check_startup_error(
        &tls(&node.cert, &node.key, other_ca.ca()),
        1,
        &["would be refused by peers", "issue it from --tls-ca"],
    );
    assert!(!data.exists(), "a refused start wrote its data dir");
}
