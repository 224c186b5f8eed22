//! Measures what applying costs in sled: entries of `WRITES` puts each (10,000 keys, 256-byte values) applied
//! to a `Keyspace`, without sessions and then with a fresh session per write (what `Client::put` sends, so
//! once the table is full every write also evicts a session). Prints microseconds per entry and per write.
//!
//! `cargo run --release -p raftkv-server --example keyspace_apply -- [ENTRIES] [WRITES]`

use std::time::Instant;

use raftkv_server::kv::state_machine::{Batch, Command, Request, SessionRef};
use raftkv_server::storage::Keyspace;

/// Entries applied in each of the two runs when the command line does not say.
const ENTRIES_DEFAULT: u64 = 20_000;
/// Keys written (round robin).
const KEYS: u64 = 10_000;
/// Bytes of each value.
const VALUE_BYTES: usize = 256;

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: u64 = args.next().map_or(ENTRIES_DEFAULT, |arg| {
        arg.parse().expect("ENTRIES is a number")
    });
    let writes: u64 = args
        .next()
        .map_or(1, |arg| arg.parse().expect("WRITES is a number"));
    let mut keyspace = Keyspace::temporary().expect("a temporary keyspace");
    let mut index = 0;
    let mut next_client = 1;
    for with_sessions in [false, true] {
        let started = Instant::now();
        for _ in 0..entries {
            index += 1;
            let batch = Batch {
                writes: (0..writes)
                    .map(|write| {
                        let session = with_sessions.then(|| {
                            next_client += 1;
                            SessionRef {
                                client_id: next_client,
                                sequence: 1,
                            }
                        });
                        Request {
                            session,
                            command: Command::Put {
                                key: format!("k{}", (index * writes + write) % KEYS).into_bytes(),
                                value: vec![7; VALUE_BYTES],
                            },
                        }
                    })
                    .collect(),
            };
            keyspace.apply(index, &batch).expect("apply");
        }
        let micros = started.elapsed().as_micros() as f64;
        println!(
            "sessions {with_sessions}: {:.1} us per entry, {:.1} us per write",
            micros / entries as f64,
            micros / (entries * writes) as f64
        );
    }
}
