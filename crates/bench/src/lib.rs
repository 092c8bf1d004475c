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
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use tokio_tungstenite::tungstenite::protocol::Role;

use wsgate_deflate::{Deflate, Inflating};

mod agent;
mod attack;
mod rtt;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open N idle authenticated connections; report handshakes/s and the
    /// server's memory and CPU per connection.
    Conns(ConnsArgs),
    /// N subscribers on one channel, publications at a fixed rate through
    /// the HTTP API; reports deliveries/s, loss, publish → receive latency
    /// and the server's CPU per delivery.
    Fanout(FanoutArgs),
    /// A trivial WebSocket sender (no auth, no hub: one pre-encoded frame
    /// per publication written to every socket) to check that `fanout`
    /// receives faster than the server under test sends.
    TrivialSender(TrivialArgs),
    /// N concurrent agent runs, one user and connection each; reports
    /// runs/s, events/s, `user_message` → `agent_started`, loss, the event
    /// latency (with `--upstream`) and the server's CPU per event.
    Agent(agent::AgentArgs),
    /// Request/reply round trips (`ping` → `pong`) at several spacings.
    Rtt(rtt::RttArgs),
    /// Hostile clients (slowloris, dribbled upgrades, churn, never-reading
    /// subscribers, frames at the limit, decompression bombs, huge tokens,
    /// a hostile JWKS) beside a probe of legitimate clients; reports what
    /// the server did, its RSS, CPU and open files, and the probe's p99
    /// before and during.
    Attack(attack::AttackArgs),
}

#[derive(Debug, Args)]
pub struct TrivialArgs {
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Start once this many clients have subscribed.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Where subscribers connect; several (comma-separated: the nodes of a
    /// cluster) share them round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Base URL of the HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    #[arg(long, env = "BENCH_API_KEY", hide_env_values = true)]
    pub api_key: String,
    #[arg(long, env = "WSGATE_AUTH__HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bytes of `data` per publication (at least ~40 for the timestamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Publishing HTTP connections working in parallel.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Do not publish: something else sends (`trivial-sender`); expect
    /// rate × seconds publications.
    #[arg(long)]
    pub no_publish: bool,
    /// Subscribers offer permessage-deflate (the server needs
    /// `transport.compression = true`) and inflate what arrives.
    #[arg(long)]
    pub deflate: bool,
    /// Subscribe over GraphQL instead (`--url ws://…/graphql`): the same
    /// channel through `subscription { channel(name) { offset data } }`,
    /// every subscriber with the same document (graphql-transport-ws).
    #[arg(long)]
    pub graphql: bool,
    /// Server processes whose CPU is reported (comma-separated: summed).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Publications of the first this many seconds are delivered and
    /// counted but not timed: a first publication pays for connections,
    /// scripts and caches that are set up once (with a few hundred
    /// publications in all, it alone would be the p99).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
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
    /// Offer permessage-deflate (the server needs `transport.compression`).
    #[arg(long)]
    pub deflate: bool,
}

/// Connection `i`'s source address: 127.0.0.1 … 127.0.0.`sources`, round
/// robin, so many connections stay clear of one address's port range.
fn source_address(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (i % sources.max(1) as usize) as u8,
    ))
}

