//! `jepsen-lite certs --out DIR --nodes N [--san NAME ...]`: writes a throwaway CA certificate and node and
//! client certificates for a local TLS cluster (`scripts/cluster.sh up --tls` uses it), and prints the files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use raftkv_testkit::certs;

#[derive(Debug, Args)]
pub struct CertsCommand {
    /// Directory to write ca.pem, node{i}.pem, node{i}-key.pem, client.pem and client-key.pem into
    #[arg(long)]
    out: PathBuf,
    /// Node certificates to make, for nodes 1..=N
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Another DNS name or IP address for every node certificate (repeatable); raftkv-node, localhost and
    /// 127.0.0.1 are always there
    #[arg(long = "san")]
    extra_names: Vec<String>,
}

pub fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    let files = certs::generate(&command.out, command.nodes, &command.extra_names)?;
    println!("ca      {}", files.ca.display());
    for (id, node) in &files.nodes {
        println!(
            "node {id:<2} {} {}",
            node.cert.display(),
            node.key.display()
        );
    }
    println!(
        "client  {} {}",
        files.client.cert.display(),
        files.client.key.display()
    );
    Ok(ExitCode::SUCCESS)
}
