//! The control protocol of a long-lived mesh (`jepsen-lite net serve`): its commands, its server and its
//! client. One request per TCP connection: the client sends one line of text, the same words as the CLI
//! (`partition 1,2/3`, `isolate 2`, `heal`, `ring`, `bridge`, `cut 1 2`, `one-way 1 2`, `delay 50ms [1-2]`, `reset 1 2`,
//! `member 2 8e9e05c52164694d`, `status`), and the server answers with one line of JSON, `{"ok":true,"error":null,"links":[...]}` (every
//! link after the command) or `{"ok":false,"error":"...","links":[]}`, then closes. Plain text in, JSON out:
//! `echo status | nc 127.0.0.1 PORT` works by hand, and programs get typed answers.
//!
//! The server handles one request at a time; each has [`CONTROL_TIMEOUT`] to arrive and be answered, so a stuck
//! client delays the others by at most that long. The client puts the same timeout on the whole exchange.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::link::{format_duration, parse_duration, LinkState};
use super::mesh::{LinkStatus, Mesh, NodeRoutes};
use super::sniff::MemberId;
use super::topology::parse_groups;
use super::NetError;

/// Longest request line the server reads, newline included; a longer one is answered with an error.
pub const CONTROL_REQUEST_BYTES_MAX: usize = 4 * 1024;

/// Longest response the client reads (81 links of a 9-node mesh take about 12 KiB); longer is an error.
pub const CONTROL_RESPONSE_BYTES_MAX: usize = 256 * 1024;

/// Deadline for one control exchange, on the server (read the request, answer it) and on the client (connect,
/// send, read the answer).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` on the control port so the loop does not spin.
const CONTROL_ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Change nothing; answer with every link.
    Status,
    /// Every link passes.
    Heal,
    /// Disjoint groups covering every node: cut between groups, pass within.
    Partition(Vec<Vec<u64>>),
    /// One node cut off from the rest.
    Isolate(u64),
    /// The majorities ring.
    Ring,
    /// Two halves joined by one bridge node.
    Bridge,
    /// Nodes `a` and `b` cannot reach each other: both links between them cut.
    Cut { a: u64, b: u64 },
    /// Link `from`->`to` holds bytes toward `to`; replies still flow.
    OneWay { from: u64, to: u64 },
    /// Link `from`->`to` resets its connections and every new one.
    Reset { from: u64, to: u64 },
    /// Delay one link, or every link when `link` is `None`.
    Delay {
        delay: Duration,
        link: Option<(u64, u64)>,
    },
    /// Requests naming `member` as their sender come from node `node` (a mesh attributed by header).
    Member { node: u64, member: MemberId },
}

