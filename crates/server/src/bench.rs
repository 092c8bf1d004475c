//! `wsgate bench`: the project's own load generator.
//!
//! `conns` opens N authenticated connections from several loopback source
//! addresses, waits for each `connected` frame, and reports handshakes/s
//! and — given the server's pid — the server's RSS and CPU time per
//! connection, read from /proc.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{sign_hs256, Claims};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open N idle authenticated connections; report handshakes/s and the
    /// server's memory and CPU per connection.
    Conns(ConnsArgs),
}

#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// HMAC secret to sign one token per simulated user.
    #[arg(long, env = "WSGATE_AUTH__HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Source addresses 127.0.0.1 … 127.0.0.K, to stay clear of the
    /// ephemeral port range of a single address.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The server's pid, to read its RSS and CPU time.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds to hold the connections idle before the second reading.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

/// RSS in KiB and CPU time (user, system) of a process.
fn proc_sample(pid: u32) -> anyhow::Result<(u64, (Duration, Duration))> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS not found")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) everywhere
    // it runs today.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    Ok((rss_kib, (ticks(field(11)), ticks(field(12)))))
}

pub fn main(cmd: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cmd {
        BenchCommand::Conns(args) => runtime.block_on(conns(args)),
    }
}

async fn conns(args: ConnsArgs) -> anyhow::Result<()> {
    let url: url_lite::Url = url_lite::parse(&args.url)?;
    if args.sources == 0 {
        bail!("--sources must be at least 1");
    }
    let before = args.pid.map(proc_sample).transpose()?;
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await?;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % args.sources as usize) as u8,
        ));
        let token = sign_hs256(
            &args.secret,
            &Claims {
                sub: Some(format!("bench-{i}")),
                exp: Some(exp),
                role: None,
                roles: vec![],
                channels: vec![],
                name: None,
            },
        );
        let (url, target) = (args.url.clone(), url.addr);
        let (opened, failed) = (opened.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let result = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let stream = socket.connect(target).await?;
                let mut req = url.into_client_request()?;
                req.headers_mut().insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {token}"))?,
                );
                let (mut ws, _) =
                    tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
                // The handshake counts once the session sent `connected`.
                ws.next().await.context("closed before connected")??;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            match result {
                Ok(ws) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    Some(ws)
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connection {i} failed: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut sockets = Vec::with_capacity(args.connections);
    for t in tasks {
        if let Some(ws) = t.await? {
            sockets.push(ws);
        }
    }
    let elapsed = started.elapsed();
    let n = opened.load(Ordering::Relaxed);
    println!(
        "opened {n} connections ({} failed) in {:.2} s: {:.0} handshakes/s",
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    if let (Some(pid), Some((rss0, cpu0))) = (args.pid, before) {
        let (rss1, cpu1) = proc_sample(pid)?;
        let per = |a: Duration, b: Duration| (b - a).as_micros() as f64 / n.max(1) as f64;
        let (user, system) = (per(cpu0.0, cpu1.0), per(cpu0.1, cpu1.1));
        println!(
            "server: RSS {rss0} KiB -> {rss1} KiB; CPU per handshake {:.1} µs ({user:.1} µs user + {system:.1} µs system)",
            user + system
        );
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        let (rss2, _) = proc_sample(pid)?;
        println!(
            "server after {} s idle: RSS {rss2} KiB: {:.2} KiB per idle connection",
            args.hold_secs,
            (rss2 as f64 - rss0 as f64) / n.max(1) as f64
        );
    }
    drop(sockets);
    Ok(())
}

/// Just enough URL parsing for `ws://host:port/path`.
mod url_lite {
    use std::net::{SocketAddr, ToSocketAddrs};

    pub struct Url {
        pub addr: SocketAddr,
    }

    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
        Ok(Url { addr })
    }
}
