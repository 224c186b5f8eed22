//! The history: what clients saw, one JSON object per line (docs/design.md, "History format"), and its parsed form.
//!
//! This module owns the wire format of `history.jsonl` in both directions. Writers (the harness) build an [`Event`]
//! per invoke or completion and serialize it with [`Event::to_line`]; readers call [`History::parse`] (or
//! [`History::read_file`]), which validates every line, pairs each completion with the open invoke of the same
//! process and yields one [`Operation`] per invoke. Events whose `process` is not an integer (`"nemesis"`,
//! `"observer"`) are not client operations: they are kept verbatim as [`RawEvent`]s for the report and for the
//! checkers that read them (split brain), never paired. Extra fields on client events (`node`, `envelope`,
//! `revision`, ...) are kept on the operation. A malformed history is rejected with an error naming the line,
//! because a checker that guesses what a broken history meant can only lie.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The register a keyless event addresses: histories of a single register may omit `key`.
pub const DEFAULT_KEY: &str = "default";

/// Longest line accepted, in bytes. A longer line is rejected rather than buffered: histories hold small values,
/// and a runaway line means a broken writer.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Field names that the format itself defines; every other field of a client event is an extra.
const FORMAT_FIELDS: [&str; 6] = ["process", "type", "f", "key", "value", "time"];

/// What an event says happened to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client is about to send the operation.
    Invoke,
    /// The operation happened, with this result.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// Indeterminate: the operation may take effect at any point after its invoke, or never.
    Info,
}

impl EventType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "invoke" => Some(Self::Invoke),
            "ok" => Some(Self::Ok),
            "fail" => Some(Self::Fail),
            "info" => Some(Self::Info),
            _ => None,
        }
    }
}

/// The operation an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Read a register (value: null on invoke, the value read on `ok`) or a set (an array of elements).
    Read,
    /// Write a register.
    Write,
    /// Compare-and-set a register; the value is `[expected, new]` (expected null = "must be absent").
    Cas,
    /// Add an element to a set.
    Add,
    /// Move an amount between two bank accounts; the value is `{"from", "to", "amount"}`.
    Transfer,
    /// Take the lock; an `ok` value is `{"token", "lease"}` (the token: the holder key's create revision).
    Acquire,
    /// Give the lock up; the value is the hold's `{"token", "lease"}`.
    Release,
    /// A watcher's whole life: invoked when it starts (`{"node", "from"}`), completed when it stops with every
    /// event it saw (`{"from", "through", "events": [[key, value, revision, seen], ...]}`, `seen` optional: when
    /// the watcher got the event).
    Watch,
}

impl Function {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "cas" => Some(Self::Cas),
            "add" => Some(Self::Add),
            "transfer" => Some(Self::Transfer),
            "acquire" => Some(Self::Acquire),
            "release" => Some(Self::Release),
            "watch" => Some(Self::Watch),
            _ => None,
        }
    }

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Cas => "cas",
            Self::Add => "add",
            Self::Transfer => "transfer",
            Self::Acquire => "acquire",
            Self::Release => "release",
            Self::Watch => "watch",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One client event as written to `history.jsonl`: what writers build, one per invoke and one per completion.
///
/// Nemesis and observation events are not `Event`s (their `process` is a name); writers serialize them as plain
/// JSON objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The client process; it has at most one operation open at a time.
    pub process: u64,
    /// Invoke or completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation.
    pub f: Function,
    /// The register or set; absent means [`DEFAULT_KEY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Argument on invoke, result on `ok` (null on a read's invoke).
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds on the harness's one monotonic clock.
    pub time: u64,
    /// Everything else (`node`, `envelope`, `revision`, ...), written and read back verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Event {
    /// The event as one line of JSONL, without the trailing newline.
    pub fn to_line(&self) -> String {
        // An Event holds only JSON-representable data (string keys, finite numbers from serde_json values), so
        // serialization cannot fail.
        serde_json::to_string(self).expect("an Event always serializes")
    }
}

/// How an operation ended, as far as the history knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Completed with `ok`: it happened.
    Ok,
    /// Completed with `fail`: it did not happen.
    Fail,
    /// Completed with `info`: indeterminate.
    Info,
    /// Never completed: indeterminate.
    Pending,
}

