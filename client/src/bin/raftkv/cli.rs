//! The `raftkv` command line: flags (clap derive), running one command through the client library, printing
//! its result as a table, JSON (one object per result) or plain text, and choosing the exit code.
//!
//! Exit codes: 0 ok; 1 the operation failed (cas mismatch, a transaction's compares did not hold, key not
//! found for `get`, a read or compaction at a
//! compacted or future revision, a `bench` run in which some operations failed); 2 usage or connection error;
//! 3 indeterminate (the write may have been applied).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftkv_client::names::{consistency_name, role_name};

use crate::args::{parse_duration, ConsistencyArg};
use raftkv_client::{
    CasResult, Client, ClientConfig, ClientError, Consistency, Expected, GetResult, KeyValue,
    ReadEnvelope, ReadOptions, Role, ScanRange, StatusResponse, TlsConfig, WatchOptions,
};
use serde_json::{json, Value};

/// Endpoints of the local cluster that `scripts/cluster.sh up` starts.
pub const ENDPOINTS_DEFAULT: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";
/// Largest value read from stdin by `put KEY` (the server's own limit is lower; this only bounds memory).
pub const STDIN_VALUE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the operation was carried out and failed (cas mismatch, key not found).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage, or the cluster could not be reached or refused the request.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the write may or may not have been applied.
pub const EXIT_INDETERMINATE: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Simple,
}

