//! `bomb`: every connection negotiates permessage-deflate and, at the same
//! moment, sends one small compressed frame that inflates to megabytes.
//! Each must be closed 1009 with the server inflating no further than the
//! limit, so its memory stays bounded whatever the ratio.
//!
//! Written on raw sockets: a WebSocket library compresses what it is given
//! and would not send a hand-made compressed payload.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

use super::raw::{self, io_label};
use super::report::{Outcome, Tally, Timings};
use super::{Common, Target};

#[derive(Debug, Args)]
pub struct BombArgs {
    #[command(flatten)]
    pub common: Common,
    /// Compressed connections, all sending their bomb at the same moment.
    #[arg(long, short = 'n', default_value_t = 500)]
    pub connections: usize,
    /// Rounds: new connections each time, so the attack lasts long enough
    /// for the probe's p99 to mean something.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES.
    #[arg(long, default_value_t = 100)]
    pub sources: u8,
    #[arg(long, default_value_t = 7)]
    pub net: u8,
    /// What one bomb inflates to, in bytes. Deflate's best ratio is about
    /// 1000:1, and the compressed frame must stay under the server's
    /// `max_message_bytes` (8 KiB by default) to be about inflating rather
    /// than frame size.
    #[arg(long, default_value_t = 4 << 20)]
    pub inflated_bytes: usize,
}

/// FIN + RSV1 (compressed) + text.
const FIRST_BYTE_COMPRESSED_TEXT: u8 = 0x80 | 0x40 | 0x1;

/// A raw-deflate payload inflating to a `ping` of `len` bytes, as
/// permessage-deflate sends it: a sync-flushed block without its final
/// `00 00 ff ff`.
fn bomb_payload(len: usize) -> anyhow::Result<Vec<u8>> {
    let head = br#"{"type":"ping","id":"bomb","payload":{"pad":""#;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(head)?;
    let chunk = vec![b'a'; 64 * 1024];
    let mut left = len.saturating_sub(head.len());
    while left > 0 {
        let n = left.min(chunk.len());
        encoder.write_all(&chunk[..n])?;
        left -= n;
    }
    // `flush` is a sync flush: every byte written so far is in the output,
    // which ends with the empty stored block the extension strips.
    encoder.flush()?;
    let mut out = encoder.get_ref().clone();
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    Ok(out)
}

pub(crate) async fn bomb(target: Target, args: &BombArgs) -> anyhow::Result<Outcome> {
    let payload = Arc::new(bomb_payload(args.inflated_bytes)?);
    let tally = Arc::new(Tally::default());
    let closed_after = Arc::new(Timings::default());
    let (mut opened, mut max) = (0, 0);
    for round in 0..args.rounds.max(1) {
        let (sockets, m) = open_all(&target, args, round, &tally).await?;
        (opened, max) = (opened + sockets.len(), m);
        if payload.len() >= max {
            bail!(
                "the bomb compresses to {} bytes, not under the server's max_message_bytes \
                 ({max}): lower --inflated-bytes",
                payload.len()
            );
        }
        one_round(sockets, &payload, &tally, &closed_after).await?;
    }
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let closed_1009 = tally.get("after the bomb: close 1009");
    let mut o = Outcome::new(format!(
        "{} rounds of {} permessage-deflate connections (127.0.{}.x) each sending at the same \
         moment one {}-byte compressed frame that inflates to {} bytes ({:.0}:1; limit {max} \
         bytes)",
        args.rounds,
        args.connections,
        args.net,
        payload.len(),
        args.inflated_bytes,
        args.inflated_bytes as f64 / payload.len() as f64
    ));
    o.check(
        "every bomb closed 1009",
        closed_1009 == opened as u64,
        format!("{closed_1009} of {opened} closed 1009"),
    );
    o.figure(
        "memory if one round's bombs were inflated whole (MiB)",
        (args.connections * args.inflated_bytes) >> 20,
    );
    o.counts = tally.into_map();
    o.timing(
        "bomb sent → close",
        Arc::into_inner(closed_after).unwrap_or_default(),
    );
    // Inflating stops one byte past the limit: per connection about the
    // limit, a 32 KiB window and buffers — never the inflated size.
    o.rss_budget_kib = Some((args.connections * 256) as u64 + 32 * 1024);
    o.expect_baseline = true;
    Ok(o)
}

/// Every connection sends its bomb at the same moment and waits for the
/// close.
async fn one_round(
    sockets: Vec<(TcpStream, Vec<u8>)>,
    payload: &Arc<Vec<u8>>,
    tally: &Arc<Tally>,
    closed_after: &Arc<Timings>,
) -> anyhow::Result<()> {
    let barrier = Arc::new(Barrier::new(sockets.len()));
    let mut tasks = Vec::with_capacity(sockets.len());
    for (mut stream, mut buf) in sockets {
        let (tally, closed_after, barrier, payload) = (
            tally.clone(),
            closed_after.clone(),
            barrier.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let frame = raw::masked_frame(FIRST_BYTE_COMPRESSED_TEXT, &payload);
            barrier.wait().await;
            let sent = Instant::now();
            if let Err(e) = stream.write_all(&frame).await {
                return tally.add(format!("send failed: {}", io_label(&e)));
            }
            let end = tokio::time::timeout(
                Duration::from_secs(10),
                raw::read_until_close(&mut stream, &mut buf, 1 << 20),
            )
            .await
            .unwrap_or_else(|_| "still open 10 s later (!)".to_string());
            closed_after.record(sent.elapsed());
            tally.add(format!("after the bomb: {end}"));
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Opens every connection with permessage-deflate agreed, 64 handshakes at
/// a time, each past its `connected` frame; returns them with the bytes
/// already read, and the server's `max_message_bytes`.
async fn open_all(
    target: &Target,
    args: &BombArgs,
    round: usize,
    tally: &Tally,
) -> anyhow::Result<(Vec<(TcpStream, Vec<u8>)>, usize)> {
    let sem = Arc::new(Semaphore::new(64));
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (target, sem) = (target.clone(), sem.clone());
        let source = raw::source(args.net, i, args.sources);
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut stream = raw::connect_from(source, target.addr, None).await?;
            stream.set_nodelay(true)?;
            let token = target.token(&format!("bomb-{round}-{i}"));
            let request = raw::upgrade_request(
                &target,
                &format!(
                    "Authorization: Bearer {token}\r\n\
                     Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                ),
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            let (status, end) = raw::read_status(&mut stream, &mut buf)
                .await?
                .context("closed before answering the upgrade")?;
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if status != 101 {
                bail!("upgrade refused: HTTP {status}");
            }
            if !head.contains("permessage-deflate") {
                bail!("permessage-deflate not agreed (is transport.compression on?)");
            }
            buf.drain(..end);
            let connected = raw::read_frame(&mut stream, &mut buf, 64 * 1024)
                .await?
                .context("closed before connected")?;
            let max = raw::max_message_bytes(&connected.payload)?;
            anyhow::Ok(((stream, buf), max))
        }));
    }
    raw::gather(opening, tally, "connected with permessage-deflate").await
}
