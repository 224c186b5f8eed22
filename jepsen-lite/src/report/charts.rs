//! The time charts of the report: latency per operation kind and throughput, drawn as inline SVG by plotters,
//! plus the frame every time-based chart shares (size, time axis, colours, shaded fault windows).
//!
//! All time charts use the same width, left label area and x range (seconds since the run started), so they
//! line up when stacked and a fault window sits at the same place in each. Text is emitted as SVG `<text>`
//! (plotters without its `ttf` feature only estimates text extents, which is all the layout needs), so no font
//! file is read or embedded. Point counts are bounded by [`LATENCY_POINTS_MAX`]: above it the points are
//! thinned evenly, series by series, and the caption says how many are shown.

use std::ops::Range;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::faults::FaultWindow;
use crate::history::{Function, History, Operation, Status};

/// Width of every chart, in pixels.
pub const CHART_WIDTH_PX: u32 = 1000;
/// Left area for y labels, the same on every time chart so their x axes line up.
pub const Y_LABEL_AREA_PX: u32 = 90;
/// Bottom area for x labels.
pub const X_LABEL_AREA_PX: u32 = 40;
/// Blank margin around each chart.
pub const CHART_MARGIN_PX: u32 = 12;
/// Height of a latency chart.
pub const LATENCY_CHART_HEIGHT_PX: u32 = 300;
/// Height of the throughput chart.
pub const THROUGHPUT_CHART_HEIGHT_PX: u32 = 240;

/// Points drawn over all latency charts together; above it each series is thinned evenly, small series first
/// kept whole (fail and info points are usually few and the interesting ones). About 90 bytes of SVG each.
pub const LATENCY_POINTS_MAX: usize = 20_000;
/// On the log latency axis, data above this share of the top decade gets one more decade above it, so the
/// fault names at the top do not cover points.
pub const LABEL_HEADROOM_DECADE_SHARE: f64 = 0.3;
/// On linear axes, the top of the chart is this multiple of the largest value, for the same reason.
pub const LABEL_HEADROOM_FACTOR: f64 = 1.25;
/// Latencies below this are drawn at it: the y axis is logarithmic and cannot show zero.
pub const LATENCY_MS_FLOOR: f64 = 0.001;
/// Throughput bucket width unless the run is so long that it would need more than [`THROUGHPUT_BUCKETS_MAX`].
pub const THROUGHPUT_BUCKET_NS: u64 = 1_000_000_000;
/// Most throughput buckets drawn; longer runs get wider buckets.
pub const THROUGHPUT_BUCKETS_MAX: u64 = 600;
/// Least share of a bucket the last (cut short) throughput bucket is rated over.
pub const LAST_BUCKET_SHARE_MIN: f64 = 0.25;
/// Shortest time axis, so that an empty or instantaneous history still draws a sane frame.
pub const TIME_AXIS_NS_MIN: u64 = 1_000_000_000;

/// Font of every chart text; the viewer's own sans-serif font renders it.
pub const FONT_FAMILY: &str = "sans-serif";
/// Nominal size of axis labels (plotters draws text at size / 1.24 pixels).
pub const LABEL_FONT_SIZE: f64 = 15.0;
/// Nominal size of in-chart annotations (fault names, terms, operation labels).
pub const ANNOTATION_FONT_SIZE: f64 = 14.0;

/// Outcome `ok`.
pub const OK_COLOR: RGBColor = RGBColor(44, 160, 44);
/// Outcome `fail`.
pub const FAIL_COLOR: RGBColor = RGBColor(214, 39, 40);
/// Outcome `info` (indeterminate).
pub const INFO_COLOR: RGBColor = RGBColor(255, 127, 14);
/// Fault windows, drawn translucent under the data.
pub const FAULT_COLOR: RGBColor = RGBColor(148, 103, 189);
/// Opacity of the fault window shading.
pub const FAULT_OPACITY: f64 = 0.16;
/// Fault names on the charts.
pub const FAULT_LABEL_COLOR: RGBColor = RGBColor(88, 50, 130);
/// Grid lines.
pub const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);

/// `#rrggbb` of a report colour, for HTML legends.
pub fn hex(color: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", color.0, color.1, color.2)
}

/// The shared x axis of the time charts: from the start of the run to the last event of the history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeAxis {
    /// Nanoseconds since the run started of the last thing the history records (at least [`TIME_AXIS_NS_MIN`]).
    pub end_ns: u64,
}