impl Status {
    /// True when the operation may or may not have taken effect (`info` or never completed).
    pub fn is_indeterminate(self) -> bool {
        matches!(self, Self::Info | Self::Pending)
    }
}

/// One client operation: an invoke and, if the history has one, its completion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Operation {
    /// Position in [`History::operations`] (operations are numbered in the order of their invokes).
    pub index: usize,
    /// The client process.
    pub process: u64,
    /// The operation.
    pub f: Function,
    /// The register or set.
    pub key: String,
    /// The invoke's value: the argument (null for a read).
    pub input: Value,
    /// The `ok` completion's value (the value read); `None` unless the operation completed with `ok`.
    pub output: Option<Value>,
    /// When the client invoked it.
    pub invoke_time: u64,
    /// When the client saw the `ok` or `fail`; `None` for indeterminate operations (`info` or never completed),
    /// whose effect may come at any time after the invoke.
    pub complete_time: Option<u64>,
    /// When the client saw any completion, `info` included: what latency plots use. `None` if never completed.
    pub end_time: Option<u64>,
    /// How it ended.
    pub status: Status,
    /// 1-based line of the invoke.
    pub invoke_line: usize,
    /// 1-based line of the completion, if any.
    pub complete_line: Option<usize>,
    /// Extra fields of the invoke and of the completion (the completion's win on a clash).
    pub extra: Map<String, Value>,
}

impl Operation {
    /// For a `cas`: the expected and the new value.
    pub fn cas_values(&self) -> Option<(&Value, &Value)> {
        match (&self.f, &self.input) {
            (Function::Cas, Value::Array(pair)) if pair.len() == 2 => Some((&pair[0], &pair[1])),
            _ => None,
        }
    }

    /// A short human-readable description: `p3 cas k1 [1,2] ok`.
    pub fn describe(&self) -> String {
        let result = match (&self.status, &self.output) {
            (Status::Ok, Some(value)) if self.f == Function::Read => format!("-> {value}"),
            (status, _) => format!("{status:?}").to_lowercase(),
        };
        let argument = if self.f == Function::Read {
            String::new()
        } else {
            format!(" {}", self.input)
        };
        format!(
            "op {} (process {} {} {}{} {})",
            self.index, self.process, self.f, self.key, argument, result
        )
    }
}

/// An event that is not a client operation (nemesis, observation), kept verbatim.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RawEvent {
    /// 1-based line.
    pub line: usize,
    /// The whole JSON object.
    pub value: Map<String, Value>,
}

/// A parsed, paired history.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct History {
    /// Client operations in the order of their invokes.
    pub operations: Vec<Operation>,
    /// Nemesis and observation events, in file order.
    pub other_events: Vec<RawEvent>,
}

