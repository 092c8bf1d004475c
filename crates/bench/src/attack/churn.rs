//! `churn`: rapid connect → authenticate → close cycles from one address
//! range. The per-IP handshake rate must refuse the excess with 429, and
//! the server's memory, open files and connection count must come back to
//! their baseline once the cycles stop (no leak per connection or per
//! user).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::raw::{self, refused_status, ws_end_label};
use super::report::{Outcome, Tally, Timings};
use super::{Common, Target};

#[derive(Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connect → `connected` → close cycles, each a different user.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub cycles: usize,
    /// Spread the cycles evenly over this many seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES: one range, few
    /// enough addresses that the per-IP handshake rate must act.
    #[arg(long, default_value_t = 32)]
    pub sources: u8,
    #[arg(long, default_value_t = 2)]
    pub net: u8,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The server's `limits.handshakes_per_minute_per_ip`, for the check.
    #[arg(long, default_value_t = 60)]
    pub per_ip_per_minute: u64,
    /// The server's RSS may stay this much (MiB) above its baseline
    /// afterwards (the allocator keeps some freed memory).
    #[arg(long, default_value_t = 16)]
    pub rss_slack_mib: u64,
}

const ACCEPTED: &str = "accepted: connected, closed 1000";

pub(crate) async fn churn(target: Target, args: &ChurnArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.sources > 0 && args.cycles > 0,
        "--sources and --cycles must be at least 1"
    );
    let tally = Arc::new(Tally::default());
    let accepted_time = Arc::new(Timings::default());
    let refused_time = Arc::new(Timings::default());
    let in_flight = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let spacing = Duration::from_secs_f64(args.seconds as f64 / args.cycles as f64);
    let mut tick = tokio::time::interval(spacing);
    // Behind schedule (a slow handshake holding permits): catch up, so the
    // cycles still fit the minute.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.cycles);
    for i in 0..args.cycles {
        tick.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (tally, accepted_time, refused_time) =
            (tally.clone(), accepted_time.clone(), refused_time.clone());
        let source = raw::source(args.net, i, args.sources);
        let token = target.token(&format!("churn-{i}"));
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result =
                tokio::time::timeout(Duration::from_secs(10), cycle(&target, source, &token)).await;
            drop(permit);
            match result {
                Err(_) => tally.add("no answer within 10 s"),
                Ok(Ok(label)) => {
                    if label == ACCEPTED {
                        accepted_time.record(t0.elapsed());
                    }
                    tally.add(label);
                }
                Ok(Err(e)) => match refused_status(&e) {
                    Some(status) => {
                        refused_time.record(t0.elapsed());
                        tally.add(format!("refused: HTTP {status}"));
                    }
                    None => tally.add(format!(
                        "failed: {}",
                        raw::first_chars(&format!("{e:#}"), 60)
                    )),
                },
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let accepted = tally.get(ACCEPTED);
    let refused_429 = tally.get("refused: HTTP 429");
    // governor's quota: a burst of one minute's worth, then one per
    // 60/N s.
    let bound = args.sources as u64 * args.per_ip_per_minute
        + (args.sources as f64 * args.per_ip_per_minute as f64 * secs / 60.0).ceil() as u64;
    let mut o = Outcome::new(format!(
        "{} connect → authenticate → close cycles in {:.1} s ({:.0}/s) from {} addresses \
         (127.0.{}.x), each a new user, {} in flight at most",
        args.cycles,
        secs,
        args.cycles as f64 / secs,
        args.sources,
        args.net,
        args.concurrency
    ));
    o.check(
        "the per-IP handshake rate acted",
        refused_429 > 0 && accepted <= bound,
        format!("{accepted} accepted (at most {bound} allowed), {refused_429} refused 429"),
    );
    o.counts = tally.into_map();
    o.timing(
        "accepted cycle (connect to close)",
        Arc::into_inner(accepted_time).unwrap_or_default(),
    );
    o.timing(
        "refused handshake (connect to 429)",
        Arc::into_inner(refused_time).unwrap_or_default(),
    );
    o.expect_baseline = true;
    o.rss_after_budget_kib = Some(args.rss_slack_mib * 1024);
    Ok(o)
}

/// One cycle; `Ok` holds the tally label, a refused handshake is an `Err`
/// carrying tungstenite's HTTP error.
async fn cycle(target: &Target, source: std::net::IpAddr, token: &str) -> anyhow::Result<String> {
    let stream = raw::connect_from(source, target.addr, None).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().max_message_size(Some(64 * 1024));
    let mut ws = crate::handshake(stream, &target.url, token, config, false, false).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains(r#""connected""#) => {}
        other => return Ok(format!("upgraded, then: {}", ws_end_label(other))),
    }
    ws.close(None).await.context("sending close")?;
    // The server's close frame answers ours; then it drops the connection.
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    Ok(match answered {
        Ok(()) => ACCEPTED.to_string(),
        Err(_) => "accepted, but no close answer within 2 s".to_string(),
    })
}