impl TimeAxis {
    /// Covers every invoke, completion and other event of `history`.
    pub fn of(history: &History) -> Self {
        let operations = history
            .operations
            .iter()
            .map(|operation| operation.end_time.unwrap_or(operation.invoke_time));
        let others = history
            .other_events
            .iter()
            .filter_map(|event| event.value.get("time").and_then(serde_json::Value::as_u64));
        let last = operations.chain(others).max().unwrap_or(0);
        Self {
            end_ns: last.max(TIME_AXIS_NS_MIN),
        }
    }

    /// The x range in seconds.
    pub fn range_s(&self) -> Range<f64> {
        0.0..seconds(self.end_ns)
    }
}

/// Nanoseconds as seconds.
pub fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// A text style for chart annotations.
pub fn annotation_style(color: RGBColor) -> TextStyle<'static> {
    (FONT_FAMILY, ANNOTATION_FONT_SIZE)
        .into_font()
        .color(&color)
}

/// Axis tick labels of seconds: whole seconds when the axis is long enough, tenths otherwise.
pub fn seconds_label(axis: &TimeAxis) -> impl Fn(&f64) -> String {
    let decimals = if axis.end_ns >= 10 * TIME_AXIS_NS_MIN {
        0
    } else {
        1
    };
    move |value: &f64| format!("{value:.decimals$}")
}

/// Draws into a fresh SVG document of the given size and returns it.
pub fn render_svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// Shades every fault window across the chart's full height; drawn before the data so it stays underneath.
pub fn shade_fault_windows<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    windows: &[FaultWindow],
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let y_range = chart.y_range();
    let x_end = chart.x_range().end;
    chart.draw_series(windows.iter().map(|window| {
        let start = seconds(window.start_ns).min(x_end);
        let end = seconds(window.end_ns).min(x_end);
        Rectangle::new(
            [(start, y_range.start), (end, y_range.end)],
            FAULT_COLOR.mix(FAULT_OPACITY).filled(),
        )
    }))?;
    Ok(())
}

/// Names every fault window at the top of the chart, on the first of two label rows where it fits; a name
/// that fits on neither is left out (the fault table under the charts lists every window). Drawn after the
/// data so the names stay readable.
pub fn label_fault_windows<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    windows: &[FaultWindow],
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    /// Label rows used before a name is dropped.
    const LABEL_ROWS: usize = 2;
    /// Height of one label row.
    const LABEL_ROW_PX: i32 = 15;
    let y_top = chart.y_range().end;
    let x_end = chart.x_range().end;
    let mut row_free_from_px = [i32::MIN; LABEL_ROWS];
    let style = annotation_style(FAULT_LABEL_COLOR).pos(Pos::new(HPos::Left, VPos::Top));
    let mut labels = Vec::new();
    for window in windows {
        let start = seconds(window.start_ns).min(x_end);
        let (x_px, _) = chart.backend_coord(&(start, y_top));
        let width_px = estimated_text_width_px(&window.fault, ANNOTATION_FONT_SIZE);
        if let Some(row) = row_free_from_px.iter().position(|&free| free <= x_px) {
            row_free_from_px[row] = x_px + width_px + 8;
            labels.push((window.fault.clone(), start, row as i32 * LABEL_ROW_PX));
        }
    }
    chart.draw_series(labels.into_iter().map(|(fault, start, offset_px)| {
        EmptyElement::at((start, y_top)) + Text::new(fault, (3, 3 + offset_px), style.clone())
    }))?;
    Ok(())
}

/// Labels rows of a chart whose y axis is a row index (row centres at `center`): each name right-aligned in the
/// y label area, level with its row. plotters' own tick labels cannot sit at chosen points on an f64 axis, so
/// these are drawn on the root area at the pixel position of the row.
pub fn label_rows(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    rows: &[(f64, String)],
) -> anyhow::Result<()> {
    let x_start = chart.x_range().start;
    let style = (FONT_FAMILY, LABEL_FONT_SIZE)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (center, name) in rows {
        let (x_px, y_px) = chart.backend_coord(&(x_start, *center));
        root.draw(&Text::new(name.clone(), (x_px - 8, y_px), style.clone()))?;
    }
    Ok(())
}

/// A generous estimate of the width of `text` in pixels at a nominal font size (plotters' own estimate is
/// for layout only; this one errs wide so labels are not drawn over each other).
pub fn estimated_text_width_px(text: &str, font_size: f64) -> i32 {
    (text.chars().count() as f64 * font_size / 1.24 * 0.62).ceil() as i32
}