/// Why a history was rejected. Every variant names the 1-based line at fault.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read history {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: longer than {LINE_BYTES_MAX} bytes")]
    LineTooLong { line: usize },
    #[error("line {line}: not valid JSON: {source}")]
    Json {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: expected a JSON object")]
    NotAnObject { line: usize },
    #[error("line {line}: missing field `{field}`")]
    MissingField { line: usize, field: &'static str },
    #[error("line {line}: field `{field}` {problem}")]
    BadField {
        line: usize,
        field: &'static str,
        problem: String,
    },
    #[error("line {line}: unknown type `{found}` (expected invoke, ok, fail or info)")]
    UnknownType { line: usize, found: String },
    #[error("line {line}: unknown f `{found}` (expected read, write, cas or add)")]
    UnknownFunction { line: usize, found: String },
    #[error("line {line}: process {process} invokes while its operation from line {open_line} is still open")]
    DoubleInvoke {
        line: usize,
        process: u64,
        open_line: usize,
    },
    #[error("line {line}: completion for process {process}, which has no open invoke")]
    OrphanCompletion { line: usize, process: u64 },
    #[error("line {line}: completion f `{found}` differs from the invoke's `{expected}` on line {invoke_line}")]
    FunctionMismatch {
        line: usize,
        found: Function,
        expected: Function,
        invoke_line: usize,
    },
    #[error("line {line}: completion key `{found}` differs from the invoke's `{expected}` on line {invoke_line}")]
    KeyMismatch {
        line: usize,
        found: String,
        expected: String,
        invoke_line: usize,
    },
    #[error("line {line}: completion time {time} is before its invoke's time {invoke_time} (line {invoke_line})")]
    TimeBeforeInvoke {
        line: usize,
        time: u64,
        invoke_time: u64,
        invoke_line: usize,
    },
}

impl History {
    /// Reads and parses a JSONL history file.
    pub fn read_file(path: &Path) -> Result<Self, HistoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses JSONL text: validates every line and pairs completions with invokes. Blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, HistoryError> {
        let mut history = History::default();
        // process -> index of its open operation
        let mut open: HashMap<u64, usize> = HashMap::new();
        for (line_index, line_text) in text.lines().enumerate() {
            let line = line_index + 1;
            if line_text.trim().is_empty() {
                continue;
            }
            if line_text.len() > LINE_BYTES_MAX {
                return Err(HistoryError::LineTooLong { line });
            }
            let value: Value = serde_json::from_str(line_text)
                .map_err(|source| HistoryError::Json { line, source })?;
            let Value::Object(object) = value else {
                return Err(HistoryError::NotAnObject { line });
            };
            match object.get("process") {
                None => {
                    return Err(HistoryError::MissingField {
                        line,
                        field: "process",
                    })
                }
                Some(Value::Number(number)) => {
                    let Some(process) = number.as_u64() else {
                        return Err(HistoryError::BadField {
                            line,
                            field: "process",
                            problem: format!(
                                "must be a non-negative integer or a name, found {number}"
                            ),
                        });
                    };
                    let event = ClientEvent::from_object(line, process, object)?;
                    history.apply(event, &mut open)?;
                }
                Some(_) => history.other_events.push(RawEvent {
                    line,
                    value: object,
                }),
            }
        }
        // Invokes never completed stay Pending, which is how they were created.
        Ok(history)
    }

    fn apply(
        &mut self,
        event: ClientEvent,
        open: &mut HashMap<u64, usize>,
    ) -> Result<(), HistoryError> {
        let line = event.line;
        if event.kind == EventType::Invoke {
            if let Some(&open_index) = open.get(&event.process) {
                let open_line = self.operations[open_index].invoke_line;
                return Err(HistoryError::DoubleInvoke {
                    line,
                    process: event.process,
                    open_line,
                });
            }
            let index = self.operations.len();
            if event.f == Function::Cas
                && !matches!(&event.value, Value::Array(pair) if pair.len() == 2)
            {
                return Err(HistoryError::BadField {
                    line,
                    field: "value",
                    problem: format!("of a cas must be [expected, new], found {}", event.value),
                });
            }
            self.operations.push(Operation {
                index,
                process: event.process,
                f: event.f,
                key: event.key.unwrap_or_else(|| DEFAULT_KEY.to_string()),
                input: event.value,
                output: None,
                invoke_time: event.time,
                complete_time: None,
                end_time: None,
                status: Status::Pending,
                invoke_line: line,
                complete_line: None,
                extra: event.extra,
            });
            open.insert(event.process, index);
            return Ok(());
        }
        let Some(index) = open.remove(&event.process) else {
            return Err(HistoryError::OrphanCompletion {
                line,
                process: event.process,
            });
        };
        let operation = &mut self.operations[index];
        let invoke_line = operation.invoke_line;
        if event.f != operation.f {
            return Err(HistoryError::FunctionMismatch {
                line,
                found: event.f,
                expected: operation.f,
                invoke_line,
            });
        }
        if let Some(key) = event.key {
            if key != operation.key {
                return Err(HistoryError::KeyMismatch {
                    line,
                    found: key,
                    expected: operation.key.clone(),
                    invoke_line,
                });
            }
        }
        if event.time < operation.invoke_time {
            return Err(HistoryError::TimeBeforeInvoke {
                line,
                time: event.time,
                invoke_time: operation.invoke_time,
                invoke_line,
            });
        }
        operation.complete_line = Some(line);
        operation.end_time = Some(event.time);
        operation.extra.extend(event.extra);
        match event.kind {
            EventType::Ok => {
                operation.status = Status::Ok;
                operation.output = Some(event.value);
                operation.complete_time = Some(event.time);
            }
            EventType::Fail => {
                operation.status = Status::Fail;
                operation.complete_time = Some(event.time);
            }
            EventType::Info => operation.status = Status::Info,
            EventType::Invoke => unreachable!("invokes are handled above"),
        }
        Ok(())
    }

    /// Serializes events as JSONL text, one line each, each ending in a newline.
    pub fn events_to_jsonl(events: &[Event]) -> String {
        let mut text = String::new();
        for event in events {
            text.push_str(&event.to_line());
            text.push('\n');
        }
        text
    }
}

/// A validated client event, before pairing.
struct ClientEvent {
    line: usize,
    process: u64,
    kind: EventType,
    f: Function,
    key: Option<String>,
    value: Value,
    time: u64,
    extra: Map<String, Value>,
}

impl ClientEvent {
    fn from_object(
        line: usize,
        process: u64,
        mut object: Map<String, Value>,
    ) -> Result<Self, HistoryError> {
        let kind = match object.get("type") {
            None => {
                return Err(HistoryError::MissingField {
                    line,
                    field: "type",
                })
            }
            Some(Value::String(text)) => {
                EventType::parse(text).ok_or_else(|| HistoryError::UnknownType {
                    line,
                    found: text.clone(),
                })?
            }
            Some(other) => {
                return Err(HistoryError::UnknownType {
                    line,
                    found: other.to_string(),
                })
            }
        };
        let f = match object.get("f") {
            None => return Err(HistoryError::MissingField { line, field: "f" }),
            Some(Value::String(text)) => {
                Function::parse(text).ok_or_else(|| HistoryError::UnknownFunction {
                    line,
                    found: text.clone(),
                })?
            }
            Some(other) => {
                return Err(HistoryError::UnknownFunction {
                    line,
                    found: other.to_string(),
                })
            }
        };
        let key = match object.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => {
                return Err(HistoryError::BadField {
                    line,
                    field: "key",
                    problem: format!("must be a string, found {other}"),
                })
            }
        };
        let time = match object.get("time") {
            None => {
                return Err(HistoryError::MissingField {
                    line,
                    field: "time",
                })
            }
            Some(value) => value.as_u64().ok_or_else(|| HistoryError::BadField {
                line,
                field: "time",
                problem: format!("must be a non-negative integer (nanoseconds), found {value}"),
            })?,
        };
        let value = object.remove("value").unwrap_or(Value::Null);
        for field in FORMAT_FIELDS {
            object.remove(field);
        }
        Ok(Self {
            line,
            process,
            kind,
            f,
            key,
            value,
            time,
            extra: object,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` and returns the error, panicking if the history was accepted.
    fn parse_error(text: &str) -> HistoryError {
        match History::parse(text) {
            Ok(history) => panic!("accepted a malformed history: {history:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn pairs_completions_and_keeps_extras_and_nemesis_events() {
        // A write, a read that completes with an envelope, a nemesis event and a pending cas.
        let text = r#"
{"process":1,"type":"invoke","f":"write","key":"k","value":3,"time":10}
{"process":"nemesis","type":"info","f":"partition","value":"halves","time":11}
{"process":2,"type":"invoke","f":"read","value":null,"time":12}
{"process":1,"type":"ok","f":"write","key":"k","value":3,"time":13,"revision":7}
{"process":2,"type":"ok","f":"read","value":3,"time":14,"envelope":{"applied_index":7}}
{"process":1,"type":"invoke","f":"cas","key":"k","value":[3,4],"time":15}
"#;
        let history = History::parse(text).unwrap();
        assert_eq!(history.operations.len(), 3);
        assert_eq!(history.other_events.len(), 1);
        assert_eq!(history.other_events[0].line, 3);
        let write = &history.operations[0];
        assert_eq!(
            (write.status, write.complete_time, write.complete_line),
            (Status::Ok, Some(13), Some(5))
        );
        assert_eq!(write.extra["revision"], 7);
        let read = &history.operations[1];
        assert_eq!(
            (read.key.as_str(), read.output.clone()),
            (DEFAULT_KEY, Some(Value::from(3)))
        );
        assert_eq!(read.extra["envelope"]["applied_index"], 7);
        let cas = &history.operations[2];
        assert_eq!((cas.status, cas.complete_time), (Status::Pending, None));
        assert_eq!(cas.cas_values(), Some((&Value::from(3), &Value::from(4))));
    }

    #[test]
    fn info_and_fail_completions() {
        // info leaves the completion time open; fail records it and no output.
        let text = r#"{"process":1,"type":"invoke","f":"write","value":1,"time":1}
{"process":1,"type":"info","f":"write","value":1,"time":2}
{"process":2,"type":"invoke","f":"write","value":2,"time":3}
{"process":2,"type":"fail","f":"write","value":2,"time":4}"#;
        let history = History::parse(text).unwrap();
        let info = &history.operations[0];
        assert_eq!(
            (info.status, info.complete_time, info.output.clone()),
            (Status::Info, None, None)
        );
        let fail = &history.operations[1];
        assert_eq!(
            (fail.status, fail.complete_time, fail.output.clone()),
            (Status::Fail, Some(4), None)
        );
    }

    #[test]
    fn rejects_malformed_histories_naming_the_line() {
        // Each malformed shape maps to its own error variant, on the right line.
        let double = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n\
                      {\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":2}";
        assert!(matches!(
            parse_error(double),
            HistoryError::DoubleInvoke {
                line: 2,
                process: 1,
                open_line: 1
            }
        ));
        let orphan = r#"{"process":4,"type":"ok","f":"read","value":1,"time":1}"#;
        assert!(matches!(
            parse_error(orphan),
            HistoryError::OrphanCompletion {
                line: 1,
                process: 4
            }
        ));
        let mismatch = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n\
                        {\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"value\":1,\"time\":2}";
        assert!(matches!(
            parse_error(mismatch),
            HistoryError::FunctionMismatch { line: 2, .. }
        ));
        let unknown_type = r#"{"process":1,"type":"started","f":"read","time":1}"#;
        assert!(matches!(
            parse_error(unknown_type),
            HistoryError::UnknownType { line: 1, .. }
        ));
        let unknown_f = r#"{"process":1,"type":"invoke","f":"scan","time":1}"#;
        assert!(matches!(
            parse_error(unknown_f),
            HistoryError::UnknownFunction { line: 1, .. }
        ));
        let bad_cas = r#"{"process":1,"type":"invoke","f":"cas","value":[1],"time":1}"#;
        assert!(matches!(
            parse_error(bad_cas),
            HistoryError::BadField {
                line: 1,
                field: "value",
                ..
            }
        ));
        let backwards = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":5}\n\
                         {\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"value\":1,\"time\":4}";
        assert!(matches!(
            parse_error(backwards),
            HistoryError::TimeBeforeInvoke { line: 2, .. }
        ));
        assert!(matches!(
            parse_error("[1,2]"),
            HistoryError::NotAnObject { line: 1 }
        ));
        assert!(matches!(
            parse_error("{\"process\":1,"),
            HistoryError::Json { line: 1, .. }
        ));
        let no_time = r#"{"process":1,"type":"invoke","f":"read"}"#;
        assert!(matches!(
            parse_error(no_time),
            HistoryError::MissingField {
                line: 1,
                field: "time"
            }
        ));
        let negative = r#"{"process":-1,"type":"invoke","f":"read","time":1}"#;
        assert!(matches!(
            parse_error(negative),
            HistoryError::BadField {
                line: 1,
                field: "process",
                ..
            }
        ));
        let message = parse_error(double).to_string();
        assert!(message.starts_with("line 2:"), "{message}");
    }

    #[test]
    fn events_round_trip_through_jsonl() {
        // What a writer serializes, the parser reads back, extras included.
        let mut extra = Map::new();
        extra.insert("node".to_string(), Value::from(2));
        let events = vec![
            Event {
                process: 0,
                kind: EventType::Invoke,
                f: Function::Cas,
                key: Some("k9".into()),
                value: serde_json::json!([null, "a"]),
                time: 100,
                extra: Map::new(),
            },
            Event {
                process: 0,
                kind: EventType::Ok,
                f: Function::Cas,
                key: Some("k9".into()),
                value: serde_json::json!([null, "a"]),
                time: 250,
                extra,
            },
        ];
        let text = History::events_to_jsonl(&events);
        let reparsed: Vec<Event> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(reparsed, events);
        let history = History::parse(&text).unwrap();
        let operation = &history.operations[0];
        assert_eq!(
            (operation.status, operation.complete_time),
            (Status::Ok, Some(250))
        );
        assert_eq!(operation.extra["node"], 2);
    }
}
