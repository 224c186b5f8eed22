//! A non-linearizable key drawn as a timeline: the operations that matter, one lane per process, from invoke to
//! completion, the operation that could not be linearized highlighted, and a table of the same operations.
//!
//! The linearizability checker's counterexample (`checks.linearizable.anomalies[].counterexample` in
//! `results.json`) names the failed operation, the last one it could linearize and the longest partial
//! linearization, by history index. The drawing shows, up to [`ANOMALY_OPERATIONS_MAX`]: the failed operation,
//! the last linearized one, the operations on the key whose interval overlaps the failed one's (the only ones
//! that could have been ordered around it), closest first, then the end of the partial linearization, latest
//! first. `fail`ed operations are left out of the overlap set: they did not happen and the checker ignores them.
//! Bars of operations that never returned (`info`, pending) run to the right edge, drawn pale.

use std::collections::{BTreeSet, HashMap};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::charts::{
    annotation_style, label_rows, render_svg, Chart, CHART_MARGIN_PX, CHART_WIDTH_PX, FAIL_COLOR,
    FONT_FAMILY, GRID_COLOR, LABEL_FONT_SIZE, X_LABEL_AREA_PX, Y_LABEL_AREA_PX,
};
use super::html::{escape, seconds_text, truncate, value_text, Table};
use crate::history::{Function, History, Operation, Status};

/// Operations drawn per anomaly; the rest of a long partial linearization is left out (the count says so).
pub const ANOMALY_OPERATIONS_MAX: usize = 24;
/// Anomalous keys drawn; the checker stops at the first invalid key, so more is rare.
pub const ANOMALY_KEYS_DRAWN_MAX: usize = 8;
/// Longest operation label on a bar, in characters.
pub const OPERATION_LABEL_CHARS_MAX: usize = 48;
/// Longest explanation or reason shown, in characters (the checker writes a sentence or two).
pub const EXPLANATION_CHARS_MAX: usize = 4_000;
/// Height of one process lane.
pub const LANE_HEIGHT_PX: u32 = 40;

/// Bars of operations the partial linearization placed.
const LINEARIZED_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Bars of other operations overlapping the failed one.
const CONCURRENT_COLOR: RGBColor = RGBColor(127, 127, 127);
/// Opacity of bars whose operation never returned.
const INDETERMINATE_OPACITY: f64 = 0.35;
/// Opacity of bars of completed operations.
const COMPLETED_OPACITY: f64 = 0.85;
/// Share of the drawn span added on the right, where bars of operations that never returned end.
const OPEN_END_SHARE: f64 = 0.12;
/// Narrowest x span drawn, in milliseconds, so instantaneous operations still get a visible bar.
const SPAN_MS_MIN: f64 = 0.01;

/// Why an operation is in the drawing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Involvement {
    /// No order places it before its response.
    Failed,
    /// The end of the partial linearization (1-based position in it).
    LastLinearized(usize),
    /// Placed by the partial linearization (1-based position).
    Linearized(usize),
    /// Overlaps the failed operation, not placed.
    Concurrent,
}

impl Involvement {
    fn describe(self) -> String {
        match self {
            Self::Failed => "could not be linearized".to_string(),
            Self::LastLinearized(position) => format!("last linearized (#{position})"),
            Self::Linearized(position) => format!("linearized #{position}"),
            Self::Concurrent => "concurrent, not linearized".to_string(),
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Self::Failed => FAIL_COLOR,
            Self::LastLinearized(_) | Self::Linearized(_) => LINEARIZED_COLOR,
            Self::Concurrent => CONCURRENT_COLOR,
        }
    }
}

/// The operations chosen for one anomaly, in invoke order.
pub struct Involved<'h> {
    pub operations: Vec<(&'h Operation, Involvement)>,
    /// Operations of the counterexample and the overlap set that did not fit under [`ANOMALY_OPERATIONS_MAX`].
    pub left_out: usize,
}

