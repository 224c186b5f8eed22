//! Integration tests of the history parser and the checkers: data-driven hand-written histories, generated
//! histories with injected violations, and the search budget.
//!
//! Hand-written histories live in `testdata/histories/<model>/<expectation>-<description>.jsonl`, where the
//! directory names the model to check against and the file name's first word the expected outcome:
//! `valid-*` (every checker valid), `invalid-<checker>-*` (that checker, and so the report, invalid),
//! `unknown-*` (the report unknown, nothing invalid) or `malformed-*` (rejected with an error naming a line).

mod simulation;

use std::path::{Path, PathBuf};

use jepsen_lite::checker::linearizable::{self, SearchBudget};
use jepsen_lite::checker::session::SessionGuarantee;
use jepsen_lite::checker::set::UnexpectedReason;
use jepsen_lite::checker::{
    check_file, check_history, check_history_with_budget, Model, Report, Verdict,
};
use jepsen_lite::history::{Event, EventType, Function, History, Operation, Status};
use serde_json::{json, Value};
use simulation::{simulate, SimulationConfig};

fn testdata(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/histories")
        .join(model)
}

/// The verdict a named checker gave (`None` if that checker did not run for this model).
fn checker_verdict(report: &Report, checker: &str) -> Option<Verdict> {
    match checker {
        "linearizable" => report.linearizable.as_ref().map(|r| r.verdict),
        "set" => report.set.as_ref().map(|r| r.verdict),
        "bank" => report.bank.as_ref().map(|r| r.verdict),
        "lock" => report.lock.as_ref().map(|r| r.verdict),
        "watch" => report.watch.as_ref().map(|r| r.verdict),
        "split_brain" => Some(report.split_brain.verdict),
        "session" => Some(report.session.verdict),
        "staleness" => Some(report.staleness.verdict),
        other => panic!("unknown checker `{other}` in a testdata file name"),
    }
}

/// Checks one testdata file against the expectation in its name; returns a description of any mismatch.
fn check_case(path: &Path, model: Model) -> Option<String> {
    let name = path.file_stem().unwrap().to_str().unwrap();
    let mut words = name.split('-');
    let expectation = words.next().unwrap();
    let outcome = check_file(path, model);
    let mismatch = |what: String| Some(format!("{name}: {what}"));
    match (expectation, outcome) {
        ("malformed", Err(error)) if error.to_string().starts_with("line ") => None,
        ("malformed", Err(error)) => mismatch(format!("error does not name its line: {error}")),
        ("malformed", Ok(report)) => {
            mismatch(format!("accepted with verdict {:?}", report.verdict))
        }
        (_, Err(error)) => mismatch(format!("rejected: {error}")),
        ("valid", Ok(report)) => {
            let checkers = [
                "linearizable",
                "set",
                "bank",
                "lock",
                "watch",
                "split_brain",
                "session",
                "staleness",
            ];
            let not_valid: Vec<_> = checkers
                .iter()
                .filter(|checker| {
                    checker_verdict(&report, checker).is_some_and(|v| v != Verdict::Valid)
                })
                .collect();
            (report.verdict != Verdict::Valid || !not_valid.is_empty()).then(|| {
                format!(
                    "{name}: expected valid, got {:?} (not valid: {not_valid:?})",
                    report.verdict
                )
            })
        }
        ("invalid", Ok(report)) => {
            let checker = words.next().unwrap();
            let verdict = checker_verdict(&report, checker);
            (report.verdict != Verdict::Invalid || verdict != Some(Verdict::Invalid)).then(|| {
                format!(
                    "{name}: expected {checker} invalid, got {verdict:?} (report {:?})",
                    report.verdict
                )
            })
        }
        ("unknown", Ok(report)) => (report.verdict != Verdict::Unknown)
            .then(|| format!("{name}: expected unknown, got {:?}", report.verdict)),
        (other, _) => mismatch(format!(
            "file name must start with valid, invalid, unknown or malformed, not {other}"
        )),
    }
}

