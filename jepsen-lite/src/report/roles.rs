//! The leader/term timeline: one row per node, coloured by the role the observer saw, the term printed where it
//! changes, fault windows shaded.
//!
//! Observation events (`"type":"observation"`, with `node`, `role`, `term`, `time`; see
//! `checker::split_brain`) and `"type":"unreachable"` events (a poll of `node` got no answer) are folded, node by
//! node, into segments of constant role and term. A segment lasts from its first observation to the next
//! observation that differs, but never more than [`OBSERVATION_HOLD_MAX_NS`] past its last observation: the
//! observer polls about every 100 ms, so a longer silence means nothing is known, and the row stays blank rather
//! than claim a role nobody saw. Events without a `node` or `time` are skipped.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::charts::{
    annotation_style, estimated_text_width_px, label_fault_windows, label_rows, render_svg,
    seconds, seconds_label, shade_fault_windows, Chart, TimeAxis, ANNOTATION_FONT_SIZE,
    CHART_MARGIN_PX, CHART_WIDTH_PX, FONT_FAMILY, GRID_COLOR, LABEL_FONT_SIZE, X_LABEL_AREA_PX,
    Y_LABEL_AREA_PX,
};
use crate::checker::split_brain::{OBSERVATION_TYPE, OBSERVER_PROCESS};
use crate::faults::FaultWindow;
use crate::history::History;

/// The `type` of an observer event saying a poll of the node got no answer.
pub const UNREACHABLE_TYPE: &str = "unreachable";
/// The role shown for unreachable polls.
pub const UNREACHABLE_ROLE: &str = "unreachable";
/// Longest time a segment extends past its last observation (about ten polls).
pub const OBSERVATION_HOLD_MAX_NS: u64 = 1_000_000_000;
/// Height of one node's row.
pub const ROW_HEIGHT_PX: u32 = 34;
/// Space above the rows for the fault names, in rows.
const FAULT_LABEL_HEADROOM_ROWS: f64 = 0.8;
/// Nodes drawn; a history naming more (not a real cluster) shows the first ones by id.
pub const NODES_DRAWN_MAX: usize = 16;

/// Roles and their colours, in legend order; any other role string is drawn in [`OTHER_ROLE_COLOR`].
pub const ROLE_COLORS: [(&str, RGBColor); 5] = [
    ("leader", RGBColor(31, 119, 180)),
    ("follower", RGBColor(174, 199, 232)),
    ("candidate", RGBColor(255, 187, 120)),
    ("learner", RGBColor(152, 223, 138)),
    (UNREACHABLE_ROLE, RGBColor(110, 110, 110)),
];
/// A role the report does not know.
pub const OTHER_ROLE_COLOR: RGBColor = RGBColor(199, 199, 199);

/// The colour of a role.
pub fn role_color(role: &str) -> RGBColor {
    ROLE_COLORS
        .iter()
        .find(|(name, _)| *name == role)
        .map_or(OTHER_ROLE_COLOR, |&(_, color)| color)
}

/// An interval in which the observer saw one node in one role and term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleSegment {
    pub role: String,
    /// `None` for unreachable polls.
    pub term: Option<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Everything the observer saw of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTimeline {
    pub node: u64,
    pub segments: Vec<RoleSegment>,
}

/// One poll result.
struct Poll {
    time: u64,
    role: String,
    term: Option<u64>,
}

