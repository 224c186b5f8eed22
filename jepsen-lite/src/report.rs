//! The report of one run: a single self-contained `report.html` that shows what happened and what was concluded.
//!
//! [`render_html`] reads the parsed history and `results.json` and writes, in order: the overall verdict, the
//! run's config and one row per check; latency over time per operation kind, throughput over time and the
//! leader/term timeline of every node, each with the fault windows shaded; each non-linearizable key drawn as a
//! timeline with the checker's explanation; the availability windows, liveness figures and staleness
//! distributions when `results.json` has them. Charts are inline SVG drawn by plotters, styles are one inline
//! `<style>`, and there is no script, font or image to fetch, so the file opens offline and can be mailed.
//!
//! The renderer trusts nothing about its inputs beyond their types: every string from the history or the
//! results is escaped ([`html::escape`]), every optional part of `results.json` may be missing (its section is
//! then left out), and every drawing is bounded (points thinned above a named limit, operations and keys capped)
//! so a long run still gives a page of a few megabytes.
//!
//! - fault windows come from [`crate::faults`], shared with the availability figures.
//! - [`charts`]: the shared time frame, latency, throughput and staleness charts.
//! - [`roles`]: observer events to the leader/term timeline.
//! - [`anomaly`]: a linearizability counterexample drawn as a timeline.
//! - [`html`]: escaping and table markup.

pub mod anomaly;
pub mod charts;
pub mod html;
pub mod roles;

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::checker::HistorySummary;
use crate::faults::{self, FaultWindow};
use crate::history::History;
use charts::{hex, Chart, Outcome, TimeAxis};
use html::{escape, seconds_text, value_text, Table};

/// Checks under `results.checks`, in the order of the verdict table, with the figures shown for each
/// (label, JSON pointer into the check; an array shows its length). Checks not listed here show their scalar
/// fields.
const CHECK_FIGURES: [(&str, &[(&str, &str)]); 7] = [
    (
        "linearizable",
        &[
            ("keys", "/keys"),
            ("operations checked", "/operations_checked"),
            ("indeterminate", "/operations_indeterminate"),
            ("failed, dropped", "/operations_failed"),
            ("search steps", "/steps"),
            ("keys not linearizable or undecided", "/anomalies"),
        ],
    ),
    (
        "set",
        &[
            ("adds attempted", "/adds_attempted"),
            ("adds ok", "/adds_ok"),
            ("indeterminate adds seen", "/adds_indeterminate_recovered"),
            ("lost", "/lost_count"),
            ("unexpected", "/unexpected_count"),
            ("ok adds unverified", "/adds_ok_unverified"),
        ],
    ),
    (
        "bank",
        &[
            ("accounts", "/accounts"),
            ("opening total", "/opening_total"),
            ("reads checked", "/reads_checked"),
            ("transfers ok", "/transfers_ok"),
            ("transfers indeterminate", "/transfers_indeterminate"),
            ("anomalies", "/anomalies_count"),
        ],
    ),
    (
        "lock",
        &[
            ("holds", "/holds"),
            ("fenced writes ok", "/fenced_writes_ok"),
            ("fenced writes refused", "/fenced_writes_refused"),
            ("anomalies", "/anomalies_count"),
        ],
    ),
    (
        "split_brain",
        &[
            ("observations", "/observations"),
            ("terms with a leader", "/terms_with_leader"),
            ("highest term", "/max_term"),
            ("terms with two leaders", "/conflicts"),
        ],
    ),
    (
        "session",
        &[
            ("reads checked", "/reads_checked"),
            ("writes with revision", "/writes_with_revision"),
            ("violations", "/violations_count"),
        ],
    ),
    (
        "staleness",
        &[
            ("reads measured", "/reads_measured"),
            ("p99 ms since leader", "/millis_since_leader/p99"),
            ("max revisions behind", "/revisions_behind/max"),
            ("bounded reads", "/bounded_reads"),
            ("over their bound", "/bounded_reads_exceeded"),
        ],
    ),
];

/// Top-level sections of `results.json` that carry a verdict of their own (or `slo_met`).
const TOP_LEVEL_CHECKS: [&str; 2] = ["liveness", "availability"];