#[test]
fn hand_written_histories_get_their_expected_verdicts() {
    // Every testdata history, for both models, gets the verdict its file name promises; all mismatches are listed.
    let mut failures = Vec::new();
    let mut cases = 0;
    for (directory, model) in [
        ("register", Model::Register),
        ("set", Model::Set),
        ("bank", Model::Bank),
        ("lock", Model::Lock),
        ("watch", Model::Watch),
    ] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(testdata(directory))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "jsonl")
            })
            .collect();
        paths.sort();
        for path in paths {
            cases += 1;
            failures.extend(check_case(&path, model));
        }
    }
    assert!(
        cases >= 30,
        "expected the full testdata set, found {cases} files"
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} histories got the wrong verdict:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn stale_read_counterexample_names_the_read_and_the_linearization() {
    // The stale read (op 2) cannot be placed after write 1 then write 2; the counterexample says so.
    let report = check_file(
        &testdata("register").join("invalid-linearizable-stale-read.jsonl"),
        Model::Register,
    )
    .unwrap();
    let linearizable = report.linearizable.unwrap();
    assert_eq!(linearizable.anomalies.len(), 1);
    let counterexample = linearizable.anomalies[0].counterexample.as_ref().unwrap();
    assert_eq!(counterexample.failed_op, 2);
    assert_eq!(counterexample.partial_linearization, vec![0, 1]);
    assert_eq!(counterexample.last_linearized_op, Some(1));
    assert_eq!(counterexample.register_after, json!(2));
    assert!(
        counterexample.explanation.contains("op 2"),
        "{}",
        counterexample.explanation
    );
    // The report serializes for results.json.
    let text = serde_json::to_string(&linearizable).unwrap();
    assert!(text.contains("\"verdict\":\"invalid\""), "{text}");
}

#[test]
fn other_checkers_report_what_and_where() {
    // Split brain names the term and nodes; set names lost and phantom values; session names the guarantee.
    let split = check_file(
        &testdata("register").join("invalid-split_brain-two-leaders-in-term-3.jsonl"),
        Model::Register,
    )
    .unwrap()
    .split_brain;
    assert_eq!(
        (split.conflicts[0].term, split.conflicts[0].leaders.clone()),
        (3, vec![1, 2])
    );
    assert_eq!(split.observations, 4);

    let lost = check_file(
        &testdata("set").join("invalid-set-lost-add.jsonl"),
        Model::Set,
    )
    .unwrap()
    .set
    .unwrap();
    assert_eq!(
        (
            lost.lost_count,
            lost.lost[0].value.clone(),
            lost.lost[0].add_op
        ),
        (1, json!(2), 1)
    );
    let phantom = check_file(
        &testdata("set").join("invalid-set-phantom-element.jsonl"),
        Model::Set,
    )
    .unwrap()
    .set
    .unwrap();
    assert_eq!(phantom.unexpected[0].value, json!(99));
    assert_eq!(
        phantom.unexpected[0].reason,
        UnexpectedReason::NeverAttempted
    );
    let recovered = check_file(
        &testdata("set").join("valid-acknowledged-and-recovered-adds.jsonl"),
        Model::Set,
    )
    .unwrap()
    .set
    .unwrap();
    assert_eq!(
        (
            recovered.adds_ok,
            recovered.adds_indeterminate,
            recovered.adds_indeterminate_recovered
        ),
        (1, 3, 2)
    );

    let ryw = check_file(
        &testdata("register").join("invalid-session-read-your-writes.jsonl"),
        Model::Register,
    )
    .unwrap()
    .session;
    assert_eq!(
        ryw.violations[0].guarantee,
        SessionGuarantee::ReadYourWrites
    );
    assert_eq!(
        (
            ryw.violations[0].served_revision,
            ryw.violations[0].required_revision
        ),
        (4, 5)
    );
    let monotonic = check_file(
        &testdata("register").join("invalid-session-monotonic-reads.jsonl"),
        Model::Register,
    )
    .unwrap()
    .session;
    assert_eq!(
        monotonic.violations[0].guarantee,
        SessionGuarantee::MonotonicReads
    );
    assert_eq!(monotonic.violations[0].source_op, 1);

    let staleness = check_file(
        &testdata("register").join("valid-session-clean.jsonl"),
        Model::Register,
    )
    .unwrap()
    .staleness;
    let millis = staleness.millis_since_leader.unwrap();
    assert_eq!((millis.count, millis.min, millis.max), (3, 0, 40));
    // Process 1's read is served at 5 when 5 is the latest write: 0 behind.
    assert_eq!(staleness.revisions_behind.unwrap().max, 0);
}

/// Serializes events and parses them back, as the harness and `jepsen-lite check` would.
fn history_of(events: &[Event]) -> History {
    History::parse(&History::events_to_jsonl(events)).expect("simulated histories are well-formed")
}

fn register_verdict(history: &History) -> Verdict {
    check_history(history, Model::Register)
        .unwrap()
        .linearizable
        .unwrap()
        .verdict
}

fn config(seed: u64) -> SimulationConfig {
    SimulationConfig {
        seed,
        processes: 1 + (seed % 6) as usize,
        operations: 5 + (seed * 7 % 60) as usize,
        keys: 1 + (seed % 3) as usize,
        info_probability: [0.0, 0.05, 0.2][(seed % 3) as usize],
    }
}

