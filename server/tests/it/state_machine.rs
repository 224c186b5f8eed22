//! Data-driven state-machine tests: each file under `server/testdata/state_machine/` is a script of
//! commands, each block followed by `----` and the output it must give. Run with `UPDATE_TESTDATA=1` to
//! rewrite the expected output after a deliberate change, then review the diff.
//!
//! Commands (every write is one log entry; revisions count up from 1):
//! `put KEY VALUE [session=ID:SEQ]`, `delete KEY [session=..]`, `cas KEY value=OLD|revision=N|absent NEW
//! [session=..]`, `get KEY`, `scan prefix=P [limit=N]`, `scan start=A [end=B] [limit=N]`,
//! `fill-sessions FIRST COUNT` (one put each from sessions FIRST.., keys `fill/ID`), `sessions`,
//! `snapshot-roundtrip` (encode, decode, compare, continue on the decoded copy).

use std::fmt::Write as _;
use std::path::Path;

use raftkv_server::kv::state_machine::{
    Command, Expected, KeyValue, Request, Response, ScanRange, SessionRef, StateMachine,
};

fn show_kv(kv: &KeyValue) -> String {
    format!(
        "{}={} (create={} mod={} version={})",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    )
}

fn show_response(response: &Response) -> String {
    match response {
        Response::Put { revision } => format!("put revision={revision}"),
        Response::Delete { revision, deleted } => {
            format!("delete revision={revision} deleted={deleted}")
        }
        Response::Cas {
            revision,
            swapped,
            current,
        } => format!(
            "cas revision={revision} swapped={swapped} current={}",
            current.as_ref().map_or("<absent>".to_string(), show_kv)
        ),
        Response::Rejected(rejection) => format!("rejected {rejection:?}"),
    }
}

struct Script {
    state: StateMachine,
    revision: u64,
}

impl Script {
    fn write(&mut self, session: Option<SessionRef>, command: Command) -> String {
        self.revision += 1;
        show_response(
            &self
                .state
                .apply(self.revision, &Request { session, command }),
        )
    }

    fn run(&mut self, line: &str) -> String {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let session = match words.last().and_then(|word| word.strip_prefix("session=")) {
            Some(spec) => {
                let (id, sequence) = spec.split_once(':').expect("session=ID:SEQ");
                words.pop();
                Some(SessionRef {
                    client_id: id.parse().unwrap(),
                    sequence: sequence.parse().unwrap(),
                })
            }
            None => None,
        };
        let arg = |index: usize| -> Vec<u8> {
            words
                .get(index)
                .map(|word| word.as_bytes().to_vec())
                .unwrap_or_default()
        };
        match words[0] {
            "put" => self.write(
                session,
                Command::Put {
                    key: arg(1),
                    value: arg(2),
                },
            ),
            "delete" => self.write(session, Command::Delete { key: arg(1) }),
            "cas" => {
                let expected = match words[2].split_once('=') {
                    Some(("value", old)) => Expected::Value(old.as_bytes().to_vec()),
                    Some(("revision", revision)) => Expected::Revision(revision.parse().unwrap()),
                    None if words[2] == "absent" => Expected::Absent,
                    _ => panic!("bad cas expectation in {line:?}"),
                };
                self.write(
                    session,
                    Command::Cas {
                        key: arg(1),
                        expected,
                        value: arg(3),
                    },
                )
            }
            "get" => format!(
                "get {}",
                self.state
                    .get(&arg(1))
                    .as_ref()
                    .map_or("<absent>".to_string(), show_kv)
            ),
            "scan" => {
                let mut prefix = None;
                let (mut start, mut end, mut limit) = (Vec::new(), None, 100);
                for word in &words[1..] {
                    match word.split_once('=') {
                        Some(("prefix", value)) => prefix = Some(value.as_bytes().to_vec()),
                        Some(("start", value)) => start = value.as_bytes().to_vec(),
                        Some(("end", value)) => end = Some(value.as_bytes().to_vec()),
                        Some(("limit", value)) => limit = value.parse().unwrap(),
                        _ => panic!("bad scan argument {word:?}"),
                    }
                }
                let range = match prefix {
                    Some(prefix) => ScanRange::Prefix(prefix),
                    None => ScanRange::Range { start, end },
                };
                let result = self.state.scan(&range, limit);
                let mut out = format!("scan {} keys more={}", result.kvs.len(), result.more);
                for kv in &result.kvs {
                    write!(out, "\n  {}", show_kv(kv)).unwrap();
                }
                out
            }
            "fill-sessions" => {
                let first: u64 = words[1].parse().unwrap();
                let count: u64 = words[2].parse().unwrap();
                for id in first..first + count {
                    let session = Some(SessionRef {
                        client_id: id,
                        sequence: 1,
                    });
                    self.write(
                        session,
                        Command::Put {
                            key: format!("fill/{id}").into_bytes(),
                            value: b"x".to_vec(),
                        },
                    );
                }
                format!("filled {count} sessions")
            }
            "sessions" => format!("sessions {}", self.state.session_count()),
            "snapshot-roundtrip" => {
                let decoded = StateMachine::decode(&self.state.encode()).expect("decode snapshot");
                assert_eq!(decoded, self.state, "snapshot round trip changed the state");
                self.state = decoded;
                format!(
                    "snapshot ok keys={} sessions={}",
                    self.state.len(),
                    self.state.session_count()
                )
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Runs one script and returns the text it should have.
fn check(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut script = Script {
        state: StateMachine::default(),
        revision: 0,
    };
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut commands = vec![line.to_string()];
        for next in lines.by_ref() {
            out.push_str(next);
            out.push('\n');
            if next == "----" {
                break;
            }
            commands.push(next.to_string());
        }
        // Skip the old expected output up to the blank line.
        for next in lines.by_ref() {
            if next.trim().is_empty() {
                break;
            }
        }
        for command in commands {
            out.push_str(&script.run(&command));
            out.push('\n');
        }
        out.push('\n');
    }
    (text, out)
}

/// Every state-machine script gives the output written under it.
#[test]
fn state_machine_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/state_machine");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    for file in files {
        let (expected, actual) = check(&file);
        if std::env::var_os("UPDATE_TESTDATA").is_some() {
            std::fs::write(&file, &actual).unwrap();
        } else {
            assert_eq!(
                expected.trim_end(),
                actual.trim_end(),
                "{} gives other output (UPDATE_TESTDATA=1 to rewrite)",
                file.display()
            );
        }
    }
}
