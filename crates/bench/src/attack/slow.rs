//! Slow request heads: `slowloris` (connections that never send a byte)
//! and `dribble` (an upgrade request one byte at a time). Both must be
//! closed at `limits.header_timeout_secs`, or at once beyond the
//! pending-connection caps, and never upgraded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::raw::{self, io_label};
use super::report::{Outcome, Tally, Timings};
use super::{ms, Common, Target};

#[derive(Debug, Args)]
pub struct SlowlorisArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sockets held open at once, none of which ever sends a byte.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub connections: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES. 10,000 sockets
    /// over 100 addresses put each address above the per-IP pending cap
    /// (64) and all of them together above the global one (4096), so both
    /// caps act.
    #[arg(long, default_value_t = 100)]
    pub sources: u8,
    #[arg(long, default_value_t = 3)]
    pub net: u8,
    /// Keep the attack up this long: a socket the server closes is opened
    /// again after --reopen-ms, as a real slowloris does. 0: one wave.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
    #[arg(long, default_value_t = 1000)]
    pub reopen_ms: u64,
    /// Connection attempts in flight at once: a burst of SYNs far beyond
    /// the listen backlog would only measure the kernel's SYN retries.
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// The server's `limits.header_timeout_secs`, for the check.
    #[arg(long, default_value_t = 5)]
    pub header_timeout_secs: u64,
    /// A socket closed sooner than this (ms) after connecting counts as
    /// refused at once by a pending cap, not held to the header timeout.
    #[arg(long, default_value_t = 1000)]
    pub at_once_ms: u64,
}

#[derive(Debug, Args)]
pub struct DribbleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections, each sending a valid upgrade request (with a valid
    /// token) one byte at a time.
    #[arg(long, short = 'n', default_value_t = 500)]
    pub connections: usize,
    /// Source addresses 127.0.NET.1 … 127.0.NET.SOURCES (the default puts
    /// 50 on each, under the per-IP pending cap of 64: the header timeout
    /// is what must act).
    #[arg(long, default_value_t = 10)]
    pub sources: u8,
    #[arg(long, default_value_t = 4)]
    pub net: u8,
    /// Pause between two bytes, in ms.
    #[arg(long, default_value_t = 1000)]
    pub byte_ms: u64,
    /// The server's `limits.header_timeout_secs`, for the check.
    #[arg(long, default_value_t = 5)]
    pub header_timeout_secs: u64,
}

/// How much later than the header timeout a close may come and still count
/// as "at the timeout": timer granularity, and a busy accept loop.
const CLOSE_SLACK: Duration = Duration::from_secs(2);

/// Sockets open now, in all and per source address, with their peaks.
struct OpenGauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    per_address: Vec<AtomicUsize>,
    per_address_peak: AtomicUsize,
}

impl OpenGauge {
    fn new(addresses: usize) -> Self {
        OpenGauge {
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            per_address: (0..addresses).map(|_| AtomicUsize::new(0)).collect(),
            per_address_peak: AtomicUsize::new(0),
        }
    }

    fn open(&self, address: usize) {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let a = self.per_address[address].fetch_add(1, Ordering::Relaxed) + 1;
        self.per_address_peak.fetch_max(a, Ordering::Relaxed);
    }