/// The end of an operation's interval; `None` when it never returned (an open-ended interval).
fn interval_end(operation: &Operation) -> Option<u64> {
    match operation.status {
        Status::Ok | Status::Fail => operation.end_time,
        Status::Info | Status::Pending => None,
    }
}

/// True when the intervals of `a` and `b` overlap (equal times count as overlapping, as in the checker).
fn overlaps(a: &Operation, b: &Operation) -> bool {
    let a_before_b = interval_end(a).is_some_and(|end| end < b.invoke_time);
    let b_before_a = interval_end(b).is_some_and(|end| end < a.invoke_time);
    !a_before_b && !b_before_a
}

/// Chooses the operations to draw for a counterexample; `None` if its failed operation is not in the history.
pub fn involved<'h>(history: &'h History, counterexample: &Value) -> Option<Involved<'h>> {
    let operation = |index: &Value| {
        let index = usize::try_from(index.as_u64()?).ok()?;
        history
            .operations
            .get(index)
            .filter(|operation| operation.index == index)
    };
    let failed = operation(counterexample.get("failed_op")?)?;
    let partial: Vec<&Operation> = counterexample
        .get("partial_linearization")
        .and_then(Value::as_array)
        .map(|indices| indices.iter().filter_map(operation).collect())
        .unwrap_or_default();
    let positions: HashMap<usize, usize> = partial
        .iter()
        .enumerate()
        .map(|(position, op)| (op.index, position + 1))
        .collect();
    let last_linearized = counterexample.get("last_linearized_op").and_then(operation);
    let mut concurrent: Vec<&Operation> = history
        .operations
        .iter()
        .filter(|op| op.key == failed.key && op.index != failed.index)
        .filter(|op| op.status != Status::Fail && overlaps(op, failed))
        .collect();
    concurrent.sort_by_key(|op| op.invoke_time.abs_diff(failed.invoke_time));

    let candidates = std::iter::once(failed)
        .chain(last_linearized)
        .chain(concurrent)
        .chain(partial.iter().rev().copied());
    let mut seen = BTreeSet::new();
    let mut chosen = Vec::new();
    let mut left_out = 0;
    for op in candidates {
        if !seen.insert(op.index) {
            continue;
        }
        if chosen.len() == ANOMALY_OPERATIONS_MAX {
            left_out += 1;
            continue;
        }
        let involvement = if op.index == failed.index {
            Involvement::Failed
        } else if let Some(&position) = positions.get(&op.index) {
            if Some(op.index) == last_linearized.map(|last| last.index) {
                Involvement::LastLinearized(position)
            } else {
                Involvement::Linearized(position)
            }
        } else {
            Involvement::Concurrent
        };
        chosen.push((op, involvement));
    }
    chosen.sort_by_key(|(op, _)| (op.invoke_time, op.index));
    Some(Involved {
        operations: chosen,
        left_out,
    })
}

/// A short label: `op 12 cas 1→2 fail`, `op 3 read → null`.
pub fn operation_label(operation: &Operation) -> String {
    let action = match operation.f {
        Function::Read => match (&operation.status, &operation.output) {
            (Status::Ok, Some(value)) => format!("read → {}", value_text(value)),
            _ => "read".to_string(),
        },
        Function::Cas => match operation.cas_values() {
            Some((expected, new)) => format!("cas {}→{}", value_text(expected), value_text(new)),
            None => format!("cas {}", value_text(&operation.input)),
        },
        Function::Write
        | Function::Add
        | Function::Transfer
        | Function::Acquire
        | Function::Release
        | Function::Watch => {
            format!("{} {}", operation.f, value_text(&operation.input))
        }
    };
    let status = match operation.status {
        Status::Ok => "",
        Status::Fail => " fail",
        Status::Info => " info",
        Status::Pending => " never returned",
    };
    truncate(
        &format!("op {} {action}{status}", operation.index),
        OPERATION_LABEL_CHARS_MAX,
    )
}

