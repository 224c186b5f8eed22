//! Throwaway TLS material for local clusters, made with rcgen: a fresh CA ([`Authority`]), node certificates,
//! client certificates, and [`generate`], the whole set for N nodes that `jepsen-lite certs` writes and a
//! TLS [`Cluster`](crate::Cluster) uses.
//!
//! Every node certificate carries the DNS name `raftkv-node` (what peers verify, whatever proxy address they
//! dial), `localhost` and `127.0.0.1` (what clients dial), plus any extra names asked for, and allows both
//! server and client authentication, since a node also presents it when it dials its peers. A client
//! certificate allows client authentication only and does not carry `raftkv-node`, so it opens the client API
//! of a node started with `--tls-require-client-cert` but never the peer API. The CA's private key lives only
//! in the [`Authority`] (tests issue more certificates as they go); it is never written, so nothing can be
//! issued by a CA once its `Authority` is dropped. Keys are ECDSA P-256, written with mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use raftkv_client::TlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// The name peers verify on each other's certificates (the server's `tls::PEER_SERVER_NAME`).
pub const PEER_SERVER_NAME: &str = "raftkv-node";
/// Names every node certificate carries besides `PEER_SERVER_NAME`: what local clients dial.
pub const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// The name in the client certificate.
pub const CLIENT_NAME: &str = "raftkv-client";
/// Most node certificates one [`generate`] makes.
pub const NODES_MAX: u64 = 99;

/// A certificate and its key on disk.
#[derive(Clone, Debug)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Server and client authentication: a node serves with it and dials its peers with it.
    Node,
    /// Client authentication only.
    Client,
}

impl Usage {
    fn purposes(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// The `raftkv-server` flags that turn TLS on with `node`'s certificate, trusting `ca`.
pub fn server_args(node: &KeyPairFiles, ca: &Path) -> Vec<String> {
    vec![
        "--tls-cert".to_string(),
        node.cert.display().to_string(),
        "--tls-key".to_string(),
        node.key.display().to_string(),
        "--tls-ca".to_string(),
        ca.display().to_string(),
    ]
}

/// A CA that issues certificates into one directory (`ca.pem` and `{stem}.pem` / `{stem}-key.pem`).
pub struct Authority {
    dir: PathBuf,
    ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// Removed with the authority, when it made its own directory.
    _temp: Option<TempDir>,
}

impl Authority {
    /// A new CA named `name`, its certificate written to `dir/ca.pem` (`dir` is created).
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Authority> {
        Authority::create(dir.to_path_buf(), name, None)
    }

    /// A new CA named `name` in a temporary directory removed when the authority is dropped.
    pub fn temporary(name: &str) -> anyhow::Result<Authority> {
        let temp = TempDir::new().context("cannot create a temporary directory")?;
        Authority::create(temp.path().to_path_buf(), name, Some(temp))
    }

    fn create(dir: PathBuf, name: &str, temp: Option<TempDir>) -> anyhow::Result<Authority> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        let ca = dir.join("ca.pem");
        write_public(&ca, &cert.pem())?;
        Ok(Authority {
            dir,
            ca,
            issuer: Issuer::new(params, key),
            _temp: temp,
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Where the certificates go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A certificate for `names` (DNS names or IP addresses), common name `stem`, written as `{stem}.pem`.
    pub fn issue(&self, stem: &str, names: &[&str], usage: Usage) -> anyhow::Result<KeyPairFiles> {
        let names = names.iter().map(|name| name.to_string()).collect();
        self.issue_named(stem, stem, names, usage)
    }

    /// Node `id`'s certificate (`node{id}.pem`): the peer name, the local names and `extra_names`.
    pub fn node(&self, id: u64, extra_names: &[String]) -> anyhow::Result<KeyPairFiles> {
        let names = std::iter::once(PEER_SERVER_NAME)
            .chain(LOCAL_NAMES)
            .map(str::to_string)
            .chain(extra_names.iter().cloned())
            .collect();
        self.issue_named(
            &format!("node{id}"),
            &format!("raftkv node {id}"),
            names,
            Usage::Node,
        )
    }

    /// The client certificate (`client.pem`): client authentication, no peer name.
    pub fn client(&self) -> anyhow::Result<KeyPairFiles> {
        self.issue_named(
            "client",
            CLIENT_NAME,
            vec![CLIENT_NAME.to_string()],
            Usage::Client,
        )
    }

    /// The `raftkv-server` flags for `node`'s certificate, trusting this CA.
    pub fn server_args(&self, node: &KeyPairFiles) -> Vec<String> {
        server_args(node, &self.ca)
    }

    /// What a client needs: trust this CA (no client certificate).
    pub fn client_tls(&self) -> anyhow::Result<TlsConfig> {
        Ok(TlsConfig::from_files(&self.ca, None, None)?)
    }

    fn issue_named(
        &self,
        stem: &str,
        common_name: &str,
        names: Vec<String>,
        usage: Usage,
    ) -> anyhow::Result<KeyPairFiles> {
        let mut params = CertificateParams::new(names.clone())
            .with_context(|| format!("invalid certificate names {names:?}"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usage.purposes();
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign a certificate")?;
        let files = KeyPairFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        write_public(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// Where [`generate`] wrote everything.
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
        Ok(server_args(node, &self.ca))
    }

    /// What a client needs: trust the CA (no client certificate).
    pub fn client_tls(&self) -> anyhow::Result<TlsConfig> {
        Ok(TlsConfig::from_files(&self.ca, None, None)?)
    }
}

/// Makes a new CA in `dir` and certificates for nodes 1..=`nodes` (`node{i}.pem`, `node{i}-key.pem`) and one
/// client (`client.pem`, `client-key.pem`); the CA certificate is `ca.pem`. `extra_names` (DNS names or IP
/// addresses) go into every node certificate. The CA's key is dropped on return.
pub fn generate(dir: &Path, nodes: u64, extra_names: &[String]) -> anyhow::Result<CertFiles> {
    if nodes == 0 || nodes > NODES_MAX {
        anyhow::bail!("certificates are made for 1 to {NODES_MAX} nodes, not {nodes}");
    }
    // The creation time tells two throwaway CAs apart (in a client's "not trusted" error, for one).
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let authority = Authority::new(dir, &format!("raftkv throwaway CA {created}"))?;
    let mut node_files = BTreeMap::new();
    for id in 1..=nodes {
        node_files.insert(id, authority.node(id, extra_names)?);
    }
    Ok(CertFiles {
        ca: authority.ca.clone(),
        nodes: node_files,
        client: authority.client()?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_as_client_tls() {
        let dir = TempDir::new().unwrap();
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
        assert_eq!(
            files.server_args(2).unwrap()[1],
            files.nodes[&2].cert.display().to_string()
        );
        assert!(files.server_args(4).is_err());
        assert!(generate(dir.path(), 0, &[]).is_err());
    }

    #[test]
    fn a_temporary_authority_issues_until_dropped_and_takes_its_directory_along() {
        let authority = Authority::temporary("test CA").unwrap();
        let dir = authority.dir().to_path_buf();
        let issued = authority
            .issue("a-client", &[CLIENT_NAME], Usage::Client)
            .unwrap();
        assert!(issued.cert.starts_with(&dir) && issued.key.is_file());
        authority.client_tls().unwrap();
        drop(authority);
        assert!(!dir.exists());
    }
}
