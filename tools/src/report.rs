//! Final reports: the one-line JSON objects of `--json` and the human-readable summaries.
//!
//! Field names and order of the JSON objects are part of the tool's interface (scripts and tests
//! parse them); see the `json_shapes` test.

use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Where the final report goes: JSON on stdout with the summary on stderr, or the summary alone
/// on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json` was given.
    pub json: bool,
}

impl Output {
    /// Prints the final report: with `--json` the JSON object (one line) on stdout and `human` on
    /// stderr; otherwise `human` on stdout.
    pub fn finish<T: Serialize>(&self, report: &T, human: &str) -> anyhow::Result<()> {
        if self.json {
            let line = serde_json::to_string(report)?;
            eprintln!("{human}");
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{human}")?;
            out.flush()?;
        }
        Ok(())
    }
}

/// The result of a run: its report and, if the run failed, why. The report is printed either way.
#[derive(Debug)]
pub struct Outcome<R> {
    /// The JSON report.
    pub report: R,
    /// The human-readable summary.
    pub human: String,
    /// Why the run failed (exit status 1), if it did.
    pub failure: Option<anyhow::Error>,
}

impl<R: Serialize> Outcome<R> {
    /// Prints the report (see [`Output::finish`]) and returns the failure as the run's error.
    pub fn finish(self, out: Output) -> anyhow::Result<()> {
        out.finish(&self.report, &self.human)?;
        self.failure.map_or(Ok(()), Err)
    }
}

/// Combines the failures of several threads into one error (the first, with a count).
pub fn combine_failures(
    mut failures: Vec<anyhow::Error>,
    threads: u32,
    what: &str,
) -> Option<anyhow::Error> {
    let n = failures.len();
    if n == 0 {
        return None;
    }
    let first = failures.remove(0);
    Some(if n == 1 {
        first
    } else {
        first.context(format!("{n} of {threads} {what} failed; first error"))
    })
}

/// `producer --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProducerReport {
    /// Messages handed to the broker successfully (summed over threads).
    pub sent: u64,
    /// Messages confirmed by a receipt (or a committed transaction).
    pub receipted: u64,
    /// Failovers (a session moving to a new connection), summed over the connections.
    pub failovers: u64,
    /// Time without a connection, summed over every failover, in ms.
    pub downtime_ms: f64,
    /// Wall time of the sending phase.
    pub elapsed_s: f64,
    /// `sent / elapsed_s`.
    pub rate: f64,
}

impl ProducerReport {
    /// One-line summary; `show_failovers` adds the failover count and downtime even when there
    /// was none (a failover URL), they are added anyway when there were failovers.
    pub fn human(&self, destination: &str, show_failovers: bool) -> String {
        let mut s = format!(
            "sent {} messages to {destination} ({} receipted) in {:.3} s ({:.1} msg/s)",
            self.sent, self.receipted, self.elapsed_s, self.rate
        );
        if show_failovers || self.failovers > 0 {
            s += "; ";
            s += &failover_summary(self.failovers, self.downtime_ms);
        }
        s
    }
}

/// `consumer --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerReport {
    /// Messages received (summed over threads).
    pub received: u64,
    /// Missing producer sequence numbers below the highest seen per producer.
    pub gaps: u64,
    /// Producer sequence numbers seen more than once by the application (0 when the broker's and
    /// the client's de-duplication work).
    pub duplicates: u64,
    /// Redeliveries of already acknowledged messages that the client library dropped before
    /// they reached the application (failover connections only).
    pub duplicates_dropped: u64,
    /// Messages flagged `redelivered`.
    pub redelivered: u64,
    /// Failovers (a session moving to a new connection), summed over the connections.
    pub failovers: u64,
    /// Time without a connection, summed over every failover, in ms.
    pub downtime_ms: f64,
    /// From the start of consumption to the last message.
    pub elapsed_s: f64,
    /// `received / elapsed_s`.
    pub rate: f64,
}

impl ConsumerReport {
    /// One-line summary; `show_failovers` as for [`ProducerReport::human`].
    pub fn human(&self, destination: &str, show_failovers: bool) -> String {
        let mut s = format!(
            "received {} messages from {destination} in {:.3} s ({:.1} msg/s); gaps {}, duplicates {}, redelivered {}",
            self.received, self.elapsed_s, self.rate, self.gaps, self.duplicates, self.redelivered
        );
        if show_failovers || self.failovers > 0 || self.duplicates_dropped > 0 {
            s += &format!(
                "; {}, duplicates dropped by the client {}",
                failover_summary(self.failovers, self.downtime_ms),
                self.duplicates_dropped
            );
        }
        s
    }
}