/// The timeline of every observed node, by node id; segments never reach past `history_end_ns`.
pub fn node_timelines(history: &History, history_end_ns: u64) -> Vec<NodeTimeline> {
    let mut polls: BTreeMap<u64, Vec<Poll>> = BTreeMap::new();
    for event in &history.other_events {
        let fields = &event.value;
        if fields.get("process").and_then(Value::as_str) != Some(OBSERVER_PROCESS) {
            continue;
        }
        let (Some(node), Some(time)) = (
            fields.get("node").and_then(Value::as_u64),
            fields.get("time").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let poll = match fields.get("type").and_then(Value::as_str) {
            Some(OBSERVATION_TYPE) => Poll {
                time,
                role: fields
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string(),
                term: fields.get("term").and_then(Value::as_u64),
            },
            Some(UNREACHABLE_TYPE) => Poll {
                time,
                role: UNREACHABLE_ROLE.to_string(),
                term: None,
            },
            _ => continue,
        };
        polls.entry(node).or_default().push(poll);
    }
    polls
        .into_iter()
        .map(|(node, mut node_polls)| {
            node_polls.sort_by_key(|poll| poll.time);
            NodeTimeline {
                node,
                segments: segments_of(&node_polls, history_end_ns),
            }
        })
        .collect()
}

/// Folds one node's polls (by time) into segments.
fn segments_of(polls: &[Poll], history_end_ns: u64) -> Vec<RoleSegment> {
    let mut segments: Vec<RoleSegment> = Vec::new();
    // The open segment and the time of its last poll.
    let mut open: Option<(RoleSegment, u64)> = None;
    for poll in polls {
        if let Some((mut segment, last_seen)) = open.take() {
            let silent_too_long = poll.time.saturating_sub(last_seen) > OBSERVATION_HOLD_MAX_NS;
            let same = segment.role == poll.role && segment.term == poll.term;
            if same && !silent_too_long {
                open = Some((segment, poll.time));
                continue;
            }
            segment.end_ns = if silent_too_long {
                last_seen + OBSERVATION_HOLD_MAX_NS
            } else {
                poll.time
            };
            segments.push(segment);
        }
        open = Some((
            RoleSegment {
                role: poll.role.clone(),
                term: poll.term,
                start_ns: poll.time,
                end_ns: poll.time,
            },
            poll.time,
        ));
    }
    if let Some((mut segment, last_seen)) = open {
        segment.end_ns = (last_seen + OBSERVATION_HOLD_MAX_NS)
            .min(history_end_ns)
            .max(last_seen);
        segments.push(segment);
    }
    segments
}

/// The timeline chart; `None` when the history has no observations.
pub fn role_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Option<Chart>> {
    let mut timelines = node_timelines(history, axis.end_ns);
    if timelines.is_empty() {
        return Ok(None);
    }
    let nodes_observed = timelines.len();
    timelines.truncate(NODES_DRAWN_MAX);
    let rows = timelines.len();
    let height = ROW_HEIGHT_PX * rows as u32
        + (ROW_HEIGHT_PX as f64 * FAULT_LABEL_HEADROOM_ROWS) as u32
        + X_LABEL_AREA_PX
        + 2 * CHART_MARGIN_PX;
    // Row r (0 = first node, drawn at the top) spans y in [rows - 1 - r, rows - r].
    let row_base = |row: usize| (rows - 1 - row) as f64;
    let row_labels: Vec<(f64, String)> = timelines
        .iter()
        .enumerate()
        .map(|(row, timeline)| (row_base(row) + 0.5, format!("node {}", timeline.node)))
        .collect();
    let seconds_text = seconds_label(axis);
    let svg = render_svg((CHART_WIDTH_PX, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(CHART_MARGIN_PX)
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX)
            .build_cartesian_2d(axis.range_s(), 0.0..rows as f64 + FAULT_LABEL_HEADROOM_ROWS)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("time (s)")
            .x_label_formatter(&seconds_text)
            .label_style((FONT_FAMILY, LABEL_FONT_SIZE))
            .light_line_style(GRID_COLOR.mix(0.5))
            .bold_line_style(GRID_COLOR)
            .draw()?;
        shade_fault_windows(&mut chart, windows)?;
        let x_end = axis.range_s().end;
        for (row, timeline) in timelines.iter().enumerate() {
            let base = row_base(row);
            chart.draw_series(timeline.segments.iter().map(|segment| {
                Rectangle::new(
                    [
                        (seconds(segment.start_ns).min(x_end), base + 0.18),
                        (seconds(segment.end_ns).min(x_end), base + 0.82),
                    ],
                    role_color(&segment.role).filled(),
                )
            }))?;
            // The term where it changes, left out where it would overprint the previous one.
            let mut labels = Vec::new();
            let mut last_term = None;
            let mut free_from_px = i32::MIN;
            for segment in &timeline.segments {
                let Some(term) = segment.term else { continue };
                if last_term == Some(term) {
                    continue;
                }
                last_term = Some(term);
                let start = seconds(segment.start_ns).min(x_end);
                let (x_px, _) = chart.backend_coord(&(start, base));
                let text = format!("t{term}");
                if x_px < free_from_px {
                    continue;
                }
                free_from_px = x_px + estimated_text_width_px(&text, ANNOTATION_FONT_SIZE) + 4;
                let on_dark = segment.role == "leader";
                let color = if on_dark { WHITE } else { BLACK };
                labels.push((text, start, color));
            }
            chart.draw_series(labels.into_iter().map(|(text, start, color)| {
                EmptyElement::at((start, base + 0.5))
                    + Text::new(
                        text,
                        (2, 0),
                        annotation_style(color).pos(Pos::new(HPos::Left, VPos::Center)),
                    )
            }))?;
        }
        label_fault_windows(&mut chart, windows)?;
        label_rows(root, &chart, &row_labels)?;
        Ok(())
    })?;
    let polls: usize = history
        .other_events
        .iter()
        .filter(|event| {
            event.value.get("process").and_then(Value::as_str) == Some(OBSERVER_PROCESS)
        })
        .count();
    let mut caption = format!(
        "role of each node as polled by the observer ({polls} polls of {nodes_observed} nodes); \
         tN marks the term where it changes"
    );
    if nodes_observed > rows {
        caption.push_str(&format!("; only the first {rows} nodes are drawn"));
    }
    Ok(Some(Chart { caption, svg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_polls_into_segments_and_leaves_silences_blank() {
        // Node 1: leader t1 twice, then unreachable, then a 5 s silence, then follower t2 to the end.
        let text = r#"
{"process":"observer","type":"observation","node":1,"role":"leader","term":1,"leader":1,"time":0}
{"process":"observer","type":"observation","node":1,"role":"leader","term":1,"leader":1,"time":100}
{"process":"observer","type":"unreachable","node":1,"time":200}
{"process":"observer","type":"observation","node":1,"role":"follower","term":2,"leader":2,"time":5000000000}
{"process":"observer","type":"observation","node":2,"role":"leader","term":2,"leader":2,"time":300}
{"process":"nemesis","type":"info","f":"start","fault":"kill","time":150}
"#;
        let history = History::parse(text).unwrap();
        let timelines = node_timelines(&history, 5_200_000_000);
        assert_eq!(timelines.len(), 2);
        let spans: Vec<_> = timelines[0]
            .segments
            .iter()
            .map(|s| (s.role.as_str(), s.term, s.start_ns, s.end_ns))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("leader", Some(1), 0, 200),
                ("unreachable", None, 200, 200 + OBSERVATION_HOLD_MAX_NS),
                ("follower", Some(2), 5_000_000_000, 5_200_000_000),
            ]
        );
        assert_eq!(timelines[1].node, 2);
    }
}
