//! What the page can ask for: network faults, process signals, and reads and writes against a chosen node.
//! Each request is parsed from JSON (a bad one is refused in words), carried out within `ACTION_TIMEOUT`, told
//! on the timeline, and answered with what happened in words and the command line that does the same by hand.

use std::time::Duration;

use raftkv_client::names::{consistency_name, role_name};
use raftkv_client::{Client, Consistency, Expected, ReadEnvelope, ReadOptions, Role};
use serde::{Deserialize, Serialize};

use super::backend::{Backend, ProcessAction, ProcessState};
use super::dashboard::Dashboard;
use crate::net::{parse_groups, Command};
use crate::runner::parse_consistency;

/// Longest any action may take, whatever it is (the page waits a little longer: `ACTION_WAIT_MS` in page.html).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a read or write against one node, retries included.
pub const KV_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest key or value the page may send.
pub const KV_TEXT_BYTES_MAX: usize = 4096;
/// Largest delay the page may put on a link.
pub const SLOW_LINK_MAX: Duration = Duration::from_secs(10);

/// One request from the page (`{"action": "isolate", "node": 2}`, ...).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    Isolate {
        node: u64,
    },
    Partition {
        groups: String,
    },
    Cut {
        a: u64,
        b: u64,
    },
    OneWay {
        from: u64,
        to: u64,
    },
    Slow {
        from: u64,
        to: u64,
        delay_ms: u64,
    },
    /// A struct variant, so that unknown fields are refused here too.
    Heal {},
    Kill {
        node: u64,
    },
    Restart {
        node: u64,
    },
    Pause {
        node: u64,
    },
    Resume {
        node: u64,
    },
    Put {
        node: u64,
        key: String,
        value: String,
    },
    Get {
        node: u64,
        key: String,
        #[serde(default)]
        consistency: Option<String>,
        #[serde(default)]
        max_staleness_ms: Option<u64>,
        #[serde(default)]
        min_revision: Option<u64>,
    },
    Cas {
        node: u64,
        key: String,
        /// `None`: the key must be absent.
        #[serde(default)]
        expected: Option<String>,
        value: String,
    },
    Delete {
        node: u64,
        key: String,
    },
}

/// The answer to one action.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub ok: bool,
    /// What happened, in words.
    pub message: String,
    /// The command line that does the same by hand.
    pub command: String,
}

/// Parses a request body; the error says what is wrong and what is expected.
pub fn parse(body: &str) -> Result<Action, String> {
    serde_json::from_str(body).map_err(|error| {
        format!(
            "cannot understand the request ({error}); send JSON such as {{\"action\": \"isolate\", \"node\": 2}}"
        )
    })
}

/// Carries out `action`, tells the timeline, and answers.
pub async fn perform(action: Action, backend: &Backend, dashboard: &Dashboard) -> Answer {
    let command = command_line(&action, backend);
    let outcome = match tokio::time::timeout(ACTION_TIMEOUT, run(&action, backend, dashboard)).await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "gave up after {ACTION_TIMEOUT:?}; the cluster may be in the middle of it"
        )),
    };
    let (ok, message) = match outcome {
        Ok(message) => (true, message),
        Err(message) => (false, message),
    };
    let kind = match (&action, ok) {
        (_, false) => "error",
        (Action::Heal {}, true) => "heal",
        (
            Action::Isolate { .. }
            | Action::Partition { .. }
            | Action::Cut { .. }
            | Action::OneWay { .. }
            | Action::Slow { .. },
            true,
        ) => "fault",
        (
            Action::Kill { .. }
            | Action::Restart { .. }
            | Action::Pause { .. }
            | Action::Resume { .. },
            true,
        ) => "process",
        (Action::Get { .. }, true) => "read",
        (_, true) => "write",
    };
    dashboard.event(kind, message.clone());
    Answer {
        ok,
        message,
        command,
    }
}

fn check_node(backend: &Backend, node: u64) -> Result<String, String> {
    backend
        .address(node)
        .map(str::to_string)
        .map_err(|error| error.to_string())
}

fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() && what == "key" {
        return Err("the key is empty: give a key".to_string());
    }
    if text.len() > KV_TEXT_BYTES_MAX {
        return Err(format!(
            "the {what} is {} bytes; the playground takes at most {KV_TEXT_BYTES_MAX}",
            text.len()
        ));
    }
    Ok(())
}

/// The network command of a network action, checked.
fn net_command(action: &Action, backend: &Backend) -> Result<Option<Command>, String> {
    let command = match action {
        Action::Isolate { node } => {
            check_node(backend, *node)?;
            Command::Isolate(*node)
        }
        Action::Partition { groups } => {
            Command::Partition(parse_groups(groups).map_err(|error| error.to_string())?)
        }
        Action::Cut { a, b } => {
            check_node(backend, *a)?;
            check_node(backend, *b)?;
            Command::Cut { a: *a, b: *b }
        }
        Action::OneWay { from, to } => {
            check_node(backend, *from)?;
            check_node(backend, *to)?;
            Command::OneWay {
                from: *from,
                to: *to,
            }
        }
        Action::Slow { from, to, delay_ms } => {
            check_node(backend, *from)?;
            check_node(backend, *to)?;
            let delay = Duration::from_millis(*delay_ms);
            if delay.is_zero() || delay > SLOW_LINK_MAX {
                return Err(format!(
                    "a link is slowed by 1 ms to {} ms, not {delay_ms} ms",
                    SLOW_LINK_MAX.as_millis()
                ));
            }
            Command::Delay {
                delay,
                link: Some((*from, *to)),
            }
        }
        Action::Heal {} => Command::Heal,
        _ => return Ok(None),
    };
    Ok(Some(command))
}

fn process_action(action: &Action) -> Option<(ProcessAction, u64)> {
    match action {
        Action::Kill { node } => Some((ProcessAction::Kill, *node)),
        Action::Restart { node } => Some((ProcessAction::Restart, *node)),
        Action::Pause { node } => Some((ProcessAction::Pause, *node)),
        Action::Resume { node } => Some((ProcessAction::Resume, *node)),
        _ => None,
    }
}

async fn run(action: &Action, backend: &Backend, dashboard: &Dashboard) -> Result<String, String> {
    if let Some(command) = net_command(action, backend)? {
        let links = backend
            .net(&command)
            .await
            .map_err(|error| format!("{error:#}"))?;
        dashboard.set_links(&links);
        return Ok(describe_net(&command));
    }
    if let Some((process, node)) = process_action(action) {
        check_node(backend, node)?;
        backend
            .process(process, node)
            .await
            .map_err(|error| format!("{error:#}"))?;
        dashboard.set_process(
            node,
            match process {
                ProcessAction::Kill => ProcessState::Stopped,
                ProcessAction::Pause => ProcessState::Paused,
                ProcessAction::Restart | ProcessAction::Resume => ProcessState::Running,
            },
        );
        let done = match process {
            ProcessAction::Kill => "killed (SIGKILL)",
            ProcessAction::Restart => "restarted on its data",
            ProcessAction::Pause => "paused (SIGSTOP)",
            ProcessAction::Resume => "resumed (SIGCONT)",
        };
        return Ok(format!("node {node} {done}"));
    }
    kv(action, backend).await
}

