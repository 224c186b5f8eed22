//! `raftkv txn`: a transaction read from stdin in `etcdctl txn`'s syntax, and its result printed.
//!
//! Three blocks separated by a blank line: compares, then the operations run if every compare holds, then
//! those run otherwise.
//!
//! ```text
//! value("stock") = "3"
//! mod("order/7") = "0"
//!
//! put stock 2
//! put order/7 "two apples"
//!
//! get stock
//! ```
//!
//! A compare is `FIELD("KEY") OP "TARGET"` with FIELD one of `value` (`val`), `version` (`ver`), `mod`
//! (`m`), `create` (`c`) and OP one of `=`, `!=`, `>`, `<`. An operation is `put KEY VALUE`, `get KEY [END]`,
//! `get --prefix KEY`, `del KEY [END]` or `del --prefix KEY`. Words with spaces go in double quotes
//! (`\"` and `\\` inside).

use raftkv_client::txn::{self, CompareOp, Txn, TxnOp, TxnOpResult, TxnResponse};
use serde_json::{json, Value};

use crate::cli::{print_table, Output};

/// Most bytes of transaction text read from stdin (the server's own limit on a transaction is lower).
pub const TXN_TEXT_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Splits a line into words: whitespace separates, double quotes group (with `\"` and `\\` escapes).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&next) = chars.peek() {
        if next.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if next == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted word is not closed".to_string()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped @ ('"' | '\\')) => word.push(escaped),
                        _ => return Err("inside quotes, \\ may only escape \" or \\".to_string()),
                    },
                    Some(other) => word.push(other),
                }
            }
        } else {
            while let Some(&next) = chars.peek() {
                if next.is_whitespace() {
                    break;
                }
                word.push(next);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

fn parse_compare(line: &str) -> Result<txn::Compare, String> {
    let (field, rest) = line
        .split_once('(')
        .ok_or("a compare looks like value(\"key\") = \"v\"")?;
    let (key, rest) = rest
        .split_once(')')
        .ok_or("the key of a compare is closed with )")?;
    let key = match words(key)?.as_slice() {
        [key] => key.clone(),
        _ => return Err("a compare names one key, in quotes".to_string()),
    };
    let (op, target) = match words(rest)?.as_slice() {
        [op, target] => (op.clone(), target.clone()),
        _ => return Err("a compare has an operator and a target: = \"v\"".to_string()),
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        other => return Err(format!("unknown operator {other:?}: use =, !=, > or <")),
    };
    let number = |what: &str| {
        target
            .parse::<u64>()
            .map_err(|_| format!("{what} is compared with a number, not {target:?}"))
    };
    Ok(match field.trim() {
        "value" | "val" => txn::compare_value(key, op, target.clone()),
        "version" | "ver" => txn::compare_version(key, op, number("a version")?),
        "mod" | "m" => txn::compare_mod_revision(key, op, number("a mod revision")?),
        "create" | "c" => txn::compare(
            key,
            op,
            txn::CompareTarget::CreateRevision(number("a create revision")?),
        ),
        other => {
            return Err(format!(
                "unknown compare field {other:?}: use value, version, mod or create"
            ))
        }
    })
}

fn parse_op(line: &str) -> Result<TxnOp, String> {
    let words = words(line)?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["put", key, value] => txn::put(*key, *value),
        ["get", "--prefix", key] => {
            txn::get_range(*key, txn::prefix_end(key.as_bytes()), 0)
        }
        ["get", key] => txn::get(*key),
        ["get", key, end] => txn::get_range(*key, *end, 0),
        ["del", "--prefix", key] => txn::delete_range(*key, txn::prefix_end(key.as_bytes())),
        ["del", key] => txn::delete(*key),
        ["del", key, end] => txn::delete_range(*key, *end),
        _ => {
            return Err(
                "an operation is put KEY VALUE, get KEY [END], get --prefix KEY, del KEY [END] or del --prefix KEY"
                    .to_string(),
            )
        }
    })
}

