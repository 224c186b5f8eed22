//! What this suite adds to raftkv-testkit (which starts the clusters, finds the binary, picks ports, makes
//! certificates and bounds every wait): checks that several tests share.

use raftkv_client::{Client, ReadOptions};

/// Sends `count` linearizable reads of `key` at once, all to the node at `endpoint`, and checks that each
/// saw `value`.
pub async fn read_at_once(client: &Client, endpoint: String, key: &str, value: &[u8], count: u64) {
    let options = ReadOptions {
        endpoint: Some(endpoint),
        ..Default::default()
    };
    let reads = (0..count).map(|_| client.get(key, &options));
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.expect("linearizable read").kv.unwrap().value, value);
    }
}