/// The HTML of every anomalous key in `checks.linearizable.anomalies`: a heading, the timeline, the explanation
/// and the table of operations; unknown keys get their reason. Empty when there is nothing to show.
pub fn anomaly_sections(history: &History, results: &Value) -> anyhow::Result<String> {
    let Some(anomalies) = results
        .pointer("/checks/linearizable/anomalies")
        .and_then(Value::as_array)
    else {
        return Ok(String::new());
    };
    let mut markup = String::new();
    for anomaly in anomalies.iter().take(ANOMALY_KEYS_DRAWN_MAX) {
        let key = anomaly.get("key").map(value_text).unwrap_or_default();
        let verdict = anomaly
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        markup.push_str(&format!(
            "<h3>key <code>{}</code>: {}</h3>\n",
            escape(&key),
            escape(verdict)
        ));
        if let Some(reason) = anomaly.get("reason") {
            markup.push_str(&format!("<p>{}</p>\n", escape(&long_text(reason))));
        }
        let Some(counterexample) = anomaly.get("counterexample") else {
            continue;
        };
        if let Some(explanation) = counterexample.get("explanation") {
            markup.push_str(&format!(
                "<p class=\"explanation\">{}</p>\n",
                escape(&long_text(explanation))
            ));
        }
        let Some(involved) = involved(history, counterexample) else {
            markup.push_str(
                "<p>the counterexample names operations this history does not have; \
                 render the report from the history that was checked</p>\n",
            );
            continue;
        };
        let chart = anomaly_chart(&involved)?;
        markup.push_str(&format!(
            "<figure>{}<figcaption>{}</figcaption></figure>\n",
            chart.svg,
            escape(&chart.caption)
        ));
        markup.push_str(&operations_table(&involved));
    }
    if anomalies.len() > ANOMALY_KEYS_DRAWN_MAX {
        markup.push_str(&format!(
            "<p>{} more keys are not linearizable or not decided; results.json lists them all</p>\n",
            anomalies.len() - ANOMALY_KEYS_DRAWN_MAX
        ));
    }
    Ok(markup)
}

/// A prose field: strings whole up to [`EXPLANATION_CHARS_MAX`], anything else as compact JSON.
fn long_text(value: &Value) -> String {
    match value {
        Value::String(text) => truncate(text, EXPLANATION_CHARS_MAX),
        other => value_text(other),
    }
}

fn operations_table(involved: &Involved<'_>) -> String {
    let mut table = Table::new(
        "operations",
        &[
            "op",
            "process",
            "f",
            "value",
            "result",
            "invoke (s)",
            "returned (s)",
            "status",
            "in the counterexample",
        ],
    );
    for (op, involvement) in &involved.operations {
        let cells = vec![
            op.index.to_string(),
            op.process.to_string(),
            op.f.to_string(),
            value_text(&op.input),
            op.output.as_ref().map(value_text).unwrap_or_default(),
            seconds_text(op.invoke_time),
            op.end_time.map(seconds_text).unwrap_or_default(),
            format!("{:?}", op.status).to_lowercase(),
            involvement.describe(),
        ];
        let escaped: Vec<String> = cells.iter().map(|cell| escape(cell)).collect();
        if *involvement == Involvement::Failed {
            let highlighted: Vec<String> = escaped
                .into_iter()
                .map(|cell| format!("<strong>{cell}</strong>"))
                .collect();
            table.row_markup(&highlighted);
        } else {
            table.row_markup(&escaped);
        }
    }
    table.finish()
}

