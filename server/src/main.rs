//! `raftkv-server`: parse flags, set up logging, run the node until SIGTERM or SIGINT, and map any error to
//! one line on stderr and a non-zero exit code (2 for bad flags, 1 for anything else).

use clap::Parser;
use raftkv_server::config::{Args, LogFormat, NodeConfig};
use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is not set: raftkv at info, openraft at warn, except openraft's
/// replication modules, which log every failed attempt to reach an unreachable peer (several lines per
/// heartbeat interval during a partition). raftkv logs peer trouble itself, once when a peer becomes
/// unreachable and once when it is back (`network`). `RUST_LOG` replaces this filter entirely.
pub const LOG_FILTER_DEFAULT: &str =
    "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

/// mimalloc, not glibc's malloc: glibc gives each busy thread its own 64 MiB arena and returns little of it,
/// so a leader holding 250k keys (about 70 MB of data) sat at 1.15 GB resident, most of it arena slack
/// (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return std::future::pending().await;
            }
        };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match NodeConfig::from_args(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("raftkv-server: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("raftkv-server: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(raftkv_server::node::run(config, shutdown_signal()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("raftkv-server: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}
