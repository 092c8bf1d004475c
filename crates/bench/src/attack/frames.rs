//! `max-frames`: every connection sends one frame of exactly
//! `limits.max_message_bytes` at the same moment (each must be answered),
//! then one byte more (each must be closed 1009).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::raw::{self, ws_end_label};
use super::report::{Outcome, Tally, Timings};
use super::{Common, Target};

#[derive(Debug, Args)]
pub struct MaxFramesArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections, each sending its frames at the same moment as the
    /// others.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Rounds: new connections each time, so the attack lasts long enough
    /// for the probe's p99 to mean something.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES (by default 50
    /// handshakes each over the rounds, within the per-IP burst of 60).
    #[arg(long, default_value_t = 100)]
    pub sources: u8,
    #[arg(long, default_value_t = 6)]
    pub net: u8,
}

/// A `ping` padded to exactly `len` bytes (the server ignores a ping's
/// payload, so the frame is valid at any size).
fn padded_ping(id: &str, len: usize) -> String {
    let head = format!(r#"{{"type":"ping","id":"{id}","payload":{{"pad":""#);
    let tail = r#""}}"#;
    let pad = len.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

pub(crate) async fn max_frames(target: Target, args: &MaxFramesArgs) -> anyhow::Result<Outcome> {
    let tally = Arc::new(Tally::default());
    let exact_time = Arc::new(Timings::default());
    let over_time = Arc::new(Timings::default());
    let (mut opened, mut max) = (0, 0);
    for round in 0..args.rounds.max(1) {
        let (sockets, m) = open_all(&target, args, round, &tally).await?;
        (opened, max) = (opened + sockets.len(), m);
        one_round(sockets, max, &tally, &exact_time, &over_time).await?;
    }
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let pongs = tally.get("exact size: answered pong");
    let closed_1009 = tally.get("one byte over: close 1009");
    let mut o = Outcome::new(format!(
        "{} rounds of {} connections (127.0.{}.x) each sending a {max}-byte ping (the limit) at \
         the same moment, then a {}-byte one",
        args.rounds,
        args.connections,
        args.net,
        max + 1
    ));
    o.check(
        "frames at the limit answered",
        pongs == opened as u64,
        format!("{pongs} of {opened} answered pong"),
    );
    o.check(
        "frames one byte over closed 1009",
        closed_1009 == pongs,
        format!("{closed_1009} of {pongs} closed 1009"),
    );
    o.counts = tally.into_map();
    o.timing(
        "exact-size frame → pong",
        Arc::into_inner(exact_time).unwrap_or_default(),
    );
    o.timing(
        "over-size frame → close",
        Arc::into_inner(over_time).unwrap_or_default(),
    );
    // A frame per connection in flight at once, plus the connections.
    o.rss_budget_kib = Some((args.connections * (2 * max + 16 * 1024) / 1024) as u64 + 32 * 1024);
    o.expect_baseline = true;
    Ok(o)
}

/// Every connection sends its exact-size frame at the same moment and
/// waits for the pong; then, at the same moment again, the frame one byte
/// over, and waits for the close.
async fn one_round(
    sockets: Vec<crate::BenchSocket>,
    max: usize,
    tally: &Arc<Tally>,
    exact_time: &Arc<Timings>,
    over_time: &Arc<Timings>,
) -> anyhow::Result<()> {
    // The barrier lets the last connection to arrive release them all.
    let barrier = Arc::new(Barrier::new(sockets.len()));
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (tally, exact_time, over_time, barrier) = (
            tally.clone(),
            exact_time.clone(),
            over_time.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let id = format!("a{i}");
            let sent = Instant::now();
            let exact = async {
                ws.send(Message::Text(padded_ping(&id, max).into())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains(&format!(r#""id":"{id}""#)) => {
                            return anyhow::Ok(if t.contains(r#""pong""#) {
                                "exact size: answered pong".to_string()
                            } else {
                                format!("exact size: answered {}", raw::first_chars(&t, 60))
                            });
                        }
                        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        other => return Ok(format!("exact size: {}", ws_end_label(other))),
                    }
                }
            };
            let exact = tokio::time::timeout(Duration::from_secs(10), exact).await;
            exact_time.record(sent.elapsed());
            let alive = match exact {
                Ok(Ok(label)) => {
                    let alive = label.ends_with("pong");
                    tally.add(label);
                    alive
                }
                Ok(Err(e)) => {
                    tally.add(format!("exact size: send failed: {e}"));
                    false
                }
                Err(_) => {
                    tally.add("exact size: no answer within 10 s");
                    false
                }
            };
            // Every task reaches the second barrier, alive or not, or the
            // others would wait for ever.
            barrier.wait().await;
            if !alive {
                return;
            }
            let sent = Instant::now();
            let over = async {
                ws.send(Message::Text(padded_ping(&format!("b{i}"), max + 1).into()))
                    .await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        other => {
                            return anyhow::Ok(format!("one byte over: {}", ws_end_label(other)))
                        }
                    }
                }
            };
            let over = tokio::time::timeout(Duration::from_secs(10), over).await;
            over_time.record(sent.elapsed());
            tally.add(match over {
                Ok(Ok(label)) => label,
                Ok(Err(e)) => format!("one byte over: send failed: {e}"),
                Err(_) => "one byte over: still open 10 s later (!)".to_string(),
            });
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Opens every connection (64 handshakes at a time) and reads the server's
/// `max_message_bytes` from the first `connected` frame.
async fn open_all(
    target: &Target,
    args: &MaxFramesArgs,
    round: usize,
    tally: &Tally,
) -> anyhow::Result<(Vec<crate::BenchSocket>, usize)> {
    let sem = Arc::new(Semaphore::new(64));
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (target, sem) = (target.clone(), sem.clone());
        let source = raw::source(args.net, i, args.sources);
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let stream = raw::connect_from(source, target.addr, None).await?;
            stream.set_nodelay(true)?;
            let token = target.token(&format!("frames-{round}-{i}"));
            let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
            let mut ws =
                crate::handshake(stream, &target.url, &token, config, false, false).await?;
            let connected = match ws.next().await.context("closed before connected")?? {
                Message::Text(t) => t.to_string(),
                other => anyhow::bail!("expected connected, got {other:?}"),
            };
            let max = raw::max_message_bytes(connected.as_bytes())?;
            anyhow::Ok((ws, max))
        }));
    }
    raw::gather(opening, tally, "connected").await
}
