//! `mq-client browse`: lists the messages of a queue without consuming them.
//!
//! Subscribes with `browser: true`; the broker sends a snapshot of the queue and then a MESSAGE
//! carrying `browser: end`, which ends the listing (it is not printed or counted). `--count` and
//! `--timeout` stop earlier. Each message is printed on stdout (id, headers, a body preview or the
//! whole body with `--verbose`); with `--json` the listing is left out and only `{"browsed":N}` is
//! printed.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use fabricmq_client::{AckMode, Message, SubscribeOptions};

use crate::cli::BrowseArgs;
use crate::common::{self, Acker, Ended, Next, Receiver, StopFlag};
use crate::report::{BrowseReport, Outcome, Output};

/// Bytes of body shown without `--verbose`.
pub const PREVIEW_BYTES: usize = 80;

/// Whether `msg` is the broker's end-of-browse marker.
pub fn is_browse_end(msg: &Message) -> bool {
    msg.header("browser")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("end"))
}

/// Renders a body for display: text as is (escaped control characters), binary as a hex dump
/// marker; at most `limit` bytes unless `None`.
pub fn render_body(body: &[u8], limit: Option<usize>) -> String {
    let shown = match limit {
        Some(n) if body.len() > n => &body[..n],
        _ => body,
    };
    let text = String::from_utf8_lossy(shown);
    let mut s: String = text.chars().flat_map(char::escape_debug).collect();
    if shown.len() < body.len() {
        s.push_str(&format!("... ({} more bytes)", body.len() - shown.len()));
    }
    s
}

/// The listing entry of message number `n`.
pub fn render_message(n: u64, msg: &Message, verbose: bool) -> String {
    let mut s = format!("#{n} {}\n", msg.message_id);
    for (k, v) in &msg.headers {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    let limit = (!verbose).then_some(PREVIEW_BYTES);
    s.push_str(&format!(
        "  body ({} bytes): {}\n",
        msg.body.len(),
        render_body(&msg.body, limit)
    ));
    s
}

/// Runs `mq-client browse`: lists the messages, then prints the report.
pub async fn run(args: BrowseArgs) -> anyhow::Result<()> {
    let stop = StopFlag::new();
    stop.set_on_ctrl_c();
    let out = Output {
        json: args.common.json,
    };
    execute(&args, &stop).await?.finish(out)
}

/// Browses as described by `args`, printing the listing on stdout unless `--json`.
pub async fn execute(args: &BrowseArgs, stop: &StopFlag) -> anyhow::Result<Outcome<BrowseReport>> {
    let json = args.common.json;
    let destination = args.common.destination.stomp_name();
    let conn = common::connect(
        &args.common.connection,
        args.common.connection.client_id.clone(),
    )
    .await?;
    let opts = SubscribeOptions {
        prefetch: args.prefetch,
        browser: true,
        ..SubscribeOptions::default()
    };
    let sub = conn
        .subscribe(&destination, AckMode::Auto, opts)
        .await
        .with_context(|| format!("cannot browse {destination}"))?;
    let idle = (args.timeout > 0).then(|| Duration::from_millis(args.timeout));
    let mut receiver = Receiver::new(sub, idle);
    let mut acker = Acker::new(AckMode::Auto, 1);
    let mut browsed = 0u64;
    let mut stdout = std::io::stdout();
    let ended = loop {
        if args.count > 0 && browsed >= args.count {
            break Ended::Stopped;
        }
        let msg = match receiver.next(&conn, &mut acker, &[stop]).await? {
            Next::Message(m) => m,
            Next::End(e) => break e,
        };
        if is_browse_end(&msg) {
            break Ended::Stopped;
        }
        browsed += 1;
        if !json {
            stdout.write_all(render_message(browsed, &msg, args.verbose).as_bytes())?;
        }
    };
    stdout.flush()?;
    let failure = (ended == Ended::Closed)
        .then(|| anyhow::anyhow!("the broker closed the connection after {browsed} messages"));
    if failure.is_none() {
        // No UNSUBSCRIBE: a browse subscription ends by itself at `browser: end`, and the broker
        // rejects unsubscribing from one that already ended. DISCONNECT cleans up either way; the
        // subscription handle is dropped only after it, so its drop sends nothing.
        if let Err(e) = conn.disconnect().await {
            tracing::warn!("disconnect: {e}");
        }
    }
    drop(receiver);
    Ok(Outcome {
        report: BrowseReport { browsed },
        human: format!("browsed {browsed} messages on {}", args.common.destination),
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_rendering() {
        assert_eq!(render_body(b"hello", None), "hello");
        assert_eq!(render_body(b"a\nb", None), "a\\nb");
        assert_eq!(render_body(b"abcdef", Some(3)), "abc... (3 more bytes)");
        assert_eq!(render_body(b"abc", Some(3)), "abc");
        assert_eq!(render_body(&[0xff, b'a'], None), "\u{fffd}a");
    }
}
