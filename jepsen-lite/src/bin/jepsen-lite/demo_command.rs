//! `jepsen-lite demo split-brain|clock`: runs a guided demonstration of [`jepsen_lite::demo`] and prints its
//! story. Exit 0 when every step went as expected, 1 when one did not, 2 when the demo could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use jepsen_lite::demo::{self, DemoConfig};

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Five nodes; the leader and one follower are cut off. Shows what each side can and cannot do, then heals
    SplitBrain(DemoArgs),
    /// Three nodes; one runs with a slow clock (libfaketime), leads, and is cut off. Its lease read returns a
    /// value the majority overwrote while a linearizable read refuses; with a true clock both refuse
    Clock(DemoArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the nodes' data and logs go (cleared first)
    #[arg(long, default_value = "jepsen-out/demo")]
    data_dir: PathBuf,
    /// The raftkv-server binary (default: next to jepsen-lite)
    #[arg(long, env = "RAFTKV_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

pub async fn run(command: DemoCommand) -> anyhow::Result<ExitCode> {
    let (args, clock) = match command {
        DemoCommand::SplitBrain(args) => (args, false),
        DemoCommand::Clock(args) => (args, true),
    };
    let server_binary = match args.server_bin {
        Some(path) => path,
        None => raftkv_testkit::server_binary()?,
    };
    if args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot clear {}", args.data_dir.display()))?;
    }
    let mut stdout = std::io::stdout();
    let config = DemoConfig {
        server_binary,
        data_root: args.data_dir,
    };
    let passed = match clock {
        true => demo::clock::clock(config, &mut stdout).await?,
        false => demo::split_brain(config, &mut stdout).await?,
    };
    Ok(ExitCode::from(if passed { 0 } else { 1 }))
}