fn describe_net(command: &Command) -> String {
    match command {
        Command::Isolate(node) => format!("node {node} cut off from every other node"),
        Command::Partition(groups) => format!(
            "partitioned into {}",
            groups
                .iter()
                .map(|group| group
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        Command::Cut { a, b } => format!("nodes {a} and {b} cut off from each other"),
        Command::OneWay { from, to } => {
            format!(
                "link {from}→{to} holds node {from}'s requests to node {to}; replies still pass"
            )
        }
        Command::Delay {
            delay,
            link: Some((from, to)),
        } => format!(
            "link {from}→{to} slowed by {} each way",
            crate::net::format_duration(*delay)
        ),
        Command::Heal => "every link passes again".to_string(),
        other => other.to_string(),
    }
}

async fn kv(action: &Action, backend: &Backend) -> Result<String, String> {
    let (node, key) = match action {
        Action::Put { node, key, .. }
        | Action::Get { node, key, .. }
        | Action::Cas { node, key, .. }
        | Action::Delete { node, key } => (*node, key),
        _ => return Err("not a read or a write".to_string()),
    };
    let address = check_node(backend, node)?;
    check_text("key", key)?;
    let mut config = backend.client_config(vec![address.clone()]);
    config.request_timeout = KV_TIMEOUT;
    config.overall_timeout = KV_TIMEOUT;
    let client = Client::new(config).map_err(|error| error.to_string())?;
    match action {
        Action::Put { value, .. } => {
            check_text("value", value)?;
            let revision = client
                .put(key.as_str(), value.as_str())
                .await
                .map_err(|error| format!("put {key} through node {node}: {error}"))?;
            Ok(format!(
                "put {key} = {value:?} through node {node}: acknowledged at revision {revision}"
            ))
        }
        Action::Delete { .. } => {
            let (revision, existed) = client
                .delete(key.as_str())
                .await
                .map_err(|error| format!("delete {key} through node {node}: {error}"))?;
            Ok(match existed {
                true => format!("deleted {key} through node {node} at revision {revision}"),
                false => format!("{key} did not exist (store at revision {revision})"),
            })
        }
        Action::Cas {
            expected, value, ..
        } => {
            check_text("value", value)?;
            let expectation = match expected {
                Some(old) => {
                    check_text("expected value", old)?;
                    Expected::Value(old.clone().into_bytes())
                }
                None => Expected::Absent,
            };
            let result = client
                .cas(key.as_str(), expectation, value.as_str())
                .await
                .map_err(|error| format!("cas {key} through node {node}: {error}"))?;
            Ok(match result.swapped {
                true => format!(
                    "cas {key}: swapped to {value:?} at revision {}",
                    result.revision
                ),
                false => format!(
                    "cas {key}: not swapped, the key holds {}",
                    result
                        .current
                        .map_or("nothing (absent)".to_string(), |kv| format!(
                            "{:?}",
                            String::from_utf8_lossy(&kv.value)
                        ))
                ),
            })
        }
        Action::Get {
            consistency,
            max_staleness_ms,
            min_revision,
            ..
        } => {
            let consistency = match consistency.as_deref() {
                Some(name) => parse_consistency(name)?,
                None => Consistency::Linearizable,
            };
            if max_staleness_ms.is_some() && consistency != Consistency::Stale {
                return Err("a staleness bound applies to stale reads only".to_string());
            }
            let options = ReadOptions {
                consistency,
                max_staleness: max_staleness_ms.map(Duration::from_millis),
                min_revision: min_revision.unwrap_or(0),
                endpoint: Some(address),
                ..Default::default()
            };
            let mode = crate::runner::consistency_name(consistency);
            let result = client
                .get(key.as_str(), &options)
                .await
                .map_err(|error| format!("{mode} read of {key} on node {node} refused: {error}"))?;
            let value = result.kv.as_ref().map_or("absent".to_string(), |kv| {
                format!("{:?}", String::from_utf8_lossy(&kv.value))
            });
            Ok(format!(
                "{key} = {value}; {}",
                describe_envelope(&result.envelope)
            ))
        }
        _ => Err("not a read or a write".to_string()),
    }
}

/// A read envelope in words: who served the read, how, and how stale it may be.
pub fn describe_envelope(envelope: &ReadEnvelope) -> String {
    let role = match Role::try_from(envelope.role) {
        Ok(Role::Leader) => "the leader".to_string(),
        Ok(Role::Follower) => "a follower".to_string(),
        _ => format!("a {}", role_name(envelope.role)),
    };
    let contact = match envelope.millis_since_leader {
        Some(ms) => format!("{} ms since it heard from a leader", group_digits(ms)),
        None => "it has not heard from a leader since it started".to_string(),
    };
    let promise = match consistency_name(envelope.consistency) {
        "linearizable" => "linearizable: confirmed with a quorum",
        "lease" => "lease: the leader's lease held, no quorum round",
        _ => "may be stale",
    };
    format!(
        "served by node {}, {role}, at revision {} (applied index {}), term {}, {contact}: {promise}",
        envelope.node_id, envelope.revision, envelope.applied_index, envelope.term
    )
}

/// 2110 as "2,110".
fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A word for the shell: as it is when it is plain, single-quoted otherwise.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c));
    match plain {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', "'\\''")),
    }
}

