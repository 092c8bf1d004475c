//! A hostile JWKS endpoint (`jwks-serve`) and the scenario run against a
//! server configured with it (`jwks`): tokens with ever new `kid`s make the
//! server refetch; the endpoint hangs (`/hang`) or streams 100 MB
//! (`/huge`). Handshakes must be refused at once, without waiting for the
//! fetch; each fetch must end within its timeout or size cap; the server's
//! memory must stay bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::raw::{self, refused_status};
use super::report::{Outcome, Tally, Timings};
use super::{ms, Common, Target};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve `/hang`, `/huge` and `/stats`.
    #[arg(long, default_value = "127.0.0.1:19391")]
    pub listen: SocketAddr,
    /// Bytes `/huge` streams (chunked, no length declared).
    #[arg(long, default_value_t = 100_000_000)]
    pub huge_bytes: u64,
}

#[derive(Debug, Args)]
pub struct JwksArgs {
    #[command(flatten)]
    pub common: Common,
    /// `jwks-serve`'s stats URL, to report what the server's fetches did.
    #[arg(long, default_value = "http://127.0.0.1:19391/stats")]
    pub jwks_stats: String,
    /// Handshakes with an RS256 token whose `kid` the server has never seen.
    #[arg(long, short = 'n', default_value_t = 300)]
    pub clients: usize,
    /// Spread them over this many seconds (long enough for several
    /// on-demand refetches, at most one per 10 s).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES.
    #[arg(long, default_value_t = 20)]
    pub sources: u8,
    #[arg(long, default_value_t = 9)]
    pub net: u8,
    /// The server's JWKS fetch timeout (3 s), for the check.
    #[arg(long, default_value_t = 3)]
    pub fetch_timeout_secs: u64,
}

/// What the endpoint saw of the server's fetches.
#[derive(Debug, Default)]
struct Seen {
    requests: AtomicU64,
    // A std Mutex: one update per fetch.
    fetches: Mutex<Vec<Value>>,
}

/// Records one fetch when the server drops it: how long it was held open
/// and how many bytes were handed to it.
struct FetchGuard {
    seen: Arc<Seen>,
    path: &'static str,
    started: Instant,
    bytes: u64,
}

