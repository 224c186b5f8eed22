//! Tests of the HTML report: rendered from synthetic histories (written as JSONL and parsed like a real one) and
//! the checkers' real results, then inspected as text: structure, verdicts, faults, the node timeline, the
//! anomaly, escaping, self-containment and size bounds.
//!
//! The full synthetic report is also written to `$CARGO_TARGET_TMPDIR/report-synthetic.html` for a human to
//! open.

use jepsen_lite::checker::{check_history, Model, Report};
use jepsen_lite::history::History;
use jepsen_lite::report::charts::{INFO_COLOR, LATENCY_POINTS_MAX};
use jepsen_lite::report::html::escape;
use jepsen_lite::report::render_html;
use plotters::style::RGBColor;
use serde_json::{json, Value};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;

/// The synthetic run lasts this long.
const RUN_NS: u64 = 12 * SECOND;
/// The partition window (node 1 cut from 2 and 3).
const PARTITION_NS: (u64, u64) = (3 * SECOND, 6 * SECOND);
/// The kill window of node 2, right after the partition.
const KILL_NS: (u64, u64) = (6 * SECOND, 8 * SECOND);

/// History lines with their times; sorted by time (stably) when turned into text.
#[derive(Default)]
struct Lines(Vec<(u64, String)>);

impl Lines {
    fn push(&mut self, time: u64, event: Value) {
        self.0.push((time, event.to_string()));
    }

    /// One client operation: its invoke and, if any, its completion (`type`, time, value, extra fields).
    #[allow(clippy::too_many_arguments)]
    fn operation(
        &mut self,
        process: u64,
        f: &str,
        key: &str,
        input: Value,
        invoke: u64,
        completion: Option<(&str, u64, Value)>,
        extra: Value,
    ) {
        self.push(
            invoke,
            json!({"process": process, "type": "invoke", "f": f, "key": key, "value": input, "time": invoke}),
        );
        if let Some((kind, time, value)) = completion {
            let mut event = json!({"process": process, "type": kind, "f": f, "key": key, "value": value, "time": time});
            if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
                event.extend(extra.clone());
            }
            self.push(time, event);
        }
    }

    fn text(mut self) -> String {
        self.0.sort_by_key(|(time, _)| *time);
        let lines: Vec<String> = self.0.into_iter().map(|(_, line)| line).collect();
        lines.join("\n")
    }
}

fn in_window(time: u64, window: (u64, u64)) -> bool {
    (window.0..window.1).contains(&time)
}

/// Registers `k0`..`k2`, each driven sequentially (so linearizable) with reads, writes and cas, slow and
/// indeterminate during the partition; plus one key per call of [`stale_read`].
fn linearizable_keys(lines: &mut Lines) {
    for (key_index, key) in ["k0", "k1", "k2"].iter().enumerate() {
        let mut register = Value::Null;
        let mut time = 10 * MS + key_index as u64 * 3 * MS;
        let mut step = 0u64;
        let mut next_value = 1000 * key_index as u64;
        while time < RUN_NS - 100 * MS {
            let process = key_index as u64 * 10 + step % 3;
            let partitioned = in_window(time, PARTITION_NS) && step.is_multiple_of(3);
            let latency = if partitioned {
                800 * MS
            } else {
                MS + (step * 37 % 7) * MS + step % 11 * 100_000
            };
            let end = time + latency;
            let envelope = json!({"envelope": {"role": "follower", "millis_since_leader":
                if in_window(time, PARTITION_NS) { (time - PARTITION_NS.0) / MS } else { step % 20 }}});
            match step % 4 {
                0 => {
                    next_value += 1;
                    let value = json!(next_value);
                    if partitioned {
                        // Indeterminate, and it did not take effect: allowed.
                        lines.operation(
                            process,
                            "write",
                            key,
                            value.clone(),
                            time,
                            Some(("info", end, value)),
                            json!({}),
                        );
                    } else {
                        register = value.clone();
                        lines.operation(
                            process,
                            "write",
                            key,
                            value.clone(),
                            time,
                            Some(("ok", end, value)),
                            json!({}),
                        );
                    }
                }
                1 => {
                    let completion = if partitioned {
                        ("info", end, Value::Null)
                    } else {
                        ("ok", end, register.clone())
                    };
                    lines.operation(
                        process,
                        "read",
                        key,
                        Value::Null,
                        time,
                        Some(completion),
                        envelope,
                    );
                }
                2 => {
                    next_value += 1;
                    let input = json!([register.clone(), next_value]);
                    register = json!(next_value);
                    lines.operation(
                        process,
                        "cas",
                        key,
                        input.clone(),
                        time,
                        Some(("ok", end, input)),
                        json!({}),
                    );
                }
                _ => {
                    let input = json!(["never-there", 7]);
                    lines.operation(
                        process,
                        "cas",
                        key,
                        input.clone(),
                        time,
                        Some(("fail", end, input)),
                        json!({}),
                    );
                }
            }
            time = end + 20 * MS;
            step += 1;
        }
    }
}

