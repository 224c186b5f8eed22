//! Linearizability of a register history, key by key: Wing & Gong's search with Lowe's memoisation.
//!
//! This module owns the register model and the search (as Porcupine does it). A multi-key history is linearizable
//! iff every key's sub-history is, so keys are checked independently, on a bounded number of threads, stopping at
//! the first key that is not linearizable. Per key, the call and return entries of the operations sit in a
//! doubly linked list in time order (calls before returns at equal times: equal times are concurrent). The walk
//! tries each call on the model; a legal call whose (linearized set, state) pair is new is pushed, lifted out of
//! the list with its return, and the walk restarts from the head. Reaching a return means that operation was not
//! placed before its response: backtrack. An empty stack at a return means no linearization exists.
//!
//! Rules that flip verdicts: `fail`ed operations are dropped (they did not happen); `info` and never-completed
//! operations are optional with a return time of +infinity (they may take effect any time after their invoke, or
//! never), so the search succeeds as soon as the walk reaches the return of such an operation; a pending read
//! constrains nothing and is dropped. The register starts absent and a read of null means absent; writing null
//! makes it absent again; a cas expecting null means "must be absent". Values compare as JSON values.
//!
//! The cache identifies a linearized set by a 128-bit fingerprint rather than the full bitset (Porcupine keeps the
//! bitset): memory per state no longer grows with the history. Two distinct sets share a fingerprint with
//! probability about n²/2^129 for n cached states; the only effect would be to skip a state not really explored,
//! which can turn a valid verdict into invalid, never an invalid one into valid.
//!
//! The problem is NP-complete: every key gets a [`SearchBudget`], and running out of it gives
//! [`Verdict::Unknown`], never `Valid`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use super::{CheckError, Verdict};
use crate::history::{Function, History, Operation, Status};

/// Search steps (entries visited) allowed per key before the verdict for that key is `unknown`. A history of a
/// few clients per key needs a few steps per operation; a hundred million steps is a few seconds of work in a
/// release build.
pub const SEARCH_STEPS_MAX_PER_KEY: u64 = 100_000_000;

/// Memory the memoisation cache of one key may use before the verdict for that key is `unknown` (about ten
/// million states; [`CHECK_THREADS_MAX`] keys may be searched at once).
pub const CACHE_BYTES_MAX_PER_KEY: usize = 512 << 20;

/// Keys checked at once, each on its own thread (fewer if the machine has fewer cores).
pub const CHECK_THREADS_MAX: usize = 4;

/// How often (in steps) a search looks whether another key already proved the history invalid.
const ABORT_POLL_STEPS: u64 = 4096;

/// Bookkeeping bytes per cache entry beyond the entry itself (hash table control byte, spare capacity).
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 24;

/// How much work one key's search may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchBudget {
    /// Entries visited before giving up with `unknown`.
    pub steps_max: u64,
    /// Cache memory before giving up with `unknown`.
    pub cache_bytes_max: usize,
}

impl Default for SearchBudget {
    fn default() -> Self {
        Self {
            steps_max: SEARCH_STEPS_MAX_PER_KEY,
            cache_bytes_max: CACHE_BYTES_MAX_PER_KEY,
        }
    }
}

/// Why one key is not linearizable, in terms of history operation indices.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Counterexample {
    /// The operation that could not be linearized before its response, after the longest partial linearization.
    pub failed_op: usize,
    /// The last operation of the longest partial linearization (none if not even one operation could be placed).
    pub last_linearized_op: Option<usize>,
    /// The longest partial linearization found: operation indices in linearization order.
    pub partial_linearization: Vec<usize>,
    /// The register after the partial linearization (null = absent).
    pub register_after: Value,
    /// One or two sentences for a human.
    pub explanation: String,
}

/// The outcome for one key that is not simply valid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyResult {
    /// The register.
    pub key: String,
    /// `invalid` or `unknown`.
    pub verdict: Verdict,
    /// Operations of this key after dropping failed ops and indeterminate reads.
    pub operations: usize,
    /// Indeterminate writes and cas left out of the search because no operation needs the value they write.
    pub operations_pruned: usize,
    /// Entries visited.
    pub steps: u64,
    /// Why the verdict is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the verdict is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<Counterexample>,
}