/// Bytes sent over the loopback interface so far (`lo` in /proc/net/dev):
/// during a fan-out run almost all of it is the server's frames, plus TCP/IP
/// headers and the clients' ACKs.
fn loopback_bytes() -> anyhow::Result<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").context("cannot read /proc/net/dev")?;
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        // Receive fields come first: bytes, packets, errs, drop, fifo,
        // frame, compressed, multicast; then transmit bytes.
        .and_then(|v| v.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .context("no lo interface in /proc/net/dev")
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
        BenchCommand::Fanout(args) => runtime.block_on(fanout(args)),
        BenchCommand::TrivialSender(args) => runtime.block_on(trivial_sender(args)),
        BenchCommand::Agent(args) => runtime.block_on(agent::agent(args)),
        BenchCommand::Rtt(args) => runtime.block_on(rtt::rtt(args)),
        BenchCommand::Attack(args) => runtime.block_on(attack::attack(args)),
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
        let source = source_address(i, args.sources);
        let token = sign_hs256(&args.secret, &format!("bench-{i}"), exp);
        let (url, target, deflate) = (args.url.clone(), url.addr, args.deflate);
        let (opened, failed) = (opened.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let result = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let stream = socket.connect(target).await?;
                let mut ws = handshake(stream, &url, &token, config, deflate, false).await?;
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

/// An HS256 token for `sub`, as the server's `wsgate token` would sign it.
fn sign_hs256(secret: &str, sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    // Encoding a JSON object with an HMAC key cannot fail.
    .expect("HS256 signing cannot fail")
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads the unsigned integer after `key` (e.g. `"offset":`) without
/// parsing the whole frame: the receiver must be cheaper than the server.
fn field_u64(frame: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<u64> {
    let at = key.find(frame)? + key.needle().len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        any = true;
    }
    any.then_some(n)
}

struct SubscriberReport {
    received: u64,
    gaps: u64,
    latency: hdrhistogram::Histogram<u64>,
}

type BenchSocket = tokio_tungstenite::WebSocketStream<Inflating<tokio::net::TcpStream>>;

/// The upgrade request written by hand, so that the bytes after the 101
/// response can go to the inflating layer under tungstenite.
async fn deflate_handshake(
    mut stream: tokio::net::TcpStream,
    url: &url_lite::Url,
    token: &str,
    config: WebSocketConfig,
) -> anyhow::Result<BenchSocket> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        url.path, url.addr
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
            bail!("no handshake response");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        bail!("handshake refused: {}", head.lines().next().unwrap_or(""));
    }
    if !head.contains("sec-websocket-extensions: permessage-deflate") {
        bail!("the server did not agree to permessage-deflate (is transport.compression on?)");
    }
    let codec = Deflate::new(1, usize::MAX, 1 << 20);
    let io = Inflating::client(stream, codec, &buf[end..]);
    Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await)
}

/// A client connection with `Authorization: Bearer <token>`, offering
/// permessage-deflate when `deflate` is set.
async fn handshake(
    stream: tokio::net::TcpStream,
    url: &str,
    token: &str,
    config: WebSocketConfig,
    deflate: bool,
    graphql: bool,
) -> anyhow::Result<BenchSocket> {
    if deflate {
        if graphql {
            bail!("--deflate and --graphql together are not supported");
        }
        return deflate_handshake(stream, &url_lite::parse(url)?, token, config).await;
    }
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    if graphql {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
    }
    // No extension offered: the layer passes everything through.
    let io = Inflating::new(stream, None);
    Ok(
        tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await?
            .0,
    )
}

