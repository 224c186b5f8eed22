//! `raftkv watch`: how an event is printed (etcdctl's lines, or one JSON object per event).

use raftkv_client::{EventKind, KeyValue, WatchEvent};
use serde_json::json;

use crate::cli::Output;
use crate::txn::text;

/// Prints one watch event: etcdctl's lines (`PUT` or `DELETE`, the previous key and value if asked, then the
/// key and value) in simple and table form, one JSON object per event with `-w json`.
pub fn print_event(event: &WatchEvent, output: Output) {
    let kind = match EventKind::try_from(event.kind) {
        Ok(EventKind::Delete) => "delete",
        _ => "put",
    };
    let empty = KeyValue::default();
    let kv = event.kv.as_ref().unwrap_or(&empty);
    match output {
        Output::Json => println!(
            "{}",
            json!({"op": "watch", "type": kind, "key": text(&kv.key), "value": text(&kv.value),
                   "create_revision": kv.create_revision, "mod_revision": kv.mod_revision,
                   "version": kv.version,
                   "prev_kv": event.prev_kv.as_ref().map(|prev| json!({"key": text(&prev.key),
                       "value": text(&prev.value), "mod_revision": prev.mod_revision}))})
        ),
        Output::Simple | Output::Table => {
            println!("{}", kind.to_uppercase());
            if let Some(prev) = &event.prev_kv {
                println!("{}\n{}", text(&prev.key), text(&prev.value));
            }
            println!("{}\n{}", text(&kv.key), text(&kv.value));
        }
    }
}
