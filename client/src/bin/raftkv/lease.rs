//! `raftkv lease grant|keep-alive|revoke|ttl|list`. Lease ids are written in hex, as etcdctl writes them, so
//! one tool's output is the other's input.

use std::time::Duration;

use clap::Subcommand;
use raftkv_client::{Client, ClientError};
use serde_json::json;

use crate::cli::{print_table, Failure, Output, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::txn::text;

/// How often `lease keep-alive` renews, as a share of the TTL: three times per TTL, as etcd's client does.
pub const KEEP_ALIVE_PER_TTL: u32 = 3;

#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Grant a lease of TTL seconds (the cluster raises it to its minimum); prints its id.
    Grant {
        ttl: i64,
        /// Ask for this id (hex) instead of one drawn by the leader.
        #[arg(long, value_parser = parse_lease_id)]
        id: Option<i64>,
    },
    /// Keep lease ID alive until interrupted (or once, with --once); exits 1 when it is gone.
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke lease ID, deleting its keys.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// How long lease ID has left, as the leader counts (with --keys: the keys attached).
    Ttl {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        #[arg(long)]
        keys: bool,
    },
    /// Every lease's id.
    List,
}

/// A lease id as etcdctl writes it: 16 hex digits.
pub fn lease_hex(id: i64) -> String {
    format!("{id:016x}")
}

/// A lease id in hex (as etcdctl prints it), positive.
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    match i64::from_str_radix(text.trim_start_matches("0x"), 16) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!(
            "{text:?} is not a lease id: a positive number in hex, as `lease grant` prints it"
        )),
    }
}

/// Runs one lease command.
pub async fn run(
    action: LeaseAction,
    client: &Client,
    output: Output,
    fail: impl Fn(ClientError) -> Failure,
) -> Result<u8, Failure> {
    match action {
        LeaseAction::Grant { ttl, id } => {
            if ttl <= 0 {
                return Err(Failure {
                    message: format!("TTL {ttl} is not a number of seconds above 0"),
                    code: EXIT_USAGE,
                });
            }
            let (id, ttl) = client
                .lease_grant(ttl, id.unwrap_or(0))
                .await
                .map_err(&fail)?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "lease-grant", "id": lease_hex(id), "ttl": ttl})
                ),
                Output::Table => {
                    print_table(&["id", "ttl"], &[vec![lease_hex(id), ttl.to_string()]])
                }
                Output::Simple => println!("lease {} granted with TTL({ttl}s)", lease_hex(id)),
            }
            Ok(EXIT_OK)
        }
        LeaseAction::KeepAlive { id, once } => loop {
            let Some(ttl) = client.lease_keep_alive(id).await.map_err(&fail)? else {
                match output {
                    Output::Json => println!(
                        "{}",
                        json!({"op": "lease-keep-alive", "id": lease_hex(id), "ttl": 0})
                    ),
                    _ => println!("lease {} expired or revoked.", lease_hex(id)),
                }
                return Ok(EXIT_FAILED);
            };
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "lease-keep-alive", "id": lease_hex(id), "ttl": ttl})
                ),
                _ => println!("lease {} keepalived with TTL({ttl})", lease_hex(id)),
            }
            if once {
                return Ok(EXIT_OK);
            }
            tokio::time::sleep(Duration::from_secs(ttl.max(1) as u64) / KEEP_ALIVE_PER_TTL).await;
        },
        LeaseAction::Revoke { id } => {
            let revision = client.lease_revoke(id).await.map_err(&fail)?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "lease-revoke", "id": lease_hex(id), "revision": revision})
                ),
                _ => println!("lease {} revoked", lease_hex(id)),
            }
            Ok(EXIT_OK)
        }
        LeaseAction::Ttl { id, keys } => {
            let status = client.lease_time_to_live(id, keys).await.map_err(&fail)?;
            let Some(status) = status else {
                match output {
                    Output::Json => println!(
                        "{}",
                        json!({"op": "lease-ttl", "id": lease_hex(id), "found": false})
                    ),
                    _ => println!("lease {} already expired", lease_hex(id)),
                }
                return Ok(EXIT_FAILED);
            };
            let key_names: Vec<String> = status.keys.iter().map(|key| text(key)).collect();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"op": "lease-ttl", "id": lease_hex(id), "found": true,
                           "ttl": status.remaining, "granted_ttl": status.granted_ttl, "keys": key_names})
                ),
                Output::Table => print_table(
                    &["id", "ttl", "granted_ttl", "keys"],
                    &[vec![
                        lease_hex(id),
                        status.remaining.to_string(),
                        status.granted_ttl.to_string(),
                        key_names.join(","),
                    ]],
                ),
                Output::Simple => {
                    print!(
                        "lease {} granted with TTL({}s), remaining({}s)",
                        lease_hex(id),
                        status.granted_ttl,
                        status.remaining
                    );
                    if keys {
                        print!(", attached keys({})", key_names.join(" "));
                    }
                    println!();
                }
            }
            Ok(EXIT_OK)
        }
        LeaseAction::List => {
            let ids = client.lease_list().await.map_err(&fail)?;
            match output {
                Output::Json => {
                    for id in &ids {
                        println!("{}", json!({"op": "lease-list", "id": lease_hex(*id)}));
                    }
                }
                Output::Table => print_table(
                    &["id"],
                    &ids.iter()
                        .map(|id| vec![lease_hex(*id)])
                        .collect::<Vec<_>>(),
                ),
                Output::Simple => {
                    println!("found {} leases", ids.len());
                    for id in ids {
                        println!("{}", lease_hex(id));
                    }
                }
            }
            Ok(EXIT_OK)
        }
    }
}