/// Parses the three blocks of a transaction.
pub fn parse(text: &str) -> Result<Txn, String> {
    let mut txn = Txn::default();
    let mut block = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            block += 1;
            continue;
        }
        let at = |error: String| format!("line {}: {error}", number + 1);
        match block {
            0 => txn.compares.push(parse_compare(line).map_err(at)?),
            1 => txn.success.push(parse_op(line).map_err(at)?),
            2 => txn.failure.push(parse_op(line).map_err(at)?),
            _ => return Err(at(
                "a transaction has three blocks (compares, then, else) separated by one blank line"
                    .to_string(),
            )),
        }
    }
    Ok(txn)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn result_json(result: &TxnOpResult) -> Value {
    let kv = |kv: &raftkv_client::KeyValue| {
        json!({"key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision,
               "mod_revision": kv.mod_revision, "version": kv.version})
    };
    match result {
        TxnOpResult::Get(get) => {
            json!({"op": "get", "kvs": get.kvs.iter().map(kv).collect::<Vec<_>>(),
                                        "more": get.more, "count": get.count})
        }
        TxnOpResult::Put(put) => json!({"op": "put", "prev_kv": put.prev_kv.as_ref().map(kv)}),
        TxnOpResult::Delete(delete) => json!({"op": "delete", "deleted": delete.deleted,
                                              "prev_kvs": delete.prev_kvs.iter().map(kv).collect::<Vec<_>>()}),
    }
}

/// Prints the response as `output` asks: SUCCESS or FAILURE, then each operation's result.
pub fn print(response: &TxnResponse, output: Output) {
    let results: Vec<&TxnOpResult> = response
        .results
        .iter()
        .filter_map(|result| result.result.as_ref())
        .collect();
    let verdict = if response.succeeded {
        "SUCCESS"
    } else {
        "FAILURE"
    };
    match output {
        Output::Json => println!(
            "{}",
            json!({"op": "txn", "succeeded": response.succeeded, "revision": response.revision,
                   "results": results.iter().map(|result| result_json(result)).collect::<Vec<_>>()})
        ),
        Output::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|result| match result {
                    TxnOpResult::Get(get) => vec![
                        "get".to_string(),
                        get.kvs
                            .iter()
                            .map(|kv| format!("{}={}", text(&kv.key), text(&kv.value)))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ],
                    TxnOpResult::Put(_) => vec!["put".to_string(), "OK".to_string()],
                    TxnOpResult::Delete(delete) => {
                        vec!["delete".to_string(), format!("{} deleted", delete.deleted)]
                    }
                })
                .collect();
            println!("{verdict} revision={}", response.revision);
            print_table(&["operation", "result"], &rows);
        }
        Output::Simple => {
            println!("{verdict}");
            for result in results {
                match result {
                    TxnOpResult::Get(get) => {
                        for kv in &get.kvs {
                            println!("{}\n{}", text(&kv.key), text(&kv.value));
                        }
                    }
                    TxnOpResult::Put(_) => println!("OK"),
                    TxnOpResult::Delete(delete) => println!("{}", delete.deleted),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctls_syntax_is_read_block_by_block() {
        let parsed = parse(
            "value(\"stock\") = \"3\"\nmod(\"order/7\") = \"0\"\n\nput stock 2\nput order/7 \"two apples\"\n\nget stock\ndel --prefix order/\n",
        )
        .unwrap();
        assert_eq!(parsed.compares.len(), 2);
        assert_eq!(
            parsed.compares[0],
            txn::compare_value("stock", CompareOp::Equal, "3")
        );
        assert_eq!(
            parsed.compares[1],
            txn::compare_mod_revision("order/7", CompareOp::Equal, 0)
        );
        assert_eq!(
            parsed.success,
            [txn::put("stock", "2"), txn::put("order/7", "two apples")]
        );
        assert_eq!(
            parsed.failure,
            [txn::get("stock"), txn::delete_range("order/", "order0")]
        );
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (input, words) in [
            ("value(\"k\") ~ \"v\"", "line 1: unknown operator"),
            ("mod(\"k\") > \"x\"", "compared with a number"),
            ("\nput k", "line 2: an operation is"),
            ("\n\n\n\nput k v", "three blocks"),
            ("value(\"k) = \"v\"", "line 1:"),
            ("\nput \"k v", "not closed"),
        ] {
            let error = parse(input).unwrap_err();
            assert!(error.contains(words), "{input:?}: {error}");
        }
    }
}