/// The command line that does `action` by hand.
pub fn command_line(action: &Action, backend: &Backend) -> String {
    if let Ok(Some(command)) = net_command(action, backend) {
        return backend.net_command_line(&command);
    }
    if let Some((process, node)) = process_action(action) {
        return backend.process_command_line(process, node);
    }
    let endpoint = |node: &u64| {
        backend
            .nodes()
            .get(node)
            .cloned()
            .unwrap_or_else(|| format!("NODE{node}"))
    };
    match action {
        Action::Put { node, key, value } => format!(
            "raftkv --endpoints {} put {} {}",
            endpoint(node),
            shell_word(key),
            shell_word(value)
        ),
        Action::Delete { node, key } => format!(
            "raftkv --endpoints {} delete {}",
            endpoint(node),
            shell_word(key)
        ),
        Action::Cas {
            node,
            key,
            expected,
            value,
        } => format!(
            "raftkv --endpoints {} cas {} {} {}",
            endpoint(node),
            shell_word(key),
            shell_word(value),
            match expected {
                Some(old) => format!("--expected {}", shell_word(old)),
                None => "--expected-revision 0".to_string(),
            }
        ),
        Action::Get {
            node,
            key,
            consistency,
            max_staleness_ms,
            min_revision,
        } => {
            let mut line = format!(
                "raftkv --endpoints {0} get {1} --endpoint {0}",
                endpoint(node),
                shell_word(key)
            );
            if let Some(consistency) = consistency.as_deref().filter(|c| *c != "linearizable") {
                line.push_str(&format!(" --consistency {}", shell_word(consistency)));
            }
            if let Some(ms) = max_staleness_ms {
                line.push_str(&format!(" --max-staleness {ms}ms"));
            }
            if let Some(revision) = min_revision.filter(|revision| *revision > 0) {
                line.push_str(&format!(" --min-revision {revision}"));
            }
            line
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_what_is_expected() {
        assert!(matches!(
            parse(r#"{"action": "isolate", "node": 2}"#),
            Ok(Action::Isolate { node: 2 })
        ));
        assert!(matches!(
            parse(
                r#"{"action": "get", "node": 1, "key": "k", "consistency": "stale", "max_staleness_ms": 500}"#
            ),
            Ok(Action::Get {
                node: 1,
                max_staleness_ms: Some(500),
                ..
            })
        ));
        let error = parse(r#"{"action": "explode"}"#).unwrap_err();
        assert!(error.contains("cannot understand the request"), "{error}");
        assert!(error.contains("\"action\": \"isolate\""), "{error}");
        assert!(parse("not json").is_err());
        assert!(matches!(
            parse(r#"{"action": "heal"}"#),
            Ok(Action::Heal {})
        ));
        assert!(parse(r#"{"action": "heal", "extra": 1}"#).is_err());
        assert!(parse(r#"{"action": "isolate", "node": 1, "nodes": [2]}"#).is_err());
    }

    /// `raftkv.v1.Consistency` on the wire, as an envelope carries it.
    const WIRE_LINEARIZABLE: i32 = 1;
    const WIRE_STALE: i32 = 3;

    #[test]
    fn envelopes_read_as_words() {
        let follower = ReadEnvelope {
            node_id: 2,
            role: Role::Follower as i32,
            consistency: WIRE_STALE,
            applied_index: 40,
            term: 3,
            leader_id: 1,
            millis_since_leader: Some(2110),
            revision: 17,
            compact_revision: 0,
        };
        assert_eq!(
            describe_envelope(&follower),
            "served by node 2, a follower, at revision 17 (applied index 40), term 3, 2,110 ms since it heard from a leader: may be stale"
        );
        let leader = ReadEnvelope {
            role: Role::Leader as i32,
            consistency: WIRE_LINEARIZABLE,
            millis_since_leader: Some(0),
            ..follower
        };
        assert!(describe_envelope(&leader).ends_with("the leader, at revision 17 (applied index 40), term 3, 0 ms since it heard from a leader: linearizable: confirmed with a quorum"));
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("greeting"), "greeting");
        assert_eq!(shell_word("hello world"), "'hello world'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(group_digits(2110), "2,110");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000_000), "1,000,000");
    }
}
