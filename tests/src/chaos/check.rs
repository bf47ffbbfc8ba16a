//! The checker: reads a chaos history and says whether the fabric kept its promise.
//!
//! - **Lost**: a message with a RECEIPT that no consumer ever received.
//! - **Invented**: a delivery of a (producer, seq) that was never sent, or without producer
//!   headers (the workload always sets them).
//! - **Duplicates**: deliveries beyond the first of one (producer, seq), after the client's own
//!   de-duplication (the application would see them). A copy flagged `redelivered` is the
//!   at-least-once contract at work (the message was delivered, and the ACK did not reach the
//!   store before the master died; another consumer gets it again, flagged, so an idempotent
//!   consumer can drop it); a copy *not* flagged is a violation.
//! - **Order**: per consumer and producer, a first delivery (not flagged `redelivered`) with a
//!   lower sequence number than one that consumer already had from that producer.
//! - **Split brain**: two masters acknowledging at once. A receipt tied to epoch `e` was given by
//!   that master at some moment between its send and its arrival. If a message receipted by an
//!   older epoch was *sent* after a message receipted by a newer epoch had *arrived*, the older
//!   master acknowledged after the newer one had: their windows overlap. Receipts that cannot be
//!   tied to one master (the connection moved between send and receipt) are left out and counted.
//!
//! Also reported: faults by kind, client-observed downtime per master change (from the last
//! receipt before the change to the first receipt from the new master, over all producers) and
//! the downtime each client's failover events reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::history::Event;

/// Two epochs whose acknowledgement windows overlap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitBrain {
    /// The older epoch (acknowledged late).
    pub older: u64,
    /// The newer epoch (had already acknowledged).
    pub newer: u64,
    /// By how much (ms).
    pub overlap_ms: f64,
}

/// Per-epoch receipt window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochWindow {
    /// The epoch.
    pub epoch: u64,
    /// Receipts tied to it.
    pub receipts: u64,
    /// First receipt arrival (s since start).
    pub first_s: f64,
    /// Last receipt arrival (s since start).
    pub last_s: f64,
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Messages handed to the client library.
    pub sent: u64,
    /// Of those, receipted.
    pub receipted: u64,
    /// Sends that failed (outcome unknown to the producer).
    pub send_failed: u64,
    /// Sends with neither a receipt nor an error recorded.
    pub unresolved: u64,
    /// Distinct (producer, seq) delivered.
    pub delivered: u64,
    /// All deliveries (every copy).
    pub deliveries: u64,
    /// Deliveries flagged `redelivered` by the broker.
    pub redelivered_flagged: u64,
    /// Unreceipted sends that were delivered anyway (stored, receipt lost).
    pub unreceipted_delivered: u64,
    /// Receipted, never delivered: (producer, seq).
    pub lost: Vec<(String, u64)>,
    /// Delivered, never sent.
    pub invented: Vec<String>,
    /// Deliveries beyond the first, after client de-duplication.
    pub duplicates: u64,
    /// Of those, copies that were not flagged `redelivered` (the application could not tell).
    pub unflagged_duplicates: u64,
    /// Up to 10 duplicated (producer, seq).
    pub duplicate_examples: Vec<(String, u64)>,
    /// Order violations.
    pub order_violations: u64,
    /// Up to 10 of them: (consumer, producer, had, then got).
    pub order_examples: Vec<(String, String, u64, u64)>,
    /// Overlapping acknowledgement windows.
    pub split_brain: Vec<SplitBrain>,
    /// Receipts not tied to one epoch.
    pub unattributed_receipts: u64,
    /// Receipt windows per epoch.
    pub epochs: Vec<EpochWindow>,
    /// Client-observed downtime per master change (ms): the longest time without any receipt
    /// between the last receipt of the old master and the first of the new one.
    pub master_change_downtime_ms: Vec<f64>,
    /// Downtime per client failover as the clients reported it (ms).
    pub client_failover_ms: Vec<f64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Notes the runner recorded.
    pub notes: Vec<String>,
    /// Run length (s).
    pub duration_s: f64,
}

impl Report {
    /// Zero lost, zero invented, zero duplicates, order kept, no split brain.
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.invented.is_empty()
            && self.unflagged_duplicates == 0
            && self.order_violations == 0
            && self.split_brain.is_empty()
    }
}

