//! Throwaway TLS material for a local cluster: a fresh CA, one certificate per node, one client certificate.
//!
//! Every node certificate carries the DNS name `raftkv-node` (what peers verify, whatever proxy address they
//! dial), `localhost` and `127.0.0.1` (what clients dial), plus any extra names asked for, and allows both
//! server and client authentication, since a node also presents it when it dials its peers. The client
//! certificate allows client authentication only and does not carry `raftkv-node`, so it opens the client API
//! of a node started with `--tls-require-client-cert` but never the peer API. The CA's private key is never
//! written: nothing can be issued by this CA after `generate` returns. Keys are ECDSA P-256, written with
//! mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use raftkv_client::TlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The name peers verify on each other's certificates (the server's `tls::PEER_SERVER_NAME`).
pub const PEER_SERVER_NAME: &str = "raftkv-node";
/// Names every node certificate carries besides `PEER_SERVER_NAME`: what local clients dial.
pub const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// The name in the client certificate.
pub const CLIENT_NAME: &str = "raftkv-client";
/// Most node certificates one call makes.
pub const NODES_MAX: u64 = 99;

/// A certificate and its key on disk.
#[derive(Clone, Debug)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where `generate` wrote everything.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub nodes: BTreeMap<u64, KeyPairFiles>,
    pub client: KeyPairFiles,
}

impl CertFiles {
    /// The `raftkv-server` flags that turn TLS on for node `id`.
    pub fn server_args(&self, id: u64) -> anyhow::Result<Vec<String>> {
        let node = self
            .nodes
            .get(&id)
            .with_context(|| format!("no certificate for node {id}"))?;
        Ok(vec![
            "--tls-cert".to_string(),
            node.cert.display().to_string(),
            "--tls-key".to_string(),
            node.key.display().to_string(),
            "--tls-ca".to_string(),
            self.ca.display().to_string(),
        ])
    }

    /// What a client needs: trust the CA (no client certificate).
    pub fn client_tls(&self) -> anyhow::Result<TlsConfig> {
        Ok(TlsConfig::from_files(&self.ca, None, None)?)
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Issues a certificate for `names` with the given usages, signed by `issuer`, and writes it and its key.
fn issue(
    dir: &Path,
    stem: &str,
    common_name: &str,
    names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<KeyPairFiles> {
    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("invalid certificate names {names:?}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, issuer)
        .context("cannot sign a certificate")?;
    let files = KeyPairFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    write_public(&files.cert, &cert.pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// Makes a new CA in `dir` and certificates for nodes 1..=`nodes` (`node{i}.pem`, `node{i}-key.pem`) and one
/// client (`client.pem`, `client-key.pem`); the CA certificate is `ca.pem`. `extra_names` (DNS names or IP
/// addresses) go into every node certificate.
pub fn generate(dir: &Path, nodes: u64, extra_names: &[String]) -> anyhow::Result<CertFiles> {
    if nodes == 0 || nodes > NODES_MAX {
        anyhow::bail!("certificates are made for 1 to {NODES_MAX} nodes, not {nodes}");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    // The creation time tells two throwaway CAs apart (in a client's "not trusted" error, for one).
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("raftkv throwaway CA {created}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    let ca = dir.join("ca.pem");
    write_public(&ca, &ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut node_files = BTreeMap::new();
    for id in 1..=nodes {
        let names = std::iter::once(PEER_SERVER_NAME)
            .chain(LOCAL_NAMES)
            .map(str::to_string)
            .chain(extra_names.iter().cloned())
            .collect();
        let files = issue(
            dir,
            &format!("node{id}"),
            &format!("raftkv node {id}"),
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuer,
        )?;
        node_files.insert(id, files);
    }
    let client = issue(
        dir,
        "client",
        CLIENT_NAME,
        vec![CLIENT_NAME.to_string()],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        &issuer,
    )?;
    Ok(CertFiles {
        ca,
        nodes: node_files,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_as_client_tls() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = generate(dir.path(), 3, &["db.example".to_string()]).unwrap();
        assert_eq!(files.nodes.len(), 3);
        files.client_tls().unwrap();
        let with_identity =
            TlsConfig::from_files(&files.ca, Some(&files.client.cert), Some(&files.client.key))
                .unwrap();
        assert!(with_identity.has_client_certificate());
        // A node's key does not fit the client certificate.
        let mismatched = TlsConfig::from_files(
            &files.ca,
            Some(&files.client.cert),
            Some(&files.nodes[&1].key),
        );
        assert!(mismatched.is_err());
        let mode = std::fs::metadata(&files.nodes[&2].key).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert!(generate(dir.path(), 0, &[]).is_err());
    }
}