#[test]
fn simulated_linearizable_executions_are_always_accepted() {
    // Property over 400 seeds: a history produced by a linearizable execution (random effect instants, info,
    // late and lost indeterminate writes, failed cas, pending ops, equal timestamps) is always valid.
    let mut statuses = [0usize; 4];
    for seed in 0..400 {
        let events = simulate(&config(seed));
        let history = history_of(&events);
        for operation in &history.operations {
            statuses[operation.status as usize] += 1;
        }
        assert_eq!(
            register_verdict(&history),
            Verdict::Valid,
            "seed {seed}:\n{}",
            History::events_to_jsonl(&events)
        );
    }
    // The generator really produced every kind of outcome.
    assert!(
        statuses.iter().all(|&count| count > 0),
        "ok/fail/info/pending counts: {statuses:?}"
    );
}

#[test]
fn sequential_single_process_executions_are_always_accepted() {
    // One process, no concurrency: every operation's effect sits inside its own interval, always valid.
    for seed in 0..100 {
        let config = SimulationConfig {
            processes: 1,
            ..config(seed)
        };
        assert_eq!(
            register_verdict(&history_of(&simulate(&config))),
            Verdict::Valid,
            "seed {seed}"
        );
    }
}

/// Position in the event list of an operation's completion.
fn completion_event(history: &History, index: usize) -> usize {
    history.operations[index].complete_line.expect("completed") - 1
}

/// An `ok` read (the last such if `last`, else the first) and the value of an `ok` write to its key that
/// another `ok` write overwrote (invoked after the first returned) before the read was invoked: a read of that
/// value cannot be linearized.
fn stale_injection(history: &History, last: bool) -> Option<(usize, Value)> {
    let ok = |f| {
        history
            .operations
            .iter()
            .filter(move |op: &&Operation| op.f == f && op.status == Status::Ok)
    };
    let candidate = |read: &Operation| {
        // The write on this key that returned first, and any write invoked after it that returned before the read.
        let first = ok(Function::Write)
            .filter(|w| w.key == read.key)
            .min_by_key(|w| w.complete_time)?;
        ok(Function::Write).find(|w2| {
            w2.key == read.key
                && w2.invoke_time > first.complete_time.unwrap()
                && w2.complete_time.unwrap() < read.invoke_time
        })?;
        Some((read.index, first.input.clone()))
    };
    let reads: Vec<&Operation> = ok(Function::Read).collect();
    if last {
        reads.into_iter().rev().find_map(candidate)
    } else {
        reads.into_iter().find_map(candidate)
    }
}

#[test]
fn injected_violations_are_caught() {
    // Into valid simulated histories, inject a read of a never-written value, a stale read (of a write that a
    // later completed write overwrote before the read began) and a write turned into `fail` whose value was read.
    let (mut phantom, mut stale, mut failed) = (0, 0, 0);
    for seed in 0..300 {
        let events = simulate(&SimulationConfig {
            info_probability: 0.05,
            ..config(seed)
        });
        let history = history_of(&events);
        let ok_reads: Vec<_> = history
            .operations
            .iter()
            .filter(|op| op.f == Function::Read && op.status == Status::Ok)
            .collect();
        let ok_writes: Vec<_> = history
            .operations
            .iter()
            .filter(|op| op.f == Function::Write && op.status == Status::Ok)
            .collect();

        if let Some(read) = ok_reads.first() {
            let mut mutated = events.clone();
            mutated[completion_event(&history, read.index)].value = json!(1_000_000_000);
            assert_eq!(
                register_verdict(&history_of(&mutated)),
                Verdict::Invalid,
                "phantom, seed {seed}"
            );
            phantom += 1;
        }

        let overwritten = stale_injection(&history, false);
        if let Some((read, value)) = overwritten {
            let mut mutated = events.clone();
            mutated[completion_event(&history, read)].value = value;
            assert_eq!(
                register_verdict(&history_of(&mutated)),
                Verdict::Invalid,
                "stale, seed {seed}"
            );
            stale += 1;
        }

        let read_write = ok_writes.iter().find(|write| {
            ok_reads
                .iter()
                .any(|read| read.key == write.key && read.output.as_ref() == Some(&write.input))
        });
        if let Some(write) = read_write {
            let mut mutated = events.clone();
            mutated[completion_event(&history, write.index)].kind = EventType::Fail;
            assert_eq!(
                register_verdict(&history_of(&mutated)),
                Verdict::Invalid,
                "failed write, seed {seed}"
            );
            failed += 1;
        }
    }
    // Each injection ran on many seeds, so the assertions above were exercised.
    assert!(
        phantom > 200 && stale > 50 && failed > 100,
        "injections: {phantom} {stale} {failed}"
    );
}