async fn open_subscriber(
    url: &str,
    target: SocketAddr,
    source: IpAddr,
    token: &str,
    channel: &str,
    deflate: bool,
    graphql: bool,
) -> anyhow::Result<BenchSocket> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        // Large enough for many frames per read, small enough that
        // tungstenite's zero-fill of it per read stays cheap.
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20));
    let mut ws = handshake(stream, url, token, config, deflate, graphql).await?;
    if graphql {
        ws.send(Message::Text(r#"{"type":"connection_init"}"#.into()))
            .await?;
        let ack = ws.next().await.context("closed before connection_ack")??;
        if !matches!(&ack, Message::Text(t) if t.contains("connection_ack")) {
            bail!("no connection_ack: {ack:?}");
        }
        // No acknowledgement of a subscription in graphql-transport-ws:
        // `fanout` waits a moment before publishing.
        let sub = format!(
            r#"{{"type":"subscribe","id":"s","payload":{{"query":"subscription($c: String!) {{ channel(name: $c) {{ offset data }} }}","variables":{{"c":"{channel}"}}}}}}"#
        );
        ws.send(Message::Text(sub.into())).await?;
        return Ok(ws);
    }
    ws.next().await.context("closed before connected")??;
    let sub = format!(r#"{{"type":"subscribe","id":"s","payload":{{"channel":"{channel}"}}}}"#);
    ws.send(Message::Text(sub.into())).await?;
    loop {
        let msg = ws.next().await.context("closed before subscribed")??;
        if let Message::Text(t) = msg {
            if t.contains("\"subscribed\"") {
                return Ok(ws);
            }
            if t.contains("\"error\"") {
                bail!("subscribe refused: {t}");
            }
        }
    }
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let targets = args
        .url
        .iter()
        .map(|u| Ok((u.clone(), url_lite::parse(u)?.addr)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let token = sign_hs256(&args.secret, &format!("fan-{i}"), exp);
        let source = source_address(i, args.sources);
        let (url, target) = targets[i % targets.len()].clone();
        let (channel, sem) = (args.channel.clone(), sem.clone());
        let (deflate, graphql) = (args.deflate, args.graphql);
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            open_subscriber(&url, target, source, &token, &channel, deflate, graphql).await
        }));
    }
    let mut sockets = Vec::with_capacity(args.subscribers);
    for t in opening {
        sockets.push(t.await??);
    }
    if args.graphql {
        // The subscriptions start in the server's tasks, unacknowledged.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("{} subscribers ready", sockets.len());

    if args.publishers == 0 || args.rate == 0 {
        bail!("--publishers and --rate must be at least 1");
    }
    let total_pubs = args.rate * args.seconds;
    // Publications are split evenly between the publishers; what does not
    // divide is not sent, and no reader waits for it.
    let per_publisher = total_pubs / args.publishers as u64;
    let sent = if args.no_publish {
        total_pubs
    } else {
        per_publisher * args.publishers as u64
    };
    let mut readers = Vec::with_capacity(sockets.len());
    let timed_from = unix_nanos() + (args.warmup_secs.max(0.0) * 1e9) as u64;
    for mut ws in sockets {
        readers.push(tokio::spawn(async move {
            let mut report = SubscriberReport {
                received: 0,
                gaps: 0,
                // Microseconds, 2 significant digits: small enough to stay
                // in cache while recording.
                latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("bounds"),
            };
            let offset_key = memchr::memmem::Finder::new(b"\"offset\":");
            let ts_key = memchr::memmem::Finder::new(b"\"ts\":");
            let mut expect: Option<u64> = None;
            while report.received < sent {
                let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                let Ok(Some(Ok(msg))) = next else { break };
                let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
                    continue;
                };
                let frame = t.as_bytes();
                let Some(offset) = field_u64(frame, &offset_key) else {
                    continue;
                };
                if let Some(e) = expect {
                    if offset != e {
                        report.gaps += offset.saturating_sub(e);
                    }
                }
                expect = Some(offset + 1);
                report.received += 1;
                // Every 4th publication is timed: the receiver must stay
                // cheaper than the server, and a quarter is plenty for p999.
                if offset % 4 == 0 {
                    if let Some(ts) = field_u64(frame, &ts_key).filter(|&ts| ts >= timed_from) {
                        let micros = unix_nanos().saturating_sub(ts) / 1_000;
                        let _ = report.latency.record(micros.max(1));
                    }
                }
            }
            report
        }));
    }

    let cpu_of = |pids: &[u32]| -> anyhow::Result<Duration> {
        let mut sum = Duration::ZERO;
        for &pid in pids {
            let (_, (user, system)) = proc_sample(pid)?;
            sum += user + system;
        }
        Ok(sum)
    };
    let before = cpu_of(&args.pid)?;
    let wire_before = loopback_bytes().ok();
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.publishers)
        .build()?;
    let pad = text_pad(args.payload.saturating_sub(40));
    let mut publishers = Vec::new();
    let publishing = if args.no_publish {
        0
    } else {
        args.publishers as u64
    };
    for w in 0..publishing {
        let (client, pad, api, key, channel) = (
            client.clone(),
            pad.clone(),
            args.api.clone(),
            args.api_key.clone(),
            args.channel.clone(),
        );
        let interval = Duration::from_secs_f64(args.publishers as f64 / args.rate as f64);
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let url = format!("{api}/api/publish");
            for _ in 0..per_publisher {
                tick.tick().await;
                let body = format!(
                    r#"{{"channel":"{channel}","data":{{"ts":{},"w":{w},"pad":"{pad}"}}}}"#,
                    unix_nanos()
                );
                let resp = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("publish failed: {}", resp.status());
                }
            }
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut received = 0;
    let mut gaps = 0;
    let mut latency =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("bounds");
    for r in readers {
        let r = r.await?;
        received += r.received;
        gaps += r.gaps;
        latency.add(&r.latency).ok();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = sent * args.subscribers as u64;
    if args.no_publish {
        println!(
            "fanout: {} subscribers, {} publications expected from another sender",
            args.subscribers, sent
        );
    } else {
        println!(
            "fanout: {} subscribers, {} publications in {:.2} s ({:.0}/s), {} B payload",
            args.subscribers,
            sent,
            publish_secs,
            sent as f64 / publish_secs,
            args.payload
        );
    }
    println!(
        "deliveries: {received} of {expected} ({:.0}/s over {:.2} s); lost {} ({} gaps)",
        received as f64 / elapsed,
        elapsed,
        expected.saturating_sub(received),
        gaps
    );
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
    println!(
        "publish -> receive latency: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1e3
    );
    if !args.pid.is_empty() {
        let cpu = cpu_of(&args.pid)?.saturating_sub(before);
        println!(
            "server CPU ({} process(es)): {:.2} s busy over {:.2} s ({:.0}%); {:.0} ns per delivery",
            args.pid.len(),
            cpu.as_secs_f64(),
            elapsed,
            cpu.as_secs_f64() / elapsed * 100.0,
            cpu.as_nanos() as f64 / received.max(1) as f64
        );
    }
    if let (Some(w0), Ok(w1)) = (wire_before, loopback_bytes()) {
        let wire = w1.saturating_sub(w0);
        println!(
            "loopback carried {:.1} MB: {:.0} B per delivery (frames + TCP/IP + ACKs)",
            wire as f64 / 1e6,
            wire as f64 / received.max(1) as f64
        );
    }
    Ok(())
}