/// The outcome of a completed operation as it is plotted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

impl Outcome {
    /// Every outcome, in drawing order (the rarer, more telling ones on top).
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Info, Outcome::Fail];

    /// Position in [`Outcome::ALL`].
    pub fn slot(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Info => 1,
            Self::Fail => 2,
        }
    }

    /// The outcome of an operation that completed; `None` for one that never did.
    pub fn of(operation: &Operation) -> Option<Self> {
        match operation.status {
            Status::Ok => Some(Self::Ok),
            Status::Fail => Some(Self::Fail),
            Status::Info => Some(Self::Info),
            Status::Pending => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "fail",
            Self::Info => "info",
        }
    }

    pub fn color(self) -> RGBColor {
        match self {
            Self::Ok => OK_COLOR,
            Self::Fail => FAIL_COLOR,
            Self::Info => INFO_COLOR,
        }
    }
}

/// One chart of the page: a caption (plain text) and its SVG.
pub struct Chart {
    pub caption: String,
    pub svg: String,
}

/// One latency point: invoke time (s) and latency (ms).
type LatencyPoint = (f64, f64);

/// One latency chart per operation kind present: x = invoke time, y = latency (log), coloured by outcome.
pub fn latency_charts(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Vec<Chart>> {
    let kinds = [
        Function::Read,
        Function::Write,
        Function::Cas,
        Function::Add,
        Function::Transfer,
        Function::Acquire,
        Function::Release,
        Function::Watch,
    ];
    // Exhaustive, so a new function cannot be left without a chart.
    let kind_slot = |f: Function| match f {
        Function::Read => 0,
        Function::Write => 1,
        Function::Cas => 2,
        Function::Add => 3,
        Function::Transfer => 4,
        Function::Acquire => 5,
        Function::Release => 6,
        Function::Watch => 7,
    };
    // series[kind][outcome] = points
    let mut series: Vec<Vec<Vec<LatencyPoint>>> = vec![vec![Vec::new(); 3]; kinds.len()];
    let mut never_completed = vec![0usize; kinds.len()];
    let mut present = vec![false; kinds.len()];
    for operation in &history.operations {
        let kind = kind_slot(operation.f);
        present[kind] = true;
        let (Some(outcome), Some(end)) = (Outcome::of(operation), operation.end_time) else {
            never_completed[kind] += 1;
            continue;
        };
        let latency_ms =
            (end.saturating_sub(operation.invoke_time) as f64 / 1e6).max(LATENCY_MS_FLOOR);
        series[kind][outcome.slot()].push((seconds(operation.invoke_time), latency_ms));
    }
    let sizes: Vec<usize> = series.iter().flatten().map(Vec::len).collect();
    let mut shares = fair_shares(&sizes, LATENCY_POINTS_MAX).into_iter();

    let mut charts = Vec::new();
    for (kind_position, kind) in kinds.iter().enumerate() {
        let kind_series = &series[kind_position];
        let kept: Vec<Vec<LatencyPoint>> = kind_series
            .iter()
            .map(|points| thin_evenly(points, shares.next().unwrap_or(0)))
            .collect();
        if !present[kind_position] {
            continue;
        }
        let total: usize = kind_series.iter().map(Vec::len).sum();
        let shown: usize = kept.iter().map(Vec::len).sum();
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .zip(kind_series)
            .map(|(outcome, points)| format!("{} {}", points.len(), outcome.name()))
            .collect();
        let mut caption = format!("{kind}: {}", counts.join(", "));
        if never_completed[kind_position] > 0 {
            caption.push_str(&format!(
                ", {} never completed (not drawn)",
                never_completed[kind_position]
            ));
        }
        if shown < total {
            caption.push_str(&format!(
                "; {shown} of {total} points shown, thinned evenly"
            ));
        }
        let svg = latency_chart(&kept, axis, windows)?;
        charts.push(Chart { caption, svg });
    }
    Ok(charts)
}

fn latency_chart(
    series: &[Vec<LatencyPoint>],
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<String> {
    let latencies = series.iter().flatten().map(|&(_, latency)| latency);
    let (low, top_latency) = latencies.fold((f64::INFINITY, 0.0f64), |(low, high), latency| {
        (low.min(latency), high.max(latency))
    });
    // Whole decades around the data, so the log axis labels are round numbers.
    let (mut low, mut high) = if low.is_finite() {
        (
            10f64.powf(low.log10().floor()),
            10f64.powf(top_latency.log10().ceil()),
        )
    } else {
        (1.0, 1000.0)
    };
    if high <= low {
        high = low * 10.0;
    }
    // The fault names sit at the top: keep the top of the chart clear of points.
    if top_latency > high * LABEL_HEADROOM_DECADE_SHARE {
        high *= 10.0;
    }
    low = low.max(LATENCY_MS_FLOOR);
    let seconds_text = seconds_label(axis);
    render_svg((CHART_WIDTH_PX, LATENCY_CHART_HEIGHT_PX), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(CHART_MARGIN_PX)
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX)
            .build_cartesian_2d(axis.range_s(), (low..high).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("invoke time (s)")
            .y_desc("latency (ms)")
            .x_label_formatter(&seconds_text)
            .y_label_formatter(&|value| milliseconds_label(*value))
            .label_style((FONT_FAMILY, LABEL_FONT_SIZE))
            .light_line_style(GRID_COLOR.mix(0.5))
            .bold_line_style(GRID_COLOR)
            .draw()?;
        shade_fault_windows(&mut chart, windows)?;
        for (outcome, points) in Outcome::ALL.iter().zip(series) {
            let style = outcome.color().mix(0.7).filled();
            chart.draw_series(points.iter().map(|&point| Circle::new(point, 2, style)))?;
        }
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })
}

/// A log-axis tick in milliseconds: `0.01`, `1`, `250`, `10000`.
fn milliseconds_label(value: f64) -> String {
    if value >= 1.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').to_string()
    }
}