/// Figures shown for a check the report does not know (its first scalar fields).
const GENERIC_FIGURES_MAX: usize = 10;

/// Items of each list shown under a check's figures (conflicts, lost adds, violations, ...).
const DETAIL_ITEMS_MAX: usize = 5;

/// The page's styles: system fonts only, nothing fetched.
const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0 auto;
       max-width: 1060px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
.overall { font-size: 44px; font-weight: 700; letter-spacing: 1px; text-transform: uppercase; }
.verdict { font-weight: 600; padding: 1px 8px; border-radius: 4px; }
.v-valid { color: #fff; background: #2ca02c; }
.v-invalid { color: #fff; background: #d62728; }
.v-unknown { color: #222; background: #ffbb78; }
.v-other { color: #222; background: #ddd; }
.overall.v-valid, .overall.v-invalid, .overall.v-unknown, .overall.v-other { display: inline-block;
       padding: 4px 18px; border-radius: 8px; }
.summary { color: #555; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td ul { margin: 0; padding-left: 16px; }
details summary { cursor: pointer; color: #444; }
figure { margin: 10px 0 18px; }
figcaption { color: #555; font-size: 13px; }
svg { max-width: 100%; height: auto; display: block; }
.legend span { margin-right: 16px; white-space: nowrap; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px;
       border-radius: 2px; }
.explanation { background: #fff4f4; border-left: 4px solid #d62728; padding: 6px 10px; }
.note { color: #666; font-style: italic; }
"#;

/// Renders the self-contained HTML report of one run.
pub fn render_html(history: &History, results: &Value) -> anyhow::Result<String> {
    let empty = Value::Object(Map::new());
    let results = if results.is_object() { results } else { &empty };
    let axis = TimeAxis::of(history);
    let windows = faults::fault_windows(history, axis.end_ns);
    let overall = results
        .get("verdict")
        .and_then(Value::as_str)
        .unwrap_or("unknown");

    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        page,
        "<title>jepsen-lite: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        escape(overall)
    );
    header(&mut page, history, results, overall);
    config_section(&mut page, results);
    verdict_section(&mut page, results);
    chart_sections(&mut page, history, &axis, &windows)?;
    let anomalies = anomaly::anomaly_sections(history, results)?;
    if !anomalies.is_empty() {
        page.push_str("<h2>Linearizability anomalies</h2>\n");
        page.push_str(&anomalies);
    }
    availability_section(&mut page, results);
    liveness_section(&mut page, results);
    staleness_section(&mut page, history, results, &axis, &windows)?;
    if let Some(chart) = charts::lock_timeline_chart(history, &axis, &windows)? {
        page.push_str("<h2>Lock: the holds over time</h2>\n");
        page.push_str(&html::legend(&[("fault window", fault_swatch())]));
        figure(&mut page, &chart);
    }
    if let Some((chart, watchers)) = charts::watch_lag_chart(history, &axis, &windows)? {
        page.push_str("<h2>Watch: how far behind each watcher was</h2>\n");
        let mut legend: Vec<(&str, String)> = watchers
            .iter()
            .map(|(name, color)| (name.as_str(), charts::hex(*color)))
            .collect();
        legend.push(("fault window", fault_swatch()));
        page.push_str(&html::legend(&legend));
        figure(&mut page, &chart);
    }
    if let Some(chart) = charts::bank_total_chart(history, &axis, &windows)? {
        page.push_str("<h2>Bank: the total over time</h2>\n");
        page.push_str(&html::legend(&[("fault window", fault_swatch())]));
        figure(&mut page, &chart);
    }
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

/// The CSS class of a verdict word: only these four classes exist, whatever the data says.
fn verdict_class(verdict: &str) -> &'static str {
    match verdict {
        "valid" | "met" => "v-valid",
        "invalid" | "missed" => "v-invalid",
        "unknown" => "v-unknown",
        _ => "v-other",
    }
}

fn verdict_badge(verdict: &str) -> String {
    format!(
        "<span class=\"verdict {}\">{}</span>",
        verdict_class(verdict),
        escape(verdict)
    )
}

/// The verdict of a check object: its `verdict`, else `met` / `missed` from `slo_met`.
fn check_verdict(check: &Value) -> Option<String> {
    if let Some(verdict) = check.get("verdict") {
        return Some(value_text(verdict));
    }
    check
        .get("slo_met")
        .and_then(Value::as_bool)
        .map(|met| if met { "met" } else { "missed" }.to_string())
}

fn header(page: &mut String, history: &History, results: &Value, overall: &str) {
    let config = results.get("config");
    let flag = |name: &str| config.and_then(|config| config.get(name)).map(value_text);
    let mut subtitle = Vec::new();
    if let Some(workload) = flag("workload") {
        subtitle.push(format!("{workload} workload"));
    }
    if let Some(nodes) = flag("nodes") {
        subtitle.push(format!("{nodes} nodes"));
    }
    if let Some(nemesis) = flag("nemesis") {
        subtitle.push(format!("nemesis {nemesis}"));
    }
    if let Some(consistency) = flag("read_consistency") {
        subtitle.push(format!("{consistency} reads"));
    }
    if let Some(seed) = flag("seed") {
        subtitle.push(format!("seed {seed}"));
    }
    let _ = writeln!(
        page,
        "<h1>jepsen-lite report{}</h1>",
        if subtitle.is_empty() {
            String::new()
        } else {
            format!(": {}", escape(&subtitle.join(", ")))
        }
    );
    let _ = writeln!(
        page,
        "<p><span class=\"overall {}\">{}</span></p>",
        verdict_class(overall),
        escape(overall)
    );
    let summary = HistorySummary::of(history);
    let _ = writeln!(
        page,
        "<p class=\"summary\">{} operations on {} keys over {} s: {} ok, {} fail, {} info, {} never completed; \
         {} nemesis and observer events</p>",
        summary.operations,
        summary.keys,
        seconds_text(TimeAxis::of(history).end_ns),
        summary.ok,
        summary.fail,
        summary.info,
        summary.pending,
        summary.other_events
    );
}

fn config_section(page: &mut String, results: &Value) {
    let Some(config) = results.get("config").and_then(Value::as_object) else {
        return;
    };
    page.push_str("<h2>Configuration</h2>\n");
    let mut table = Table::new("config", &["flag", "value"]);
    for (name, value) in config {
        table.row_text(&[name.clone(), value_text(value)]);
    }
    page.push_str(&table.finish());
}

/// A check's figures as `label: value` items: the curated list for known checks, else its scalar fields.
fn check_figures(name: &str, check: &Value) -> Vec<String> {
    let figure = |value: &Value| match value {
        Value::Array(items) => items.len().to_string(),
        other => value_text(other),
    };
    if let Some((_, figures)) = CHECK_FIGURES.iter().find(|(known, _)| *known == name) {
        return figures
            .iter()
            .filter_map(|(label, pointer)| {
                Some(format!("{label}: {}", figure(check.pointer(pointer)?)))
            })
            .collect();
    }
    check
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(field, value)| {
            !matches!(field.as_str(), "verdict" | "slo_met")
                && !value.is_object()
                && !value.is_array()
        })
        .take(GENERIC_FIGURES_MAX)
        .map(|(field, value)| format!("{}: {}", field.replace('_', " "), figure(value)))
        .collect()
}

/// Non-empty lists of a check (conflicts, lost adds, violations, ...), first items each, as markup.
fn check_details(check: &Value) -> String {
    let mut markup = String::new();
    for (field, value) in check.as_object().into_iter().flatten() {
        // Anomalies of the linearizable check have a section of their own.
        let Value::Array(items) = value else { continue };
        if items.is_empty() || field == "anomalies" || field == "windows" {
            continue;
        }
        let _ = write!(
            markup,
            "<details><summary>{} ({})</summary><ul>",
            escape(&field.replace('_', " ")),
            items.len()
        );
        for item in items.iter().take(DETAIL_ITEMS_MAX) {
            let _ = write!(
                markup,
                "<li><code>{}</code></li>",
                escape(&value_text(item))
            );
        }
        if items.len() > DETAIL_ITEMS_MAX {
            let _ = write!(
                markup,
                "<li>… {} more in results.json</li>",
                items.len() - DETAIL_ITEMS_MAX
            );
        }
        markup.push_str("</ul></details>");
    }
    markup
}

fn verdict_section(page: &mut String, results: &Value) {
    let mut rows: Vec<(String, &Value)> = Vec::new();
    if let Some(checks) = results.get("checks").and_then(Value::as_object) {
        for (name, _) in CHECK_FIGURES {
            if let Some(check) = checks.get(name).filter(|check| check.is_object()) {
                rows.push((name.to_string(), check));
            }
        }
        for (name, check) in checks {
            let known = CHECK_FIGURES.iter().any(|(known, _)| known == name);
            if !known && check.get("verdict").is_some() {
                rows.push((name.clone(), check));
            }
        }
    }
    for name in TOP_LEVEL_CHECKS {
        if let Some(check) = results.get(name).filter(|check| check.is_object()) {
            rows.push((name.to_string(), check));
        }
    }
    page.push_str("<h2>Checks</h2>\n");
    if rows.is_empty() {
        page.push_str("<p class=\"note\">results.json holds no checks</p>\n");
        return;
    }
    let mut table = Table::new("checks", &["check", "verdict", "figures"]);
    for (name, check) in rows {
        let verdict = check_verdict(check).unwrap_or_else(|| "unknown".to_string());
        let figures = check_figures(&name, check)
            .iter()
            .map(|figure| escape(figure))
            .collect::<Vec<_>>()
            .join(" · ");
        table.row_markup(&[
            escape(&name.replace('_', " ")),
            verdict_badge(&verdict),
            format!("{figures}{}", check_details(check)),
        ]);
    }
    page.push_str(&table.finish());
}

fn figure(page: &mut String, chart: &Chart) {
    let _ = writeln!(
        page,
        "<figure>{}<figcaption>{}</figcaption></figure>",
        chart.svg,
        escape(&chart.caption)
    );
}

fn chart_sections(
    page: &mut String,
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<()> {
    let fault_legend = ("fault window", fault_swatch());
    let outcome_legend: Vec<(&str, String)> = Outcome::ALL
        .iter()
        .map(|outcome| (outcome.name(), hex(outcome.color())))
        .chain(std::iter::once(fault_legend.clone()))
        .collect();

    page.push_str("<h2>Latency</h2>\n");
    let latency = charts::latency_charts(history, axis, windows)?;
    if latency.is_empty() {
        page.push_str("<p class=\"note\">the history has no client operations</p>\n");
    } else {
        page.push_str(&html::legend(&outcome_legend));
        for chart in &latency {
            figure(page, chart);
        }
    }

    page.push_str("<h2>Throughput</h2>\n");
    page.push_str(&html::legend(&outcome_legend));
    figure(page, &charts::throughput_chart(history, axis, windows)?);
    fault_table(page, windows);

    page.push_str("<h2>Leader and term of every node</h2>\n");
    match roles::role_chart(history, axis, windows)? {
        Some(chart) => {
            let role_legend: Vec<(&str, String)> = roles::ROLE_COLORS
                .iter()
                .map(|&(role, color)| (role, hex(color)))
                .chain(std::iter::once(fault_legend))
                .collect();
            page.push_str(&html::legend(&role_legend));
            figure(page, &chart);
        }
        None => {
            page.push_str("<p class=\"note\">the history has no observations of the nodes</p>\n")
        }
    }
    Ok(())
}

/// The legend colour of fault windows: the shading, a little darker so the swatch is visible.
fn fault_swatch() -> String {
    let color = charts::FAULT_COLOR;
    format!(
        "rgba({},{},{},{})",
        color.0,
        color.1,
        color.2,
        (charts::FAULT_OPACITY * 2.0).min(1.0)
    )
}

fn fault_table(page: &mut String, windows: &[FaultWindow]) {
    page.push_str("<h3>Fault windows</h3>\n");
    if windows.is_empty() {
        page.push_str("<p class=\"note\">no faults were injected</p>\n");
        return;
    }
    let mut table = Table::new(
        "faults",
        &["fault", "target", "start (s)", "end (s)", "duration (s)"],
    );
    for window in windows {
        let end = if window.never_stopped {
            format!("{} (never stopped)", seconds_text(window.end_ns))
        } else {
            seconds_text(window.end_ns)
        };
        table.row_text(&[
            window.fault.clone(),
            window.description.clone().unwrap_or_default(),
            seconds_text(window.start_ns),
            end,
            seconds_text(window.end_ns.saturating_sub(window.start_ns)),
        ]);
    }
    page.push_str(&table.finish());
}

fn availability_section(page: &mut String, results: &Value) {
    let Some(availability) = results
        .get("availability")
        .filter(|value| value.is_object())
    else {
        return;
    };
    page.push_str("<h2>Availability</h2>\n");
    figures_table(page, availability);
    let Some(windows) = availability.get("windows").and_then(Value::as_array) else {
        return;
    };
    let columns: [(&str, &str); 8] = [
        ("fault", "fault"),
        ("start (s)", "start_ns"),
        ("end (s)", "end_ns"),
        ("operations", "operations"),
        ("served", "served_fraction"),
        ("longest unavailability (ms)", "longest_unavailability_ms"),
        ("recovery (ms)", "recovery_ms"),
        ("SLO", "slo_met"),
    ];
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let mut table = Table::new("availability", &names);
    for window in windows {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, field)| {
                let value = window.get(field);
                match (*field, value) {
                    (_, None | Some(Value::Null)) => "—".to_string(),
                    ("start_ns" | "end_ns", Some(value)) => value
                        .as_u64()
                        .map_or_else(|| value_text(value), seconds_text),
                    ("served_fraction", Some(value)) => value.as_f64().map_or_else(
                        || value_text(value),
                        |fraction| format!("{:.1}%", fraction * 100.0),
                    ),
                    ("slo_met", Some(Value::Bool(met))) => {
                        if *met { "met" } else { "missed" }.to_string()
                    }
                    (_, Some(value)) => value_text(value),
                }
            })
            .collect();
        table.row_text(&cells);
    }
    page.push_str(&table.finish());
}

fn liveness_section(page: &mut String, results: &Value) {
    let Some(liveness) = results.get("liveness").filter(|value| value.is_object()) else {
        return;
    };
    page.push_str("<h2>Liveness after the final heal</h2>\n");
    figures_table(page, liveness);
}

/// Every field of an object but its lists of windows, as a two-column table.
fn figures_table(page: &mut String, object: &Value) {
    let mut table = Table::new("figures", &["figure", "value"]);
    for (field, value) in object.as_object().into_iter().flatten() {
        if field == "windows" {
            continue;
        }
        let cell = match (field.as_str(), value) {
            ("verdict", _) => verdict_badge(&value_text(value)),
            ("slo_met", Value::Bool(met)) => verdict_badge(if *met { "met" } else { "missed" }),
            _ => escape(&value_text(value)),
        };
        table.row_markup(&[escape(&field.replace('_', " ")), cell]);
    }
    page.push_str(&table.finish());
}

fn staleness_section(
    page: &mut String,
    history: &History,
    results: &Value,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<()> {
    let staleness = results.pointer("/checks/staleness");
    let distributions: Vec<(&str, &Value)> = [
        ("ms since leader", "/millis_since_leader"),
        ("revisions behind", "/revisions_behind"),
    ]
    .into_iter()
    .filter_map(|(label, pointer)| {
        Some((label, staleness?.pointer(pointer)?)).filter(|(_, value)| value.is_object())
    })
    .collect();
    let chart = charts::staleness_chart(history, axis, windows)?;
    if distributions.is_empty() && chart.is_none() {
        return Ok(());
    }
    page.push_str("<h2>Staleness of reads</h2>\n");
    if !distributions.is_empty() {
        let fields = ["count", "min", "p50", "p99", "max"];
        let mut table = Table::new(
            "staleness",
            &["measure", "reads", "min", "p50", "p99", "max"],
        );
        for (label, distribution) in distributions {
            let mut cells = vec![label.to_string()];
            cells.extend(fields.iter().map(|field| {
                distribution
                    .get(field)
                    .map_or_else(|| "—".to_string(), value_text)
            }));
            table.row_text(&cells);
        }
        page.push_str(&table.finish());
    }
    if let Some(chart) = chart {
        page.push_str(&html::legend(&[("fault window", fault_swatch())]));
        figure(page, &chart);
    }
    Ok(())
}
