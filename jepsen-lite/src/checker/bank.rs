//! The bank checker: money is neither created nor destroyed, no balance goes below zero, and no acknowledged
//! transfer is lost.
//!
//! The bank workload opens its accounts with one `write` of key `bank` whose value is every account's opening
//! balance (`{"a0": 100, ...}`), moves amounts with `transfer`s (`{"from", "to", "amount"}`) and reads every
//! balance with `read`s of key `bank` (an `ok` read's value is `{"a0": 98, ...}`). The rules:
//!
//! - **Total**: every `ok` read sees every account, and the balances add up to the opening total.
//! - **Negative**: no `ok` read shows a balance below zero.
//! - **Lost transfer**: a final read (extra `final: true`) shows each account's opening balance plus the
//!   effect of every `ok` transfer on it plus the effect of some subset of the transfers whose outcome is
//!   unknown (`info` or never completed) that touch it. A difference no such subset makes is a lost (or a
//!   phantom) transfer. (Past `SUBSET_SUMS_MAX` possible sums the check falls back to the sum of those
//!   amounts as a bound: still sound, less sharp.)
//!
//! Without the opening write, or without any `ok` read, there is nothing to check against: unknown.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{CheckError, Verdict};
use crate::history::{Function, History, Operation, Status};

/// The key of the bank workload's operations.
pub const BANK_KEY: &str = "bank";
/// Distinct sums of indeterminate transfers tracked per account before the check falls back to a bound.
pub const SUBSET_SUMS_MAX: usize = 100_000;
/// Anomalies listed in the report (the counts are always exact).
pub const REPORTED_ANOMALIES_MAX: usize = 100;

/// What a read or the final state got wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BankAnomaly {
    /// A read's balances do not add up to the opening total (or it misses an account).
    WrongTotal {
        read_op: usize,
        total: i64,
        expected: i64,
    },
    /// A read shows a balance below zero.
    Negative {
        read_op: usize,
        account: String,
        balance: i64,
    },
    /// A final read's balance is further from what the acknowledged transfers explain than the transfers of
    /// unknown outcome can account for.
    LostTransfer {
        read_op: usize,
        account: String,
        balance: i64,
        expected: i64,
        slack: i64,
    },
}

/// The total seen over time: one point per `ok` read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TotalPoint {
    /// When the read returned, in nanoseconds of the history's clock.
    pub time: u64,
    pub total: i64,
}

/// The bank checker's verdict and figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BankReport {
    pub verdict: Verdict,
    pub accounts: usize,
    pub opening_total: Option<i64>,
    pub reads_checked: usize,
    pub transfers_ok: usize,
    pub transfers_indeterminate: usize,
    pub anomalies_count: usize,
    pub anomalies: Vec<BankAnomaly>,
    /// The total every `ok` read saw, in time order (the report draws it).
    pub totals: Vec<TotalPoint>,
    pub explanation: String,
}

/// Balances of an object value, by account; `None` if it is not an object of integers.
fn balances(value: &Value) -> Option<BTreeMap<String, i64>> {
    value
        .as_object()?
        .iter()
        .map(|(account, balance)| Some((account.clone(), balance.as_i64()?)))
        .collect()
}

/// A transfer's `(from, to, amount)`.
fn transfer_of(operation: &Operation) -> Result<(String, String, i64), CheckError> {
    let field = |name: &str| operation.input.get(name);
    match (
        field("from").and_then(Value::as_str),
        field("to").and_then(Value::as_str),
        field("amount").and_then(Value::as_i64),
    ) {
        (Some(from), Some(to), Some(amount)) => Ok((from.to_string(), to.to_string(), amount)),
        _ => Err(CheckError::BadOperation {
            index: operation.index,
            line: operation.invoke_line,
            problem: format!(
                "a transfer's value must be {{\"from\", \"to\", \"amount\"}}, found {}",
                operation.input
            ),
        }),
    }
}

/// Whether some subset of `effects` adds up to `difference` (past `SUBSET_SUMS_MAX` sums: whether the
/// difference is within their total, a sound but weaker test).
fn explained_by_some(effects: &[i64], difference: i64) -> bool {
    let mut sums = std::collections::HashSet::from([0i64]);
    for effect in effects {
        let next: Vec<i64> = sums.iter().map(|sum| sum + effect).collect();
        sums.extend(next);
        if sums.len() > SUBSET_SUMS_MAX {
            let total: i64 = effects.iter().map(|effect| effect.abs()).sum();
            return difference.abs() <= total;
        }
    }
    sums.contains(&difference)
}