/// A time chart with a linear y axis from 0 to `y_top` (whole-number labels): the mesh drawn with the axis
/// descriptions `(x, y)` and the fault windows shaded, ready for data. The shared frame of the throughput and
/// staleness charts, so they line up with each other.
fn linear_time_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    axis: &TimeAxis,
    y_top: f64,
    (x_desc, y_desc): (&str, &str),
    windows: &[FaultWindow],
) -> anyhow::Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let seconds_text = seconds_label(axis);
    let mut chart = ChartBuilder::on(root)
        .margin(CHART_MARGIN_PX)
        .x_label_area_size(X_LABEL_AREA_PX)
        .y_label_area_size(Y_LABEL_AREA_PX)
        .build_cartesian_2d(axis.range_s(), 0.0..y_top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&seconds_text)
        .y_label_formatter(&|value| format!("{value:.0}"))
        .label_style((FONT_FAMILY, LABEL_FONT_SIZE))
        .light_line_style(GRID_COLOR.mix(0.5))
        .bold_line_style(GRID_COLOR)
        .draw()?;
    shade_fault_windows(&mut chart, windows)?;
    Ok(chart)
}

/// Operations completed per second over time, one line per outcome, in buckets of [`THROUGHPUT_BUCKET_NS`]
/// (wider for runs longer than [`THROUGHPUT_BUCKETS_MAX`] buckets).
pub fn throughput_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Chart> {
    let bucket_ns = THROUGHPUT_BUCKET_NS.max(axis.end_ns.div_ceil(THROUGHPUT_BUCKETS_MAX));
    let buckets = axis.end_ns.div_ceil(bucket_ns).max(1) as usize;
    let mut counts = vec![vec![0u64; buckets]; Outcome::ALL.len()];
    for operation in &history.operations {
        let (Some(outcome), Some(end)) = (Outcome::of(operation), operation.end_time) else {
            continue;
        };
        let bucket = ((end / bucket_ns) as usize).min(buckets - 1);
        counts[outcome.slot()][bucket] += 1;
    }
    let bucket_s = seconds(bucket_ns);
    let x_end = axis.range_s().end;
    // The last bucket may be cut short by the end of the run: its rate is over the time it covers, but at
    // least LAST_BUCKET_SHARE_MIN of a bucket, so a few late completions do not draw a spike.
    let bucket_covered_s = |bucket: usize| {
        (x_end - bucket as f64 * bucket_s).clamp(bucket_s * LAST_BUCKET_SHARE_MIN, bucket_s)
    };
    let rate_max = counts
        .iter()
        .flat_map(|outcome_counts| outcome_counts.iter().enumerate())
        .map(|(bucket, &count)| count as f64 / bucket_covered_s(bucket))
        .fold(0.0, f64::max);
    let y_top = (rate_max * LABEL_HEADROOM_FACTOR).max(1.0);
    let svg = render_svg((CHART_WIDTH_PX, THROUGHPUT_CHART_HEIGHT_PX), |root| {
        let mut chart = linear_time_chart(
            root,
            axis,
            y_top,
            ("completion time (s)", "operations / s"),
            windows,
        )?;
        for (outcome, outcome_counts) in Outcome::ALL.iter().zip(&counts) {
            // A step line: each bucket's rate held flat across the bucket.
            let steps = outcome_counts
                .iter()
                .enumerate()
                .flat_map(|(bucket, &count)| {
                    let start = bucket as f64 * bucket_s;
                    let end = (start + bucket_s).min(x_end);
                    let rate = count as f64 / bucket_covered_s(bucket);
                    [(start, rate), (end, rate)]
                });
            chart.draw_series(LineSeries::new(steps, outcome.color().stroke_width(2)))?;
        }
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })?;
    let totals: Vec<String> = Outcome::ALL
        .iter()
        .zip(&counts)
        .map(|(outcome, outcome_counts)| {
            format!("{} {}", outcome_counts.iter().sum::<u64>(), outcome.name())
        })
        .collect();
    Ok(Chart {
        caption: format!(
            "operations completed per second, in buckets of {bucket_s:.0} s: {}",
            totals.join(", ")
        ),
        svg,
    })
}