/// `browse --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrowseReport {
    /// Messages listed.
    pub browsed: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl LatencyMs {
    /// Percentiles of a histogram of microsecond values (all zero when it is empty).
    pub fn from_micros(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        LatencyMs {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// `perf --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerfReport {
    /// Producer connections.
    pub producers: u32,
    /// Consumer connections.
    pub consumers: u32,
    /// Measured messages sent (warm-up excluded).
    pub sent: u64,
    /// Measured messages received (warm-up excluded).
    pub received: u64,
    /// Wall time of the measured run.
    pub elapsed_s: f64,
    /// Messages sent per second over the producers' time.
    pub send_rate: f64,
    /// Messages received per second over the consumers' time.
    pub recv_rate: f64,
    /// Send to receipt, for every message that asked for a receipt.
    pub receipt_latency_ms: LatencyMs,
    /// Send to delivery (from the timestamp at the start of each body).
    pub delivery_latency_ms: LatencyMs,
    /// Failovers (a session moving to a new connection), summed over the connections.
    pub failovers: u64,
    /// Time without a connection, summed over every failover, in ms.
    pub downtime_ms: f64,
    /// With `--failover-report`: the distribution of the downtime of every failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_downtime_ms: Option<DowntimeMs>,
}

/// The distribution of client-observed failover downtimes in milliseconds (`perf
/// --failover-report`). Percentiles are nearest-rank over the exact values; every figure is 0
/// when there was no failover.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DowntimeMs {
    /// Number of failovers.
    pub count: u64,
    /// Shortest downtime.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Longest downtime.
    pub max: f64,
    /// Every downtime, sorted ascending.
    pub values: Vec<f64>,
}

impl DowntimeMs {
    /// The distribution of `downtimes` (any order).
    pub fn from_durations(downtimes: &[Duration]) -> DowntimeMs {
        let mut values: Vec<f64> = downtimes
            .iter()
            .map(|d| round3(d.as_secs_f64() * 1000.0))
            .collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n == 0 {
            return DowntimeMs::default();
        }
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        DowntimeMs {
            count: n as u64,
            min: values[0],
            p50: rank(0.5),
            p90: rank(0.9),
            max: values[n - 1],
            values,
        }
    }

    /// The table rows of the human report.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{:<15}{:>12}{:>12}{:>14}{:>10}{:>10}\n",
            "failover (ms)", "min", "p50", "p90", "max", "count"
        );
        if self.count == 0 {
            s += &format!(
                "{:<15}{:>12}{:>12}{:>14}{:>10}{:>10}",
                "downtime", "-", "-", "-", "-", 0
            );
        } else {
            s += &format!(
                "{:<15}{:>12.3}{:>12.3}{:>14.3}{:>10.3}{:>10}",
                "downtime", self.min, self.p50, self.p90, self.max, self.count
            );
        }
        s
    }
}

/// The failover part of a human summary: `failovers N, total downtime X ms`.
pub fn failover_summary(failovers: u64, downtime_ms: f64) -> String {
    format!("failovers {failovers}, total downtime {downtime_ms:.0} ms")
}

/// Extra figures for the human table of `perf` that are not part of the JSON object.
#[derive(Debug, Clone, Default)]
pub struct PerfDetails {
    /// Body size in bytes.
    pub size: usize,
    /// Seconds the producers took.
    pub send_elapsed_s: f64,
    /// Seconds the consumers took.
    pub recv_elapsed_s: f64,
    /// Number of receipt latency samples.
    pub receipt_samples: u64,
    /// Number of delivery latency samples.
    pub delivery_samples: u64,
    /// Print the failover count and downtime even when there was none (a failover URL).
    pub show_failovers: bool,
}

