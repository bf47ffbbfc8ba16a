//! The chaos workload: producers sending persistent messages with receipts (pipelined, paced)
//! and consumers acknowledging each message individually, all through fabricmq's failover client
//! on a `discovery:fabric:<group>` URL. Everything they see goes into the [`Recorder`].
//!
//! A receipt is tied to a master by the connection's [`Connection::broker_epoch`], read when the
//! message is handed over and again when its receipt arrives (see [`Event::Receipt`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabricmq_client::{
    AckMode, BrokerUrl, ConnectOptions, Connection, ConnectionEvent, Outgoing, SubscribeOptions,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::history::{Event, Recorder};

/// Receipts a producer waits for at a time.
const WINDOW: usize = 16;

/// What the workload does.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The client URL (`discovery:fabric:<group>?zk=...`).
    pub url: String,
    /// Producers (each on its own connection).
    pub producers: usize,
    /// Queues (`chaos.0`, `chaos.1`, ...); producer `i` sends to queue `i % queues`.
    pub queues: usize,
    /// Consumers per queue (each on its own connection).
    pub consumers_per_queue: usize,
    /// Messages per second, all producers together.
    pub rate: u32,
    /// Producer ids are `<run_id>-p<i>`.
    pub run_id: String,
    /// After the producers stop: how long the consumers may go without a new delivery while
    /// receipted messages are still missing.
    pub drain_quiet: Duration,
}

/// Receipted-but-not-yet-delivered bookkeeping, so that the consumers know when to stop.
#[derive(Debug, Default)]
struct Outstanding {
    delivered: HashSet<(String, u64)>,
    missing: HashSet<(String, u64)>,
}