/// The linearizability verdict of a register history and its figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinearizableReport {
    /// Invalid if any key is invalid, else unknown if any key is unknown, else valid.
    pub verdict: Verdict,
    /// Distinct keys.
    pub keys: usize,
    /// Keys left unchecked because another key was already proved invalid.
    pub keys_not_checked: usize,
    /// Operations searched over all keys.
    pub operations_checked: usize,
    /// `fail`ed operations, dropped because they did not happen.
    pub operations_failed: usize,
    /// `info` or never-completed writes and cas, searched as optional.
    pub operations_indeterminate: usize,
    /// `info` or never-completed reads, dropped because they constrain nothing.
    pub reads_indeterminate_dropped: usize,
    /// Indeterminate writes and cas left out because no operation reads or expects their value.
    pub operations_indeterminate_pruned: usize,
    /// Entries visited over all keys.
    pub steps: u64,
    /// Every key whose verdict is invalid or unknown, in key order.
    pub anomalies: Vec<KeyResult>,
}

/// Checks every key of a register history with the default budget.
pub fn check(history: &History) -> Result<LinearizableReport, CheckError> {
    check_with_budget(history, &SearchBudget::default())
}

/// Checks every key of a register history, giving each key's search `budget`.
pub fn check_with_budget(
    history: &History,
    budget: &SearchBudget,
) -> Result<LinearizableReport, CheckError> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    let mut report = LinearizableReport {
        verdict: Verdict::Valid,
        keys: 0,
        keys_not_checked: 0,
        operations_checked: 0,
        operations_failed: 0,
        operations_indeterminate: 0,
        reads_indeterminate_dropped: 0,
        operations_indeterminate_pruned: 0,
        steps: 0,
        anomalies: Vec::new(),
    };
    for operation in &history.operations {
        if matches!(
            operation.f,
            Function::Add
                | Function::Transfer
                | Function::Acquire
                | Function::Release
                | Function::Watch
        ) {
            return Err(CheckError::ModelMismatch {
                index: operation.index,
                line: operation.invoke_line,
                f: operation.f,
                model: "register",
            });
        }
        if operation.f == Function::Cas && operation.cas_values().is_none() {
            return Err(CheckError::BadOperation {
                index: operation.index,
                line: operation.invoke_line,
                problem: format!(
                    "a cas value must be [expected, new], found {}",
                    operation.input
                ),
            });
        }
        let operations = by_key.entry(operation.key.as_str()).or_default();
        match operation.status {
            Status::Fail => report.operations_failed += 1,
            status if status.is_indeterminate() && operation.f == Function::Read => {
                report.reads_indeterminate_dropped += 1
            }
            status => {
                if status.is_indeterminate() {
                    report.operations_indeterminate += 1;
                }
                report.operations_checked += 1;
                operations.push(operation);
            }
        }
    }
    report.keys = by_key.len();
    let keys: Vec<(&str, Vec<&Operation>)> = by_key.into_iter().collect();

    let next_key = AtomicUsize::new(0);
    let invalid_found = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, KeyOutcome)>> = Mutex::new(Vec::with_capacity(keys.len()));
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(CHECK_THREADS_MAX)
        .min(keys.len())
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let position = next_key.fetch_add(1, Ordering::Relaxed);
                let Some((key, operations)) = keys.get(position) else { break };
                let outcome = if invalid_found.load(Ordering::Relaxed) {
                    KeyOutcome::NotChecked
                } else {
                    check_key(key, operations, budget, &invalid_found)
                };
                if matches!(outcome, KeyOutcome::Checked(ref result) if result.verdict == Verdict::Invalid) {
                    invalid_found.store(true, Ordering::Relaxed);
                }
                results.lock().expect("no checker thread panics while holding the lock").push((position, outcome));
            });
        }
    });
    let mut results = results.into_inner().expect("checker threads have finished");
    results.sort_by_key(|(position, _)| *position);
    for (_, outcome) in results {
        match outcome {
            KeyOutcome::NotChecked => report.keys_not_checked += 1,
            KeyOutcome::Checked(result) => {
                report.steps += result.steps;
                report.operations_indeterminate_pruned += result.operations_pruned;
                report.verdict = report.verdict.merge(result.verdict);
                if result.verdict != Verdict::Valid {
                    report.anomalies.push(result);
                }
            }
        }
    }
    if report.keys_not_checked > 0 {
        report.verdict = report.verdict.merge(Verdict::Unknown);
    }
    Ok(report)
}