/// Height of the staleness chart.
pub const STALENESS_CHART_HEIGHT_PX: u32 = 240;
/// Points drawn on the staleness chart; above it they are thinned evenly.
pub const STALENESS_POINTS_MAX: usize = 10_000;
/// Staleness points.
pub const STALENESS_COLOR: RGBColor = RGBColor(23, 190, 207);

/// For `ok` reads whose envelope says how long ago the serving node heard from a leader: that figure (ms) over
/// the read's invoke time (s). `None` when no read carries it.
pub fn staleness_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Option<Chart>> {
    let points: Vec<(f64, f64)> = history
        .operations
        .iter()
        .filter(|op| op.f == Function::Read && op.status == Status::Ok)
        .filter_map(|op| {
            let millis = op
                .extra
                .get("envelope")?
                .get("millis_since_leader")?
                .as_u64()?;
            Some((seconds(op.invoke_time), millis as f64))
        })
        .collect();
    if points.is_empty() {
        return Ok(None);
    }
    let kept = thin_evenly(&points, STALENESS_POINTS_MAX);
    let y_top = (points.iter().map(|&(_, millis)| millis).fold(0.0, f64::max)
        * LABEL_HEADROOM_FACTOR)
        .max(10.0);
    let svg = render_svg((CHART_WIDTH_PX, STALENESS_CHART_HEIGHT_PX), |root| {
        let mut chart = linear_time_chart(
            root,
            axis,
            y_top,
            ("invoke time (s)", "ms since leader"),
            windows,
        )?;
        let style = STALENESS_COLOR.mix(0.7).filled();
        chart.draw_series(kept.iter().map(|&point| Circle::new(point, 2, style)))?;
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })?;
    let mut caption = format!(
        "milliseconds since the serving node last heard from a leader, per ok read ({} reads)",
        points.len()
    );
    if kept.len() < points.len() {
        caption.push_str(&format!("; {} shown, thinned evenly", kept.len()));
    }
    Ok(Some(Chart { caption, svg }))
}

/// Bank totals.
pub const BANK_TOTAL_COLOR: RGBColor = RGBColor(44, 160, 44);
/// Bank totals that differ from the opening total.
pub const BANK_WRONG_COLOR: RGBColor = RGBColor(214, 39, 40);