/// A stale read on `key`: write 1, write 2, then a read that returns 1 after write 2 completed (with another
/// read overlapping it that saw 2).
fn stale_read(lines: &mut Lines, key: &str, first_process: u64, at: u64) {
    let p = first_process;
    lines.operation(
        p,
        "write",
        key,
        json!(1),
        at,
        Some(("ok", at + 5 * MS, json!(1))),
        json!({}),
    );
    lines.operation(
        p + 1,
        "write",
        key,
        json!(2),
        at + 100 * MS,
        Some(("ok", at + 110 * MS, json!(2))),
        json!({}),
    );
    lines.operation(
        p + 2,
        "read",
        key,
        Value::Null,
        at + 200 * MS,
        Some(("ok", at + 205 * MS, json!(1))),
        json!({}),
    );
    lines.operation(
        p + 3,
        "read",
        key,
        Value::Null,
        at + 190 * MS,
        Some(("ok", at + 220 * MS, json!(2))),
        json!({}),
    );
}

/// The observer's view: node 1 leads term 1, is cut off (still thinking it leads) while 2 wins term 2, then
/// node 2 is killed and 3 wins term 3.
fn observations(lines: &mut Lines) {
    let mut time = 0;
    while time < RUN_NS {
        for node in 1..=3u64 {
            let at = time + node * 7 * MS;
            let (role, term, leader) = match node {
                _ if at < PARTITION_NS.0 => {
                    (if node == 1 { "leader" } else { "follower" }, 1, Some(1))
                }
                1 if at < PARTITION_NS.1 => ("leader", 1, Some(1)),
                _ if at < PARTITION_NS.0 + 1200 * MS => ("candidate", 2, None),
                2 if at < PARTITION_NS.1 => ("leader", 2, Some(2)),
                _ if at < PARTITION_NS.1 => ("follower", 2, Some(2)),
                2 if at < KILL_NS.0 + 1500 * MS => ("unreachable", 0, None),
                3 if at < KILL_NS.0 + 900 * MS => ("candidate", 3, None),
                3 => ("leader", 3, Some(3)),
                _ if at < KILL_NS.0 + 900 * MS => ("follower", 2, None),
                _ => ("follower", 3, Some(3)),
            };
            if role == "unreachable" {
                lines.push(
                    at,
                    json!({"process": "observer", "type": "unreachable", "node": node, "time": at}),
                );
            } else {
                lines.push(at, json!({"process": "observer", "type": "observation", "node": node, "role": role,
                    "term": term, "leader": leader, "time": at, "commit_index": 10, "revision": 10}));
            }
        }
        time += 100 * MS;
    }
}

/// A nemesis start/stop pair.
fn fault(lines: &mut Lines, name: &str, target: &str, window: (u64, u64)) {
    lines.push(
        window.0,
        json!({"process": "nemesis", "type": "info", "f": "start", "fault": name,
        "value": target, "time": window.0}),
    );
    lines.push(
        window.1,
        json!({"process": "nemesis", "type": "info", "f": "stop", "fault": name,
        "time": window.1}),
    );
}