#[test]
fn large_generated_history_is_decided() {
    // 10,000 operations from 15 clients over 8 keys: valid, and invalid once one read is corrupted.
    let config = SimulationConfig {
        seed: 7,
        processes: 15,
        operations: 10_000,
        keys: 8,
        info_probability: 0.02,
    };
    let events = simulate(&config);
    let history = history_of(&events);
    let report = check_history(&history, Model::Register).unwrap();
    assert_eq!(report.verdict, Verdict::Valid, "{:?}", report.linearizable);
    assert_eq!(report.summary.keys, 8);

    let read = history
        .operations
        .iter()
        .rev()
        .find(|op| op.f == Function::Read && op.status == Status::Ok)
        .unwrap();
    let mut mutated = events;
    mutated[completion_event(&history, read.index)].value = json!("never written");
    let report = check_history(&history_of(&mutated), Model::Register).unwrap();
    let linearizable = report.linearizable.unwrap();
    assert_eq!(linearizable.verdict, Verdict::Invalid);
    assert_eq!(
        linearizable.anomalies[0]
            .counterexample
            .as_ref()
            .unwrap()
            .failed_op,
        read.index
    );
}

/// `writers` concurrent writes of distinct values, all overlapping, then a read of 0 and a later read of 1:
/// proving it invalid means trying every subset of the writes.
fn pathological_history(writers: u64) -> History {
    let mut events = Vec::new();
    let event = |process, kind, f, value: Value, time| Event {
        process,
        kind,
        f,
        key: None,
        value,
        time,
        extra: Default::default(),
    };
    for process in 0..writers {
        events.push(event(
            process,
            EventType::Invoke,
            Function::Write,
            json!(process),
            0,
        ));
    }
    for process in 0..writers {
        events.push(event(
            process,
            EventType::Ok,
            Function::Write,
            json!(process),
            10,
        ));
    }
    events.push(event(
        writers,
        EventType::Invoke,
        Function::Read,
        Value::Null,
        11,
    ));
    events.push(event(writers, EventType::Ok, Function::Read, json!(0), 12));
    events.push(event(
        writers,
        EventType::Invoke,
        Function::Read,
        Value::Null,
        13,
    ));
    events.push(event(writers, EventType::Ok, Function::Read, json!(1), 14));
    history_of(&events)
}

#[test]
fn exhausted_budget_gives_unknown_never_valid() {
    // With a budget of 100 steps the search cannot finish: unknown, and the merged report is unknown too.
    let history = pathological_history(12);
    let tiny = SearchBudget {
        steps_max: 100,
        ..SearchBudget::default()
    };
    let report = check_history_with_budget(&history, Model::Register, &tiny).unwrap();
    assert_eq!(report.verdict, Verdict::Unknown, "{report:#?}");
    let linearizable = report.linearizable.unwrap();
    assert_eq!(linearizable.verdict, Verdict::Unknown);
    assert!(linearizable.anomalies[0]
        .reason
        .as_ref()
        .unwrap()
        .contains("budget"));
    // A tiny cache limit is a budget too.
    let tiny_cache = SearchBudget {
        cache_bytes_max: 1024,
        ..SearchBudget::default()
    };
    assert_eq!(
        linearizable::check_with_budget(&history, &tiny_cache)
            .unwrap()
            .verdict,
        Verdict::Unknown
    );
    // The default budget proves the same shape invalid.
    assert_eq!(register_verdict(&history), Verdict::Invalid);
}

#[test]
fn model_mismatch_is_an_error_not_a_verdict() {
    // A set history checked as a register (and the reverse) is refused, naming the line.
    let set = testdata("set").join("invalid-set-lost-add.jsonl");
    let error = check_file(&set, Model::Register).unwrap_err().to_string();
    assert!(
        error.starts_with("line 1:") && error.contains("register"),
        "{error}"
    );
    let register = testdata("register").join("valid-concurrent-writes-reads-and-cas.jsonl");
    assert!(check_file(&register, Model::Set).is_err());
}

/// `jepsen-lite check` exits 0 on a valid history, 1 on an anomaly, 2 on a malformed one, and prints the
/// report as JSON.
#[test]
fn check_command_exit_codes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/histories/register");
    let pick = |prefix: &str| -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {prefix}* history"))
    };
    for (prefix, code, verdict) in [
        ("valid-", 0, Some("valid")),
        ("invalid-", 1, Some("invalid")),
        ("malformed-", 2, None),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
            .args(["check", "--model", "register"])
            .arg(pick(prefix))
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{prefix}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(verdict) = verdict {
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(report["verdict"], verdict);
        }
    }
}