impl FetchGuard {
    /// Counts a request to `path` and starts timing it.
    fn start(seen: Arc<Seen>, path: &'static str) -> Self {
        seen.requests.fetch_add(1, Ordering::Relaxed);
        FetchGuard {
            seen,
            path,
            started: Instant::now(),
            bytes: 0,
        }
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        let mut fetches = self.seen.fetches.lock().unwrap_or_else(|e| e.into_inner());
        fetches.push(json!({
            "path": self.path,
            "held_secs": self.started.elapsed().as_secs_f64(),
            "bytes_sent": self.bytes,
        }));
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let huge_bytes = args.huge_bytes;
    let app = Router::new()
        .route(
            "/hang",
            get(|State(seen): State<Arc<Seen>>| async move {
                let _guard = FetchGuard::start(seen, "/hang");
                // Never answers; the guard records when the server gives up.
                std::future::pending::<()>().await;
                ""
            }),
        )
        .route(
            "/huge",
            get(move |State(seen): State<Arc<Seen>>| async move {
                let guard = FetchGuard::start(seen, "/huge");
                // A JSON document that never ends within the cap: an open
                // key list, then spaces.
                let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                let stream = futures_util::stream::unfold(guard, move |mut guard| {
                    let chunk = chunk.clone();
                    async move {
                        if guard.bytes >= huge_bytes {
                            return None;
                        }
                        let next = if guard.bytes == 0 {
                            Bytes::from_static(br#"{"keys":["#)
                        } else {
                            chunk
                        };
                        guard.bytes += next.len() as u64;
                        Some((Ok::<_, std::io::Error>(next), guard))
                    }
                });
                Body::from_stream(stream)
            }),
        )
        .route(
            "/stats",
            get(|State(seen): State<Arc<Seen>>| async move {
                let fetches = seen
                    .fetches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Json(json!({
                    "requests": seen.requests.load(Ordering::Relaxed),
                    "fetches": fetches,
                }))
            }),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("jwks-serve: http://{}/hang and /huge", args.listen);
    axum::serve(listener, app).await?;
    Ok(())
}

/// An RS256 token naming a `kid` the server does not know; its signature is
/// never checked (there is no key to check it with).
fn unknown_kid_token(kid: &str, sub: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#));
    let claims = b64.encode(format!(
        r#"{{"sub":"{sub}","exp":{}}}"#,
        jsonwebtoken::get_current_timestamp() + 3600
    ));
    format!("{header}.{claims}.{}", b64.encode([0u8; 256]))
}

pub(crate) async fn jwks(target: Target, args: &JwksArgs) -> anyhow::Result<Outcome> {
    let stats_before = fetch_stats(&args.jwks_stats).await?;
    let tally = Arc::new(Tally::default());
    let refused = Arc::new(Timings::default());
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let spacing = Duration::from_secs_f64(args.seconds as f64 / args.clients.max(1) as f64);
    let mut tick = tokio::time::interval(spacing);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        tick.tick().await;
        let permit = sem.clone().acquire_owned().await?;
        let (tally, refused, target) = (tally.clone(), refused.clone(), target.clone());
        let source = raw::source(args.net, i, args.sources);
        let token = unknown_kid_token(&format!("k-{i}"), &format!("jwks-{i}"));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(10), async {
                let stream = raw::connect_from(source, target.addr, None).await?;
                let config = Default::default();
                crate::handshake(stream, &target.url, &token, config, false, false).await
            })
            .await;
            drop(permit);
            tally.add(match result {
                Err(_) => "no answer within 10 s (!)".to_string(),
                Ok(Ok(_)) => "upgraded (!)".to_string(),
                Ok(Err(e)) => match refused_status(&e) {
                    Some(status) => {
                        refused.record(started.elapsed());
                        format!("refused: HTTP {status}")
                    }
                    None => format!("failed: {}", raw::first_chars(&format!("{e:#}"), 60)),
                },
            });
        }));
    }
    for t in tasks {
        t.await?;
    }
    // A fetch still held open when the handshakes end is recorded once the
    // server gives it up: wait out the fetch timeout before reading.
    tokio::time::sleep(Duration::from_secs(args.fetch_timeout_secs + 1)).await;
    let stats = fetch_stats(&args.jwks_stats).await?;
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let refused = Arc::into_inner(refused)
        .unwrap_or_default()
        .into_histogram();

    let new_fetches: Vec<Value> = stats["fetches"]
        .as_array()
        .map(|a| {
            a.iter()
                .skip(stats_before["fetches"].as_array().map_or(0, Vec::len))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let requests =
        stats["requests"].as_u64().unwrap_or(0) - stats_before["requests"].as_u64().unwrap_or(0);
    let held_max = new_fetches
        .iter()
        .filter_map(|f| f["held_secs"].as_f64())
        .fold(0.0, f64::max);
    let bytes_max = new_fetches
        .iter()
        .filter_map(|f| f["bytes_sent"].as_u64())
        .max()
        .unwrap_or(0);
    let mut o = Outcome::new(format!(
        "{} handshakes over {} s (127.0.{}.x), each with an RS256 token naming a new kid, \
         against a server whose JWKS endpoint is hostile",
        args.clients, args.seconds, args.net
    ));
    let upgraded = tally.sum_prefix("upgraded");
    let unanswered = tally.sum_prefix("no answer");
    o.check(
        "handshakes refused at once, not held by the fetch",
        upgraded == 0 && unanswered == 0 && ms(&refused, 0.99) < 1000.0,
        format!(
            "p99 {:.1} ms, max {:.1} ms; {upgraded} upgraded, {unanswered} unanswered",
            ms(&refused, 0.99),
            refused.max() as f64 / 1e3
        ),
    );
    o.check(
        "every fetch ended within the fetch timeout",
        held_max <= args.fetch_timeout_secs as f64 + 1.0,
        format!("longest fetch held {held_max:.2} s"),
    );
    o.figure("fetches the endpoint saw", requests);
    o.figure("most bytes handed to one fetch (KiB)", bytes_max / 1024);
    o.figure("fetches", Value::Array(new_fetches));
    o.counts = tally.into_map();
    o.timings.push(("handshake → refusal".into(), refused));
    o.rss_budget_kib = Some(32 * 1024);
    o.expect_baseline = true;
    Ok(o)
}

async fn fetch_stats(url: &str) -> anyhow::Result<Value> {
    reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!("cannot read {url}: is `wsgate bench attack jwks-serve` running?")
        })?
        .json()
        .await
        .context("jwks-serve stats")
}