/// Checks the bank operations of `history` (key `bank`).
pub fn check(history: &History) -> Result<BankReport, CheckError> {
    let operations: Vec<&Operation> = history
        .operations
        .iter()
        .filter(|operation| operation.key == BANK_KEY)
        .collect();
    let opening = operations
        .iter()
        .find(|operation| operation.f == Function::Write && operation.status == Status::Ok)
        .and_then(|operation| balances(&operation.input));
    let mut anomalies = Vec::new();
    let mut totals = Vec::new();
    let mut reads_checked = 0;
    // Per account: the effect of ok transfers, and the amounts of the transfers whose outcome is unknown.
    let mut effect: BTreeMap<String, i64> = BTreeMap::new();
    // Per account: the effects (+amount / -amount) of the transfers whose outcome is unknown.
    let mut unknown: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let (mut transfers_ok, mut transfers_indeterminate) = (0, 0);
    for operation in &operations {
        if operation.f != Function::Transfer {
            continue;
        }
        let (from, to, amount) = transfer_of(operation)?;
        match operation.status {
            Status::Ok => {
                transfers_ok += 1;
                *effect.entry(from).or_default() -= amount;
                *effect.entry(to).or_default() += amount;
            }
            Status::Info | Status::Pending => {
                transfers_indeterminate += 1;
                unknown.entry(from).or_default().push(-amount);
                unknown.entry(to).or_default().push(amount);
            }
            Status::Fail => {}
        }
    }
    let Some(opening) = opening else {
        return Ok(BankReport {
            verdict: Verdict::Unknown,
            accounts: 0,
            opening_total: None,
            reads_checked,
            transfers_ok,
            transfers_indeterminate,
            anomalies_count: 0,
            anomalies,
            totals,
            explanation: "no successful opening of the accounts: nothing to check against"
                .to_string(),
        });
    };
    let expected_total: i64 = opening.values().sum();
    for operation in &operations {
        if operation.f != Function::Read || operation.status != Status::Ok {
            continue;
        }
        let read = operation
            .output
            .as_ref()
            .and_then(balances)
            .ok_or_else(|| CheckError::BadOperation {
                index: operation.index,
                line: operation.invoke_line,
                problem: "a bank read's value must be an object of integer balances".to_string(),
            })?;
        reads_checked += 1;
        let total: i64 = read.values().sum();
        totals.push(TotalPoint {
            time: operation.complete_time.unwrap_or(operation.invoke_time),
            total,
        });
        let every_account = opening.keys().all(|account| read.contains_key(account));
        if total != expected_total || !every_account {
            anomalies.push(BankAnomaly::WrongTotal {
                read_op: operation.index,
                total,
                expected: expected_total,
            });
        }
        for (account, balance) in &read {
            if *balance < 0 {
                anomalies.push(BankAnomaly::Negative {
                    read_op: operation.index,
                    account: account.clone(),
                    balance: *balance,
                });
            }
        }
        let is_final = operation.extra.get("final").and_then(Value::as_bool) == Some(true);
        if is_final {
            for (account, opening_balance) in &opening {
                let expected = opening_balance + effect.get(account).copied().unwrap_or(0);
                let effects = unknown.get(account).map_or(&[][..], Vec::as_slice);
                let allowed = effects.iter().map(|effect| effect.abs()).sum();
                let balance = read.get(account).copied().unwrap_or(0);
                if !explained_by_some(effects, balance - expected) {
                    anomalies.push(BankAnomaly::LostTransfer {
                        read_op: operation.index,
                        account: account.clone(),
                        balance,
                        expected,
                        slack: allowed,
                    });
                }
            }
        }
    }
    let anomalies_count = anomalies.len();
    let (verdict, explanation) = if anomalies_count > 0 {
        (
            Verdict::Invalid,
            format!("{anomalies_count} anomalies: money created or destroyed, a negative balance or a lost transfer"),
        )
    } else if reads_checked == 0 {
        (
            Verdict::Unknown,
            "no successful read of the balances: nothing to check".to_string(),
        )
    } else {
        (
            Verdict::Valid,
            format!("{reads_checked} reads all saw the total of {expected_total} and no negative balance; the final balances account for every acknowledged transfer"),
        )
    };
    anomalies.truncate(REPORTED_ANOMALIES_MAX);
    Ok(BankReport {
        verdict,
        accounts: opening.len(),
        opening_total: Some(expected_total),
        reads_checked,
        transfers_ok,
        transfers_indeterminate,
        anomalies_count,
        anomalies,
        totals,
        explanation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_must_be_the_sum_of_some_unknown_transfers() {
        assert!(explained_by_some(&[], 0));
        assert!(!explained_by_some(&[], 3));
        assert!(explained_by_some(&[5, -2], 3), "both happened");
        assert!(explained_by_some(&[5, -2], -2), "only the second");
        assert!(
            !explained_by_some(&[5], 2),
            "within the total, yet no subset makes it: a lost transfer hides no more"
        );
        assert!(!explained_by_some(&[5, -2], 4));
    }
}