/// What the runner would write around the checkers' report.
fn results_of(report: &Report, nemesis: &str) -> Value {
    json!({
        "verdict": report.verdict,
        "config": {"nodes": 3, "workload": "register", "read_consistency": "linearizable", "nemesis": nemesis,
                   "seed": 42, "time_limit": "12s", "concurrency": 10},
        "checks": report,
    })
}

/// The synthetic run with faults, observations and one invalid key `kx`.
fn synthetic_run() -> (History, Value, Report) {
    let mut lines = Lines::default();
    linearizable_keys(&mut lines);
    stale_read(&mut lines, "kx", 90, 4 * SECOND);
    observations(&mut lines);
    fault(&mut lines, "partition-halves", "1 | 2,3", PARTITION_NS);
    fault(&mut lines, "kill", "2", KILL_NS);
    let history = History::parse(&lines.text()).expect("the synthetic history parses");
    let report = check_history(&history, Model::Register).expect("the synthetic history checks");
    let mut results = results_of(&report, "partition-halves,kill");
    results["availability"] = json!({
        "verdict": "invalid", "slo_served_fraction": 0.9,
        "windows": [
            {"fault": "partition-halves", "start_ns": PARTITION_NS.0, "end_ns": PARTITION_NS.1, "operations": 310,
             "served_fraction": 0.62, "longest_unavailability_ms": 1200, "recovery_ms": 140, "slo_met": false},
            {"fault": "kill", "start_ns": KILL_NS.0, "end_ns": KILL_NS.1, "operations": 200,
             "served_fraction": 0.97, "longest_unavailability_ms": 300, "recovery_ms": null, "slo_met": true}
        ]
    });
    results["liveness"] =
        json!({"verdict": "valid", "converged_ms": 850, "writes_after_heal_ok": true});
    (history, results, report)
}

fn count(text: &str, pattern: &str) -> usize {
    text.matches(pattern).count()
}

/// Asserts the page is one HTML document with balanced SVGs and nothing fetched or run.
fn assert_well_formed_and_self_contained(page: &str) {
    assert_eq!(count(page, "<html"), 1);
    assert_eq!(count(page, "</html>"), 1);
    assert_eq!(count(page, "<body>"), 1);
    assert_eq!(count(page, "<svg"), count(page, "</svg>"));
    assert_eq!(count(page, "<table"), count(page, "</table>"));
    for forbidden in [
        "<script", "<link", "<img", "<iframe", "src=", "url(", "@import",
    ] {
        assert!(!page.contains(forbidden), "the page contains `{forbidden}`");
    }
}

/// The text of the SVG `<text>` elements plotters writes (`>\nTEXT\n</text>`).
fn svg_text(text: &str) -> String {
    format!(">\n{text}\n</text>")
}

