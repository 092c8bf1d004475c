//! `wsgate bench agent`: N users each keep one agent run going over a real
//! connection (`user_message`, then the run's events until
//! `agent_completed`, then the next run) and the bench reports runs/s,
//! events/s, `user_message` → `agent_started`, loss, and the server's CPU
//! per event.
//!
//! With `--upstream ADDR` the bench is also the agent: an NDJSON upstream
//! (the server runs with `agent.kind = "http"`, `agent.url =
//! "http://ADDR/"`) whose every `partial_result` carries the instant it was
//! written, so the event latency from the backend emitting to the client
//! receiving is measured on one clock. With the built-in `echo` agent the
//! emission instants are not visible to the client, so that figure needs
//! `--upstream`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    handshake, proc_sample, sign_hs256, source_address, unix_nanos, url_lite, BenchSocket,
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[arg(long, env = "WSGATE_AUTH__HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Concurrent runs: one user and connection each.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub runs: usize,
    /// `partial_result` events per run (echo: words in the message).
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// With `--upstream`, the pause before each partial result; with the
    /// echo agent, set the server's `agent.echo_delay_ms` instead.
    #[arg(long, default_value_t = 20)]
    pub delay_ms: u64,
    /// Start new runs for this long; runs in progress then finish.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Serve as the NDJSON agent upstream on this address.
    #[arg(long)]
    pub upstream: Option<SocketAddr>,
    /// The server's pid, to read its CPU time.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// What one user's runs measured.
struct Report {
    runs: u64,
    events: u64,
    /// Runs whose events were not all there, in order, once, ending
    /// `completed` with partials adding up to the report.
    broken: u64,
    start: hdrhistogram::Histogram<u64>,
    event: hdrhistogram::Histogram<u64>,
}

impl Report {
    fn new() -> Self {
        // Microseconds, 2 significant digits.
        let h = || hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 2).expect("bounds");
        Report {
            runs: 0,
            events: 0,
            broken: 0,
            start: h(),
            event: h(),
        }
    }

    fn add(&mut self, other: &Report) {
        self.runs += other.runs;
        self.events += other.events;
        self.broken += other.broken;
        self.start.add(&other.start).ok();
        self.event.add(&other.event).ok();
    }
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.events == 0 || args.sources == 0 {
        bail!("--runs, --events and --sources must be at least 1");
    }
    if let Some(addr) = args.upstream {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the upstream on {addr}"))?;
        let app = upstream(args.events, Duration::from_millis(args.delay_ms));
        // Each line is written alone, 20 ms apart: without TCP_NODELAY,
        // Nagle would hold a line until the previous one is acknowledged.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let target = url_lite::parse(&args.url)?.addr;
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let content = (0..args.events)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let token = sign_hs256(&args.secret, &format!("agent-{i}"), exp);
        let (url, sem, source) = (
            args.url.clone(),
            sem.clone(),
            source_address(i, args.sources),
        );
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
            let mut ws = handshake(stream, &url, &token, config, false, false).await?;
            ws.next().await.context("closed before connected")??;
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::with_capacity(args.runs);
    for t in opening {
        sockets.push(t.await??);
    }
    eprintln!("{} connections ready", sockets.len());

    let before = args.pid.map(proc_sample).transpose()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let timed = args.upstream.is_some();
    let mut users = Vec::with_capacity(sockets.len());
    // Users start spread over one event spacing, as independent users
    // would, rather than all emitting in the same instant.
    let n = sockets.len() as u64;
    for (i, ws) in sockets.into_iter().enumerate() {
        let content = content.clone();
        let events = args.events;
        let stagger = Duration::from_micros(args.delay_ms * 1000 * i as u64 / n);
        users.push(tokio::spawn(async move {
            tokio::time::sleep(stagger).await;
            user_runs(ws, &content, events, until, timed).await
        }));
    }
    let mut total = Report::new();
    for u in users {
        total.add(&u.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "agent: {} concurrent runs of {} partial results, {} backend, {:.2} s",
        args.runs,
        args.events,
        if timed { "upstream (http)" } else { "server's" },
        elapsed
    );
    println!(
        "runs: {} ({:.1}/s), {} broken; events received: {} ({:.0}/s)",
        total.runs,
        total.runs as f64 / elapsed,
        total.broken,
        total.events,
        total.events as f64 / elapsed
    );
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "user_message -> agent_started: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&total.start, 0.5),
        ms(&total.start, 0.99),
        total.start.max() as f64 / 1e3
    );
    if timed {
        println!(
            "partial_result, upstream wrote -> client read: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
            ms(&total.event, 0.5),
            ms(&total.event, 0.99),
            ms(&total.event, 0.999),
            total.event.max() as f64 / 1e3
        );
    }
    if let (Some(pid), Some((_, cpu0))) = (args.pid, before) {
        let (_, cpu1) = proc_sample(pid)?;
        let cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
        println!(
            "server CPU: {:.2} s busy over {:.2} s ({:.0}%); {:.1} µs per event",
            cpu.as_secs_f64(),
            elapsed,
            cpu.as_secs_f64() / elapsed * 100.0,
            cpu.as_micros() as f64 / total.events.max(1) as f64
        );
    }
    Ok(())
}

/// One user's runs, one after another until `until`.
async fn user_runs(
    mut ws: BenchSocket,
    content: &str,
    events: usize,
    until: Instant,
    timed: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let request = serde_json::json!({
            "type": "user_message",
            "id": n.to_string(),
            "payload": {"content": content},
        });
        let sent = Instant::now();
        ws.send(Message::Text(request.to_string().into())).await?;
        let mut run = RunCheck::default();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
            let msg = match next {
                Ok(Some(m)) => m?,
                Ok(None) => bail!("the server closed the connection"),
                Err(_) => bail!("no frame for 30 s mid-run"),
            };
            let received = unix_nanos();
            let Message::Text(text) = msg else { continue };
            let frame: Value = serde_json::from_str(&text)?;
            match frame["type"].as_str() {
                Some("error") => bail!("refused: {text}"),
                Some("message") => {}
                _ => continue,
            }
            let p = &frame["payload"];
            let data = &p["data"];
            report.events += 1;
            match data["type"].as_str().unwrap_or("") {
                "agent_started" => {
                    let _ = report
                        .start
                        .record(sent.elapsed().as_micros().max(1) as u64);
                }
                "partial_result" if timed => {
                    // The upstream's delta starts with when it was written.
                    let delta = data["payload"]["delta"].as_str().unwrap_or("");
                    if let Some(at) = delta.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                        let _ = report
                            .event
                            .record((received.saturating_sub(at) / 1_000).max(1));
                    }
                }
                _ => {}
            }
            if run.see(p) {
                break;
            }
        }
        report.runs += 1;
        if !run.whole(events) {
            report.broken += 1;
        }
    }
    Ok(report)
}

