//! The history of a chaos run: every send, receipt, delivery and ack of the workload, every
//! fault, and the masters the runner saw, as JSON lines (one [`Event`] per line). Times are
//! microseconds since the start of the run, from one monotonic clock shared by the workload and
//! the fault injector (they run in one process).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A producer handed a message to its connection (`p`, `seq`: the producer id and sequence
    /// number the message carries; `q`: its queue).
    Send {
        /// Time (µs since start).
        t: u64,
        /// Producer id.
        p: String,
        /// Sequence number.
        seq: u64,
        /// Queue.
        q: String,
    },
    /// The broker's RECEIPT for a send arrived. `epoch`: the fabric epoch of the master the
    /// connection was on both when the send was handed over and when the receipt arrived
    /// (`None` when those differ or are unknown: the receipt cannot be tied to one master).
    Receipt {
        /// Time (µs since start).
        t: u64,
        /// Producer id.
        p: String,
        /// Sequence number.
        seq: u64,
        /// Epoch of the master that gave the receipt.
        epoch: Option<u64>,
    },
    /// A send ended without a receipt (its outcome is unknown: it may or may not be stored).
    SendFailed {
        /// Time (µs since start).
        t: u64,
        /// Producer id.
        p: String,
        /// Sequence number.
        seq: u64,
        /// The client's error.
        error: String,
    },
    /// A consumer received a message (after client-side de-duplication).
    Deliver {
        /// Time (µs since start).
        t: u64,
        /// Consumer id.
        c: String,
        /// Producer id from the message (`None`: a message without one, which the workload
        /// never sends).
        p: Option<String>,
        /// Sequence number from the message.
        seq: Option<u64>,
        /// Queue.
        q: String,
        /// The broker's `redelivered` flag.
        redelivered: bool,
        /// Epoch of the master the consumer's connection was on.
        epoch: Option<u64>,
    },
    /// A consumer acknowledged a delivery (`ok`: the ACK was handed to the connection).
    Ack {
        /// Time (µs since start).
        t: u64,
        /// Consumer id.
        c: String,
        /// Producer id.
        p: String,
        /// Sequence number.
        seq: u64,
        /// Whether the ACK was accepted by the client.
        ok: bool,
    },
    /// A client connection failed over (from the connection's events).
    Failover {
        /// Time (µs since start).
        t: u64,
        /// Client id.
        client: String,
        /// Downtime the client saw (ms).
        downtime_ms: f64,
    },
    /// A fault began.
    Fault {
        /// Time (µs since start).
        t: u64,
        /// Kind (`kill`, `term`, `pause`, `long-pause`, `zk`, `partition-zk`,
        /// `partition-clients`, `isolate`, `disk-full`).
        kind: String,
        /// What it hit (a container, `zookeeper`, the store).
        target: String,
        /// How long it is held (ms), if it has a duration.
        hold_ms: Option<u64>,
    },
    /// A fault was undone (process restarted or resumed, network healed, space freed).
    Healed {
        /// Time (µs since start).
        t: u64,
        /// Kind, as in [`Event::Fault`].
        kind: String,
        /// What it hit.
        target: String,
    },
    /// The runner saw `container` report master with `epoch`.
    Master {
        /// Time (µs since start).
        t: u64,
        /// Container name.
        container: String,
        /// Its epoch.
        epoch: u64,
    },
    /// Something the runner noticed that is not a client event (a broker exiting by itself,
    /// a recovery step that timed out).
    Note {
        /// Time (µs since start).
        t: u64,
        /// What happened.
        text: String,
    },
    /// The workload's phases: `faults-end` (no more faults), `produce-end` (producers
    /// stopped), `drain-end` (consumers stopped).
    Phase {
        /// Time (µs since start).
        t: u64,
        /// Phase name.
        name: String,
    },
}

impl Event {
    /// The event's time (µs since start).
    pub fn time(&self) -> u64 {
        match self {
            Event::Send { t, .. }
            | Event::Receipt { t, .. }
            | Event::SendFailed { t, .. }
            | Event::Deliver { t, .. }
            | Event::Ack { t, .. }
            | Event::Failover { t, .. }
            | Event::Fault { t, .. }
            | Event::Healed { t, .. }
            | Event::Master { t, .. }
            | Event::Note { t, .. }
            | Event::Phase { t, .. } => *t,
        }
    }
}

/// Writes events as JSON lines, stamping them with one clock.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    out: Mutex<BufWriter<File>>,
}

impl Recorder {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Recorder {
            start: Instant::now(),
            out: Mutex::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Microseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Appends `event` (a write error is logged once per call, never fatal to the workload).
    pub fn record(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "history: cannot serialise event");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line) {
            tracing::error!(error = %e, "history: write failed");
        }
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().context("flushing the history")
    }
}

/// Reads a history file back (fails on the first malformed line, naming it).
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Event = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a history event", path.display(), i + 1))?;
        events.push(ev);
    }
    Ok(events)
}