#[test]
fn synthetic_run_renders_verdicts_faults_timeline_and_anomaly() {
    // A 12 s run with a partition, a kill, observations of 3 nodes and one stale read on key kx.
    let (history, results, report) = synthetic_run();
    let anomalies = &report.linearizable.as_ref().unwrap().anomalies;
    assert_eq!(anomalies.len(), 1, "only kx is not linearizable");
    let failed_op = anomalies[0].counterexample.as_ref().unwrap().failed_op;

    let page = render_html(&history, &results).unwrap();
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-synthetic.html"),
        &page,
    )
    .unwrap();
    assert_well_formed_and_self_contained(&page);
    // Latency for read, write and cas (no add), throughput, node timeline, the anomaly, staleness: seven charts.
    assert_eq!(count(&page, "<svg"), 7, "one chart per kind present + 4");
    assert!(page.contains("<span class=\"overall v-invalid\">invalid</span>"));
    for check in [
        "linearizable",
        "split brain",
        "session",
        "staleness",
        "availability",
        "liveness",
    ] {
        assert!(
            page.contains(&format!("<td>{check}</td>")),
            "no row for {check}"
        );
    }
    for fault in ["partition-halves", "kill"] {
        assert!(
            page.contains(&svg_text(fault)),
            "fault {fault} is not named on a chart"
        );
        assert!(
            page.contains(&format!("<td>{fault}</td>")),
            "fault {fault} not in the tables"
        );
    }
    for node in 1..=3 {
        assert_eq!(
            count(&page, &svg_text(&format!("node {node}"))),
            1,
            "one row for node {node}"
        );
    }
    assert!(!page.contains(&svg_text("node 4")));
    for term in ["t1", "t2", "t3"] {
        assert!(page.contains(&svg_text(term)), "term {term} not printed");
    }
    let anomaly = &page[page
        .find("Linearizability anomalies")
        .expect("an anomaly section")..];
    assert!(anomaly.contains("key <code>kx</code>: invalid"));
    assert!(
        anomaly.contains(&format!("<strong>{failed_op}</strong>")),
        "failed op not highlighted"
    );
    assert!(
        anomaly.contains(&format!("✗ op {failed_op} read → 1")),
        "failed op not drawn"
    );
    let explanation = &anomalies[0].counterexample.as_ref().unwrap().explanation;
    assert!(anomaly.contains(&format!(
        "<p class=\"explanation\">{}</p>",
        escape(explanation)
    )));
    assert!(page.contains("<td>62.0%</td>"), "availability window table");
    assert!(page.contains("Staleness of reads"));
}

#[test]
fn history_without_faults_or_observations_still_renders() {
    // A few operations and no nemesis or observer events: the charts render, the sections say what is missing.
    let mut lines = Lines::default();
    lines.operation(
        1,
        "write",
        "k",
        json!(1),
        0,
        Some(("ok", 3 * MS, json!(1))),
        json!({}),
    );
    lines.operation(
        2,
        "read",
        "k",
        Value::Null,
        5 * MS,
        Some(("ok", 6 * MS, json!(1))),
        json!({}),
    );
    lines.operation(3, "write", "k", json!(2), 7 * MS, None, json!({}));
    let history = History::parse(&lines.text()).unwrap();
    let report = check_history(&history, Model::Register).unwrap();
    let page = render_html(&history, &results_of(&report, "none")).unwrap();
    assert_well_formed_and_self_contained(&page);
    assert!(page.contains("<span class=\"overall v-valid\">valid</span>"));
    assert!(page.contains("no faults were injected"));
    assert!(page.contains("the history has no observations of the nodes"));
    assert!(page.contains("1 never completed (not drawn)"));
    assert!(!page.contains("Linearizability anomalies"));
}

#[test]
fn empty_inputs_render_a_page() {
    // No operations and results that are not even an object: still one page, verdict unknown.
    let page = render_html(&History::default(), &Value::Null).unwrap();
    assert_well_formed_and_self_contained(&page);
    assert!(page.contains("<span class=\"overall v-unknown\">unknown</span>"));
    assert!(page.contains("the history has no client operations"));
    assert!(page.contains("results.json holds no checks"));
}

#[test]
fn strings_from_the_history_and_results_are_escaped() {
    // Script tags in a key, a value, a fault, a role and a config flag are shown as text, never as markup.
    let evil = "<script>alert('x')</script>";
    let mut lines = Lines::default();
    stale_read(&mut lines, evil, 1, 10 * MS);
    lines.operation(
        9,
        "write",
        "k",
        json!(evil),
        0,
        Some(("ok", MS, json!(evil))),
        json!({}),
    );
    fault(&mut lines, evil, evil, (0, 50 * MS));
    lines.push(
        MS,
        json!({"process": "observer", "type": "observation", "node": 1, "role": evil, "term": 1,
        "leader": null, "time": MS}),
    );
    let history = History::parse(&lines.text()).unwrap();
    let report = check_history(&history, Model::Register).unwrap();
    let mut results = results_of(&report, evil);
    results["verdict"] = json!(evil);
    results["liveness"] = json!({"verdict": evil, "note": evil});
    let page = render_html(&history, &results).unwrap();
    assert_well_formed_and_self_contained(&page);
    assert!(page.contains("&lt;script&gt;"), "the escaped text is shown");
    assert!(page.contains("key <code>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</code>"));
}