impl Command {
    /// Parses one request line (see the module docs for the forms).
    pub fn parse(line: &str) -> Result<Command, NetError> {
        let invalid = |reason: &str| NetError::InvalidCommand {
            line: line.trim().to_string(),
            reason: reason.to_string(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |text: &str| -> Result<u64, NetError> {
            text.parse()
                .map_err(|_| invalid(&format!("{text:?} is not a node id")))
        };
        match words.as_slice() {
            ["status"] => Ok(Command::Status),
            ["heal"] => Ok(Command::Heal),
            ["ring"] => Ok(Command::Ring),
            ["bridge"] => Ok(Command::Bridge),
            ["partition", groups @ ..] if !groups.is_empty() => {
                Ok(Command::Partition(parse_groups(&groups.concat())?))
            }
            ["isolate", id] => Ok(Command::Isolate(node(id)?)),
            ["cut", a, b] => Ok(Command::Cut {
                a: node(a)?,
                b: node(b)?,
            }),
            ["one-way", from, to] => Ok(Command::OneWay {
                from: node(from)?,
                to: node(to)?,
            }),
            ["reset", from, to] => Ok(Command::Reset {
                from: node(from)?,
                to: node(to)?,
            }),
            ["delay", delay] => Ok(Command::Delay {
                delay: parse_duration(delay)?,
                link: None,
            }),
            ["delay", delay, link] => Ok(Command::Delay {
                delay: parse_duration(delay)?,
                link: Some(parse_link(link)?),
            }),
            ["member", node_id, member] => Ok(Command::Member {
                node: node(node_id)?,
                member: member.parse().map_err(|error| invalid(&format!("{error}")))?,
            }),
            [] => Err(invalid("the request is empty")),
            [verb, ..] => match *verb {
                "status" | "heal" | "ring" | "bridge" | "partition" | "isolate" | "cut"
                | "one-way" | "reset" | "delay" | "member" => {
                    Err(invalid("wrong number of arguments"))
                }
                _ => Err(invalid(
                    "unknown command; expected status, heal, partition, isolate, ring, bridge, cut, one-way, reset, delay or member",
                )),
            },
        }
    }

    /// Applies the command to the mesh.
    pub fn apply(&self, mesh: &Mesh) -> Result<(), NetError> {
        match self {
            Command::Status => Ok(()),
            Command::Heal => {
                mesh.heal();
                Ok(())
            }
            Command::Partition(groups) => mesh.partition(groups),
            Command::Isolate(id) => mesh.isolate(*id),
            Command::Ring => mesh.ring(),
            Command::Bridge => mesh.bridge(),
            Command::Cut { a, b } => {
                mesh.set_link(*a, *b, LinkState::Cut)?;
                mesh.set_link(*b, *a, LinkState::Cut)
            }
            Command::OneWay { from, to } => mesh.one_way(*from, *to),
            Command::Reset { from, to } => mesh.set_link(*from, *to, LinkState::Reset),
            Command::Delay {
                delay,
                link: Some((from, to)),
            } => mesh.set_link(*from, *to, LinkState::Delay(*delay)),
            Command::Delay { delay, link: None } => {
                mesh.delay_all(*delay);
                Ok(())
            }
            Command::Member { node, member } => mesh.set_member(*node, *member),
        }
    }
}

impl fmt::Display for Command {
    /// Writes the request line that [`Command::parse`] reads back (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Status => f.write_str("status"),
            Command::Heal => f.write_str("heal"),
            Command::Ring => f.write_str("ring"),
            Command::Bridge => f.write_str("bridge"),
            Command::Partition(groups) => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|group| {
                        group
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                write!(f, "partition {}", groups.join("/"))
            }
            Command::Isolate(id) => write!(f, "isolate {id}"),
            Command::Cut { a, b } => write!(f, "cut {a} {b}"),
            Command::OneWay { from, to } => write!(f, "one-way {from} {to}"),
            Command::Reset { from, to } => write!(f, "reset {from} {to}"),
            Command::Delay { delay, link } => {
                write!(f, "delay {}", format_duration(*delay))?;
                if let Some((from, to)) = link {
                    write!(f, " {from}-{to}")?;
                }
                Ok(())
            }
            Command::Member { node, member } => write!(f, "member {node} {member}"),
        }
    }
}

/// Parses a link written `FROM-TO`, e.g. `1-2`.
pub fn parse_link(text: &str) -> Result<(u64, u64), NetError> {
    let invalid = || NetError::InvalidLink(text.to_string());
    let (from, to) = text.trim().split_once('-').ok_or_else(invalid)?;
    let from = from.parse().map_err(|_| invalid())?;
    let to = to.parse().map_err(|_| invalid())?;
    Ok((from, to))
}

/// The server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// Why the request was refused, when `ok` is false.
    pub error: Option<String>,
    /// Every link after the command was applied (empty when refused).
    pub links: Vec<LinkStatus>,
}

/// What `net serve` writes to its `--routes-file`: where to reach the control port and each node's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesFile {
    pub control: SocketAddr,
    pub nodes: Vec<NodeRoutes>,
}

/// Answers control requests on `listener` against `mesh`, one at a time, until the future is dropped.
pub async fn serve_control(listener: TcpListener, mesh: &Mesh) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "control accept failed");
                tokio::time::sleep(CONTROL_ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        match tokio::time::timeout(CONTROL_TIMEOUT, answer(stream, mesh)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, %peer, "control request failed"),
            Err(_elapsed) => warn!(%peer, timeout = ?CONTROL_TIMEOUT, "control request timed out"),
        }
    }
}

