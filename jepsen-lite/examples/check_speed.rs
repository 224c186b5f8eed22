//! Measures how fast the register checker decides simulated histories; prints timings, asserts nothing.
//!
//! Run with `cargo run --release -p jepsen-lite --example check_speed`. Each row simulates a history of a
//! linearizable store (the integration tests' simulator), serializes it to JSONL, then times parsing and checking
//! it as `jepsen-lite check` would; the `stale` rows corrupt the last read to return the key's first written
//! value, which forces the search to rule out every order before declaring the history invalid.

#[path = "../tests/it/checker/simulation.rs"]
mod simulation;

use std::time::Instant;

use jepsen_lite::checker::{check_history, Model};
use jepsen_lite::history::{Event, EventType, Function, History};
use simulation::{simulate, SimulationConfig};

/// Times to repeat each measurement; the fastest run is reported (the machine is shared).
const REPEATS: usize = 5;

/// Sets the last `ok` read to the value of the first `ok` write of its key.
fn corrupt_last_read(events: &mut [Event]) {
    let last_read = events
        .iter()
        .rposition(|event| event.kind == EventType::Ok && event.f == Function::Read)
        .expect("the history has a successful read");
    let key = events[last_read].key.clone();
    let first_write = events
        .iter()
        .find(|event| event.kind == EventType::Ok && event.f == Function::Write && event.key == key)
        .expect("the key has a successful write")
        .value
        .clone();
    events[last_read].value = first_write;
}

fn measure(label: &str, config: SimulationConfig, stale: bool) {
    let mut events = simulate(&config);
    if stale {
        corrupt_last_read(&mut events);
    }
    let text = History::events_to_jsonl(&events);
    let (mut parse_best, mut check_best) = (f64::MAX, f64::MAX);
    let mut verdict = None;
    let mut steps = 0;
    for _ in 0..REPEATS {
        let start = Instant::now();
        let history = History::parse(&text).expect("simulated histories parse");
        let parsed = Instant::now();
        let report = check_history(&history, Model::Register).expect("register histories check");
        let checked = Instant::now();
        parse_best = parse_best.min((parsed - start).as_secs_f64() * 1e3);
        check_best = check_best.min((checked - parsed).as_secs_f64() * 1e3);
        let linearizable = report.linearizable.expect("register model");
        steps = linearizable.steps;
        verdict = Some(report.verdict);
    }
    println!(
        "{label:<34} ops {:>6}  procs {:>2}  keys {:>2}  parse {parse_best:>8.2} ms  check {check_best:>8.2} ms  \
         steps {steps:>8}  verdict {:?}",
        config.operations,
        config.processes,
        config.keys,
        verdict.expect("measured at least once"),
    );
}

fn main() {
    let base = SimulationConfig {
        seed: 1,
        processes: 5,
        operations: 100,
        keys: 1,
        info_probability: 0.05,
    };
    measure("100 ops, 1 key", base, false);
    measure("100 ops, 1 key, stale read", base, true);
    let large = SimulationConfig {
        processes: 15,
        operations: 10_000,
        keys: 8,
        ..base
    };
    measure("10k ops, 15 clients, 8 keys", large, false);
    measure("10k ops, 15 clients, 8 keys, stale", large, true);
    measure(
        "10k ops, 15 clients, 1 key",
        SimulationConfig { keys: 1, ..large },
        false,
    );
    measure(
        "10k ops, 15 clients, 1 key, stale",
        SimulationConfig { keys: 1, ..large },
        true,
    );
    let crashy = SimulationConfig {
        info_probability: 0.2,
        ..large
    };
    measure("10k ops, 20% info, 8 keys", crashy, false);
    measure("10k ops, 20% info, 8 keys, stale", crashy, true);
}
