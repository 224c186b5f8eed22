//! Data-driven state-machine tests, run on the real keyspace in sled: each file under
//! `server/testdata/state_machine/` is a script of commands, each block followed by `----` and the output it
//! must give. Run with `UPDATE_TESTDATA=1` to rewrite the expected output after a deliberate change, then
//! review the diff.
//!
//! Commands (every write is one log entry; the store revision counts up from 1 with each change):
//! `put KEY VALUE [session=ID:SEQ]`, `delete KEY [session=..]`, `cas KEY value=OLD|revision=N|absent NEW
//! [session=..]`, `compact REV`, `get KEY [rev=N]`, `scan prefix=P [limit=N] [rev=N]`,
//! `scan start=A [end=B] [limit=N] [rev=N]`, `batch CMD; CMD; ...` (writes in one entry),
//! `fill-sessions FIRST COUNT` (one put each from sessions FIRST.., keys `fill/ID`), `sessions`,
//! `snapshot-roundtrip` (through a snapshot body into a new keyspace, compare, continue on the copy),
//! `lease-grant ID TTL`, `lease-revoke ID`, `lease-put KEY VALUE LEASE` (a put attached to a lease, as a
//! one-put transaction), `lease-keep KEY VALUE` (a put keeping the key's lease), `leases` (each lease, its
//! TTL, key count and keys).

use std::fmt::Write as _;
use std::path::Path;

use raftkv_server::kv::changes::KeyspaceRead;
use raftkv_server::kv::state_machine::{
    Batch, Command, Expected, KeyValue, PutSpec, Request, Response, ScanRange, SessionRef, Txn,
    TxnOp,
};
use raftkv_server::storage::Keyspace;

fn show_kv(kv: &KeyValue) -> String {
    let lease = match kv.lease {
        0 => String::new(),
        lease => format!(" lease={lease}"),
    };
    format!(
        "{}={} (create={} mod={} version={}{lease})",
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
        Response::Compact {
            revision,
            compact_revision,
        } => format!("compact revision={revision} compact_revision={compact_revision}"),
        Response::Txn { revision, result } => format!("txn revision={revision} {result:?}"),
        Response::LeaseGrant { revision, id, ttl } => {
            format!("lease-grant revision={revision} id={id} ttl={ttl}")
        }
        Response::LeaseRevoke { revision, deleted } => {
            format!("lease-revoke revision={revision} deleted={deleted}")
        }
    }
}

struct Script {
    state: Keyspace,
    /// Log index of the last entry.
    index: u64,
}

impl Script {
    fn write(&mut self, session: Option<SessionRef>, command: Command) -> String {
        self.entry(vec![Request { session, command }])
    }

