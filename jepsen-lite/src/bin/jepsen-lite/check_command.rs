//! `jepsen-lite check --model register|set|bank|lock|watch FILE`: re-checks a recorded (or hand-written) history and prints
//! the report as JSON. Exit 0: valid; 1: an anomaly was found; 2: unknown (the search budget ran out) or the
//! history could not be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use jepsen_lite::checker::{check_file, Model, Verdict};

/// Exit code when a checker found an anomaly.
const EXIT_ANOMALY: u8 = 1;
/// Exit code when the verdict is unknown.
const EXIT_UNKNOWN: u8 = 2;

#[derive(Debug, Args)]
pub struct CheckCommand {
    /// The workload model the history came from: register, set, bank, lock or watch.
    #[arg(long, value_parser = parse_model)]
    model: Model,
    /// The history, one JSON object per line (docs/design.md, "History format").
    file: PathBuf,
}

fn parse_model(text: &str) -> Result<Model, String> {
    text.parse().map_err(|error| format!("{error}"))
}

pub fn run(command: CheckCommand) -> anyhow::Result<ExitCode> {
    let report = check_file(&command.file, command.model)
        .with_context(|| format!("cannot check {}", command.file.display()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).context("cannot print the report")?
    );
    let (code, word) = match report.verdict {
        Verdict::Valid => (0, "valid"),
        Verdict::Invalid => (EXIT_ANOMALY, "INVALID: an anomaly was found"),
        Verdict::Unknown => (EXIT_UNKNOWN, "unknown: the checker could not decide"),
    };
    eprintln!("{}: {word}", command.file.display());
    Ok(ExitCode::from(code))
}