enum KeyOutcome {
    Checked(KeyResult),
    NotChecked,
}

/// A register operation with its values interned: value id 0 is "absent" (JSON null).
#[derive(Clone, Copy, Debug)]
enum Step {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

impl Step {
    /// The state after this operation, or `None` if it is illegal in `state`.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(value) => (value == state).then_some(state),
            Step::Write(value) => Some(value),
            Step::Cas(expected, new) => (expected == state).then_some(new),
        }
    }
}

/// Maps JSON values to dense ids by their canonical text (serde_json objects keep sorted keys).
struct Interner {
    ids: HashMap<String, u32>,
    values: Vec<Value>,
}

impl Interner {
    fn new() -> Self {
        let mut interner = Self {
            ids: HashMap::new(),
            values: Vec::new(),
        };
        interner.id(&Value::Null);
        interner
    }

    fn id(&mut self, value: &Value) -> u32 {
        let text = value.to_string();
        if let Some(&id) = self.ids.get(&text) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("fewer than 2^32 distinct values per key");
        self.ids.insert(text, id);
        self.values.push(value.clone());
        id
    }
}

fn check_key(
    key: &str,
    operations: &[&Operation],
    budget: &SearchBudget,
    abort: &AtomicBool,
) -> KeyOutcome {
    let mut interner = Interner::new();
    let mut all_steps = Vec::with_capacity(operations.len());
    for operation in operations {
        let step = match operation.f {
            Function::Read => {
                Step::Read(interner.id(operation.output.as_ref().unwrap_or(&Value::Null)))
            }
            Function::Write => Step::Write(interner.id(&operation.input)),
            Function::Cas => {
                let (expected, new) = operation
                    .cas_values()
                    .expect("cas values are checked before the search");
                Step::Cas(interner.id(expected), interner.id(new))
            }
            Function::Add
            | Function::Transfer
            | Function::Acquire
            | Function::Release
            | Function::Watch => unreachable!("only register operations reach the search"),
        };
        all_steps.push(step);
    }
    // Values some operation needs the register to hold: read, or expected by a cas.
    let mut needed = vec![false; interner.values.len()];
    // Values some operation (even an indeterminate one) may put in the register.
    let mut produced = vec![false; interner.values.len()];
    produced[0] = true;
    for step in &all_steps {
        match *step {
            Step::Read(value) => needed[value as usize] = true,
            Step::Write(value) => produced[value as usize] = true,
            Step::Cas(expected, new) => {
                needed[expected as usize] = true;
                produced[new as usize] = true;
            }
        }
    }
    let mut result = KeyResult {
        key: key.to_string(),
        verdict: Verdict::Valid,
        operations: operations.len(),
        operations_pruned: 0,
        steps: 0,
        reason: None,
        counterexample: None,
    };

    // A completed read of a value nothing could have written is invalid whatever the order: say so directly
    // rather than search every order first.
    let phantom = operations.iter().zip(&all_steps).find(|(operation, step)| {
        matches!(step, Step::Read(value) if !produced[*value as usize])
            && operation.complete_time.is_some()
    });
    if let Some((read, _)) = phantom {
        result.verdict = Verdict::Invalid;
        result.counterexample = Some(Counterexample {
            failed_op: read.index,
            last_linearized_op: None,
            partial_linearization: Vec::new(),
            register_after: Value::Null,
            explanation: format!(
                "key {key:?} is not linearizable: {} read a value that no operation on this key wrote",
                read.describe()
            ),
        });
        return KeyOutcome::Checked(result);
    }

    // An indeterminate write or cas whose new value no operation needs can be left out: in any linearization
    // that includes it, nothing between it and the next write depends on the state it leaves (no read of that
    // value, no cas expecting it), so removing it leaves a linearization. Without this, every crashed write
    // doubles the search space of an invalid history.
    let mut positions = Vec::with_capacity(operations.len());
    let mut steps = Vec::with_capacity(operations.len());
    for (position, (operation, step)) in operations.iter().zip(&all_steps).enumerate() {
        let optional = operation.complete_time.is_none();
        let new_value = match *step {
            Step::Read(_) => None,
            Step::Write(value) | Step::Cas(_, value) => Some(value),
        };
        if optional && new_value.is_some_and(|value| !needed[value as usize]) {
            result.operations_pruned += 1;
            continue;
        }
        positions.push(position);
        steps.push(SearchOp {
            step: *step,
            invoke_time: operation.invoke_time,
            return_time: operation.complete_time.unwrap_or(u64::MAX),
            optional,
        });
    }
    let searched: Vec<&Operation> = positions
        .iter()
        .map(|&position| operations[position])
        .collect();

    let outcome = search(&steps, budget, abort);
    result.steps = outcome.steps;
    match outcome.end {
        SearchEnd::Linearizable => {}
        SearchEnd::Exhausted(reason) => {
            result.verdict = Verdict::Unknown;
            result.reason = Some(reason);
        }
        SearchEnd::Aborted => return KeyOutcome::NotChecked,
        SearchEnd::NotLinearizable { longest, failed } => {
            result.verdict = Verdict::Invalid;
            let mut state = 0;
            for &position in &longest {
                state = steps[position]
                    .step
                    .apply(state)
                    .expect("a partial linearization is legal");
            }
            let register_after = interner.values[state as usize].clone();
            let failed_op = searched[failed];
            let last = longest.last().map(|&position| searched[position]);
            let explanation = format!(
                "key {key:?} is not linearizable: {} cannot take effect anywhere before its response \
                 at t={} ns ({:.3} s into the history); the longest partial linearization places {} of {} \
                 operations{} and leaves the register {}",
                failed_op.describe(),
                failed_op.complete_time.unwrap_or(u64::MAX),
                failed_op.complete_time.unwrap_or(u64::MAX) as f64 / 1e9,
                longest.len(),
                searched.len(),
                last.map_or(String::new(), |op| format!(", ending with {}", op.describe())),
                if register_after.is_null() { "absent".to_string() } else { format!("= {register_after}") },
            );
            result.counterexample = Some(Counterexample {
                failed_op: failed_op.index,
                last_linearized_op: last.map(|op| op.index),
                partial_linearization: longest
                    .iter()
                    .map(|&position| searched[position].index)
                    .collect(),
                register_after,
                explanation,
            });
        }
    }
    KeyOutcome::Checked(result)
}

