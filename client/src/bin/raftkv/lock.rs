//! `raftkv lock NAME [--ttl S] [--wait D] [-- CMD ARGS...]`: holds lock NAME (the client library's lease-backed
//! recipe) while CMD runs, and hands CMD the fencing token in its environment; without CMD, holds it until
//! interrupted. The lease is kept alive meanwhile; if it is lost (the cluster expired it), CMD is killed and
//! the exit code is 1: the lock may already be someone else's.

use std::time::Duration;

use raftkv_client::{Client, ClientError, LockHold};
use serde_json::json;

use crate::cli::{Failure, Output, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::lease::{lease_hex, KEEP_ALIVE_PER_TTL};
use crate::txn::text;

/// The fencing token: the create revision of the holder's key, which grows with every new holder.
pub const ENV_LOCK_REVISION: &str = "RAFTKV_LOCK_REVISION";
/// The key that stands for the hold.
pub const ENV_LOCK_KEY: &str = "RAFTKV_LOCK_KEY";
/// The lease that holds it, in hex.
pub const ENV_LOCK_LEASE: &str = "RAFTKV_LOCK_LEASE";

/// Runs `raftkv lock`.
pub async fn run(
    client: &Client,
    name: &str,
    ttl: i64,
    wait: Option<Duration>,
    command: &[String],
    output: Output,
    fail: impl Fn(ClientError) -> Failure,
) -> Result<u8, Failure> {
    if name.is_empty() || ttl <= 0 {
        return Err(Failure {
            message: "a lock needs a NAME and a --ttl above 0 seconds".to_string(),
            code: EXIT_USAGE,
        });
    }
    let (lease, ttl) = client.lease_grant(ttl, 0).await.map_err(&fail)?;
    let outcome = hold(client, name, lease, ttl, wait, command, output).await;
    // Releasing the lease deletes the lock's key: the next waiter goes on at once.
    let _ = client.lease_revoke(lease).await;
    outcome.map_err(|error| match error {
        Held::Client(error) => fail(error),
        Held::Spawn(message) => Failure {
            message,
            code: EXIT_USAGE,
        },
    })
}

enum Held {
    Client(ClientError),
    Spawn(String),
}

async fn hold(
    client: &Client,
    name: &str,
    lease: i64,
    ttl: i64,
    wait: Option<Duration>,
    command: &[String],
    output: Output,
) -> Result<u8, Held> {
    let keep_alive = keep_alive(client.clone(), lease, ttl);
    tokio::pin!(keep_alive);
    let hold = tokio::select! {
        hold = client.lock(name, lease, wait) => hold.map_err(Held::Client)?,
        lost = &mut keep_alive => return Err(Held::Client(lost)),
    };
    match output {
        Output::Json => println!(
            "{}",
            json!({"op": "lock", "key": text(&hold.key), "revision": hold.revision, "lease": lease_hex(lease)})
        ),
        _ => eprintln!(
            "raftkv: holding lock {name} (key {}, fencing token {})",
            text(&hold.key),
            hold.revision
        ),
    }
    let Some((program, arguments)) = command.split_first() else {
        // No command: hold until interrupted.
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
            lost = &mut keep_alive => return Err(Held::Client(lost)),
        }
    };
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .envs(lock_environment(&hold, lease))
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| Held::Spawn(format!("cannot run {program:?}: {error}")))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|error| Held::Spawn(format!("waiting for {program:?} failed: {error}")))?;
            Ok(status.code().map_or(EXIT_FAILED, |code| u8::try_from(code).unwrap_or(EXIT_FAILED)))
        }
        lost = &mut keep_alive => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            eprintln!("raftkv: lost lock {name}: {lost}; stopped {program:?}, whose work may overlap the next holder's (check its fencing token)");
            Ok(EXIT_FAILED)
        }
    }
}

/// What the command finds in its environment.
fn lock_environment(hold: &LockHold, lease: i64) -> [(&'static str, String); 3] {
    [
        (ENV_LOCK_REVISION, hold.revision.to_string()),
        (ENV_LOCK_KEY, text(&hold.key)),
        (ENV_LOCK_LEASE, lease_hex(lease)),
    ]
}

/// Keeps the lease alive, `KEEP_ALIVE_PER_TTL` times per TTL; returns only when it is lost (gone, or not
/// renewed within its TTL).
async fn keep_alive(client: Client, lease: i64, ttl: i64) -> ClientError {
    let ttl = Duration::from_secs(ttl.max(1) as u64);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / KEEP_ALIVE_PER_TTL).await;
        // The lease runs from when a renewal was asked, and a renewal that has not come back by the time
        // the last one runs out is no renewal: the lock is lost then, not when the call gives up.
        let asked = tokio::time::Instant::now();
        let call = client.lease_keep_alive(lease);
        let answer = match tokio::time::timeout_at(renewed + ttl, call).await {
            Ok(answer) => answer,
            Err(_) => {
                return ClientError::LeaseNotFound(format!(
                    "lease {} not renewed within its TTL",
                    lease_hex(lease)
                ))
            }
        };
        match answer {
            Ok(Some(_)) => renewed = asked,
            Ok(None) => {
                return ClientError::LeaseNotFound(format!(
                    "lease {} expired or was revoked",
                    lease_hex(lease)
                ))
            }
            Err(error) if renewed.elapsed() >= ttl => {
                return ClientError::LeaseNotFound(format!(
                    "lease {} not renewed for its whole TTL ({error})",
                    lease_hex(lease)
                ))
            }
            Err(_) => {}
        }
    }
}
