//! `jepsen-lite demo split-brain`: runs the guided partition of [`jepsen_lite::demo`] and prints its story.
//! Exit 0 when every step went as Raft promises, 1 when one did not, 2 when the demo could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use jepsen_lite::demo::{self, DemoConfig};

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Five nodes; the leader and one follower are cut off. Shows what each side can and cannot do, then heals
    SplitBrain(DemoArgs),
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
    let DemoCommand::SplitBrain(args) = command;
    let server_binary = match args.server_bin {
        Some(path) => path,
        None => raftkv_testkit::server_binary()?,
    };
    if args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot clear {}", args.data_dir.display()))?;
    }
    let mut stdout = std::io::stdout();
    let passed = demo::split_brain(
        DemoConfig {
            server_binary,
            data_root: args.data_dir,
        },
        &mut stdout,
    )
    .await?;
    Ok(ExitCode::from(if passed { 0 } else { 1 }))
}