impl PerfReport {
    /// The human-readable table.
    pub fn human(&self, d: &PerfDetails) -> String {
        let mb = |rate: f64| rate * d.size as f64 / 1_000_000.0;
        let mut s = format!(
            "{:<15}{:>12}{:>12}{:>14}{:>10}\n",
            "", "messages", "seconds", "msg/s", "MB/s"
        );
        if self.producers > 0 {
            s += &format!(
                "{:<15}{:>12}{:>12.3}{:>14.1}{:>10.2}\n",
                format!("producers ({})", self.producers),
                self.sent,
                d.send_elapsed_s,
                self.send_rate,
                mb(self.send_rate)
            );
        }
        if self.consumers > 0 {
            s += &format!(
                "{:<15}{:>12}{:>12.3}{:>14.1}{:>10.2}\n",
                format!("consumers ({})", self.consumers),
                self.received,
                d.recv_elapsed_s,
                self.recv_rate,
                mb(self.recv_rate)
            );
        }
        s += &format!(
            "{:<15}{:>12}{:>12}{:>14}{:>10}\n",
            "latency (ms)", "p50", "p99", "max", "samples"
        );
        let row = |name: &str, l: &LatencyMs, n: u64| {
            if n == 0 {
                format!("{name:<15}{:>12}{:>12}{:>14}{:>10}\n", "-", "-", "-", 0)
            } else {
                format!(
                    "{name:<15}{:>12.3}{:>12.3}{:>14.3}{:>10}\n",
                    l.p50, l.p99, l.max, n
                )
            }
        };
        s += &row("send->receipt", &self.receipt_latency_ms, d.receipt_samples);
        s += &row(
            "send->delivery",
            &self.delivery_latency_ms,
            d.delivery_samples,
        );
        if d.show_failovers || self.failovers > 0 {
            s += &failover_summary(self.failovers, self.downtime_ms);
            s.push('\n');
        }
        if let Some(dist) = &self.failover_downtime_ms {
            s += &dist.human();
            s.push('\n');
        }
        s += &format!("elapsed {:.3} s", self.elapsed_s);
        s
    }
}

/// `count / elapsed` (0 when nothing elapsed), rounded to 3 decimals.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        round3(count as f64 / secs)
    }
}

