//! What a benchmark run measured, and how it is printed: latency histograms (HDR, microseconds) summarised
//! into percentiles, throughput, errors by kind, as a table or one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Smallest latency the histogram tells apart, in microseconds.
pub const LATENCY_US_LOWEST: u64 = 1;
/// Largest latency the histogram holds, in microseconds; a slower operation is recorded as this.
pub const LATENCY_US_HIGHEST: u64 = 120_000_000;
/// Significant decimal digits kept at every magnitude (0.1% relative error).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(
        LATENCY_US_LOWEST,
        LATENCY_US_HIGHEST,
        LATENCY_SIGNIFICANT_DIGITS,
    )
    .expect("the latency histogram bounds are valid")
}

/// Records one latency.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(LATENCY_US_LOWEST));
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count, "mean_us": (self.mean_us * 10.0).round() / 10.0, "p50_us": self.p50_us,
            "p90_us": self.p90_us, "p99_us": self.p99_us, "p999_us": self.p999_us, "max_us": self.max_us,
        })
    }
}

/// Everything one run measured, with the parameters that produced it.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub workload: &'static str,
    /// Read consistency, for workloads that read.
    pub consistency: Option<&'static str>,
    /// Fraction of reads, for the mixed workload.
    pub read_ratio: Option<f64>,
    pub clients: usize,
    pub connections: usize,
    pub rate_per_second: Option<f64>,
    pub key_space: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// From the first operation's start to the last one's end.
    pub elapsed: Duration,
    /// Operations that succeeded, per kind ("put", "get").
    pub ok: BTreeMap<&'static str, u64>,
    /// Operations that failed, per error kind.
    pub errors: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    /// Per operation kind, when the workload mixes them.
    pub latency_by_operation: BTreeMap<&'static str, LatencySummary>,
    /// CPU time of this process (user + system) over `elapsed`, in percent of one core.
    pub client_cpu_percent: Option<f64>,
}

impl Report {
    pub fn ok_total(&self) -> u64 {
        self.ok.values().sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok_total() as f64 / seconds
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Value {
        let by_operation: serde_json::Map<String, Value> = self
            .latency_by_operation
            .iter()
            .map(|(operation, summary)| (operation.to_string(), summary.json()))
            .collect();
        json!({
            "target": self.target, "workload": self.workload, "consistency": self.consistency,
            "read_ratio": self.read_ratio, "clients": self.clients, "connections": self.connections,
            "rate_per_second": self.rate_per_second, "key_space": self.key_space, "key_size": self.key_size,
            "value_size": self.value_size,
            "ops": self.ok_total() + self.errors_total(), "ok": self.ok_total(), "ok_by_operation": self.ok,
            "errors": self.errors_total(), "errors_by_kind": self.errors,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "throughput_ops_per_s": self.throughput().round(),
            "latency": self.latency.json(), "latency_by_operation": by_operation,
            "client_cpu_percent": self.client_cpu_percent.map(|percent| percent.round()),
        })
    }

    /// Header and rows for a table: one row for the whole run, one per operation kind when mixed.
    pub fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "target", "workload", "ops", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms",
            "p99.9 ms", "max ms",
        ];
        let workload = match (self.workload, self.consistency) {
            ("put" | "load", _) | (_, None) => self.workload.to_string(),
            (workload, Some(consistency)) => format!("{workload} ({consistency})"),
        };
        let row =
            |name: String, ops: u64, errors: u64, throughput: f64, latency: &LatencySummary| {
                vec![
                    self.target.to_string(),
                    name,
                    ops.to_string(),
                    errors.to_string(),
                    format!("{throughput:.0}"),
                    millis(latency.p50_us),
                    millis(latency.p90_us),
                    millis(latency.p99_us),
                    millis(latency.p999_us),
                    millis(latency.max_us),
                ]
            };
        let mut rows = vec![row(
            workload,
            self.ok_total() + self.errors_total(),
            self.errors_total(),
            self.throughput(),
            &self.latency,
        )];
        for (operation, summary) in &self.latency_by_operation {
            let seconds = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
            rows.push(row(
                format!("  {operation}"),
                summary.count,
                0,
                summary.count as f64 / seconds,
                summary,
            ));
        }
        (header, rows)
    }
}

fn millis(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(micros: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = histogram();
        for value in micros {
            record(&mut histogram, Duration::from_micros(value));
        }
        histogram
    }

    /// Within the histogram's relative error of `expected`.
    #[track_caller]
    fn assert_near(actual: u64, expected: u64) {
        let tolerance = (expected / 500).max(1);
        assert!(
            actual.abs_diff(expected) <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let summary = LatencySummary::of(&histogram_of(1..=10_000));
        assert_eq!(summary.count, 10_000);
        assert_near(summary.p50_us, 5_000);
        assert_near(summary.p90_us, 9_000);
        assert_near(summary.p99_us, 9_900);
        assert_near(summary.p999_us, 9_990);
        assert_near(summary.max_us, 10_000);
        assert!((summary.mean_us - 5_000.5).abs() < 10.0, "{summary:?}");
    }

    #[test]
    fn one_slow_operation_in_a_thousand_shows_at_the_max_not_the_p99() {
        let summary = LatencySummary::of(&histogram_of(
            std::iter::repeat_n(200, 999).chain([2_000_000]),
        ));
        assert_near(summary.p99_us, 200);
        assert_near(summary.max_us, 2_000_000);
    }

    #[test]
    fn extremes_are_clamped_into_the_histogram() {
        let mut histogram = histogram();
        record(&mut histogram, Duration::ZERO);
        record(&mut histogram, Duration::from_secs(3600));
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 2);
        assert_near(summary.max_us, LATENCY_US_HIGHEST);
        assert_eq!(
            LatencySummary::of(&self::histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn worker_histograms_merge_into_the_run_summary() {
        let mut merged = histogram_of([100, 200]);
        merged.add(histogram_of([300, 400])).unwrap();
        assert_eq!(LatencySummary::of(&merged).count, 4);
        assert_near(LatencySummary::of(&merged).max_us, 400);
    }

    #[test]
    fn json_counts_every_operation_once_and_throughput_counts_successes() {
        let report = Report {
            target: "raftkv",
            workload: "mixed",
            consistency: Some("stale"),
            read_ratio: Some(0.5),
            clients: 2,
            connections: 1,
            rate_per_second: None,
            key_space: 10,
            key_size: 16,
            value_size: 256,
            elapsed: Duration::from_secs(2),
            ok: BTreeMap::from([("get", 60), ("put", 40)]),
            errors: BTreeMap::from([("busy".to_string(), 5)]),
            latency: LatencySummary::of(&histogram_of(1..=100)),
            latency_by_operation: BTreeMap::new(),
            client_cpu_percent: Some(12.3),
        };
        let json = report.json();
        assert_eq!(json["ops"], 105);
        assert_eq!(json["ok"], 100);
        assert_eq!(json["errors"], 5);
        assert_eq!(json["errors_by_kind"]["busy"], 5);
        assert_eq!(json["throughput_ops_per_s"], 50.0);
        assert_eq!(json["latency"]["count"], 100);
        let (header, rows) = report.table();
        assert_eq!(rows[0].len(), header.len());
        assert_eq!(rows[0][1], "mixed (stale)");
    }
}