/// For the bank workload: the total of the balances each `ok` read saw, over the read's completion time, in
/// green where it is the opening total and red where it is not. `None` without bank reads.
pub fn bank_total_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Option<Chart>> {
    let total_of = |value: &serde_json::Value| -> Option<i64> {
        value
            .as_object()?
            .values()
            .map(serde_json::Value::as_i64)
            .sum::<Option<i64>>()
    };
    let bank = |op: &&crate::history::Operation| op.key == crate::checker::bank::BANK_KEY;
    let opening = history
        .operations
        .iter()
        .filter(bank)
        .find(|op| op.f == Function::Write && op.status == Status::Ok)
        .and_then(|op| total_of(&op.input));
    let points: Vec<(f64, f64)> = history
        .operations
        .iter()
        .filter(bank)
        .filter(|op| op.f == Function::Read && op.status == Status::Ok)
        .filter_map(|op| {
            let total = total_of(op.output.as_ref()?)?;
            let time = op.complete_time.unwrap_or(op.invoke_time);
            Some((seconds(time), total as f64))
        })
        .collect();
    if points.is_empty() {
        return Ok(None);
    }
    let kept = thin_evenly(&points, STALENESS_POINTS_MAX);
    let y_top = (points.iter().map(|&(_, total)| total).fold(0.0, f64::max)
        * LABEL_HEADROOM_FACTOR)
        .max(10.0);
    let expected = opening.map(|total| total as f64);
    let svg = render_svg((CHART_WIDTH_PX, STALENESS_CHART_HEIGHT_PX), |root| {
        let mut chart = linear_time_chart(
            root,
            axis,
            y_top,
            ("read completion time (s)", "total of the balances"),
            windows,
        )?;
        let right = kept.iter().filter(|point| Some(point.1) == expected);
        let wrong = kept.iter().filter(|point| Some(point.1) != expected);
        let good = BANK_TOTAL_COLOR.mix(0.7).filled();
        let bad = BANK_WRONG_COLOR.filled();
        chart.draw_series(right.map(|&point| Circle::new(point, 2, good)))?;
        chart.draw_series(wrong.map(|&point| Circle::new(point, 3, bad)))?;
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })?;
    let wrong = points
        .iter()
        .filter(|point| Some(point.1) != expected)
        .count();
    let mut caption = match opening {
        Some(total) => format!(
            "the total of the balances per ok read ({} reads; opening total {total}; {wrong} reads saw another)",
            points.len()
        ),
        None => format!(
            "the total of the balances per ok read ({} reads; no opening total recorded)",
            points.len()
        ),
    };
    if kept.len() < points.len() {
        caption.push_str(&format!("; {} shown, thinned evenly", kept.len()));
    }
    Ok(Some(Chart { caption, svg }))
}

/// Holds drawn in the lock timeline at most (the first ones).
pub const LOCK_HOLDS_DRAWN_MAX: usize = 2_000;

/// For the lock workload: every hold of the lock as a bar on its client's row, from its acquire's `ok` to its
/// release's invoke; holds that overlapped another in red. `None` without holds.
pub fn lock_timeline_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Option<Chart>> {
    let Ok(report) = crate::checker::lock::check(history) else {
        return Ok(None);
    };
    if report.timeline.is_empty() {
        return Ok(None);
    }
    let overlapping: std::collections::BTreeSet<usize> = report
        .anomalies
        .iter()
        .filter_map(|anomaly| match anomaly {
            crate::checker::lock::LockAnomaly::Overlap { first, second } => {
                Some([first.acquire_op, second.acquire_op])
            }
            _ => None,
        })
        .flatten()
        .collect();
    let processes: Vec<u64> = report
        .timeline
        .iter()
        .map(|hold| hold.process)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let row = |process: u64| processes.iter().position(|p| *p == process).unwrap_or(0) as f64;
    let drawn = &report.timeline[..report.timeline.len().min(LOCK_HOLDS_DRAWN_MAX)];
    let svg = render_svg((CHART_WIDTH_PX, STALENESS_CHART_HEIGHT_PX), |root| {
        let mut chart = linear_time_chart(
            root,
            axis,
            processes.len() as f64 + 0.5,
            ("time (s)", "client process (row)"),
            windows,
        )?;
        let good = BANK_TOTAL_COLOR.mix(0.8).filled();
        let bad = BANK_WRONG_COLOR.filled();
        chart.draw_series(drawn.iter().map(|hold| {
            let y = row(hold.process) + 0.2;
            let style = if overlapping.contains(&hold.acquire_op) {
                bad
            } else {
                good
            };
            Rectangle::new(
                [(seconds(hold.start), y), (seconds(hold.end), y + 0.6)],
                style,
            )
        }))?;
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })?;
    let mut caption = format!(
        "each hold of the lock, from its acquire to its release, on its client's row ({} holds; {} overlapped another, in red)",
        report.timeline.len(),
        overlapping.len()
    );
    if drawn.len() < report.timeline.len() {
        caption.push_str(&format!("; the first {} drawn", drawn.len()));
    }
    Ok(Some(Chart { caption, svg }))
}