    fn close(&self, address: usize) {
        self.now.fetch_sub(1, Ordering::Relaxed);
        self.per_address[address].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the slowloris tasks share.
struct Silent {
    tally: Tally,
    /// Connect → close, for sockets the server held.
    held: Timings,
    gauge: OpenGauge,
    connecting: Semaphore,
    /// Our wait for the server's close; then the socket is poked.
    wait: Duration,
    header_timeout: Duration,
    at_once: Duration,
}

pub(crate) async fn slowloris(target: Target, args: &SlowlorisArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.sources > 0, "--sources must be at least 1");
    let started = Instant::now();
    let hold = Duration::from_secs(args.hold_secs);
    let reopen = Duration::from_millis(args.reopen_ms);
    let timeout = Duration::from_secs(args.header_timeout_secs);
    let silent = Arc::new(Silent {
        tally: Tally::default(),
        held: Timings::default(),
        gauge: OpenGauge::new(args.sources as usize),
        connecting: Semaphore::new(args.connect_concurrency.max(1)),
        // Far beyond the timeout: a socket still open then is a failure.
        wait: timeout * 3 + Duration::from_secs(10),
        header_timeout: timeout,
        at_once: Duration::from_millis(args.at_once_ms),
    });
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let silent = silent.clone();
        let source = raw::source(args.net, i, args.sources);
        let address = i % args.sources as usize;
        let addr = target.addr;
        tasks.push(tokio::spawn(async move {
            loop {
                silent_socket(&silent, source, address, addr).await;
                if started.elapsed() >= hold {
                    return;
                }
                tokio::time::sleep(reopen).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let silent = Arc::into_inner(silent).context("a slowloris task outlived the attack")?;
    let (tally, held, gauge) = (silent.tally, silent.held.into_histogram(), silent.gauge);
    let mut o = Outcome::new(format!(
        "{} sockets from {} addresses (127.0.{}.x) that never send a byte, \
         reopened {} ms after each close for {} s",
        args.connections, args.sources, args.net, args.reopen_ms, args.hold_secs
    ));
    let still_open = tally.sum_prefix("still open");
    // The p99, not the max: a socket that waited in the kernel's SYN or
    // accept queue (SYN-ACK retransmitted after 1 s and 3 s) reaches the
    // server late, and its header timeout starts only then.
    let p99_ms = ms(&held, 0.99);
    let late = p99_ms > (timeout + CLOSE_SLACK).as_secs_f64() * 1e3;
    o.check(
        "held sockets closed at the header timeout",
        still_open == 0 && !late && !held.is_empty(),
        format!(
            "{} held sockets closed after p50 {:.0} ms, p99 {p99_ms:.0} ms, max {:.0} ms \
             (timeout {} s); {still_open} still open",
            held.len(),
            ms(&held, 0.5),
            held.max() as f64 / 1e3,
            args.header_timeout_secs
        ),
    );
    o.figure(
        "peak sockets open at once (our side)",
        gauge.peak.load(Ordering::Relaxed),
    );
    o.figure(
        "peak sockets open at once from one address",
        gauge.per_address_peak.load(Ordering::Relaxed),
    );
    o.counts = tally.into_map();
    o.timings
        .push(("time until closed (held sockets)".into(), held));
    o.expect_baseline = true;
    Ok(o)
}

/// One socket that never sends a byte: connects, waits for the server to
/// close it, and tallies how and when it did.
async fn silent_socket(silent: &Silent, source: IpAddr, address: usize, addr: SocketAddr) {
    let stream = {
        let Ok(_permit) = silent.connecting.acquire().await else {
            return;
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            raw::connect_from(source, addr, None),
        )
        .await
    };
    let mut stream = match stream {
        Err(_) => return silent.tally.add("connect timed out (10 s)"),
        Ok(Err(e)) => {
            return silent
                .tally
                .add(format!("connect failed: {}", io_label(&e)))
        }
        Ok(Ok(stream)) => stream,
    };
    silent.tally.add("sockets opened");
    silent.gauge.open(address);
    let opened = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(silent.wait, stream.read(&mut byte)).await;
    let took = opened.elapsed();
    silent.gauge.close(address);
    let how = match read {
        Err(_) => {
            let label = poke(&mut stream, silent.wait, silent.header_timeout).await;
            return silent.tally.add(label);
        }
        Ok(Ok(0)) => "EOF",
        Ok(Ok(_)) => "the server answered",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Ok(Err(_)) => "I/O error",
    };
    if took < silent.at_once {
        silent.tally.add(format!("closed at once ({how})"));
    } else {
        silent.tally.add(format!("closed after a wait ({how})"));
        silent.held.record(took);
    }
}

/// Tells a socket the server never had from one it holds, once our wait
/// has run out. When the listen queue overflows under a flood, the kernel
/// may complete a client's handshake (a SYN cookie, or a SYN-ACK whose ACK
/// it then drops) without the connection ever reaching the server: the
/// client sees an established socket the server knows nothing of. A byte
/// sent on it either draws a reset, or completes the connection late, and
/// then the server must close it at the header timeout like any other.
async fn poke(stream: &mut tokio::net::TcpStream, wait: Duration, timeout: Duration) -> String {
    let mut byte = [0u8; 1];
    let _ = stream.write_all(b"\r").await;
    let poked = Instant::now();
    match tokio::time::timeout(timeout + CLOSE_SLACK, stream.read(&mut byte)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            "not accepted (listen queue overflow): reset when poked".into()
        }
        Ok(Ok(0)) if poked.elapsed() >= timeout / 2 => {
            "not accepted (listen queue overflow) until poked, then closed at the header timeout"
                .into()
        }
        Ok(Ok(0)) => "not accepted (listen queue overflow): closed when poked".into(),
        _ => format!("still open {wait:?} after connecting and after a poke (!)"),
    }
}

pub(crate) async fn dribble(target: Target, args: &DribbleArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.sources > 0, "--sources must be at least 1");
    let tally = Arc::new(Tally::default());
    let closed_after = Arc::new(Timings::default());
    // Request bytes sent before the end: the most, and the sum for a mean.
    let bytes = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let interval = Duration::from_millis(args.byte_ms);
    let timeout = Duration::from_secs(args.header_timeout_secs);
    let give_up = timeout * 3 + Duration::from_secs(10);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (tally, closed_after, bytes) = (tally.clone(), closed_after.clone(), bytes.clone());
        let source = raw::source(args.net, i, args.sources);
        let token = target.token(&format!("dribble-{i}"));
        let request = raw::upgrade_request(&target, &format!("Authorization: Bearer {token}\r\n"));
        let addr = target.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = match raw::connect_from(source, addr, None).await {
                Ok(s) => s,
                Err(e) => return tally.add(format!("connect failed: {}", io_label(&e))),
            };
            let started = Instant::now();
            let mut sent = 0usize;
            let mut buf = Vec::new();
            let ended = loop {
                if started.elapsed() > give_up {
                    break format!("still open after {give_up:?} (!)");
                }
                if sent < request.len() {
                    if let Err(e) = stream.write_all(&request.as_bytes()[sent..=sent]).await {
                        break format!("closed: {} on write", io_label(&e));
                    }
                    sent += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => continue,
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(0) => break "closed: EOF".to_string(),
                        Err(e) => break format!("closed: {}", io_label(&e)),
                        Ok(_) => {
                            // The server answered: read its status line.
                            let status = tokio::time::timeout(
                                Duration::from_secs(1),
                                raw::read_status(&mut stream, &mut buf),
                            )
                            .await;
                            break match status {
                                Ok(Ok(Some((101, _)))) => "upgraded (!)".to_string(),
                                Ok(Ok(Some((s, _)))) => format!("answered HTTP {s}"),
                                _ => format!(
                                    "answered: {}",
                                    raw::first_chars(&String::from_utf8_lossy(&buf), 40)
                                ),
                            };
                        }
                    },
                }
            };
            closed_after.record(started.elapsed());
            bytes.0.fetch_max(sent, Ordering::Relaxed);
            bytes.1.fetch_add(sent, Ordering::Relaxed);
            tally.add(ended);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let tally = Arc::into_inner(tally).unwrap_or_default();
    let closed_after = Arc::into_inner(closed_after)
        .unwrap_or_default()
        .into_histogram();
    let mut o = Outcome::new(format!(
        "{} connections from {} addresses (127.0.{}.x), each sending a valid upgrade request \
         (with a valid token) one byte every {} ms",
        args.connections, args.sources, args.net, args.byte_ms
    ));
    let upgraded = tally.sum_prefix("upgraded");
    let still_open = tally.sum_prefix("still open");
    o.check(
        "none upgraded",
        upgraded == 0,
        format!("{upgraded} upgraded"),
    );
    o.check(
        "every connection closed at the header timeout",
        still_open == 0 && closed_after.max() as f64 / 1e6 <= (timeout + CLOSE_SLACK).as_secs_f64(),
        format!(
            "closed after p50 {:.0} ms, max {:.0} ms (timeout {} s); {still_open} still open",
            ms(&closed_after, 0.5),
            closed_after.max() as f64 / 1e3,
            args.header_timeout_secs
        ),
    );
    o.figure(
        "request bytes sent before the end (mean / most)",
        format!(
            "{:.1} / {}",
            bytes.1.load(Ordering::Relaxed) as f64 / args.connections.max(1) as f64,
            bytes.0.load(Ordering::Relaxed)
        ),
    );
    o.counts = tally.into_map();
    o.timings.push(("time until closed".into(), closed_after));
    o.expect_baseline = true;
    Ok(o)
}
