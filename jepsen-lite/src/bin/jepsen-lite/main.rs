//! The `jepsen-lite` binary. `main` parses the command line, runs one subcommand family and turns an error into
//! one line on stderr and exit code 2 (the harness itself failed). Each family lives in its own module and owns
//! its arguments: `run_command` for `jepsen-lite run`, `check_command` for `jepsen-lite check`, `net_command` for
//! `jepsen-lite net ...`, `demo_command` for `jepsen-lite demo ...`, `certs_command` for `jepsen-lite certs`, `ui_command` for
//! `jepsen-lite ui`.

mod certs_command;
mod check_command;
mod demo_command;
mod net_command;
mod run_command;
mod ui_command;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Exit code for bad input or a harness failure (an unreachable mesh, a port in use).
const EXIT_HARNESS_FAILED: u8 = 2;

/// Partition experiments against raftkv.
#[derive(Debug, Parser)]
#[command(name = "jepsen-lite", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a partition experiment: a real cluster, concurrent clients, faults; check the history and report
    /// (exit 0 valid, 1 anomaly, 2 unknown or harness failure)
    Run(run_command::RunCommand),
    /// Guided demonstrations on a real cluster
    #[command(subcommand)]
    Demo(demo_command::DemoCommand),
    /// Run the partition proxy mesh, or change and inspect a running one
    #[command(subcommand)]
    Net(net_command::NetCommand),
    /// Re-check a history file (exit 0 valid, 1 anomaly, 2 unknown or unreadable)
    Check(check_command::CheckCommand),
    /// Write a throwaway CA and node and client certificates for a local TLS cluster
    Certs(certs_command::CertsCommand),
    /// Serve the playground: a live page of a local cluster to watch it, break it, read and write
    Ui(ui_command::UiCommand),
}

fn main() -> ExitCode {
    let cli = parse_args();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_HARNESS_FAILED)
        }
    }
}

/// Parses the command line; a usage error is printed as one line (help and version print as usual).
fn parse_args() -> Cli {
    Cli::try_parse().unwrap_or_else(|error| {
        use clap::error::ErrorKind;
        match error.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
            _ => {
                let text = error.to_string();
                let message: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
                    .filter(|line| !line.is_empty())
                    .collect();
                eprintln!("{} (see --help)", message.join(" "));
                std::process::exit(EXIT_HARNESS_FAILED.into());
            }
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Net(command) => runtime.block_on(net_command::run(command)),
        Command::Check(command) => check_command::run(command),
        Command::Certs(command) => certs_command::run(command),
        Command::Run(command) => runtime.block_on(run_command::run(command)),
        Command::Demo(command) => runtime.block_on(demo_command::run(command)),
        Command::Ui(command) => runtime.block_on(ui_command::run(command)),
    }
}