/// Checks one run's events: offsets consecutive, partials counted and
/// adding up to the report, the end `completed`.
#[derive(Default)]
struct RunCheck {
    last_offset: Option<u64>,
    gaps: u64,
    partials: usize,
    text: String,
    report: Option<String>,
    completed: bool,
}

impl RunCheck {
    /// Takes one `message` payload; true at `agent_completed`.
    fn see(&mut self, p: &Value) -> bool {
        let offset = p["offset"].as_u64().unwrap_or(0);
        if let Some(last) = self.last_offset {
            if offset != last + 1 {
                self.gaps += 1;
            }
        }
        self.last_offset = Some(offset);
        let data = &p["data"];
        let payload = &data["payload"];
        match data["type"].as_str().unwrap_or("") {
            "partial_result" => {
                self.partials += 1;
                self.text.push_str(payload["delta"].as_str().unwrap_or(""));
            }
            "final_report" => self.report = payload["content"].as_str().map(str::to_owned),
            "agent_completed" => {
                self.completed = payload["status"] == "completed";
                return true;
            }
            _ => {}
        }
        false
    }

    fn whole(&self, events: usize) -> bool {
        self.gaps == 0
            && self.completed
            && self.partials == events
            && self.report.as_deref() == Some(self.text.as_str())
    }
}

/// The NDJSON agent: `events` partial results `delay` apart, each
/// starting with the Unix time in nanoseconds it was written at, then the
/// final report.
fn upstream(events: usize, delay: Duration) -> axum::Router {
    use axum::body::Body;
    use axum::routing::post;
    axum::Router::new().fallback(post(move || async move {
        let lines = futures_util::stream::unfold(
            (0usize, String::new()),
            move |(i, mut answer)| async move {
                if i > events {
                    return None;
                }
                let line = if i < events {
                    tokio::time::sleep(delay).await;
                    let delta = format!("{} ", unix_nanos());
                    answer.push_str(&delta);
                    serde_json::json!({"type": "partial_result", "payload": {"delta": delta}})
                } else {
                    serde_json::json!({"type": "final_report", "payload": {"content": answer}})
                };
                let bytes = format!("{line}\n");
                Some((Ok::<_, std::convert::Infallible>(bytes), (i + 1, answer)))
            },
        );
        axum::response::Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(lines))
            .expect("a valid response")
    }))
}