/// `(median, p99, max)` of `v` (zeros when empty).
pub fn percentiles(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), s[s.len() - 1])
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Checks `events` (a whole history, in any order).
pub fn check(events: &[Event]) -> Report {
    let mut r = Report::default();
    let mut sent: HashMap<(&str, u64), u64> = HashMap::new();
    let mut receipts: Vec<(u64, &str, u64, Option<u64>)> = Vec::new();
    let mut failed: HashSet<(&str, u64)> = HashSet::new();
    let mut delivered: HashMap<(&str, u64), u64> = HashMap::new();
    // Deliveries in time order per consumer for the order check.
    let mut deliveries: Vec<(u64, &str, &str, u64, bool)> = Vec::new();
    for ev in events {
        r.duration_s = r.duration_s.max(ev.time() as f64 / 1e6);
        match ev {
            Event::Send { t, p, seq, .. } => {
                sent.insert((p.as_str(), *seq), *t);
            }
            Event::Receipt { t, p, seq, epoch } => receipts.push((*t, p, *seq, *epoch)),
            Event::SendFailed { p, seq, .. } => {
                failed.insert((p.as_str(), *seq));
            }
            Event::Deliver {
                t,
                c,
                p,
                seq,
                redelivered,
                ..
            } => {
                r.deliveries += 1;
                if *redelivered {
                    r.redelivered_flagged += 1;
                }
                match (p, seq) {
                    (Some(p), Some(seq)) => {
                        *delivered.entry((p.as_str(), *seq)).or_default() += 1;
                        deliveries.push((*t, c, p, *seq, *redelivered));
                    }
                    _ => r
                        .invented
                        .push(format!("{c}: a message without producer headers")),
                }
            }
            Event::Failover { downtime_ms, .. } => r.client_failover_ms.push(*downtime_ms),
            Event::Fault { kind, .. } => *r.faults.entry(kind.clone()).or_default() += 1,
            Event::Note { t, text } => r.notes.push(format!("{:.1}s {text}", *t as f64 / 1e6)),
            Event::Ack { .. }
            | Event::Healed { .. }
            | Event::Master { .. }
            | Event::Phase { .. } => {}
        }
    }
    r.sent = sent.len() as u64;
    let receipted: HashSet<(&str, u64)> = receipts.iter().map(|x| (x.1, x.2)).collect();
    r.receipted = receipted.len() as u64;
    r.send_failed = failed.iter().filter(|k| !receipted.contains(*k)).count() as u64;
    r.unresolved = sent
        .keys()
        .filter(|k| !receipted.contains(*k) && !failed.contains(*k))
        .count() as u64;
    r.delivered = delivered.len() as u64;

    let mut lost: Vec<(String, u64)> = receipted
        .iter()
        .filter(|k| !delivered.contains_key(*k))
        .map(|(p, s)| ((*p).to_owned(), *s))
        .collect();
    lost.sort();
    r.lost = lost;
    let mut invented: Vec<String> = delivered
        .keys()
        .filter(|k| !sent.contains_key(*k))
        .map(|(p, s)| format!("{p}:{s}"))
        .collect();
    invented.sort();
    r.invented.extend(invented);
    r.unreceipted_delivered = delivered
        .keys()
        .filter(|k| sent.contains_key(*k) && !receipted.contains(*k))
        .count() as u64;
    let mut dups: Vec<(String, u64)> = delivered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((p, s), _)| ((*p).to_owned(), *s))
        .collect();
    dups.sort();
    r.duplicates = delivered.values().map(|n| n - 1).sum();
    r.duplicate_examples = dups.into_iter().take(10).collect();

    // In time order: a later copy without `redelivered` is an unflagged duplicate; per
    // (consumer, producer), first deliveries must rise.
    deliveries.sort_by_key(|d| d.0);
    let mut high: HashMap<(&str, &str), u64> = HashMap::new();
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    for (_, c, p, seq, redelivered) in &deliveries {
        let first = seen.insert((p, *seq));
        if !first && !*redelivered {
            r.unflagged_duplicates += 1;
        }
        if !first || *redelivered {
            continue;
        }
        let h = high.entry((c, p)).or_insert(0);
        if *seq < *h {
            r.order_violations += 1;
            if r.order_examples.len() < 10 {
                r.order_examples
                    .push(((*c).to_owned(), (*p).to_owned(), *h, *seq));
            }
        }
        *h = (*h).max(*seq);
    }

    // Epoch windows and split brain.
    receipts.sort_by_key(|x| x.0);
    let mut windows: BTreeMap<u64, (u64, u64, u64, u64)> = BTreeMap::new(); // first, last, n, last send
    for (t, p, seq, epoch) in &receipts {
        let Some(e) = epoch else {
            r.unattributed_receipts += 1;
            continue;
        };
        let send_t = sent.get(&(*p, *seq)).copied().unwrap_or(*t);
        let w = windows.entry(*e).or_insert((*t, *t, 0, send_t));
        w.0 = w.0.min(*t);
        w.1 = w.1.max(*t);
        w.2 += 1;
        w.3 = w.3.max(send_t);
    }
    r.epochs = windows
        .iter()
        .map(|(e, (first, last, n, _))| EpochWindow {
            epoch: *e,
            receipts: *n,
            first_s: *first as f64 / 1e6,
            last_s: *last as f64 / 1e6,
        })
        .collect();
    let list: Vec<(u64, (u64, u64, u64, u64))> = windows.into_iter().collect();
    for (i, (older, (_, _, _, older_last_send))) in list.iter().enumerate() {
        for (newer, (newer_first, _, _, _)) in &list[i + 1..] {
            if older_last_send > newer_first {
                r.split_brain.push(SplitBrain {
                    older: *older,
                    newer: *newer,
                    overlap_ms: ms(older_last_send - newer_first),
                });
            }
        }
    }

    // Downtime per master change: between the last receipt of an older master and the first
    // receipt of the new one, the longest stretch without any receipt (receipts that cannot be
    // tied to one master still show that producers were being served).
    let times: Vec<u64> = receipts.iter().map(|x| x.0).collect();
    let mut highest: Option<u64> = None;
    let mut last_old: Option<u64> = None;
    for (t, _, _, epoch) in &receipts {
        let Some(e) = epoch else { continue };
        match highest {
            Some(h) if *e > h => {
                if let Some(from) = last_old {
                    let lo = times.partition_point(|x| *x < from);
                    let hi = times.partition_point(|x| *x <= *t);
                    let gap = times[lo..hi]
                        .windows(2)
                        .map(|w| w[1] - w[0])
                        .max()
                        .unwrap_or(0);
                    r.master_change_downtime_ms.push(ms(gap));
                }
                highest = Some(*e);
            }
            None => highest = Some(*e),
            _ => {}
        }
        last_old = Some(*t);
    }
    r
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: u64 = self.faults.values().sum();
        writeln!(f, "chaos run: {:.0} s, {faults} faults", self.duration_s)?;
        for (kind, n) in &self.faults {
            writeln!(f, "  fault {kind:<18} {n:>6}")?;
        }
        let row = |f: &mut fmt::Formatter<'_>, name: &str, v: String, ok: &str| {
            writeln!(f, "  {name:<34} {v:>12}  {ok}")
        };
        let verdict = |bad: bool| if bad { "FAIL" } else { "ok" };
        row(f, "sent", self.sent.to_string(), "")?;
        row(f, "receipted", self.receipted.to_string(), "")?;
        row(
            f,
            "send failed (outcome unknown)",
            self.send_failed.to_string(),
            "",
        )?;
        row(f, "unresolved at the end", self.unresolved.to_string(), "")?;
        row(f, "delivered (distinct)", self.delivered.to_string(), "")?;
        row(
            f,
            "deliveries (all copies)",
            self.deliveries.to_string(),
            "",
        )?;
        row(
            f,
            "  flagged redelivered",
            self.redelivered_flagged.to_string(),
            "",
        )?;
        row(
            f,
            "unreceipted but delivered",
            self.unreceipted_delivered.to_string(),
            "",
        )?;
        row(
            f,
            "LOST (receipted, never delivered)",
            self.lost.len().to_string(),
            verdict(!self.lost.is_empty()),
        )?;
        row(
            f,
            "INVENTED (delivered, never sent)",
            self.invented.len().to_string(),
            verdict(!self.invented.is_empty()),
        )?;
        row(
            f,
            "duplicates after client de-dup",
            self.duplicates.to_string(),
            "",
        )?;
        row(
            f,
            "  NOT flagged redelivered",
            self.unflagged_duplicates.to_string(),
            verdict(self.unflagged_duplicates > 0),
        )?;
        row(
            f,
            "ORDER violations",
            self.order_violations.to_string(),
            verdict(self.order_violations > 0),
        )?;
        row(
            f,
            "SPLIT-BRAIN windows",
            self.split_brain.len().to_string(),
            verdict(!self.split_brain.is_empty()),
        )?;
        row(
            f,
            "receipts not tied to one epoch",
            self.unattributed_receipts.to_string(),
            "",
        )?;
        let (m, p99, max) = percentiles(&self.master_change_downtime_ms);
        row(
            f,
            "master changes seen by producers",
            self.master_change_downtime_ms.len().to_string(),
            "",
        )?;
        row(
            f,
            "  downtime ms median/p99/max",
            format!("{m:.0}/{p99:.0}/{max:.0}"),
            "",
        )?;
        let (m, p99, max) = percentiles(&self.client_failover_ms);
        row(
            f,
            "client failovers",
            self.client_failover_ms.len().to_string(),
            "",
        )?;
        row(
            f,
            "  downtime ms median/p99/max",
            format!("{m:.0}/{p99:.0}/{max:.0}"),
            "",
        )?;
        for l in self.lost.iter().take(10) {
            writeln!(f, "  lost: {}:{}", l.0, l.1)?;
        }
        for i in self.invented.iter().take(10) {
            writeln!(f, "  invented: {i}")?;
        }
        for d in &self.duplicate_examples {
            writeln!(f, "  duplicate: {}:{}", d.0, d.1)?;
        }
        for o in &self.order_examples {
            writeln!(f, "  order: {} from {}: had {} then {}", o.0, o.1, o.2, o.3)?;
        }
        for s in &self.split_brain {
            writeln!(
                f,
                "  split brain: epoch {} acknowledged {:.1} ms after epoch {} had",
                s.older, s.overlap_ms, s.newer
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        writeln!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(t: u64, p: &str, seq: u64) -> Event {
        Event::Send {
            t,
            p: p.into(),
            seq,
            q: "q".into(),
        }
    }
    fn rcpt(t: u64, p: &str, seq: u64, epoch: u64) -> Event {
        Event::Receipt {
            t,
            p: p.into(),
            seq,
            epoch: Some(epoch),
        }
    }
    fn deliver(t: u64, c: &str, p: &str, seq: u64, redelivered: bool) -> Event {
        Event::Deliver {
            t,
            c: c.into(),
            p: Some(p.into()),
            seq: Some(seq),
            q: "q".into(),
            redelivered,
            epoch: None,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![
            send(1, "a", 1),
            rcpt(2, "a", 1, 1),
            send(3, "a", 2),
            rcpt(4, "a", 2, 1),
            send(10, "a", 3),
            rcpt(20, "a", 3, 2),
            deliver(5, "c", "a", 1, false),
            deliver(6, "c", "a", 2, false),
            deliver(21, "c", "a", 3, false),
        ];
        let r = check(&h);
        assert!(r.passed(), "{r}");
        assert_eq!((r.sent, r.receipted, r.delivered), (3, 3, 3));
        assert_eq!(r.master_change_downtime_ms, vec![0.016]);
    }

    #[test]
    fn downtime_is_the_longest_gap_without_receipts_around_a_change() {
        let h = vec![
            send(1_000, "a", 1),
            rcpt(1_000, "a", 1, 1),
            send(1_000, "a", 2),
            // Resent to the new master: its receipt cannot be tied to one epoch.
            Event::Receipt {
                t: 501_000,
                p: "a".into(),
                seq: 2,
                epoch: None,
            },
            send(502_000, "a", 3),
            rcpt(503_000, "a", 3, 2),
            deliver(600_000, "c", "a", 1, false),
            deliver(600_001, "c", "a", 2, false),
            deliver(600_002, "c", "a", 3, false),
        ];
        let r = check(&h);
        assert_eq!(r.master_change_downtime_ms, vec![500.0]);
        assert!(r.passed(), "{r}");
    }

    #[test]
    fn a_receipted_message_never_delivered_is_lost() {
        let h = vec![send(1, "a", 1), rcpt(2, "a", 1, 1), send(3, "a", 2)];
        let r = check(&h);
        assert_eq!(r.lost, vec![("a".to_string(), 1)]);
        assert_eq!(r.unresolved, 1);
        assert!(!r.passed());
    }

    #[test]
    fn an_unreceipted_message_may_be_lost_or_delivered() {
        let h = vec![
            send(1, "a", 1),
            Event::SendFailed {
                t: 2,
                p: "a".into(),
                seq: 1,
                error: "x".into(),
            },
            send(3, "a", 2),
            deliver(4, "c", "a", 2, false),
        ];
        let r = check(&h);
        assert!(r.passed(), "{r}");
        assert_eq!(r.unreceipted_delivered, 1);
        assert_eq!(r.send_failed, 1);
    }

    #[test]
    fn invented_duplicated_and_reordered_deliveries_are_caught() {
        let h = vec![
            send(1, "a", 1),
            send(1, "a", 2),
            deliver(5, "c", "a", 2, false),
            deliver(6, "c", "a", 1, false),
            deliver(7, "d", "a", 2, true),
            deliver(8, "c", "b", 9, false),
            Event::Deliver {
                t: 9,
                c: "c".into(),
                p: None,
                seq: None,
                q: "q".into(),
                redelivered: false,
                epoch: None,
            },
        ];
        let r = check(&h);
        assert_eq!(r.invented.len(), 2, "{r}");
        assert_eq!(r.duplicates, 1);
        // d's copy of a:2 was flagged: an idempotent consumer can drop it.
        assert_eq!(r.unflagged_duplicates, 0);
        assert_eq!(r.order_violations, 1);
        assert_eq!(
            r.order_examples[0],
            ("c".to_string(), "a".to_string(), 2, 1)
        );
    }

    #[test]
    fn a_second_copy_without_the_redelivered_flag_fails_the_run() {
        let h = vec![
            send(1, "a", 1),
            rcpt(2, "a", 1, 1),
            deliver(5, "c", "a", 1, false),
            deliver(9, "d", "a", 1, false),
        ];
        let r = check(&h);
        assert_eq!((r.duplicates, r.unflagged_duplicates), (1, 1));
        assert!(!r.passed());
    }

    #[test]
    fn a_redelivery_out_of_order_is_not_an_order_violation() {
        let h = vec![
            send(1, "a", 1),
            send(1, "a", 2),
            deliver(5, "c", "a", 2, false),
            deliver(6, "d", "a", 1, true),
        ];
        assert_eq!(check(&h).order_violations, 0);
    }

    #[test]
    fn an_old_master_acknowledging_after_the_new_one_is_split_brain() {
        let h = vec![
            send(100, "a", 1),
            rcpt(110, "a", 1, 2),
            send(120, "b", 1),
            rcpt(130, "b", 1, 1),
        ];
        let r = check(&h);
        assert_eq!(
            r.split_brain,
            vec![SplitBrain {
                older: 1,
                newer: 2,
                overlap_ms: 0.01
            }]
        );
        assert!(!r.passed());
    }

    #[test]
    fn a_late_receipt_sent_before_the_change_is_not_split_brain() {
        // b's message went to master 1 before master 2 acknowledged anything; its receipt
        // arrived late. Nothing proves both acknowledged at once.
        let h = vec![
            send(100, "b", 1),
            send(105, "a", 1),
            rcpt(110, "a", 1, 2),
            rcpt(130, "b", 1, 1),
            deliver(140, "c", "a", 1, false),
            deliver(141, "c", "b", 1, false),
        ];
        let r = check(&h);
        assert!(r.split_brain.is_empty(), "{r}");
    }

    #[test]
    fn percentiles_of_a_list() {
        assert_eq!(percentiles(&[]), (0.0, 0.0, 0.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let (m, p99, max) = percentiles(&v);
        assert_eq!((m.round(), p99, max), (51.0, 99.0, 100.0));
    }
}
