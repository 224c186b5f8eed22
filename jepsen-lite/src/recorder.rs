//! The recorder: the one writer of `history.jsonl` during a run, and the run's clock.
//!
//! Every event (client invoke and completion, nemesis, observation) is stamped and written under one lock, so
//! the file is in real-time order by construction: an event's `time` is read after every earlier line was
//! written. Times are nanoseconds since the recorder was created (the start of the run), from a monotonic clock.
//! Lines go to a buffered file; [`Recorder::finish`] flushes it and hands back the path.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Map, Value};

use crate::history::{Event, EventType, Function};

pub use crate::faults::NEMESIS_PROCESS;

struct Sink {
    writer: BufWriter<File>,
    /// The first write error, reported by `finish` (a run must not pass on a history it failed to write).
    error: Option<std::io::Error>,
    lines: u64,
}

/// The history writer and clock of one run. Shared by reference between tasks.
pub struct Recorder {
    started: Instant,
    path: PathBuf,
    sink: Mutex<Sink>,
}

impl Recorder {
    /// Creates (truncates) the history file; the run's clock starts now.
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Recorder {
            started: Instant::now(),
            path: path.to_path_buf(),
            sink: Mutex::new(Sink {
                writer: BufWriter::new(file),
                error: None,
                lines: 0,
            }),
        })
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes one line built by `line(time)`, where `time` is taken under the lock; returns that time.
    fn write(&self, line: impl FnOnce(u64) -> String) -> u64 {
        let mut sink = self
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let time = self.started.elapsed().as_nanos() as u64;
        let text = line(time);
        if sink.error.is_none() {
            if let Err(error) = writeln!(sink.writer, "{text}") {
                sink.error = Some(error);
            }
        }
        sink.lines += 1;
        time
    }

    /// Records a client event and returns its time.
    pub fn client(
        &self,
        process: u64,
        kind: EventType,
        f: Function,
        key: Option<&str>,
        value: Value,
        extra: Map<String, Value>,
    ) -> u64 {
        self.write(|time| {
            Event {
                process,
                kind,
                f,
                key: key.map(str::to_string),
                value,
                time,
                extra,
            }
            .to_line()
        })
    }

    /// Records a nemesis event: `f` is `start` or `stop`.
    pub fn nemesis(&self, f: &str, fault: &str, value: Value) -> u64 {
        self.write(|time| {
            serde_json::json!({
                "process": NEMESIS_PROCESS,
                "type": "info",
                "f": f,
                "fault": fault,
                "value": value,
                "time": time,
            })
            .to_string()
        })
    }

    /// Records a non-client event given as a JSON object; its `time` field is set here.
    pub fn raw(&self, mut object: Map<String, Value>) -> u64 {
        self.write(|time| {
            object.insert("time".to_string(), Value::from(time));
            Value::Object(object).to_string()
        })
    }

    /// Flushes the file; fails if any line could not be written.
    pub fn finish(&self) -> anyhow::Result<(PathBuf, u64)> {
        let mut sink = self
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(error) = sink.error.take() {
            return Err(error).with_context(|| format!("cannot write {}", self.path.display()));
        }
        sink.writer
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok((self.path.clone(), sink.lines))
    }
}
