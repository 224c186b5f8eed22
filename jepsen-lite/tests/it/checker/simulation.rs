//! A seeded simulator of clients against a correct (linearizable) register store, for generated histories.
//!
//! Concurrent processes invoke reads, writes and cas on a few keys; each operation takes effect atomically at a
//! random instant between its invoke and its completion, so every history it writes is linearizable by
//! construction. Some operations end `info` (applied or not: a crashed client does not know) and their process
//! continues under a new id; some `info` operations take effect only later, after their `info` was written; cas
//! on a value that is no longer current fails; operations still open at the end stay pending. Timestamps advance
//! by 0 to 2 per event, so equal timestamps occur. The tests inject violations into these histories afterwards.
//! Shared by the integration tests and the `check_speed` example.

use std::collections::HashMap;

use jepsen_lite::history::{Event, EventType, Function};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Shape of a simulated run.
#[derive(Clone, Copy, Debug)]
pub struct SimulationConfig {
    pub seed: u64,
    /// Client processes running at once.
    pub processes: usize,
    /// Operations invoked in total.
    pub operations: usize,
    /// Distinct registers.
    pub keys: usize,
    /// Chance that an operation ends `info` instead of `ok`/`fail`.
    pub info_probability: f64,
}

/// An operation invoked but not yet completed by its process.
struct InFlight {
    f: Function,
    key: String,
    input: Value,
    /// Set once the operation took effect: the value read, or whether a cas swapped.
    result: Option<Value>,
}

/// A write or cas whose client got `info` before it took effect; it may still take effect later.
struct Deferred {
    f: Function,
    key: String,
    input: Value,
}

struct Simulator {
    rng: StdRng,
    time: u64,
    events: Vec<Event>,
    registers: HashMap<String, Value>,
    /// Values each key has held, for cas expectations that may be stale.
    history_of: HashMap<String, Vec<Value>>,
    next_value: u64,
    next_process: u64,
}

impl Simulator {
    fn emit(&mut self, process: u64, kind: EventType, operation: &InFlight, value: Value) {
        self.time += self.rng.random_range(0..=2);
        self.events.push(Event {
            process,
            kind,
            f: operation.f,
            key: Some(operation.key.clone()),
            value,
            time: self.time,
            extra: Map::new(),
        });
    }

    /// Applies a write or cas to the register now; returns the value read or whether a cas swapped.
    fn apply(&mut self, f: Function, key: &str, input: &Value) -> Value {
        let current = self.registers.get(key).cloned().unwrap_or(Value::Null);
        match f {
            Function::Read => current,
            Function::Write => {
                self.set(key, input.clone());
                Value::Bool(true)
            }
            Function::Cas => {
                let swapped = current == input[0];
                if swapped {
                    self.set(key, input[1].clone());
                }
                Value::Bool(swapped)
            }
            Function::Add
            | Function::Transfer
            | Function::Acquire
            | Function::Release
            | Function::Watch => {
                unreachable!("the register simulator does not add or transfer")
            }
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        self.history_of
            .entry(key.to_string())
            .or_default()
            .push(value.clone());
        self.registers.insert(key.to_string(), value);
    }

    fn new_operation(&mut self, keys: usize) -> InFlight {
        let key = format!("k{}", self.rng.random_range(0..keys));
        let choice = self.rng.random_range(0..10);
        let (f, input) = if choice < 5 {
            (Function::Read, Value::Null)
        } else {
            self.next_value += 1;
            let new = json!(self.next_value);
            if choice < 8 {
                (Function::Write, new)
            } else {
                let seen = self.history_of.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                let expected = if self.rng.random_bool(0.6) || seen.is_empty() {
                    self.registers.get(&key).cloned().unwrap_or(Value::Null)
                } else {
                    seen[self.rng.random_range(0..seen.len())].clone()
                };
                (Function::Cas, json!([expected, new]))
            }
        };
        InFlight {
            f,
            key,
            input,
            result: None,
        }
    }
}

/// Simulates a run and returns its events in time order (one line each when written as JSONL).
pub fn simulate(config: &SimulationConfig) -> Vec<Event> {
    let mut simulator = Simulator {
        rng: StdRng::seed_from_u64(config.seed),
        time: 0,
        events: Vec::new(),
        registers: HashMap::new(),
        history_of: HashMap::new(),
        next_value: 0,
        next_process: config.processes as u64,
    };
    let mut slots: Vec<(u64, Option<InFlight>)> =
        (0..config.processes as u64).map(|id| (id, None)).collect();
    let mut deferred: Vec<Deferred> = Vec::new();
    let mut invokes_left = config.operations;
    while invokes_left > 0 {
        // Now and then, a deferred write lands.
        if !deferred.is_empty() && simulator.rng.random_bool(0.05) {
            let position = simulator.rng.random_range(0..deferred.len());
            let late = deferred.swap_remove(position);
            simulator.apply(late.f, &late.key, &late.input);
        }
        let slot = simulator.rng.random_range(0..slots.len());
        let process = slots[slot].0;
        match slots[slot].1.take() {
            None => {
                let operation = simulator.new_operation(config.keys);
                let input = operation.input.clone();
                simulator.emit(process, EventType::Invoke, &operation, input);
                invokes_left -= 1;
                slots[slot].1 = Some(operation);
            }
            Some(mut operation) if operation.result.is_none() => {
                if simulator.rng.random_bool(config.info_probability / 2.0) {
                    // The client gives up before the operation took effect; it may land later, or never.
                    let input = operation.input.clone();
                    simulator.emit(process, EventType::Info, &operation, input);
                    if operation.f != Function::Read && simulator.rng.random_bool(0.5) {
                        deferred.push(Deferred {
                            f: operation.f,
                            key: operation.key,
                            input: operation.input,
                        });
                    }
                    slots[slot].0 = simulator.next_process;
                    simulator.next_process += 1;
                } else {
                    operation.result =
                        Some(simulator.apply(operation.f, &operation.key, &operation.input));
                    slots[slot].1 = Some(operation);
                }
            }
            Some(operation) => {
                let result = operation
                    .result
                    .clone()
                    .expect("applied operations have a result");
                if simulator.rng.random_bool(config.info_probability / 2.0) {
                    // Applied, but the client never hears back.
                    let input = operation.input.clone();
                    simulator.emit(process, EventType::Info, &operation, input);
                    slots[slot].0 = simulator.next_process;
                    simulator.next_process += 1;
                } else if operation.f == Function::Read {
                    simulator.emit(process, EventType::Ok, &operation, result);
                } else if result == Value::Bool(true) {
                    let input = operation.input.clone();
                    simulator.emit(process, EventType::Ok, &operation, input);
                } else {
                    let input = operation.input.clone();
                    simulator.emit(process, EventType::Fail, &operation, input);
                }
            }
        }
    }
    // Operations still open stay pending: invoked, never completed, applied or not.
    simulator.events
}