/// `len` bytes of words and numbers, deterministic: text that deflates about
/// as well as typical JSON values do (a run of one letter would flatter
/// compression).
fn text_pad(len: usize) -> String {
    const WORDS: [&str; 16] = [
        "alpha", "site", "status", "ok", "warning", "node", "eu-west", "latency", "cpu", "memory",
        "queue", "user", "session", "agent", "thread", "event",
    ];
    let mut x: u32 = 0x2545_f491;
    let mut pad = String::with_capacity(len + 16);
    while pad.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pad.push_str(WORDS[(x % 16) as usize]);
        pad.push_str(&(x % 1000).to_string());
        pad.push(' ');
    }
    pad.truncate(len);
    pad
}

async fn trivial_sender(args: TrivialArgs) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Lagging receivers lose frames (and the bench counts them as loss).
    let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(1 << 16);
    let ready = Arc::new(AtomicUsize::new(0));
    let accept = {
        let (tx, ready) = (tx.clone(), ready.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (mut rx, ready) = (tx.subscribe(), ready.clone());
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut ws = tokio_tungstenite::accept_async(stream).await?;
                    ws.send(Message::Text(r#"{"type":"connected"}"#.into()))
                        .await?;
                    ws.next().await.context("no subscribe")??;
                    ws.send(Message::Text(r#"{"type":"subscribed","id":"s"}"#.into()))
                        .await?;
                    ready.fetch_add(1, Ordering::Relaxed);
                    // Everything already waiting goes out with one flush.
                    while let Ok(frame) = rx.recv().await {
                        let text = |b: Bytes| {
                            Message::Text(String::from_utf8_lossy(&b).into_owned().into())
                        };
                        ws.feed(text(frame)).await?;
                        while let Ok(more) = rx.try_recv() {
                            ws.feed(text(more)).await?;
                        }
                        ws.flush().await?;
                    }
                    anyhow::Ok(())
                });
            }
        })
    };
    while ready.load(Ordering::Relaxed) < args.subscribers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("trivial sender: {} subscribed, sending", args.subscribers);
    let pad = "x".repeat(args.payload.saturating_sub(40));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for offset in 1..=args.rate * args.seconds {
        tick.tick().await;
        let frame = format!(
            r#"{{"type":"message","payload":{{"channel":"bench","offset":{offset},"epoch":"t","data":{{"ts":{},"pad":"{pad}"}}}}}}"#,
            unix_nanos()
        );
        let _ = tx.send(Bytes::from(frame));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    accept.abort();
    Ok(())
}

/// Just enough URL parsing for `ws://host:port/path`.
mod url_lite {
    use std::net::{SocketAddr, ToSocketAddrs};

    pub struct Url {
        pub addr: SocketAddr,
        /// The path and query, `/` when absent.
        pub path: String,
    }

    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
        Ok(Url {
            addr,
            path: path.to_string(),
        })
    }
}