/// Seconds rounded to the microsecond.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// Rounds to 3 decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn json_shapes() {
        let p = serde_json::to_value(ProducerReport {
            sent: 10,
            receipted: 9,
            failovers: 1,
            downtime_ms: 312.5,
            elapsed_s: 2.0,
            rate: 5.0,
        })
        .unwrap();
        assert_eq!(
            p,
            json!({"sent":10,"receipted":9,"failovers":1,"downtime_ms":312.5,"elapsed_s":2.0,
                   "rate":5.0})
        );

        let c = serde_json::to_value(ConsumerReport {
            received: 5,
            gaps: 1,
            duplicates: 2,
            duplicates_dropped: 4,
            redelivered: 3,
            failovers: 2,
            downtime_ms: 20.0,
            elapsed_s: 0.5,
            rate: 10.0,
        })
        .unwrap();
        assert_eq!(
            c,
            json!({"received":5,"gaps":1,"duplicates":2,"duplicates_dropped":4,"redelivered":3,
                   "failovers":2,"downtime_ms":20.0,"elapsed_s":0.5,"rate":10.0})
        );

        assert_eq!(
            serde_json::to_value(BrowseReport { browsed: 4 }).unwrap(),
            json!({"browsed":4})
        );

        let perf = PerfReport {
            producers: 2,
            consumers: 1,
            sent: 100,
            received: 100,
            elapsed_s: 1.0,
            send_rate: 100.0,
            recv_rate: 100.0,
            receipt_latency_ms: LatencyMs {
                p50: 0.1,
                p99: 0.2,
                max: 0.3,
            },
            delivery_latency_ms: LatencyMs::default(),
            failovers: 0,
            downtime_ms: 0.0,
            failover_downtime_ms: None,
        };
        let v = serde_json::to_value(&perf).unwrap();
        assert_eq!(
            keys(&v),
            [
                "consumers",
                "delivery_latency_ms",
                "downtime_ms",
                "elapsed_s",
                "failovers",
                "producers",
                "receipt_latency_ms",
                "received",
                "recv_rate",
                "send_rate",
                "sent"
            ]
        );
        assert_eq!(
            v["receipt_latency_ms"],
            json!({"p50":0.1,"p99":0.2,"max":0.3})
        );
        assert_eq!(
            v["delivery_latency_ms"],
            json!({"p50":0.0,"p99":0.0,"max":0.0})
        );
        // Declaration order is the order written (one line, no pretty printing).
        let line = serde_json::to_string(&perf).unwrap();
        assert!(line.starts_with(r#"{"producers":2,"consumers":1,"sent":100,"received":100,"#));
        assert!(!line.contains('\n'));

        // `perf --failover-report` adds the distribution.
        let with_report = PerfReport {
            failovers: 2,
            downtime_ms: 300.0,
            failover_downtime_ms: Some(DowntimeMs::from_durations(&[
                Duration::from_millis(200),
                Duration::from_millis(100),
            ])),
            ..perf
        };
        let v = serde_json::to_value(&with_report).unwrap();
        assert_eq!(
            v["failover_downtime_ms"],
            json!({"count":2,"min":100.0,"p50":100.0,"p90":200.0,"max":200.0,
                   "values":[100.0,200.0]})
        );
    }

    #[test]
    fn downtime_distribution() {
        let empty = DowntimeMs::from_durations(&[]);
        assert_eq!(empty, DowntimeMs::default());
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"count":0,"min":0.0,"p50":0.0,"p90":0.0,"max":0.0,"values":[]})
        );
        assert!(empty.human().contains("downtime"), "{}", empty.human());

        let one = DowntimeMs::from_durations(&[Duration::from_micros(312_456)]);
        assert_eq!(
            (one.count, one.min, one.p50, one.p90, one.max),
            (1, 312.456, 312.456, 312.456, 312.456)
        );

        // 1..=10 ms given out of order: nearest-rank p50 = 5, p90 = 9.
        let ds: Vec<Duration> = [7, 3, 10, 1, 9, 2, 8, 4, 6, 5]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        let d = DowntimeMs::from_durations(&ds);
        assert_eq!(d.count, 10);
        assert_eq!((d.min, d.p50, d.p90, d.max), (1.0, 5.0, 9.0, 10.0));
        assert_eq!(
            d.values,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        );
        // 11 values: p50 is the 6th, p90 the 10th.
        let ds: Vec<Duration> = (1..=11).map(Duration::from_millis).collect();
        let d = DowntimeMs::from_durations(&ds);
        assert_eq!((d.p50, d.p90), (6.0, 10.0));
        let table = d.human();
        assert!(table.contains("p90") && table.contains("count"), "{table}");
        assert!(table.contains("10.000") && table.contains("11"), "{table}");
    }

    #[test]
    fn latency_percentiles_from_micros() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 10 us .. 10 ms
        }
        let l = LatencyMs::from_micros(&h);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.02, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        assert_eq!(
            LatencyMs::from_micros(&Histogram::new(3).unwrap()),
            LatencyMs::default()
        );
    }

    #[test]
    fn rates_and_rounding() {
        assert_eq!(rate(0, Duration::ZERO), 0.0);
        assert_eq!(rate(3, Duration::from_secs(2)), 1.5);
        assert_eq!(rate(1, Duration::from_secs(3)), 0.333);
        assert_eq!(secs(Duration::from_nanos(1_234_567_890)), 1.234568);
    }

    #[test]
    fn human_summaries() {
        let mut p = ProducerReport {
            sent: 10,
            receipted: 10,
            failovers: 0,
            downtime_ms: 0.0,
            elapsed_s: 2.0,
            rate: 5.0,
        };
        assert_eq!(
            p.human("queue://TEST", false),
            "sent 10 messages to queue://TEST (10 receipted) in 2.000 s (5.0 msg/s)"
        );
        assert_eq!(
            p.human("queue://TEST", true),
            "sent 10 messages to queue://TEST (10 receipted) in 2.000 s (5.0 msg/s); \
             failovers 0, total downtime 0 ms"
        );
        (p.failovers, p.downtime_ms) = (2, 312.4);
        assert!(p
            .human("queue://TEST", false)
            .ends_with("; failovers 2, total downtime 312 ms"));
        let c = ConsumerReport {
            received: 3,
            gaps: 0,
            duplicates: 0,
            duplicates_dropped: 1,
            redelivered: 1,
            failovers: 1,
            downtime_ms: 40.0,
            elapsed_s: 1.0,
            rate: 3.0,
        };
        let line = c.human("queue://TEST", true);
        assert!(
            line.ends_with(
                "; failovers 1, total downtime 40 ms, duplicates dropped by the client 1"
            ),
            "{line}"
        );
        let perf = PerfReport {
            producers: 1,
            consumers: 0,
            sent: 10,
            received: 0,
            elapsed_s: 1.0,
            send_rate: 10.0,
            recv_rate: 0.0,
            receipt_latency_ms: LatencyMs::default(),
            delivery_latency_ms: LatencyMs::default(),
            failovers: 0,
            downtime_ms: 0.0,
            failover_downtime_ms: None,
        };
        let table = perf.human(&PerfDetails {
            size: 1000,
            send_elapsed_s: 1.0,
            ..PerfDetails::default()
        });
        assert!(table.contains("producers (1)"), "{table}");
        assert!(!table.contains("consumers ("), "{table}");
        assert!(table.contains("send->delivery"), "{table}");
        assert!(!table.contains("failover"), "{table}");
        let perf = PerfReport {
            failovers: 1,
            downtime_ms: 250.0,
            failover_downtime_ms: Some(DowntimeMs::from_durations(&[Duration::from_millis(250)])),
            ..perf
        };
        let table = perf.human(&PerfDetails::default());
        assert!(
            table.contains("failovers 1, total downtime 250 ms"),
            "{table}"
        );
        assert!(table.contains("failover (ms)"), "{table}");
        assert!(table.contains("250.000"), "{table}");
    }
}