/// raftkv: a client for a raftkv cluster.
#[derive(Debug, Parser)]
#[command(name = "raftkv", version, about)]
pub struct Cli {
    /// Comma-separated HOST:PORT of cluster nodes.
    #[arg(long, env = "RAFTKV_ENDPOINTS", default_value = ENDPOINTS_DEFAULT, value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Simple, global = true)]
    pub output: Output,
    /// Overall deadline of the command, retries included (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Connect over TLS, trusting this CA certificate (PEM): the cluster's CA.
    #[arg(long, env = "RAFTKV_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present, for nodes started with --tls-require-client-cert; needs --key.
    #[arg(
        long = "cert",
        env = "RAFTKV_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", env = "RAFTKV_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write VALUE under KEY (no VALUE: read it from stdin).
    Put {
        key: String,
        value: Option<String>,
        /// Attach the key to this lease (hex id, from `lease grant`): it is deleted when the lease ends.
        #[arg(long, value_parser = crate::lease::parse_lease_id)]
        lease: Option<i64>,
    },
    /// Read KEY.
    Get {
        key: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Delete KEY.
    Delete { key: String },
    /// Write NEW under KEY only if the expectation holds.
    Cas {
        key: String,
        new: String,
        /// Swap only if the current value is this.
        #[arg(long, group = "expectation")]
        expected: Option<String>,
        /// Swap only if the key's mod revision is this (0: the key must not exist).
        #[arg(long, group = "expectation")]
        expected_revision: Option<u64>,
        /// Swap only if the key does not exist.
        #[arg(long, group = "expectation")]
        absent: bool,
    },
    /// List keys by prefix or range.
    Scan {
        /// Keys starting with this.
        #[arg(long, conflicts_with_all = ["start", "end"])]
        prefix: Option<String>,
        /// First key of the range (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// End of the range (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// At most this many keys (0: the server's default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Discard the history before REVISION on every node (through Raft): reads at a lower revision are
    /// refused from then on.
    Compact { revision: u64 },
    /// Print the changes to KEY (or keys with the prefix KEY) as they happen: from --rev, the history first.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (0: changes after the current one); older changes come from the history.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Print each key's previous version too.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Watch on this node (HOST:PORT) only.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Run a transaction read from stdin in etcdctl's syntax: compares, a blank line, the operations run if
    /// they all hold, a blank line, the operations run otherwise. Exits 1 if the compares did not hold.
    Txn,
    /// One row per node: role, term, leader, indexes, lag, errors.
    Status,
    /// Hold lock NAME while CMD runs (its fencing token in RAFTKV_LOCK_REVISION), or until interrupted.
    Lock {
        name: String,
        /// Seconds the lock outlives this process if it dies (the lease's TTL).
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// Give up if the lock is not held within this (default: wait until interrupted).
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// The command to run while holding the lock, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Grant, keep alive, revoke and inspect leases: keys put with a lease go when it ends.
    Lease {
        #[command(subcommand)]
        action: crate::lease::LeaseAction,
    },
    /// List or change the cluster's members.
    Members {
        #[command(subcommand)]
        action: Option<MembersAction>,
    },
    /// Measure throughput and latency: put, get, mixed or load workloads from many concurrent clients.
    Bench(crate::bench::BenchArgs),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum MembersAction {
    /// List members (the default).
    List,
    /// Add a node as a learner (non-voting; catches up in the background).
    AddLearner { id: u64, address: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Hand leadership to the voter ID (writes pause for about an election timeout).
    MoveLeader { id: u64 },
}

#[derive(Clone, Debug, Args)]
pub struct ReadArgs {
    /// How consistent the read must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// With --consistency stale: refuse if the node has not heard from a leader within this bound.
    #[arg(long, value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,
    /// Wait until the serving node's store has reached at least this revision.
    #[arg(long, default_value_t = 0)]
    pub min_revision: u64,
    /// Read the store as it was at this revision (0: the current one).
    #[arg(long, default_value_t = 0)]
    pub revision: u64,
    /// Read from this node only (HOST:PORT), with no failover.
    #[arg(long)]
    pub endpoint: Option<String>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version,
        "lease": (kv.lease != 0).then(|| crate::lease::lease_hex(kv.lease)),
    })
}

fn envelope_json(envelope: &ReadEnvelope) -> Value {
    json!({
        "node_id": envelope.node_id, "role": role_name(envelope.role),
        "consistency": consistency_name(envelope.consistency), "revision": envelope.revision,
        "compact_revision": envelope.compact_revision, "applied_index": envelope.applied_index,
        "term": envelope.term, "leader_id": (envelope.leader_id != 0).then_some(envelope.leader_id),
        "millis_since_leader": envelope.millis_since_leader,
    })
}

fn envelope_text(envelope: &ReadEnvelope) -> String {
    format!(
        "node {} ({}) {} revision={} applied_index={} term={} leader={} since_leader={}",
        envelope.node_id,
        role_name(envelope.role),
        consistency_name(envelope.consistency),
        envelope.revision,
        envelope.applied_index,
        envelope.term,
        if envelope.leader_id == 0 {
            "none".to_string()
        } else {
            envelope.leader_id.to_string()
        },
        envelope
            .millis_since_leader
            .map_or("never".to_string(), |millis| format!("{millis}ms")),
    )
}

/// Prints rows as an aligned table with a header.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|title| title.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn read_options(read: &ReadArgs) -> ReadOptions {
    ReadOptions {
        consistency: match read.consistency {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Stale => Consistency::Stale,
        },
        max_staleness: read.max_staleness,
        min_revision: read.min_revision,
        revision: read.revision,
        endpoint: read.endpoint.clone(),
    }
}

/// A failure of the command: its message and exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

fn failure(error: ClientError, endpoints: &[String], pinned: Option<&str>) -> Failure {
    let code = match &error {
        ClientError::Indeterminate { .. } => EXIT_INDETERMINATE,
        ClientError::Compacted(_)
        | ClientError::FutureRevision(_)
        | ClientError::LeaseNotFound(_) => EXIT_FAILED,
        _ => EXIT_USAGE,
    };
    let message = match &error {
        // Configuration problems: the same on every node, and the message says what to change.
        ClientError::Tls { .. } | ClientError::TlsConfig(_) | ClientError::Unauthenticated(_) => {
            error.to_string()
        }
        _ if pinned.is_some() && !matches!(error, ClientError::Connection { .. }) => {
            format!("{} refused the read: {error}", pinned.unwrap_or_default())
        }
        ClientError::Unavailable { .. } | ClientError::DeadlineExceeded { .. } => format!(
            "no leader reachable among {}: is the cluster up? `scripts/cluster.sh status` ({error})",
            endpoints.join(",")
        ),
        ClientError::Connection { endpoint, .. } => {
            format!("cannot reach {endpoint}: is that node up? `scripts/cluster.sh status` ({error})")
        }
        _ => error.to_string(),
    };
    Failure { message, code }
}

/// The TLS settings of `--ca`, `--cert` and `--key`; `None` without `--ca`.
fn tls_config(cli: &Cli) -> Result<Option<TlsConfig>, Failure> {
    let usage = |message: String| Failure {
        message,
        code: EXIT_USAGE,
    };
    match &cli.ca {
        Some(ca) => TlsConfig::from_files(ca, cli.tls_cert.as_deref(), cli.tls_key.as_deref())
            .map(Some)
            .map_err(|error| usage(error.to_string())),
        None if cli.tls_cert.is_some() => Err(usage(
            "--cert and --key need --ca: pass the cluster's CA certificate too".to_string(),
        )),
        None => Ok(None),
    }
}

impl Cli {
    /// Threads the async runtime should have: one, except for `bench`, whose flag says.
    pub fn runtime_threads(&self) -> usize {
        match &self.command {
            Command::Bench(args) => args.threads.clamp(1, crate::bench::THREADS_MAX),
            _ => 1,
        }
    }
}

/// Runs the parsed command; returns the exit code or a failure to report.
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "raftkv",
            &mut std::io::stdout(),
        );
        return Ok(EXIT_OK);
    }
    let mut config = ClientConfig::new(cli.endpoints.clone());
    config.tls = tls_config(&cli)?;
    config.overall_timeout = cli.timeout;
    config.request_timeout = config.request_timeout.min(cli.timeout);
    let client = Client::new(config).map_err(|error| Failure {
        message: error.to_string(),
        code: EXIT_USAGE,
    })?;
    let endpoints = cli.endpoints.clone();
    let fail = |error| failure(error, &endpoints, None);
    let output = cli.output;
    match cli.command {
        Command::Put { key, value, lease } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => {
                    let mut buffer = Vec::new();
                    std::io::stdin()
                        .take(STDIN_VALUE_BYTES_MAX)
                        .read_to_end(&mut buffer)
                        .map_err(|error| Failure {
                            message: format!("cannot read the value from stdin: {error}"),
                            code: EXIT_USAGE,
                        })?;
                    buffer
                }
            };
            let revision = client
                .put_with_lease(key.clone(), value, lease.unwrap_or(0))
                .await
                .map_err(fail)?;
            match output {
                Output::Json => {
                    println!("{}", json!({"op": "put", "key": key, "revision": revision}))
                }
                Output::Table => {
                    print_table(&["key", "revision"], &[vec![key, revision.to_string()]])
                }
                Output::Simple => println!("OK revision={revision}"),
            }
            Ok(EXIT_OK)
        }
        Command::Delete { key } => {
            let (revision, deleted) = client.delete(key.clone()).await.map_err(fail)?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "delete", "key": key, "revision": revision, "deleted": deleted})
                ),
                Output::Table => print_table(
                    &["key", "deleted", "revision"],
                    &[vec![key, deleted.to_string(), revision.to_string()]],
                ),
                Output::Simple => println!(
                    "{} revision={revision}",
                    if deleted { "DELETED" } else { "NOT FOUND" }
                ),
            }
            Ok(EXIT_OK)
        }
        Command::Cas {
            key,
            new,
            expected,
            expected_revision,
            absent,
        } => {
            let expectation = match (expected, expected_revision, absent) {
                (Some(value), None, false) => Expected::Value(value.into_bytes()),
                (None, Some(revision), false) => Expected::Revision(revision),
                (None, None, true) => Expected::Absent,
                _ => {
                    return Err(Failure {
                        message:
                            "cas needs one of --expected OLD, --expected-revision N or --absent"
                                .to_string(),
                        code: EXIT_USAGE,
                    })
                }
            };
            let result: CasResult = client
                .cas(key.clone(), expectation, new)
                .await
                .map_err(fail)?;
            let current = result.current.as_ref();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "cas", "key": key, "swapped": result.swapped, "revision": result.revision,
                           "current": current.map(kv_json)})
                ),
                Output::Table => print_table(
                    &["key", "swapped", "revision", "current"],
                    &[vec![
                        key,
                        result.swapped.to_string(),
                        result.revision.to_string(),
                        current.map_or("<absent>".into(), |kv| text(&kv.value)),
                    ]],
                ),
                Output::Simple => match (result.swapped, current) {
                    (true, _) => println!("SWAPPED revision={}", result.revision),
                    (false, Some(kv)) => println!(
                        "NOT SWAPPED: current value is {:?} (mod_revision={})",
                        text(&kv.value),
                        kv.mod_revision
                    ),
                    (false, None) => println!("NOT SWAPPED: key does not exist"),
                },
            }
            Ok(if result.swapped { EXIT_OK } else { EXIT_FAILED })
        }
        Command::Get { key, read } => {
            let result: GetResult = client
                .get(key.clone(), &read_options(&read))
                .await
                .map_err(|error| failure(error, &endpoints, read.endpoint.as_deref()))?;
            let found = result.kv.is_some();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "get", "key": key, "found": found, "kv": result.kv.as_ref().map(kv_json),
                           "envelope": envelope_json(&result.envelope)})
                ),
                Output::Table => {
                    let row = match &result.kv {
                        Some(kv) => vec![
                            key,
                            text(&kv.value),
                            kv.mod_revision.to_string(),
                            envelope_text(&result.envelope),
                        ],
                        None => vec![
                            key,
                            "<absent>".into(),
                            "-".into(),
                            envelope_text(&result.envelope),
                        ],
                    };
                    print_table(&["key", "value", "mod_revision", "served by"], &[row]);
                }
                Output::Simple => match &result.kv {
                    Some(kv) => println!("{}", text(&kv.value)),
                    None => eprintln!("key {key:?} not found"),
                },
            }
            Ok(if found { EXIT_OK } else { EXIT_FAILED })
        }
        Command::Scan {
            prefix,
            start,
            end,
            limit,
            read,
        } => {
            let range = match prefix {
                Some(prefix) => ScanRange::Prefix(prefix.into_bytes()),
                None => ScanRange::Range {
                    start: start.unwrap_or_default().into_bytes(),
                    end: end.map(String::into_bytes),
                },
            };
            let result = client
                .scan(range, limit, &read_options(&read))
                .await
                .map_err(|error| failure(error, &endpoints, read.endpoint.as_deref()))?;
            match output {
                Output::Json => {
                    for kv in &result.kvs {
                        println!("{}", json!({"op": "scan", "kv": kv_json(kv)}));
                    }
                    println!(
                        "{}",
                        json!({"op": "scan-end", "count": result.kvs.len(), "more": result.more, "envelope": envelope_json(&result.envelope)})
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = result
                        .kvs
                        .iter()
                        .map(|kv| {
                            vec![
                                text(&kv.key),
                                text(&kv.value),
                                kv.mod_revision.to_string(),
                                kv.version.to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["key", "value", "mod_revision", "version"], &rows);
                    if result.more {
                        println!("(more keys in range: raise --limit)");
                    }
                }
                Output::Simple => {
                    for kv in &result.kvs {
                        println!("{}={}", text(&kv.key), text(&kv.value));
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Command::Watch {
            key,
            prefix,
            rev,
            prev_kv,
            count,
            endpoint,
        } => {
            let options = WatchOptions {
                range_end: if prefix {
                    raftkv_client::txn::prefix_end(key.as_bytes())
                } else {
                    Vec::new()
                },
                start_revision: rev,
                prev_kv,
                endpoint: endpoint.clone(),
            };
            let mut watch = client
                .watch(key.into_bytes(), &options)
                .await
                .map_err(|error| failure(error, &endpoints, endpoint.as_deref()))?;
            let mut printed = 0u64;
            while count.is_none_or(|count| printed < count) {
                let Some(response) = watch
                    .next()
                    .await
                    .map_err(|error| failure(error, &endpoints, endpoint.as_deref()))?
                else {
                    return Err(Failure {
                        message: "the node ended the watch (is it shutting down?)".to_string(),
                        code: EXIT_USAGE,
                    });
                };
                for event in &response.events {
                    if count.is_some_and(|count| printed >= count) {
                        break;
                    }
                    crate::watch::print_event(event, output);
                    printed += 1;
                }
            }
            Ok(EXIT_OK)
        }
        Command::Txn => {
            let mut input = String::new();
            std::io::stdin()
                .take(crate::txn::TXN_TEXT_BYTES_MAX)
                .read_to_string(&mut input)
                .map_err(|error| Failure {
                    message: format!("cannot read the transaction from stdin: {error}"),
                    code: EXIT_USAGE,
                })?;
            let txn = crate::txn::parse(&input).map_err(|message| Failure {
                message: format!("cannot read the transaction: {message}"),
                code: EXIT_USAGE,
            })?;
            let response = client.txn(txn).await.map_err(fail)?;
            crate::txn::print(&response, output);
            Ok(if response.succeeded {
                EXIT_OK
            } else {
                EXIT_FAILED
            })
        }
        Command::Compact { revision } => {
            let result = client
                .compact(revision)
                .await
                .map_err(|error| failure(error, &endpoints, None))?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "compact", "revision": result.revision, "compact_revision": result.compact_revision})
                ),
                Output::Table => print_table(
                    &["compact_revision", "revision"],
                    &[vec![
                        result.compact_revision.to_string(),
                        result.revision.to_string(),
                    ]],
                ),
                Output::Simple => println!("compacted revision {}", result.compact_revision),
            }
            Ok(EXIT_OK)
        }
        Command::Status => Ok(print_status(&client, output).await),
        Command::Lease { action } => crate::lease::run(action, &client, output, fail).await,
        Command::Lock {
            name,
            ttl,
            wait,
            command,
        } => crate::lock::run(&client, &name, ttl, wait, &command, output, fail).await,
        Command::Bench(args) => {
            let report = crate::bench::run(&args, client.config().clone())
                .await
                .map_err(|message| Failure {
                    message,
                    code: EXIT_USAGE,
                })?;
            match output {
                Output::Json => println!("{}", report.json()),
                Output::Table | Output::Simple => {
                    let (header, rows) = report.table();
                    print_table(&header, &rows);
                    if !report.errors.is_empty() {
                        let kinds: Vec<String> = report
                            .errors
                            .iter()
                            .map(|(kind, count)| format!("{kind}={count}"))
                            .collect();
                        println!("errors: {}", kinds.join(" "));
                    }
                }
            }
            // Some operations failed: the figures are printed, and the exit code says they are not clean.
            Ok(if report.errors.is_empty() {
                EXIT_OK
            } else {
                EXIT_FAILED
            })
        }
        Command::Members { action } => {
            let members = match action.unwrap_or(MembersAction::List) {
                MembersAction::List => client.members().await,
                MembersAction::AddLearner { id, address } => client.add_learner(id, &address).await,
                MembersAction::Promote { id } => client.promote(id).await,
                MembersAction::Remove { id } => client.remove_member(id).await,
                MembersAction::MoveLeader { id } => {
                    let moved = client.move_leader(id).await.map_err(fail)?;
                    match output {
                        Output::Json => println!("{}", json!({"leader_id": moved.leader_id})),
                        Output::Table | Output::Simple => {
                            println!("node {} leads", moved.leader_id)
                        }
                    }
                    return Ok(EXIT_OK);
                }
            }
            .map_err(fail)?;
            match output {
                Output::Json => {
                    for member in &members.members {
                        println!(
                            "{}",
                            json!({"node_id": member.node_id, "address": member.address, "voter": member.voter})
                        );
                    }
                }
                Output::Table | Output::Simple => {
                    let rows: Vec<Vec<String>> = members
                        .members
                        .iter()
                        .map(|member| {
                            vec![
                                member.node_id.to_string(),
                                member.address.clone(),
                                if member.voter { "voter" } else { "learner" }.to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["id", "address", "kind"], &rows);
                }
            }
            Ok(EXIT_OK)
        }
        Command::Completions { .. } => Ok(EXIT_OK),
    }
}

/// Prints one row per endpoint; an unreachable node is a row with its error. Exit 2 if no node answered.
async fn print_status(client: &Client, output: Output) -> u8 {
    let results = client.status_all().await;
    // The leader of the highest term: a deposed leader cut off from the rest may still think it leads.
    let leader_last_index = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .filter(|status| status.role == Role::Leader as i32)
        .max_by_key(|status| status.term)
        .map(|status| status.last_log_index);
    let lag = |status: &StatusResponse| {
        leader_last_index.map(|last| last.saturating_sub(status.applied_index))
    };
    match output {
        Output::Json => {
            for (endpoint, result) in &results {
                let row = match result {
                    Ok(status) => json!({
                        "endpoint": endpoint, "id": status.node_id, "role": role_name(status.role), "term": status.term,
                        "leader": (status.leader_id != 0).then_some(status.leader_id), "commit_index": status.commit_index,
                        "applied_index": status.applied_index, "last_log_index": status.last_log_index,
                        "snapshot_index": status.snapshot_index, "lag_entries": lag(status),
                        "revision": status.revision, "compact_revision": status.compact_revision,
                        "millis_since_leader": status.millis_since_leader, "voters": status.voters,
                        "learners": status.learners, "error": Value::Null,
                    }),
                    Err(error) => json!({"endpoint": endpoint, "error": error.to_string()}),
                };
                println!("{row}");
            }
        }
        Output::Table | Output::Simple => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|(endpoint, result)| match result {
                    Ok(status) => vec![
                        status.node_id.to_string(),
                        endpoint.clone(),
                        role_name(status.role).to_string(),
                        status.term.to_string(),
                        if status.leader_id == 0 {
                            "none".to_string()
                        } else {
                            status.leader_id.to_string()
                        },
                        status.commit_index.to_string(),
                        status.applied_index.to_string(),
                        lag(status).map_or("?".to_string(), |lag| lag.to_string()),
                        status
                            .millis_since_leader
                            .map_or("never".to_string(), |millis| millis.to_string()),
                        String::new(),
                    ],
                    Err(error) => {
                        let mut row = vec!["?".to_string(), endpoint.clone()];
                        row.extend(std::iter::repeat_n("-".to_string(), 7));
                        row.push(error.to_string());
                        row
                    }
                })
                .collect();
            print_table(
                &[
                    "id",
                    "address",
                    "role",
                    "term",
                    "leader",
                    "commit",
                    "applied",
                    "lag",
                    "ms since leader",
                    "error",
                ],
                &rows,
            );
        }
    }
    if results.iter().any(|(_, result)| result.is_ok()) {
        EXIT_OK
    } else {
        EXIT_USAGE
    }
}
