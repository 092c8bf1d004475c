//! The probe: legitimate clients that keep doing `ping` → `pong` round
//! trips, and fresh handshakes, while an attack runs — so a report can say
//! whether anyone else noticed.
//!
//! It runs on a thread and runtime of its own, at a raised priority
//! (`--probe-nice`): the attacking tasks share the bench's core, and the
//! probe stands for clients on other machines, so the bench's own busy
//! moments must not pass for the server's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{ms, Common, Target};

/// Which part of the run a probe measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Warmup = 0,
    Before = 1,
    During = 2,
    After = 3,
}

/// A probe client waits this long for its pong before counting a failure.
const PONG_TIMEOUT: Duration = Duration::from_secs(2);
/// A fresh handshake must reach `connected` within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe errors kept for the report (the first ones say what went wrong;
/// thousands would drown the report).
const KEPT_ERRORS: usize = 5;

struct PhaseStats {
    rtt: Histogram<u64>,
    failures: u64,
    connect: Histogram<u64>,
    connects_failed: u64,
}

impl PhaseStats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds");
        PhaseStats {
            rtt: h(),
            failures: 0,
            connect: h(),
            connects_failed: 0,
        }
    }
}

/// State shared by the probe's tasks and the harness.
struct Shared {
    phase: AtomicU8,
    connected: AtomicUsize,
    // A std Mutex: a few thousand short updates per second, never held
    // across an await.
    stats: Mutex<[PhaseStats; 4]>,
    errors: Mutex<Vec<String>>,
    /// What became of `--probe-nice`, for the report.
    priority: Mutex<String>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut PhaseStats) -> R) -> R {
        let phase = self.phase.load(Ordering::Relaxed) as usize;
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut stats[phase.min(3)])
    }

    fn fail(&self, what: String) {
        self.with(|s| s.failures += 1);
        self.keep_error(what);
    }

    fn keep_error(&self, what: String) {
        const NAMES: [&str; 4] = ["warm-up", "before", "during", "after"];
        let phase = NAMES[(self.phase.load(Ordering::Relaxed) as usize).min(3)];
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < KEPT_ERRORS {
            errors.push(format!("({phase}) {what}"));
        }
    }
}

pub(crate) struct Probe {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    clients: usize,
}

/// The probe's figures for one phase.
#[derive(Debug, Default, Clone)]
pub(crate) struct PhaseFigures {
    pub pings: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failures: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    pub connect_p99_ms: f64,
}

impl PhaseFigures {
    fn from(s: &PhaseStats) -> Self {
        PhaseFigures {
            pings: s.rtt.len(),
            p50_ms: ms(&s.rtt, 0.5),
            p99_ms: ms(&s.rtt, 0.99),
            max_ms: s.rtt.max() as f64 / 1e3,
            failures: s.failures,
            connects_ok: s.connect.len(),
            connects_failed: s.connects_failed,
            connect_p99_ms: ms(&s.connect, 0.99),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "pings": self.pings, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "max_ms": self.max_ms, "failures": self.failures,
            "connects_ok": self.connects_ok, "connects_failed": self.connects_failed,
            "connect_p99_ms": self.connect_p99_ms,
        })
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ProbeFigures {
    pub clients: usize,
    pub before: PhaseFigures,
    pub during: PhaseFigures,
    pub after: PhaseFigures,
    pub errors: Vec<String>,
    pub priority: String,
}

impl ProbeFigures {
    pub fn to_json(&self) -> Value {
        json!({
            "clients": self.clients,
            "before": self.before.to_json(),
            "during": self.during.to_json(),
            "after": self.after.to_json(),
            "errors": self.errors,
            "priority": self.priority,
        })
    }
}

/// The probe's source addresses: persistent clients from 127.0.1.1 …,
/// fresh handshakes from 127.0.1.101 … 127.0.1.200 (at 4/s that is ~2.4
/// handshakes a minute per address, far under the per-IP rate).
fn probe_source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % 100) as u8))
}

fn fresh_source(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 101 + (k % 100) as u8))
}

impl Probe {
    pub fn start(target: &Target, common: &Common) -> anyhow::Result<Probe> {
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(Phase::Warmup as u8),
            connected: AtomicUsize::new(0),
            stats: Mutex::new(std::array::from_fn(|_| PhaseStats::new())),
            errors: Mutex::new(Vec::new()),
            priority: Mutex::new(String::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (target, clients) = (target.clone(), common.probe_clients);
        let interval = Duration::from_millis(common.probe_interval_ms);
        let connect_every = Duration::from_millis(common.probe_connect_ms);
        let nice = common.probe_nice;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("attack-probe".into())
                .spawn(move || {
                    let priority = match nice {
                        0 => "default priority".to_string(),
                        n => match raise_priority(n) {
                            Ok(()) => format!("thread at nice {n}"),
                            Err(e) => format!("priority not raised ({e})"),
                        },
                    };
                    *shared.priority.lock().unwrap_or_else(|e| e.into_inner()) = priority;
                    runtime.block_on(async move {
                        let mut tasks = Vec::new();
                        for i in 0..clients {
                            tasks.push(tokio::spawn(client(
                                i,
                                target.clone(),
                                interval,
                                shared.clone(),
                                stopped.clone(),
                            )));
                        }
                        if !connect_every.is_zero() {
                            tasks.push(tokio::spawn(fresh_handshakes(
                                target,
                                connect_every,
                                shared,
                                stopped,
                            )));
                        }
                        for t in tasks {
                            let _ = t.await;
                        }
                    })
                })?
        };
        Ok(Probe {
            shared,
            stop,
            thread,
            clients,
        })
    }