/// Reads one request line, applies it and writes the response.
async fn answer(stream: TcpStream, mesh: &Mesh) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(CONTROL_REQUEST_BYTES_MAX as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let outcome = if line.len() > CONTROL_REQUEST_BYTES_MAX {
        Err(format!(
            "request longer than {CONTROL_REQUEST_BYTES_MAX} bytes"
        ))
    } else {
        match std::str::from_utf8(&line) {
            Err(_) => Err("request is not UTF-8".to_string()),
            Ok(text) => Command::parse(text)
                .and_then(|command| {
                    command.apply(mesh)?;
                    Ok(command)
                })
                .map_err(|error| error.to_string()),
        }
    };
    let response = match outcome {
        Ok(command) => {
            if command != Command::Status {
                info!(%command, "links changed");
            }
            Response {
                ok: true,
                error: None,
                links: mesh.snapshot(),
            }
        }
        Err(error) => Response {
            ok: false,
            error: Some(error),
            links: Vec::new(),
        },
    };
    let mut body = serde_json::to_vec(&response).map_err(io::Error::other)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    write.shutdown().await
}

/// Why a control request did not get an answer, or got a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the mesh control address {address} (is `jepsen-lite net serve` running there?)")]
    Connect { address: String, source: io::Error },
    #[error("control request to {address} failed")]
    Io { address: String, source: io::Error },
    #[error("control request to {address} got no answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("control response from {address} is longer than {CONTROL_RESPONSE_BYTES_MAX} bytes")]
    ResponseTooLarge { address: String },
    #[error("control response from {address} is not valid JSON")]
    InvalidResponse {
        address: String,
        source: serde_json::Error,
    },
    #[error("the mesh refused the request: {0}")]
    Refused(String),
}

/// Sends one command to the mesh at `address` and returns every link's status after it was applied.
pub async fn request(address: &str, command: &Command) -> Result<Vec<LinkStatus>, ControlError> {
    let exchange = async {
        let io_error = |source| ControlError::Io {
            address: address.to_string(),
            source,
        };
        let mut stream =
            TcpStream::connect(address)
                .await
                .map_err(|source| ControlError::Connect {
                    address: address.to_string(),
                    source,
                })?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io_error)?;
        let mut body = Vec::new();
        stream
            .take(CONTROL_RESPONSE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(io_error)?;
        if body.len() > CONTROL_RESPONSE_BYTES_MAX {
            return Err(ControlError::ResponseTooLarge {
                address: address.to_string(),
            });
        }
        let response: Response =
            serde_json::from_slice(&body).map_err(|source| ControlError::InvalidResponse {
                address: address.to_string(),
                source,
            })?;
        if response.ok {
            Ok(response.links)
        } else {
            Err(ControlError::Refused(
                response
                    .error
                    .unwrap_or_else(|| "no reason given".to_string()),
            ))
        }
    };
    tokio::time::timeout(CONTROL_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout {
            address: address.to_string(),
            timeout: CONTROL_TIMEOUT,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_request_line() {
        for command in [
            Command::Status,
            Command::Heal,
            Command::Ring,
            Command::Bridge,
            Command::Partition(vec![vec![1, 2], vec![3, 4, 5]]),
            Command::Isolate(2),
            Command::Cut { a: 1, b: 3 },
            Command::OneWay { from: 1, to: 2 },
            Command::Reset { from: 3, to: 1 },
            Command::Delay {
                delay: Duration::from_millis(50),
                link: None,
            },
            Command::Delay {
                delay: Duration::from_millis(50),
                link: Some((1, 2)),
            },
            Command::Member {
                node: 2,
                member: MemberId(0x8e9e_05c5_2164_694d),
            },
        ] {
            let line = command.to_string();
            assert_eq!(Command::parse(&line).unwrap(), command, "{line}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (line, reason) in [
            ("", "the request is empty"),
            ("explode", "unknown command"),
            ("isolate", "wrong number of arguments"),
            ("isolate two", "\"two\" is not a node id"),
            ("one-way 1", "wrong number of arguments"),
            ("cut 1", "wrong number of arguments"),
            ("partition 1,2,3", "at least two groups"),
            ("delay 50", "invalid duration"),
            ("delay 50ms 1", "invalid link"),
            ("heal now", "wrong number of arguments"),
            ("member 2", "wrong number of arguments"),
            ("member two 1a", "\"two\" is not a node id"),
            ("member 2 node-two", "invalid member id"),
        ] {
            let error = Command::parse(line).unwrap_err().to_string();
            assert!(error.contains(reason), "{line:?}: {error}");
        }
    }
}