fn options(client_id: String) -> ConnectOptions {
    ConnectOptions {
        login: Some("admin".into()),
        passcode: Some("admin".into()),
        client_id: Some(client_id),
        // A master cut off from the clients is noticed within ~2 s.
        heart_beat: (Duration::from_millis(500), Duration::from_millis(500)),
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

/// Connects (retrying until it works or `cancel`).
async fn connect(
    url: &BrokerUrl,
    client_id: &str,
    rec: &Recorder,
    cancel: &CancellationToken,
) -> Option<Connection> {
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(30),
            Connection::connect(url, options(client_id.to_owned())),
        );
        tokio::select! {
            () = cancel.cancelled() => return None,
            r = attempt => match r {
                Ok(Ok(c)) => return Some(c),
                Ok(Err(e)) => rec.record(&Event::Note {
                    t: rec.now(),
                    text: format!("{client_id}: first connection failed: {e}"),
                }),
                Err(_) => rec.record(&Event::Note {
                    t: rec.now(),
                    text: format!("{client_id}: first connection took over 30 s"),
                }),
            },
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records the connection's failovers until it goes away.
fn watch_failovers(conn: &Connection, client: String, rec: Arc<Recorder>) {
    let mut rx = conn.events();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ConnectionEvent::Resumed { downtime, .. }) => rec.record(&Event::Failover {
                    t: rec.now(),
                    client: client.clone(),
                    downtime_ms: downtime.as_secs_f64() * 1000.0,
                }),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Runs the workload: producers until `stop_producing` turns true, then consumers until every
/// receipted message was delivered (or nothing arrived for `drain_quiet`), or everything stops
/// at once on `cancel`.
pub async fn run(
    w: Workload,
    rec: Arc<Recorder>,
    stop_producing: watch::Receiver<bool>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let url: BrokerUrl = w.url.parse()?;
    let outstanding = Arc::new(Mutex::new(Outstanding::default()));
    let consumers_stop = CancellationToken::new();
    let mut consumers = Vec::new();
    let delivered_tick = Arc::new(tokio::sync::Notify::new());
    for q in 0..w.queues {
        for k in 0..w.consumers_per_queue {
            consumers.push(tokio::spawn(consume(
                url.clone(),
                format!("{}-c{q}.{k}", w.run_id),
                format!("/queue/chaos.{q}"),
                rec.clone(),
                outstanding.clone(),
                delivered_tick.clone(),
                consumers_stop.clone(),
                cancel.clone(),
            )));
        }
    }
    let mut producers = Vec::new();
    let per_producer = f64::from(w.rate.max(1)) / w.producers.max(1) as f64;
    for i in 0..w.producers {
        producers.push(tokio::spawn(produce(
            url.clone(),
            format!("{}-p{i}", w.run_id),
            format!("/queue/chaos.{}", i % w.queues.max(1)),
            Duration::from_secs_f64(1.0 / per_producer),
            rec.clone(),
            outstanding.clone(),
            stop_producing.clone(),
            cancel.clone(),
            w.drain_quiet,
        )));
    }
    for p in producers {
        p.await?;
    }
    rec.record(&Event::Phase {
        t: rec.now(),
        name: "produce-end".into(),
    });
    // Drain: until nothing receipted is missing, or no progress for `drain_quiet`.
    loop {
        let missing = outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .missing
            .len();
        if missing == 0 || cancel.is_cancelled() {
            break;
        }
        let progressed = tokio::time::timeout(w.drain_quiet, delivered_tick.notified()).await;
        if progressed.is_err() {
            rec.record(&Event::Note {
                t: rec.now(),
                text: format!(
                    "drain: no delivery for {:?} with {missing} receipted messages still missing",
                    w.drain_quiet
                ),
            });
            break;
        }
    }
    consumers_stop.cancel();
    for c in consumers {
        c.await?;
    }
    rec.record(&Event::Phase {
        t: rec.now(),
        name: "drain-end".into(),
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    url: BrokerUrl,
    id: String,
    queue: String,
    every: Duration,
    rec: Arc<Recorder>,
    outstanding: Arc<Mutex<Outstanding>>,
    mut stop: watch::Receiver<bool>,
    cancel: CancellationToken,
    receipt_wait: Duration,
) {
    let Some(conn) = connect(&url, &id, &rec, &cancel).await else {
        return;
    };
    watch_failovers(&conn, id.clone(), rec.clone());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = FuturesUnordered::new();
    let mut seq = 0u64;
    let settle = |seq: u64, e0: Option<u64>, r: Result<(), fabricmq_client::ClientError>| {
        let t = rec.now();
        match r {
            Ok(()) => {
                let e1 = conn.broker_epoch();
                rec.record(&Event::Receipt {
                    t,
                    p: id.clone(),
                    seq,
                    epoch: if e0 == e1 { e0 } else { None },
                });
                let mut o = outstanding.lock().unwrap_or_else(|e| e.into_inner());
                let key = (id.clone(), seq);
                if !o.delivered.contains(&key) {
                    o.missing.insert(key);
                }
            }
            Err(e) => rec.record(&Event::SendFailed {
                t,
                p: id.clone(),
                seq,
                error: e.to_string(),
            }),
        }
    };
    loop {
        if *stop.borrow() || cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => continue,
            () = cancel.cancelled() => break,
            Some((s, e0, r)) = inflight.next(), if !inflight.is_empty() => settle(s, e0, r),
            _ = tick.tick(), if inflight.len() < WINDOW => {
                seq += 1;
                let msg = Outgoing {
                    destination: queue.clone(),
                    body: format!("{id}:{seq}").into(),
                    persistent: Some(true),
                    producer: Some((id.clone(), seq)),
                    ..Default::default()
                };
                let e0 = conn.broker_epoch();
                rec.record(&Event::Send { t: rec.now(), p: id.clone(), seq, q: queue.clone() });
                match conn.send_pipelined(msg, true).await {
                    Ok(f) => inflight.push(async move { (seq, e0, f.await) }),
                    Err(e) => settle(seq, e0, Err(e)),
                }
            }
        }
    }
    // The last receipts, bounded.
    let deadline = tokio::time::Instant::now() + receipt_wait;
    while !inflight.is_empty() && !cancel.is_cancelled() {
        match tokio::time::timeout_at(deadline, inflight.next()).await {
            Ok(Some((s, e0, r))) => settle(s, e0, r),
            Ok(None) => break,
            Err(_) => {
                rec.record(&Event::Note {
                    t: rec.now(),
                    text: format!(
                        "{id}: {} receipts still outstanding after {receipt_wait:?}",
                        inflight.len()
                    ),
                });
                break;
            }
        }
    }
    drop(inflight);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.disconnect()).await;
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    url: BrokerUrl,
    id: String,
    queue: String,
    rec: Arc<Recorder>,
    outstanding: Arc<Mutex<Outstanding>>,
    delivered_tick: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    cancel: CancellationToken,
) {
    let Some(conn) = connect(&url, &id, &rec, &cancel).await else {
        return;
    };
    watch_failovers(&conn, id.clone(), rec.clone());
    let sub = tokio::select! {
        () = cancel.cancelled() => return,
        s = conn.subscribe(&queue, AckMode::ClientIndividual, SubscribeOptions {
            prefetch: Some(50),
            ..Default::default()
        }) => s,
    };
    let mut sub = match sub {
        Ok(s) => s,
        Err(e) => {
            rec.record(&Event::Note {
                t: rec.now(),
                text: format!("{id}: subscribe failed: {e}"),
            });
            return;
        }
    };
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => break,
            () = cancel.cancelled() => break,
            m = sub.recv() => m,
        };
        let Some(m) = m else {
            rec.record(&Event::Note {
                t: rec.now(),
                text: format!("{id}: subscription ended"),
            });
            break;
        };
        let producer = m.producer();
        rec.record(&Event::Deliver {
            t: rec.now(),
            c: id.clone(),
            p: producer.as_ref().map(|p| p.0.clone()),
            seq: producer.as_ref().map(|p| p.1),
            q: queue.clone(),
            redelivered: m.redelivered,
            epoch: conn.broker_epoch(),
        });
        if let Some((p, seq)) = producer {
            {
                let mut o = outstanding.lock().unwrap_or_else(|e| e.into_inner());
                let key = (p.clone(), seq);
                o.missing.remove(&key);
                o.delivered.insert(key);
            }
            delivered_tick.notify_one();
            let ok = conn.ack(&m).await.is_ok();
            rec.record(&Event::Ack {
                t: rec.now(),
                c: id.clone(),
                p,
                seq,
                ok,
            });
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.disconnect()).await;
}