    pub fn set_phase(&self, phase: Phase) {
        self.shared.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Waits until `n` probe clients are connected.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.shared.connected.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                let errors = self
                    .shared
                    .errors
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                bail!(
                    "only {} of {n} probe clients connected within {within:?}: {errors:?}",
                    self.shared.connected.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the probe and returns its figures.
    pub async fn finish(self) -> anyhow::Result<ProbeFigures> {
        let _ = self.stop.send(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
        let stats = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        let errors = self.shared.errors.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ProbeFigures {
            clients: self.clients,
            before: PhaseFigures::from(&stats[Phase::Before as usize]),
            during: PhaseFigures::from(&stats[Phase::During as usize]),
            after: PhaseFigures::from(&stats[Phase::After as usize]),
            errors: errors.clone(),
            priority: self
                .shared
                .priority
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default(),
        })
    }
}

/// Renices the calling thread (Linux schedules threads by their own id).
/// Through the `renice` tool: the workspace forbids the `unsafe` a direct
/// `setpriority` call would need. Lowering the nice value needs root or
/// CAP_SYS_NICE; without them the probe runs at the default priority and
/// the report says so.
fn raise_priority(nice: i32) -> Result<(), String> {
    let me = std::fs::read_link("/proc/thread-self").map_err(|e| e.to_string())?;
    let tid = me
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no thread id in /proc/thread-self")?
        .to_string();
    let out = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &tid])
        .output()
        .map_err(|e| format!("renice: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// An authenticated connection from `source`, after its `connected` frame.
async fn open(target: &Target, source: IpAddr, user: &str) -> anyhow::Result<crate::BenchSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let token = target.token(user);
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
    let mut ws = crate::handshake(stream, &target.url, &token, config, false, false).await?;
    loop {
        match ws.next().await.context("closed before connected")?? {
            Message::Text(t) if t.contains(r#""connected""#) => return Ok(ws),
            Message::Close(c) => bail!("closed before connected: {c:?}"),
            _ => {}
        }
    }
}

/// One persistent probe client: reconnects when its connection fails (each
/// failure counted), until stopped.
async fn client(
    i: usize,
    target: Target,
    interval: Duration,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let user = format!("probe-{i}");
    let mut id = 0u64;
    while !*stopped.borrow() {
        let ws = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, open(&target, probe_source(i), &user)) => r,
            _ = stopped.changed() => return,
        };
        let mut ws = match ws {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                shared.fail(format!("probe client {i} could not connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                shared.fail(format!(
                    "probe client {i}: no connected within {CONNECT_TIMEOUT:?}"
                ));
                continue;
            }
        };
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let ended = pings(&mut ws, &mut id, interval, &shared, &mut stopped).await;
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ok(()) => {
                let _ = ws.close(None).await;
                return;
            }
            Err(e) => shared.fail(format!("probe client {i}: {e:#}")),
        }
    }
}

/// Round trips until stopped (`Ok`) or the connection fails (`Err`); a pong
/// later than [`PONG_TIMEOUT`] is a failure, and is skipped when it comes.
async fn pings(
    ws: &mut crate::BenchSocket,
    id: &mut u64,
    interval: Duration,
    shared: &Shared,
    stopped: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return Ok(()),
        }
        *id += 1;
        let want = format!(r#""id":"{id}""#);
        let sent = Instant::now();
        ws.send(Message::Text(
            format!(r#"{{"type":"ping","id":"{id}"}}"#).into(),
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + PONG_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => {
                    shared.fail(format!("no pong within {PONG_TIMEOUT:?}"));
                    break;
                }
                Ok(None) => bail!("connection ended"),
                Ok(Some(msg)) => msg?,
            };
            match msg {
                Message::Text(t) if t.contains(r#""pong""#) && t.contains(&want) => {
                    let rtt = sent.elapsed().as_micros().max(1) as u64;
                    shared.with(|s| s.rtt.saturating_record(rtt));
                    break;
                }
                Message::Text(t) if t.contains(r#""error""#) => {
                    bail!("server answered an error: {t}")
                }
                Message::Close(c) => bail!("closed by the server: {c:?}"),
                _ => {}
            }
        }
    }
}

/// A fresh handshake every `every`, each timed to `connected` and closed.
async fn fresh_handshakes(
    target: Target,
    every: Duration,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    // A handshake that takes long must not make the next ones pile up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        // None while the harness waits for the "after" reading: a
        // handshake in flight then would read as a connection or open file
        // left over by the attack.
        if shared.phase.load(Ordering::Relaxed) == Phase::After as u8 {
            continue;
        }
        let (target, shared) = (target.clone(), shared.clone());
        tokio::spawn(async move {
            let user = format!("probe-new-{k}");
            let started = Instant::now();
            match tokio::time::timeout(CONNECT_TIMEOUT, open(&target, fresh_source(k), &user)).await
            {
                Ok(Ok(mut ws)) => {
                    let took = started.elapsed().as_micros().max(1) as u64;
                    shared.with(|s| s.connect.saturating_record(took));
                    let _ = ws.close(None).await;
                }
                Ok(Err(e)) => {
                    shared.with(|s| s.connects_failed += 1);
                    shared.keep_error(format!("fresh handshake failed: {e:#}"));
                }
                Err(_) => {
                    shared.with(|s| s.connects_failed += 1);
                    shared.keep_error(format!(
                        "fresh handshake: no connected within {CONNECT_TIMEOUT:?}"
                    ));
                }
            }
        });
    }
}
