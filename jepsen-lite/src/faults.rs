//! Fault windows: when each nemesis fault was active, read from the nemesis events of a history. The one reading
//! of nemesis events, shared by the availability figures and the report.
//!
//! The harness writes `{"process":"nemesis","type":"info","f":"start","fault":F,"value":V,"time":N}` when it
//! injects fault F and `{"process":"nemesis","type":"info","f":"stop","fault":F,"time":N}` when it heals it. A
//! window is a start paired with the next stop of the same fault; a start never stopped lasts to the end of the
//! history. A second start of a fault that is still open closes the first window there and opens a new one (the
//! fault changed shape, e.g. a new partition), so windows of one fault never overlap. A stop with no open start,
//! and nemesis events without a `time` or a `fault`, are ignored: the report shows what it can.

use serde_json::Value;

use crate::history::History;

/// The `process` of nemesis events.
pub const NEMESIS_PROCESS: &str = "nemesis";

/// One interval during which a fault was active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    /// The fault's name (`partition-halves`, `kill`, ...).
    pub fault: String,
    /// What the start event said about it (`"1,2 | 3,4,5"`), if anything.
    pub description: Option<String>,
    /// Nanoseconds since the run started.
    pub start_ns: u64,
    /// Nanoseconds since the run started; the end of the history if the fault was never stopped.
    pub end_ns: u64,
    /// True when no stop was seen.
    pub never_stopped: bool,
}

/// The fault windows of `history`, by start time; windows never stopped end at `history_end_ns`.
pub fn fault_windows(history: &History, history_end_ns: u64) -> Vec<FaultWindow> {
    let mut windows = Vec::new();
    // Open windows, at most one per fault name (few faults exist, so a Vec is enough).
    let mut open: Vec<FaultWindow> = Vec::new();
    for event in &history.other_events {
        let fields = &event.value;
        if fields.get("process").and_then(Value::as_str) != Some(NEMESIS_PROCESS) {
            continue;
        }
        let (Some(fault), Some(time)) = (
            fields.get("fault").and_then(Value::as_str),
            fields.get("time").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let position = open.iter().position(|window| window.fault == fault);
        match fields.get("f").and_then(Value::as_str) {
            Some("start") => {
                if let Some(position) = position {
                    let mut previous = open.swap_remove(position);
                    previous.end_ns = time.max(previous.start_ns);
                    windows.push(previous);
                }
                let description = match fields.get("value") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(text)) => Some(text.clone()),
                    Some(other) => Some(other.to_string()),
                };
                open.push(FaultWindow {
                    fault: fault.to_string(),
                    description,
                    start_ns: time,
                    end_ns: time,
                    never_stopped: false,
                });
            }
            Some("stop") => {
                if let Some(position) = position {
                    let mut window = open.swap_remove(position);
                    window.end_ns = time.max(window.start_ns);
                    windows.push(window);
                }
            }
            _ => {}
        }
    }
    for mut window in open {
        window.end_ns = history_end_ns.max(window.start_ns);
        window.never_stopped = true;
        windows.push(window);
    }
    windows.sort_by_key(|window| (window.start_ns, window.end_ns));
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows_of(text: &str, end_ns: u64) -> Vec<FaultWindow> {
        fault_windows(&History::parse(text).unwrap(), end_ns)
    }

    #[test]
    fn pairs_starts_with_the_next_stop_of_the_same_fault() {
        // Two back-to-back windows, a stray stop, and a start never stopped that runs to the end.
        let text = r#"
{"process":"nemesis","type":"info","f":"start","fault":"partition-halves","value":"1,2 | 3","time":10}
{"process":"nemesis","type":"info","f":"stop","fault":"partition-halves","time":20}
{"process":"nemesis","type":"info","f":"stop","fault":"kill","time":21}
{"process":"nemesis","type":"info","f":"start","fault":"kill","value":"2","time":20}
{"process":"nemesis","type":"info","f":"stop","fault":"kill","time":30}
{"process":"nemesis","type":"info","f":"start","fault":"pause","time":40}
"#;
        let windows = windows_of(text, 100);
        let summary: Vec<_> = windows
            .iter()
            .map(|w| (w.fault.as_str(), w.start_ns, w.end_ns, w.never_stopped))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("partition-halves", 10, 20, false),
                ("kill", 20, 30, false),
                ("pause", 40, 100, true),
            ]
        );
        assert_eq!(windows[0].description.as_deref(), Some("1,2 | 3"));
        assert_eq!(windows[2].description, None);
    }

    #[test]
    fn a_repeated_start_closes_the_open_window() {
        // The fault changed shape: two windows, not one swallowing the other.
        let text = r#"
{"process":"nemesis","type":"info","f":"start","fault":"partition-ring","value":"a","time":5}
{"process":"nemesis","type":"info","f":"start","fault":"partition-ring","value":"b","time":8}
{"process":"nemesis","type":"info","f":"stop","fault":"partition-ring","time":12}
"#;
        let windows = windows_of(text, 50);
        let spans: Vec<_> = windows.iter().map(|w| (w.start_ns, w.end_ns)).collect();
        assert_eq!(spans, vec![(5, 8), (8, 12)]);
    }
}
