//! `never-read`: subscribers that stop reading while publications flood
//! their channel through the server API. Each must be closed 4009 once its
//! outbound queue is full, and the server's memory must stay within what
//! the queues allow.
//!
//! The subscribers' receive buffers are made small before they connect: on
//! loopback the kernel would otherwise buffer megabytes per socket on both
//! sides, and the server's queue would fill long after the flood ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::raw::{self, ws_end_label};
use super::report::{Outcome, Tally};
use super::watch::ServerCounters;
use super::{Common, Target};

#[derive(Debug, Args)]
pub struct NeverReadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers that stop reading once subscribed.
    #[arg(long, short = 'n', default_value_t = 200)]
    pub clients: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    #[arg(long, default_value_t = 5)]
    pub net: u8,
    /// The flooded channel (its namespace must let anyone subscribe).
    #[arg(long, default_value = "attack-flood")]
    pub channel: String,
    /// Bytes of `data` per publication.
    #[arg(long, default_value_t = 8 * 1024)]
    pub payload: usize,
    /// Publications per second, spread over --publishers HTTP connections.
    /// The default (160 MB/s towards the subscribers while their buffers
    /// fill) leaves the server's core room for everyone else: the attack
    /// is the subscribers that stop reading, not the publisher's volume.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Stop flooding after this long even if not every subscriber was
    /// closed.
    #[arg(long, default_value_t = 60)]
    pub max_secs: u64,
    /// The subscribers' SO_RCVBUF, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub recv_buffer: u32,
    /// The server's `limits.outbound_queue_bytes`, for the memory bound.
    #[arg(long, default_value_t = 1 << 20)]
    pub queue_bytes: u64,
}

const CLOSED_4009: &str = r#"wsgate_disconnects_total{code="4009"}"#;

pub(crate) async fn never_read(target: Target, args: &NeverReadArgs) -> anyhow::Result<Outcome> {
    let api_key = target
        .api_key
        .clone()
        .context("never-read publishes through the server API: give --api-key")?;
    let tally = Tally::default();
    let sockets = subscribe_all(&target, args, &tally).await;
    let n = sockets.len();
    anyhow::ensure!(
        n > 0,
        "no subscriber could subscribe: {:?}",
        tally.into_map()
    );
    let closed_before = ServerCounters::fetch(&target.http)
        .await?
        .get(CLOSED_4009)
        .unwrap_or(0.0);

    // Flood until every subscriber was closed 4009, or --max-secs.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publish_errors = Arc::new(Tally::default());
    let flood_started = Instant::now();
    let mut publishers = Vec::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let pad = "x".repeat(args.payload);
    let every = Duration::from_secs_f64(args.publishers.max(1) as f64 / args.rate.max(1) as f64);
    for w in 0..args.publishers.max(1) {
        let (client, stop, published, errors) = (
            client.clone(),
            stop.clone(),
            published.clone(),
            publish_errors.clone(),
        );
        let url = format!("{}/api/publish", target.http);
        let body = format!(
            r#"{{"channel":"{}","data":{{"w":{w},"pad":"{pad}"}}}}"#,
            args.channel
        );
        let key = api_key.clone();
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors.add(format!("publish answered HTTP {}", r.status().as_u16())),
                    Err(e) => errors.add(format!(
                        "publish failed: {}",
                        raw::first_chars(&e.to_string(), 50)
                    )),
                }
            }
        }));
    }
    let mut first_close = None;
    let mut closed = 0.0;
    while flood_started.elapsed() < Duration::from_secs(args.max_secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(counters) = ServerCounters::fetch(&target.http).await else {
            continue;
        };
        closed = counters.get(CLOSED_4009).unwrap_or(0.0) - closed_before;
        if closed > 0.0 && first_close.is_none() {
            first_close = Some(flood_started.elapsed());
        }
        if closed >= n as f64 {
            break;
        }
    }
    let last_close = flood_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await?;
    }
    let published = published.load(Ordering::Relaxed);

    // Now read what reached each subscriber, to see how its connection
    // ended from the client's side.
    let mut drains = Vec::with_capacity(n);
    for mut ws in sockets {
        drains.push(tokio::spawn(async move {
            let mut frames = 0u64;
            let end = tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_) | Message::Binary(_))) => frames += 1,
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        other => return ws_end_label(other),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| "still open 15 s after the flood (!)".to_string());
            (end, frames)
        }));
    }
    let mut delivered = 0;
    for d in drains {
        let (end, frames) = d.await?;
        delivered += frames;
        tally.add(format!("subscriber saw: {end}"));
    }
    for (label, count) in Arc::into_inner(publish_errors)
        .unwrap_or_default()
        .into_map()
    {
        tally.add_n(label, count);
    }

    let mut o = Outcome::new(format!(
        "{n} subscribers of `{}` (SO_RCVBUF {} B, 127.0.{}.x) that never read, \
         flooded with {} B publications at {}/s through POST /api/publish",
        args.channel, args.recv_buffer, args.net, args.payload, args.rate
    ));
    o.check(
        "every subscriber closed 4009 (server's count)",
        closed >= n as f64,
        format!("{closed:.0} of {n} closed 4009 (wsgate_disconnects_total)"),
    );
    o.figure("publications sent", published);
    o.figure(
        "publication bytes sent to the API (MB)",
        format!("{:.1}", published as f64 * args.payload as f64 / 1e6),
    );
    o.figure("frames the subscribers read afterwards", delivered);
    o.figure(
        "first / last 4009 after the flood began (s)",
        format!(
            "{} / {:.1}",
            first_close.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64())),
            last_close.as_secs_f64()
        ),
    );
    let bound_kib = n as u64 * args.queue_bytes / 1024;
    o.figure("N × outbound_queue_bytes (KiB)", bound_kib);
    // Queues hold at most N × queue_bytes; the rest is the publications
    // in flight and the write buffers.
    o.rss_budget_kib = Some(bound_kib + bound_kib / 2 + 32 * 1024);
    o.counts = tally.into_map();
    o.expect_baseline = true;
    Ok(o)
}

