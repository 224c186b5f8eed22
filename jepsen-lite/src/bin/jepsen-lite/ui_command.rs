//! `jepsen-lite ui`: serves the playground page ([`jepsen_lite::ui`]) for the local cluster of
//! `scripts/cluster.sh up`, or for a cluster of its own (`--nodes N`, stopped when the playground stops), until
//! SIGTERM or SIGINT. Prints `playground: http://ADDRESS/` once it serves.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use jepsen_lite::ui::{self, backend::Backend};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Args)]
pub struct UiCommand {
    /// Where the page is served. It answers only requests addressed to this address (and to localhost on a
    /// loopback address); keep it on 127.0.0.1: the page can kill processes
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Start a cluster of this many nodes for the playground (stopped with it) instead of attaching to the
    /// local cluster
    #[arg(long)]
    nodes: Option<u64>,
    /// The state folder of the `scripts/cluster.sh` cluster to attach to
    #[arg(long, default_value = ".cluster")]
    cluster_dir: PathBuf,
    /// With --nodes: where the nodes' data and logs go (cleared first)
    #[arg(long, default_value = "jepsen-out/ui")]
    data_dir: PathBuf,
    /// With --nodes: the raftkv-server binary (default: next to jepsen-lite)
    #[arg(long, env = "RAFTKV_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

pub async fn run(command: UiCommand) -> anyhow::Result<ExitCode> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    anyhow::ensure!(
        !command.listen.ip().is_unspecified(),
        "--listen {} names no address the page can be reached by (the playground answers only requests addressed to the address it listens on); give one, e.g. 127.0.0.1:{}",
        command.listen,
        command.listen.port()
    );
    let listener = tokio::net::TcpListener::bind(command.listen)
        .await
        .with_context(|| {
            format!(
                "cannot serve the playground on {} (in use? choose another with --listen 127.0.0.1:PORT)",
                command.listen
            )
        })?;
    let address = listener.local_addr()?;
    let (backend, mode) = match command.nodes {
        Some(nodes) => {
            // Before the data dir is cleared: a refused count must change nothing.
            jepsen_lite::cluster::check_nodes(nodes)?;
            let server_binary = match command.server_bin {
                Some(path) => path,
                None => raftkv_testkit::server_binary()?,
            };
            if command.data_dir.exists() {
                std::fs::remove_dir_all(&command.data_dir)
                    .with_context(|| format!("cannot clear {}", command.data_dir.display()))?;
            }
            let backend =
                Backend::start_own(nodes, server_binary, command.data_dir.clone()).await?;
            (
                backend,
                format!("its own cluster, data in {}", command.data_dir.display()),
            )
        }
        None => (
            Backend::attach(&command.cluster_dir)?,
            format!("the cluster of {}", command.cluster_dir.display()),
        ),
    };
    let backend = Arc::new(backend);
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(ui::serve(listener, Arc::clone(&backend), mode, stopped));
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "playground: http://{address}/")?;
        stdout.flush()?;
    }
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot watch for SIGINT")?,
    }
    let _ = stop.send(true);
    let served = server.await.context("the playground's server panicked")?;
    match Arc::try_unwrap(backend) {
        Ok(backend) => backend.shutdown().await,
        // A task of the server still holds it: its graceful shutdown cannot run, so say so.
        Err(_) => {
            eprintln!("the playground's cluster is still in use at exit: not stopped gracefully")
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}