    /// Applies one entry holding these writes; their responses, one per line.
    fn entry(&mut self, writes: Vec<Request>) -> String {
        self.index += 1;
        let response = self
            .state
            .apply(self.index, &Batch { writes })
            .expect("apply");
        response
            .responses
            .iter()
            .map(show_response)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The write a script line names, if it is one.
    fn parse_write(line: &str) -> Option<Request> {
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
        let command = match words[0] {
            "put" => Command::Put {
                key: arg(1),
                value: arg(2),
            },
            "delete" => Command::Delete { key: arg(1) },
            "lease-grant" => Command::LeaseGrant {
                id: words[1].parse().unwrap(),
                ttl: words[2].parse().unwrap(),
            },
            "lease-revoke" => Command::LeaseRevoke {
                id: words[1].parse().unwrap(),
            },
            "lease-put" | "lease-keep" => Command::Txn(Txn {
                success: vec![TxnOp::Put(PutSpec {
                    key: arg(1),
                    value: arg(2),
                    prev_kv: false,
                    ignore_value: false,
                    lease: if words[0] == "lease-put" {
                        words[3].parse().unwrap()
                    } else {
                        0
                    },
                    ignore_lease: words[0] == "lease-keep",
                })],
                ..Txn::default()
            }),
            "compact" => Command::Compact {
                revision: words[1].parse().unwrap(),
            },
            "cas" => {
                let expected = match words[2].split_once('=') {
                    Some(("value", old)) => Expected::Value(old.as_bytes().to_vec()),
                    Some(("revision", revision)) => Expected::Revision(revision.parse().unwrap()),
                    None if words[2] == "absent" => Expected::Absent,
                    _ => panic!("bad cas expectation in {line:?}"),
                };
                Command::Cas {
                    key: arg(1),
                    expected,
                    value: arg(3),
                }
            }
            _ => return None,
        };
        Some(Request { session, command })
    }

    fn run(&mut self, line: &str) -> String {
        if let Some(writes) = line.strip_prefix("batch ") {
            let writes = writes
                .split(';')
                .map(|write| Self::parse_write(write.trim()).expect("a write in a batch"))
                .collect();
            return self.entry(writes);
        }
        if let Some(request) = Self::parse_write(line) {
            return self.entry(vec![request]);
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let arg = |index: usize| -> Vec<u8> {
            words
                .get(index)
                .map(|word| word.as_bytes().to_vec())
                .unwrap_or_default()
        };
        // `rev=N` anywhere reads at revision N.
        let revision: u64 = words
            .iter()
            .find_map(|word| word.strip_prefix("rev="))
            .map_or(0, |rev| rev.parse().unwrap());
        match words[0] {
            "get" => match self.state.get(&arg(1), revision) {
                Ok(kv) => format!(
                    "get {}",
                    kv.as_ref().map_or("<absent>".to_string(), show_kv)
                ),
                Err(error) => format!("get refused: {error}"),
            },
            "scan" => {
                let mut prefix = None;
                let (mut start, mut end, mut limit) = (Vec::new(), None, 100);
                for word in &words[1..] {
                    match word.split_once('=') {
                        Some(("prefix", value)) => prefix = Some(value.as_bytes().to_vec()),
                        Some(("start", value)) => start = value.as_bytes().to_vec(),
                        Some(("end", value)) => end = Some(value.as_bytes().to_vec()),
                        Some(("limit", value)) => limit = value.parse().unwrap(),
                        Some(("rev", _)) => {}
                        _ => panic!("bad scan argument {word:?}"),
                    }
                }
                let range = match prefix {
                    Some(prefix) => ScanRange::Prefix(prefix),
                    None => ScanRange::Range { start, end },
                };
                let result = match self.state.scan(&range, limit, revision) {
                    Ok(result) => result,
                    Err(error) => return format!("scan refused: {error}"),
                };
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
            "leases" => {
                let leases = self.state.leases(usize::MAX).unwrap();
                let mut out = format!("leases {}", leases.len());
                for (id, lease) in leases {
                    let keys: Vec<String> = self
                        .state
                        .lease_keys(id, usize::MAX)
                        .unwrap()
                        .iter()
                        .map(|key| String::from_utf8_lossy(key).into_owned())
                        .collect();
                    write!(
                        out,
                        "\n  {id} ttl={} keys={} [{}]",
                        lease.ttl,
                        lease.keys,
                        keys.join(" ")
                    )
                    .unwrap();
                }
                out
            }
            "snapshot-roundtrip" => {
                let copy = self.state.snapshot_copy().expect("snapshot round trip");
                self.state.compact_all().unwrap();
                copy.compact_all().unwrap();
                assert_eq!(
                    copy.dump().unwrap(),
                    self.state.dump().unwrap(),
                    "snapshot round trip changed the state"
                );
                self.state = copy;
                let keys = self
                    .state
                    .scan(&ScanRange::Prefix(Vec::new()), usize::MAX, 0)
                    .unwrap()
                    .kvs
                    .len();
                format!(
                    "snapshot ok keys={keys} sessions={} revision={} compact_revision={}",
                    self.state.session_count(),
                    self.state.revision(),
                    self.state.compact_revision()
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
        state: Keyspace::temporary().expect("a temporary keyspace"),
        index: 0,
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