#[test]
fn long_histories_are_thinned_to_a_bounded_page() {
    // 60,000 completed operations: at most LATENCY_POINTS_MAX points drawn, and a page of a few MB.
    let mut lines = Lines::default();
    let operations = 3 * LATENCY_POINTS_MAX as u64;
    for index in 0..operations {
        let invoke = index * MS;
        let (kind, value) = if index.is_multiple_of(50) {
            ("info", json!(index))
        } else {
            ("ok", json!(index))
        };
        lines.operation(
            index % 20,
            "write",
            &format!("k{}", index % 7),
            json!(index),
            invoke,
            Some((kind, invoke + 2 * MS, value)),
            json!({}),
        );
    }
    let history = History::parse(&lines.text()).unwrap();
    let page = render_html(&history, &json!({"verdict": "valid"})).unwrap();
    assert_well_formed_and_self_contained(&page);
    let points = count(&page, "<circle");
    assert!(points <= LATENCY_POINTS_MAX, "{points} points drawn");
    assert!(
        points >= LATENCY_POINTS_MAX * 9 / 10,
        "thinned too much: {points}"
    );
    // Every info point is kept: they are the few that matter.
    let info_fill = {
        let RGBColor(red, green, blue) = INFO_COLOR;
        format!("fill=\"#{red:02X}{green:02X}{blue:02X}\"")
    };
    let info_points = page
        .split("<circle")
        .skip(1)
        .filter(|circle| circle.split("/>").next().unwrap().contains(&info_fill))
        .count();
    assert_eq!(info_points as u64, operations / 50);
    assert!(page.contains(&format!("{} of {operations} points shown", points)));
    assert!(page.len() < 4 << 20, "page of {} bytes", page.len());
}

/// The lock timeline draws every hold and marks the ones that overlapped in red; the bank chart marks the reads
/// that saw another total.
#[test]
fn lock_and_bank_charts_mark_their_anomalies() {
    use jepsen_lite::report::charts::{
        bank_total_chart, lock_timeline_chart, TimeAxis, BANK_WRONG_COLOR,
    };
    let red = {
        let RGBColor(red, green, blue) = BANK_WRONG_COLOR;
        format!("fill=\"#{red:02X}{green:02X}{blue:02X}\"")
    };
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/histories");
    let overlap =
        History::read_file(&testdata.join("lock/invalid-lock-two-holders-at-once.jsonl")).unwrap();
    let chart = lock_timeline_chart(&overlap, &TimeAxis::of(&overlap), &[])
        .unwrap()
        .expect("a chart of the holds");
    assert!(
        chart.caption.contains("2 holds; 2 overlapped another"),
        "{}",
        chart.caption
    );
    assert!(chart.svg.contains(&red), "overlapping holds in red");
    let in_turn = History::read_file(
        &testdata.join("lock/valid-holds-in-turn-with-a-fenced-out-writer.jsonl"),
    )
    .unwrap();
    let chart = lock_timeline_chart(&in_turn, &TimeAxis::of(&in_turn), &[])
        .unwrap()
        .expect("a chart of the holds");
    assert!(
        chart.caption.contains("0 overlapped another"),
        "{}",
        chart.caption
    );
    assert!(!chart.svg.contains(&red));

    let created =
        History::read_file(&testdata.join("bank/invalid-bank-money-created.jsonl")).unwrap();
    let chart = bank_total_chart(&created, &TimeAxis::of(&created), &[])
        .unwrap()
        .expect("a chart of the totals");
    assert!(
        chart.caption.contains("1 reads saw another"),
        "{}",
        chart.caption
    );
    assert!(chart.svg.contains(&red));
}