/// Splits `budget` among series of the given sizes: the smallest series are kept whole while the rest share
/// what remains equally (water filling). The shares sum to at most `budget`.
pub fn fair_shares(sizes: &[usize], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&position| sizes[position]);
    let mut shares = vec![0; sizes.len()];
    let mut remaining = budget;
    for (done, &position) in order.iter().enumerate() {
        let fair = remaining / (sizes.len() - done);
        shares[position] = sizes[position].min(fair);
        remaining -= shares[position];
    }
    shares
}

/// At most `keep` of `points`, evenly spaced over the series (all of them if they fit).
pub fn thin_evenly<T: Clone>(points: &[T], keep: usize) -> Vec<T> {
    if points.len() <= keep {
        return points.to_vec();
    }
    (0..keep)
        .map(|position| points[position * points.len() / keep].clone())
        .collect()
}

/// A chart's legend: each series' name and colour.
pub type Legend = Vec<(String, RGBColor)>;

/// Points drawn per watcher in the watch lag chart at most (thinned evenly beyond).
pub const WATCH_LAG_POINTS_MAX: usize = 4_000;
/// One colour per watcher, in the order of their nodes (repeated beyond).
pub const WATCHER_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// For the watch workload: each watcher's lag, the time from a write's acknowledgement to the watcher getting
/// its event, by when the watcher got it, one colour per watcher (an event that arrived before its writer saw
/// the acknowledgement counts as 0). `None` without events carrying the time they were seen.
pub fn watch_lag_chart(
    history: &History,
    axis: &TimeAxis,
    windows: &[FaultWindow],
) -> anyhow::Result<Option<(Chart, Legend)>> {
    use std::collections::HashMap;
    let acknowledged: HashMap<(&str, u64), u64> = history
        .operations
        .iter()
        .filter(|op| op.f == Function::Write && op.status == Status::Ok)
        .filter_map(|op| {
            let revision = op.extra.get("revision")?.as_u64()?;
            Some(((op.key.as_str(), revision), op.complete_time?))
        })
        .collect();
    let mut watchers: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for op in history
        .operations
        .iter()
        .filter(|op| op.f == Function::Watch && op.status == Status::Ok)
    {
        let node = op
            .input
            .get("node")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_string();
        let events = op
            .output
            .as_ref()
            .and_then(|output| output.get("events"))
            .and_then(serde_json::Value::as_array);
        let points: Vec<(f64, f64)> = events
            .into_iter()
            .flatten()
            .filter_map(|event| {
                let event = event.as_array()?;
                let (key, revision, seen) = (
                    event.first()?.as_str()?,
                    event.get(2)?.as_u64()?,
                    event.get(3)?.as_u64()?,
                );
                let acked = *acknowledged.get(&(key, revision))?;
                let lag_ms = seen.saturating_sub(acked) as f64 / 1e6;
                Some((seconds(seen), lag_ms))
            })
            .collect();
        if !points.is_empty() {
            watchers.push((format!("watcher starting on {node}"), points));
        }
    }
    if watchers.is_empty() {
        return Ok(None);
    }
    let y_top = (watchers
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(_, lag)| lag))
        .fold(0.0, f64::max)
        * LABEL_HEADROOM_FACTOR)
        .max(10.0);
    let legend: Legend = watchers
        .iter()
        .enumerate()
        .map(|(index, (name, _))| (name.clone(), WATCHER_COLORS[index % WATCHER_COLORS.len()]))
        .collect();
    let svg = render_svg((CHART_WIDTH_PX, STALENESS_CHART_HEIGHT_PX), |root| {
        let mut chart = linear_time_chart(
            root,
            axis,
            y_top,
            (
                "time the watcher got the event (s)",
                "lag after the write's ok (ms)",
            ),
            windows,
        )?;
        for (index, (_, points)) in watchers.iter().enumerate() {
            let color = WATCHER_COLORS[index % WATCHER_COLORS.len()];
            let kept = thin_evenly(points, WATCH_LAG_POINTS_MAX);
            chart.draw_series(
                kept.iter()
                    .map(|&point| Circle::new(point, 2, color.mix(0.7).filled())),
            )?;
        }
        label_fault_windows(&mut chart, windows)?;
        Ok(())
    })?;
    let events: usize = watchers.iter().map(|(_, points)| points.len()).sum();
    // Points of one watcher may hide under another's: the caption gives each one's longest lag.
    let longest: Vec<String> = watchers
        .iter()
        .map(|(name, points)| {
            let worst = points.iter().map(|&(_, lag)| lag).fold(0.0, f64::max);
            format!("{name}: {worst:.0} ms")
        })
        .collect();
    let caption = format!(
        "each watcher's lag behind the acknowledged writes ({} watchers, {events} events; the longest per watcher: {})",
        watchers.len(),
        longest.join(", ")
    );
    Ok(Some((Chart { caption, svg }, legend)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lag_is_measured_from_each_writes_acknowledgement() {
        // n1 gets rev 2 3 ms after its ok and rev 4 12 ms after; n2 gets only rev 2, before the writer saw the
        // ok (so 0, not a negative or wrapped lag). Rev 3 was never acknowledged (indeterminate): no lag.
        let history = History::parse(
            r#"{"process":10,"type":"invoke","f":"watch","key":"watch","value":{"node":"n1","from":2},"time":0}
{"process":11,"type":"invoke","f":"watch","key":"watch","value":{"node":"n2","from":2},"time":0}
{"process":1,"type":"invoke","f":"write","key":"k0","value":1,"time":1000000}
{"process":1,"type":"ok","f":"write","key":"k0","value":1,"time":2000000,"revision":2}
{"process":2,"type":"invoke","f":"write","key":"k1","value":2,"time":3000000}
{"process":2,"type":"info","f":"write","key":"k1","value":2,"time":4000000,"error":"indeterminate"}
{"process":1,"type":"invoke","f":"write","key":"k0","value":3,"time":5000000}
{"process":1,"type":"ok","f":"write","key":"k0","value":3,"time":6000000,"revision":4}
{"process":10,"type":"ok","f":"watch","key":"watch","value":{"from":2,"through":4,"events":[["k0",1,2,5000000],["k1",2,3,5500000],["k0",3,4,18000000]]},"time":19000000,"final":true}
{"process":11,"type":"ok","f":"watch","key":"watch","value":{"from":2,"through":2,"events":[["k0",1,2,1000000]]},"time":19000000,"final":true}"#,
        )
        .expect("a valid history");
        let (chart, legend) = watch_lag_chart(&history, &TimeAxis::of(&history), &[])
            .expect("drawn")
            .expect("events carry when they were seen");
        assert_eq!(
            chart.caption,
            "each watcher's lag behind the acknowledged writes (2 watchers, 3 events; the longest per watcher: watcher starting on n1: 12 ms, watcher starting on n2: 0 ms)"
        );
        assert_eq!(legend.len(), 2);
        // Events without the time they were seen (a history from before it was recorded): no chart.
        let older = History::parse(
            r#"{"process":10,"type":"invoke","f":"watch","key":"watch","value":{"node":"n1","from":2},"time":0}
{"process":1,"type":"invoke","f":"write","key":"k0","value":1,"time":1}
{"process":1,"type":"ok","f":"write","key":"k0","value":1,"time":2,"revision":2}
{"process":10,"type":"ok","f":"watch","key":"watch","value":{"from":2,"through":2,"events":[["k0",1,2]]},"time":3,"final":true}"#,
        )
        .expect("a valid history");
        assert!(watch_lag_chart(&older, &TimeAxis::of(&older), &[])
            .expect("no error")
            .is_none());
    }

    #[test]
    fn fair_shares_keep_small_series_whole() {
        // 10 fail and 30 info points survive; the two big series split the rest.
        assert_eq!(
            fair_shares(&[1000, 10, 30, 5000], 440),
            vec![200, 10, 30, 200]
        );
        assert_eq!(fair_shares(&[3, 4], 100), vec![3, 4]);
        assert_eq!(fair_shares(&[], 100), Vec::<usize>::new());
        let shares = fair_shares(&[7, 7, 7], 10);
        assert!(shares.iter().sum::<usize>() <= 10, "{shares:?}");
    }

    #[test]
    fn outcome_slots_follow_the_drawing_order() {
        // Series are indexed by slot and drawn in ALL order: the two must agree.
        for (position, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.slot(), position, "{}", outcome.name());
        }
    }

    #[test]
    fn thinning_keeps_the_ends_spread() {
        // Every fourth point of 0..100, starting at the first.
        let points: Vec<u32> = (0..100).collect();
        let kept = thin_evenly(&points, 25);
        assert_eq!(kept.len(), 25);
        assert_eq!((kept[0], kept[1], kept[24]), (0, 4, 96));
        assert_eq!(thin_evenly(&points, 500).len(), 100);
    }
}
