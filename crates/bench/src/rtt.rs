//! `wsgate bench rtt`: request/reply round trips on one connection, a
//! `ping` sent `spacing` after the previous `pong` arrived, at several
//! spacings: what a client's request/reply waits, including any time the
//! server holds a reply back to batch it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::{handshake, sign_hs256};

#[derive(Debug, Args)]
pub struct RttArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[arg(long, env = "WSGATE_AUTH__HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Round trips per spacing.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Pauses between a reply and the next request, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5,10,20,50")]
    pub spacings: Vec<u64>,
}

pub async fn rtt(args: RttArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let target = crate::url_lite::parse(&args.url)?.addr;
    let token = sign_hs256(
        &args.secret,
        "rtt",
        jsonwebtoken::get_current_timestamp() + 3600,
    );
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let mut ws = handshake(
        stream,
        &args.url,
        &token,
        WebSocketConfig::default(),
        false,
        false,
    )
    .await?;
    ws.next().await.context("closed before connected")??;
    println!("rtt: {} round trips per spacing, ping → pong", args.count);
    let mut n = 0u64;
    for spacing in &args.spacings {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..args.count {
            tokio::time::sleep(Duration::from_millis(*spacing)).await;
            n += 1;
            let id = n.to_string();
            let frame = format!(r#"{{"type":"ping","id":"{id}"}}"#);
            let sent = Instant::now();
            ws.send(Message::Text(frame.into())).await?;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .context("no pong within 5 s")?
                    .context("the server closed the connection")??;
                if let Message::Text(t) = msg {
                    if t.contains(r#""pong""#) && t.contains(&format!(r#""id":"{id}""#)) {
                        break;
                    }
                }
            }
            h.record(sent.elapsed().as_micros().max(1) as u64)?;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        println!(
            "spacing {spacing:>3} ms: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1e3
        );
    }
    Ok(())
}
