//! `big-token`: upgrade requests carrying a token of about 1 MB — a JWT
//! whose header segment is that large — in `Authorization` and in
//! `Sec-WebSocket-Protocol`. Each must be refused (431, 400 or 401) or
//! closed quickly, without the server buffering it whole.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::raw::{self, io_label};
use super::report::{Outcome, Tally, Timings};
use super::{ms, Common, Target};

#[derive(Debug, Args)]
pub struct BigTokenArgs {
    #[command(flatten)]
    pub common: Common,
    /// Requests; even ones carry the token in `Authorization: Bearer`, odd
    /// ones as a `bearer.` subprotocol.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// The token's length in bytes (its header segment makes up the rest).
    #[arg(long, default_value_t = 1 << 20)]
    pub token_bytes: usize,
    /// Requests being sent at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES (a token under
    /// hyper's head limit reaches the handshake and counts against the
    /// per-IP rate: 20 per address by default).
    #[arg(long, default_value_t = 50)]
    pub sources: u8,
    #[arg(long, default_value_t = 8)]
    pub net: u8,
    /// An answer slower than this (ms, p99) fails the check.
    #[arg(long, default_value_t = 2000)]
    pub answer_budget_ms: u64,
}

/// A syntactically valid HS256 JWT of about `len` bytes: a padded header,
/// real claims and a signature that does not verify.
fn padded_token(len: usize, sub: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = b64.encode(format!(
        r#"{{"sub":"{sub}","exp":{}}}"#,
        jsonwebtoken::get_current_timestamp() + 3600
    ));
    let signature = b64.encode([0u8; 32]);
    // Base64 makes 4 bytes of every 3.
    let pad = (len.saturating_sub(claims.len() + signature.len() + 40)) * 3 / 4;
    let header = b64.encode(format!(
        r#"{{"alg":"HS256","typ":"JWT","pad":"{}"}}"#,
        "x".repeat(pad)
    ));
    format!("{header}.{claims}.{signature}")
}

pub(crate) async fn big_token(target: Target, args: &BigTokenArgs) -> anyhow::Result<Outcome> {
    let tally = Arc::new(Tally::default());
    let answered = Arc::new(Timings::default());
    // Request bytes written before the answer: the sum (for a mean) and
    // the most.
    let written = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let token = Arc::new(padded_token(args.token_bytes, "big-token"));
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (tally, answered, written, sem, token) = (
            tally.clone(),
            answered.clone(),
            written.clone(),
            sem.clone(),
            token.clone(),
        );
        let source = raw::source(args.net, i, args.sources);
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let (how, header) = if i % 2 == 0 {
                (
                    "Authorization",
                    format!("Authorization: Bearer {token}\r\n"),
                )
            } else {
                (
                    "subprotocol",
                    format!("Sec-WebSocket-Protocol: wsgate.v1.json, bearer.{token}\r\n"),
                )
            };
            let request = raw::upgrade_request(&target, &header);
            let stream = match raw::connect_from(source, target.addr, None).await {
                Ok(s) => s,
                Err(e) => return tally.add(format!("{how}: connect failed: {}", io_label(&e))),
            };
            let (mut rd, mut wr) = stream.into_split();
            let sent = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            // The request is written while the answer is awaited: a server
            // that answers early (431) must not wait for the rest.
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    for chunk in request.as_bytes().chunks(64 * 1024) {
                        if wr.write_all(chunk).await.is_err() {
                            return;
                        }
                        sent.fetch_add(chunk.len(), Ordering::Relaxed);
                    }
                    // Dropping the write half sends FIN, and hyper closes a
                    // half-closed connection without answering: hold it
                    // until the answer is read (the task is then aborted).
                    std::future::pending::<()>().await;
                    drop(wr);
                })
            };
            let mut buf = Vec::new();
            let answer =
                tokio::time::timeout(Duration::from_secs(10), raw::read_status(&mut rd, &mut buf))
                    .await;
            let took = started.elapsed();
            writer.abort();
            let label = match answer {
                Err(_) => "no answer within 10 s (!)".to_string(),
                Ok(Ok(Some((101, _)))) => "upgraded (!)".to_string(),
                Ok(Ok(Some((status, _)))) => format!("HTTP {status}"),
                Ok(Ok(None)) => "closed without an answer".to_string(),
                Ok(Err(e)) => format!("closed: {}", io_label(&e)),
            };
            answered.record(took);
            let n = sent.load(Ordering::Relaxed);
            written.0.fetch_add(n, Ordering::Relaxed);
            written.1.fetch_max(n, Ordering::Relaxed);
            tally.add(format!("{how}: {label}"));
        }));
    }
    for t in tasks {
        t.await?;
    }
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let answered = Arc::into_inner(answered)
        .unwrap_or_default()
        .into_histogram();
    let upgraded =
        tally.sum_prefix("Authorization: upgraded") + tally.sum_prefix("subprotocol: upgraded");
    let unanswered =
        tally.sum_prefix("Authorization: no answer") + tally.sum_prefix("subprotocol: no answer");
    let mut o = Outcome::new(format!(
        "{} upgrade requests with a {}-byte token (half in Authorization, half as a bearer \
         subprotocol), {} at a time, from 127.0.{}.x",
        args.clients, args.token_bytes, args.concurrency, args.net
    ));
    o.check(
        "none upgraded",
        upgraded == 0,
        format!("{upgraded} upgraded"),
    );
    o.check(
        "refused or closed quickly",
        unanswered == 0 && ms(&answered, 0.99) <= args.answer_budget_ms as f64,
        format!(
            "p99 {:.1} ms (budget {} ms), {unanswered} without an answer",
            ms(&answered, 0.99),
            args.answer_budget_ms
        ),
    );
    o.figure(
        "request KiB written before the answer (mean / most)",
        format!(
            "{:.0} / {:.0}",
            written.0.load(Ordering::Relaxed) as f64 / 1024.0 / args.clients.max(1) as f64,
            written.1.load(Ordering::Relaxed) as f64 / 1024.0
        ),
    );
    o.counts = tally.into_map();
    o.timings
        .push(("request start → answer or close".into(), answered));
    // hyper reads a head into at most ~400 KiB; a server that buffered
    // whole tokens would need token_bytes per request in flight.
    o.rss_budget_kib = Some(args.concurrency as u64 * 512 + 32 * 1024);
    o.expect_baseline = true;
    Ok(o)
}