/// Draws the chosen operations: x = milliseconds since the first invoke drawn, one lane per process.
fn anomaly_chart(involved: &Involved<'_>) -> anyhow::Result<Chart> {
    let operations = &involved.operations;
    let start_ns = operations
        .iter()
        .map(|(op, _)| op.invoke_time)
        .min()
        .unwrap_or(0);
    let milliseconds = |nanos: u64| nanos.saturating_sub(start_ns) as f64 / 1e6;
    let last_ms = operations
        .iter()
        .map(|(op, _)| milliseconds(interval_end(op).unwrap_or(op.invoke_time)))
        .fold(0.0, f64::max)
        .max(SPAN_MS_MIN);
    let x_end = last_ms * (1.0 + OPEN_END_SHARE);
    // Whole milliseconds on the axis unless the drawing spans only a few.
    let decimals = if x_end >= 10.0 { 0 } else { 2 };
    let processes: Vec<u64> = operations
        .iter()
        .map(|(op, _)| op.process)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let lanes = processes.len();
    let lane_base = |process: u64| {
        let lane = processes.iter().position(|&p| p == process).unwrap_or(0);
        (lanes - 1 - lane) as f64
    };
    let lane_labels: Vec<(f64, String)> = processes
        .iter()
        .map(|&process| (lane_base(process) + 0.3, format!("process {process}")))
        .collect();
    let failed = operations
        .iter()
        .find(|(_, involvement)| *involvement == Involvement::Failed)
        .map(|(op, _)| *op);
    let height = LANE_HEIGHT_PX * lanes as u32 + X_LABEL_AREA_PX + 2 * CHART_MARGIN_PX + 10;
    let svg = render_svg((CHART_WIDTH_PX, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(CHART_MARGIN_PX)
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX)
            .build_cartesian_2d(0.0..x_end, 0.0..lanes as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("milliseconds since the first operation drawn")
            .x_label_formatter(&|value| format!("{value:.decimals$}"))
            .label_style((FONT_FAMILY, LABEL_FONT_SIZE))
            .light_line_style(GRID_COLOR.mix(0.5))
            .bold_line_style(GRID_COLOR)
            .draw()?;
        if let Some(failed) = failed {
            // The failed operation's interval across every lane: what overlaps it could have been ordered
            // either way around it.
            let end = interval_end(failed).map_or(x_end, milliseconds);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(milliseconds(failed.invoke_time), 0.0), (end, lanes as f64)],
                FAIL_COLOR.mix(0.08).filled(),
            )))?;
        }
        for &(op, involvement) in operations {
            let base = lane_base(op.process);
            let start = milliseconds(op.invoke_time);
            let (end, opacity) = match interval_end(op) {
                Some(end) => (milliseconds(end), COMPLETED_OPACITY),
                None => (x_end, INDETERMINATE_OPACITY),
            };
            let color = involvement.color();
            let bar = [(start, base + 0.12), (end, base + 0.48)];
            chart.draw_series([
                Rectangle::new(bar, color.mix(opacity).filled()),
                Rectangle::new(bar, color.stroke_width(1)),
            ])?;
            if involvement == Involvement::Failed {
                chart.draw_series(std::iter::once(Rectangle::new(bar, BLACK.stroke_width(2))))?;
            }
            let prefix = match involvement {
                Involvement::Failed => "✗ ".to_string(),
                Involvement::LastLinearized(position) | Involvement::Linearized(position) => {
                    format!("#{position} ")
                }
                Involvement::Concurrent => String::new(),
            };
            let label = format!("{prefix}{}", operation_label(op));
            chart.draw_series(std::iter::once(
                EmptyElement::at((start, base + 0.52))
                    + Text::new(
                        label,
                        (0, -2),
                        annotation_style(BLACK).pos(Pos::new(HPos::Left, VPos::Bottom)),
                    ),
            ))?;
        }
        label_rows(root, &chart, &lane_labels)?;
        Ok(())
    })?;
    let mut caption = format!(
        "{} operations: ✗ could not be linearized (red, outlined), #N its place in the longest partial \
         linearization (blue), grey overlapping but not placed; pale bars never returned",
        operations.len()
    );
    if involved.left_out > 0 {
        caption.push_str(&format!(
            "; {} more operations of the counterexample are not drawn",
            involved.left_out
        ));
    }
    Ok(Chart { caption, svg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Write 1 (op 0), then `concurrent` overlapping writes (one of them failed, one never returned), then the
    /// failed read of op `concurrent + 1`, on key `k`; plus an overlapping op on another key.
    fn history(concurrent: u64) -> History {
        let mut lines = vec![
            json!({"process": 0, "type": "invoke", "f": "write", "key": "k", "value": 1, "time": 0}),
            json!({"process": 0, "type": "ok", "f": "write", "key": "k", "value": 1, "time": 10}),
        ];
        for process in 1..=concurrent {
            let value = 100 + process;
            lines.push(json!({"process": process, "type": "invoke", "f": "write", "key": "k", "value": value,
                "time": 20 + process}));
            let kind = match process {
                1 => "fail",
                2 => "info",
                _ => "ok",
            };
            lines.push(
                json!({"process": process, "type": kind, "f": "write", "key": "k", "value": value,
                "time": 500 + process}),
            );
        }
        let reader = concurrent + 1;
        lines.push(
            json!({"process": reader, "type": "invoke", "f": "read", "key": "k", "time": 100}),
        );
        lines.push(
            json!({"process": 999, "type": "invoke", "f": "read", "key": "other", "time": 101}),
        );
        lines.push(json!({"process": reader, "type": "ok", "f": "read", "key": "k", "value": 7, "time": 200}));
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        History::parse(&text.join("\n")).unwrap()
    }

    fn failed_read_index(history: &History) -> usize {
        history
            .operations
            .iter()
            .find(|op| op.f == Function::Read && op.key == "k")
            .unwrap()
            .index
    }

    #[test]
    fn chooses_the_counterexample_and_the_operations_overlapping_the_failed_one() {
        // Op 0 linearized, the failed read, and the overlapping writes on k except the failed one.
        let history = history(3);
        let failed = failed_read_index(&history);
        let counterexample = json!({"failed_op": failed, "last_linearized_op": 0,
            "partial_linearization": [0], "explanation": "x"});
        let involved = involved(&history, &counterexample).unwrap();
        let chosen: Vec<(usize, Involvement)> = involved
            .operations
            .iter()
            .map(|(op, involvement)| (op.index, *involvement))
            .collect();
        let write = |process: u64| {
            history
                .operations
                .iter()
                .find(|op| op.process == process)
                .unwrap()
                .index
        };
        assert_eq!(
            chosen,
            vec![
                (0, Involvement::LastLinearized(1)),
                (write(2), Involvement::Concurrent),
                (write(3), Involvement::Concurrent),
                (failed, Involvement::Failed),
            ]
        );
        assert_eq!(involved.left_out, 0);
        // The write that never returned is drawn open-ended.
        assert_eq!(interval_end(involved.operations[1].0), None);
        assert!(anomaly_chart(&involved).unwrap().svg.contains("✗ op"));
    }

    #[test]
    fn caps_the_operations_drawn_and_keeps_the_failed_one() {
        // Many overlapping writes: at most ANOMALY_OPERATIONS_MAX drawn, the rest counted.
        let overlapping = ANOMALY_OPERATIONS_MAX as u64 + 10;
        let history = history(overlapping);
        let failed = failed_read_index(&history);
        let counterexample = json!({"failed_op": failed, "last_linearized_op": 0,
            "partial_linearization": [0]});
        let involved = involved(&history, &counterexample).unwrap();
        assert_eq!(involved.operations.len(), ANOMALY_OPERATIONS_MAX);
        // overlapping writes minus the failed one, plus op 0 and the read, minus what was drawn.
        let candidates = overlapping as usize - 1 + 2;
        assert_eq!(involved.left_out, candidates - ANOMALY_OPERATIONS_MAX);
        assert!(involved
            .operations
            .iter()
            .any(|(op, involvement)| op.index == failed && *involvement == Involvement::Failed));
        assert!(involved.operations.iter().any(|(op, _)| op.index == 0));
    }

    #[test]
    fn a_counterexample_naming_unknown_operations_is_not_drawn() {
        // A results.json from another history: no drawing rather than a wrong one.
        let history = history(1);
        assert!(involved(&history, &json!({"failed_op": 12345})).is_none());
        assert!(involved(&history, &json!({"failed_op": "x"})).is_none());
    }
}
