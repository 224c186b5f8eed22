//! Argument types and parsers that more than one command of `raftkv` takes (the read commands and `bench`), so
//! that each is spelled and validated once.

use std::time::Duration;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
/// `--consistency`: how a read is served.
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

/// Parses `250ms`, `2s`, `1.5s`, `1m`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 2s, 1m)"))?;
    let seconds = match unit {
        "" | "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s or m)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