/// Opens and subscribes the subscribers, 64 at a time; a failure is
/// tallied, not fatal.
async fn subscribe_all(
    target: &Target,
    args: &NeverReadArgs,
    tally: &Tally,
) -> Vec<crate::BenchSocket> {
    let sem = Arc::new(Semaphore::new(64));
    let mut opening = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (target, sem) = (target.clone(), sem.clone());
        let source = raw::source(args.net, i, args.sources);
        let (channel, recv_buffer) = (args.channel.clone(), args.recv_buffer);
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let stream = raw::connect_from(source, target.addr, Some(recv_buffer)).await?;
            let token = target.token(&format!("never-read-{i}"));
            let config = WebSocketConfig::default().max_message_size(Some(4 << 20));
            let mut ws =
                crate::handshake(stream, &target.url, &token, config, false, false).await?;
            ws.next().await.context("closed before connected")??;
            let sub =
                format!(r#"{{"type":"subscribe","id":"s","payload":{{"channel":"{channel}"}}}}"#);
            ws.send(Message::Text(sub.into())).await?;
            loop {
                match ws.next().await.context("closed before subscribed")?? {
                    Message::Text(t) if t.contains(r#""subscribed""#) => return Ok(ws),
                    Message::Text(t) if t.contains(r#""error""#) => {
                        anyhow::bail!("subscribe refused: {t}")
                    }
                    _ => {}
                }
            }
        }));
    }
    let mut sockets = Vec::with_capacity(args.clients);
    for t in opening {
        match t.await {
            Ok(Ok(ws)) => sockets.push(ws),
            Ok(Err(e)) => tally.add(format!(
                "could not subscribe: {}",
                raw::first_chars(&format!("{e:#}"), 60)
            )),
            Err(e) => tally.add(format!("subscriber task failed: {e}")),
        }
    }
    tally.add_n("subscribed, then stopped reading", sockets.len() as u64);
    sockets
}