/// One operation as the search sees it.
struct SearchOp {
    step: Step,
    invoke_time: u64,
    /// +infinity (u64::MAX) for optional operations.
    return_time: u64,
    /// Indeterminate: may take effect any time after its invoke, or never.
    optional: bool,
}

enum SearchEnd {
    Linearizable,
    /// Positions (into the key's operations) of the longest partial linearization, and the operation whose
    /// return ended it.
    NotLinearizable {
        longest: Vec<usize>,
        failed: usize,
    },
    Exhausted(String),
    Aborted,
}

struct SearchOutcome {
    end: SearchEnd,
    steps: u64,
}

/// The list's head sentinel; entries are numbered from 1.
const HEAD: usize = 0;
/// "No entry" in the list's links.
const NIL: usize = usize::MAX;

/// The Wing & Gong / Lowe search over one key's operations.
fn search(ops: &[SearchOp], budget: &SearchBudget, abort: &AtomicBool) -> SearchOutcome {
    let count = ops.len();
    // Entry 1 + 2i is the call of op i, 2 + 2i its return.
    let call_entry = |op: usize| 1 + 2 * op;
    let mut order: Vec<usize> = (1..=2 * count).collect();
    // Sort by time; at equal times calls come before returns, so equal times are concurrent.
    order.sort_by_key(|&entry| {
        let op = &ops[(entry - 1) / 2];
        let is_return = entry % 2 == 0;
        (
            if is_return {
                op.return_time
            } else {
                op.invoke_time
            },
            is_return,
        )
    });
    let mut next = vec![NIL; 2 * count + 1];
    let mut prev = vec![NIL; 2 * count + 1];
    let mut last = HEAD;
    for &entry in &order {
        next[last] = entry;
        prev[entry] = last;
        last = entry;
    }

    // The linearized set, as a 128-bit fingerprint: the XOR of a random pair per linearized operation. The cache
    // key is (fingerprint, state); a few dozen bytes per entry instead of a bitset of the whole key's history.
    let tokens: Vec<Fingerprint> = (0..count as u64)
        .map(|op| Fingerprint(splitmix64(2 * op), splitmix64(2 * op + 1)))
        .collect();
    let mut linearized = Fingerprint(0, 0);
    let mut cache: HashSet<(Fingerprint, u32), BuildHasherDefault<WordHasher>> = HashSet::default();
    let cache_entry_bytes = std::mem::size_of::<(Fingerprint, u32)>() + CACHE_ENTRY_OVERHEAD_BYTES;
    let mut cache_bytes = 0usize;
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = 0u32;
    let mut longest: Option<(Vec<usize>, usize)> = None;
    let mut steps = 0u64;
    let mut entry = next[HEAD];

    let outcome = |end, steps| SearchOutcome { end, steps };
    loop {
        if entry == NIL {
            return outcome(SearchEnd::Linearizable, steps);
        }
        steps += 1;
        if steps > budget.steps_max {
            let reason = format!("search budget of {} steps exhausted", budget.steps_max);
            return outcome(SearchEnd::Exhausted(reason), steps - 1);
        }
        if steps.is_multiple_of(ABORT_POLL_STEPS) && abort.load(Ordering::Relaxed) {
            return outcome(SearchEnd::Aborted, steps);
        }
        let op = (entry - 1) / 2;
        if entry % 2 == 1 {
            // A call: try to linearize op here.
            if let Some(new_state) = ops[op].step.apply(state) {
                let candidate = linearized.toggle(tokens[op]);
                if !cache.contains(&(candidate, new_state)) {
                    cache_bytes += cache_entry_bytes;
                    if cache_bytes > budget.cache_bytes_max {
                        let reason = format!(
                            "search cache limit of {} bytes reached",
                            budget.cache_bytes_max
                        );
                        return outcome(SearchEnd::Exhausted(reason), steps);
                    }
                    cache.insert((candidate, new_state));
                    linearized = candidate;
                    stack.push((entry, state));
                    state = new_state;
                    lift(&mut next, &mut prev, entry);
                    entry = next[HEAD];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return: op was not linearized before its response.
            if ops[op].optional {
                // Returns at +infinity come last: every completed operation is linearized.
                return outcome(SearchEnd::Linearizable, steps);
            }
            if longest
                .as_ref()
                .is_none_or(|(best, _)| stack.len() > best.len())
            {
                let positions = stack.iter().map(|&(call, _)| (call - 1) / 2).collect();
                longest = Some((positions, op));
            }
            let Some((call, old_state)) = stack.pop() else {
                let (longest, failed) = longest.expect("recorded just above");
                return outcome(SearchEnd::NotLinearizable { longest, failed }, steps);
            };
            let undone = (call - 1) / 2;
            debug_assert_eq!(call, call_entry(undone));
            linearized = linearized.toggle(tokens[undone]);
            state = old_state;
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

/// Removes a call entry and its return (the next entry number) from the list. Their own links are left as they
/// were, so [`unlift`] can put them back.
fn lift(next: &mut [usize], prev: &mut [usize], call: usize) {
    for entry in [call, call + 1] {
        next[prev[entry]] = next[entry];
        if next[entry] != NIL {
            prev[next[entry]] = prev[entry];
        }
    }
}

/// Undoes [`lift`]: reinserts the return, then the call (the reverse of the order they were removed in).
fn unlift(next: &mut [usize], prev: &mut [usize], call: usize) {
    for entry in [call + 1, call] {
        next[prev[entry]] = entry;
        if next[entry] != NIL {
            prev[next[entry]] = entry;
        }
    }
}

/// A 128-bit fingerprint of a set of operations: XOR of per-operation random tokens, so adding and removing an
/// operation are the same O(1) toggle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Fingerprint(u64, u64);

impl Fingerprint {
    fn toggle(self, token: Fingerprint) -> Fingerprint {
        Fingerprint(self.0 ^ token.0, self.1 ^ token.1)
    }
}

/// SplitMix64: a fixed, well-mixed sequence, so fingerprints (and step counts) are the same on every run.
fn splitmix64(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fast hasher for word slices (the cache keys), in the spirit of FxHash with a final avalanche.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    const MULTIPLIER: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::MULTIPLIER);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(
                chunk.try_into().expect("chunks of eight bytes"),
            ));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_u32(&mut self, word: u32) {
        self.add(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^ (hash >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(step: Step, invoke_time: u64, return_time: Option<u64>) -> SearchOp {
        SearchOp {
            step,
            invoke_time,
            return_time: return_time.unwrap_or(u64::MAX),
            optional: return_time.is_none(),
        }
    }

    fn linearizable(ops: &[SearchOp]) -> bool {
        match search(ops, &SearchBudget::default(), &AtomicBool::new(false)).end {
            SearchEnd::Linearizable => true,
            SearchEnd::NotLinearizable { .. } => false,
            SearchEnd::Exhausted(_) | SearchEnd::Aborted => panic!("tiny searches finish"),
        }
    }

    #[test]
    fn search_orders_concurrent_operations_and_respects_real_time() {
        // w1 and r1 overlap, so the read may see 1; once w2 returned, a read of 1 is stale.
        let overlap = [
            op(Step::Write(1), 0, Some(10)),
            op(Step::Read(1), 5, Some(6)),
        ];
        assert!(linearizable(&overlap));
        let stale = [
            op(Step::Write(1), 0, Some(1)),
            op(Step::Write(2), 2, Some(3)),
            op(Step::Read(1), 4, Some(5)),
        ];
        assert!(!linearizable(&stale));
        // Equal times are concurrent: a read invoked exactly when the write returned may precede it.
        let touching = [
            op(Step::Write(1), 0, Some(5)),
            op(Step::Read(0), 5, Some(6)),
        ];
        assert!(linearizable(&touching));
    }

    #[test]
    fn optional_operations_may_happen_late_or_never() {
        // A pending write can take effect after a later read's invoke, or be ignored.
        let late = [
            op(Step::Write(1), 0, None),
            op(Step::Read(0), 1, Some(2)),
            op(Step::Read(1), 3, Some(4)),
        ];
        assert!(linearizable(&late));
        let never = [
            op(Step::Write(1), 0, None),
            op(Step::Read(0), 1, Some(2)),
            op(Step::Read(0), 3, Some(4)),
        ];
        assert!(linearizable(&never));
        let cas_on_absent = [
            op(Step::Cas(0, 2), 0, Some(1)),
            op(Step::Read(2), 2, Some(3)),
        ];
        assert!(linearizable(&cas_on_absent));
    }

    #[test]
    fn tiny_budget_gives_exhausted_not_linearizable() {
        // Two concurrent writes and a read need more than one step.
        let ops = [
            op(Step::Write(1), 0, Some(9)),
            op(Step::Write(2), 0, Some(9)),
            op(Step::Read(1), 10, Some(11)),
        ];
        let budget = SearchBudget {
            steps_max: 1,
            cache_bytes_max: CACHE_BYTES_MAX_PER_KEY,
        };
        assert!(matches!(
            search(&ops, &budget, &AtomicBool::new(false)).end,
            SearchEnd::Exhausted(_)
        ));
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        // 0 -> 1 -> 3 -> 2 -> 4 -> NIL; lifting call 1 (with return 2) and putting it back restores the links.
        let mut next = vec![1, 3, 4, 2, NIL];
        let mut prev = vec![NIL, 0, 3, 1, 2];
        let (saved_next, saved_prev) = (next.clone(), prev.clone());
        lift(&mut next, &mut prev, 1);
        assert_eq!((next[0], next[3], prev[3], prev[4]), (3, 4, 0, 3));
        unlift(&mut next, &mut prev, 1);
        assert_eq!((next, prev), (saved_next, saved_prev));
    }
}
