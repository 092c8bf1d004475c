//! Readings of the server under attack: RSS, CPU time and open files from
//! /proc/PID (sampled for the peak while the attack runs), its counters
//! from `/metrics`, and the kernel's TCP counters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One reading of /proc/PID.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcReading {
    pub rss_kib: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
    pub fds: usize,
}

impl ProcReading {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let (rss_kib, (user, system)) = crate::proc_sample(pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("cannot list /proc/{pid}/fd"))?
            .count();
        Ok(ProcReading {
            rss_kib,
            cpu: user + system,
            fds,
        })
    }
}

/// The highest readings while the attack ran.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peak {
    pub rss_kib: u64,
    pub fds: usize,
    /// The busiest sampling interval's CPU use, in cores (1.0: one core
    /// busy throughout). /proc counts in 10 ms ticks, so a 100 ms interval
    /// reads in steps of 0.1.
    pub cpu_cores: f64,
    /// Time spent in intervals at ≥ 90 % of the server's one core: how long
    /// the attack kept it saturated (everyone else then waits in line).
    pub saturated_secs: f64,
}

impl Peak {
    fn update(&mut self, r: &ProcReading) {
        self.rss_kib = self.rss_kib.max(r.rss_kib);
        self.fds = self.fds.max(r.fds);
    }
}

/// Samples /proc/PID in the background for the peak.
pub(crate) struct Watch {
    stop: watch::Sender<bool>,
    task: JoinHandle<Peak>,
}

/// Often enough to catch a short spike of memory or CPU, rarely enough
/// that listing thousands of open files stays a small part of a core.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Watch {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = Peak::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            let mut last: Option<(Instant, Duration)> = None;
            loop {
                // A failed reading (the process is gone) ends nothing here:
                // the harness's own reading after the attack reports it.
                if let Ok(r) = ProcReading::read(pid) {
                    peak.update(&r);
                    let now = Instant::now();
                    if let Some((t, cpu)) = last {
                        let secs = now.duration_since(t).as_secs_f64();
                        let cores = r.cpu.saturating_sub(cpu).as_secs_f64() / secs.max(1e-3);
                        peak.cpu_cores = peak.cpu_cores.max(cores);
                        if cores >= 0.9 {
                            peak.saturated_secs += secs;
                        }
                    }
                    last = Some((now, r.cpu));
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
            }
            if let Ok(r) = ProcReading::read(pid) {
                peak.update(&r);
            }
            peak
        });
        Watch { stop, task }
    }

    pub async fn stop(self) -> Peak {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// The server's `/metrics`, one value per series (`name{labels}`).
#[derive(Debug, Default, Clone)]
pub(crate) struct ServerCounters(BTreeMap<String, f64>);

/// Counter families worth reporting when they move: how the server treated
/// connections. (Per-message counters move with the probe's pings.)
const REPORTED: [&str; 6] = [
    "wsgate_connections_total",
    "wsgate_handshake_rejections_total",
    "wsgate_disconnects_total",
    "wsgate_security_violations_total",
    "wsgate_errors_total",
    "wsgate_log_lines_dropped_total",
];

impl ServerCounters {
    /// Reads `/metrics`, retrying a few times: while an attack holds every
    /// pending-connection slot, the request itself may be closed unread.
    pub async fn fetch(http: &str) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..20 {
            match Self::fetch_once(http).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .with_context(|| format!("cannot read {http}/metrics"))
    }

    async fn fetch_once(http: &str) -> anyhow::Result<Self> {
        // No pooled connection: the server closes idle keep-alive
        // connections at its header timeout, and a pooled one may be dead.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()?;
        let text = client
            .get(format!("{http}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        ServerCounters(series)
    }

    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    pub fn connections_active(&self) -> Option<f64> {
        self.get("wsgate_connections_active")
    }

    /// The reported counters that moved since `before`.
    pub fn deltas_since(&self, before: &ServerCounters) -> Vec<(String, f64)> {
        self.0
            .iter()
            .filter(|(name, _)| {
                let family = name.split('{').next().unwrap_or("");
                REPORTED.contains(&family)
            })
            .filter_map(|(name, v)| {
                let d = v - before.get(name).unwrap_or(0.0);
                (d != 0.0).then(|| (name.clone(), d))
            })
            .collect()
    }
}

/// The kernel's TCP counters that tell connections it refused or dropped
/// before the server saw them (listen queue full, SYN cookies) and
/// segments it had to send again, from /proc/net/netstat and
/// /proc/net/snmp. They count for the whole machine: on a bench machine
/// that is the bench.
#[derive(Debug, Default, Clone)]
pub(crate) struct KernelCounters(BTreeMap<String, u64>);

const KERNEL_REPORTED: [&str; 10] = [
    // Tcp (/proc/net/snmp): segments sent again. On loopback nothing is
    // lost on the wire, so these are drops at a full queue (SYN-ACKs to a
    // client whose ACK was dropped, data past a full receive queue); each
    // costs the flow a retransmission timeout (≥ 200 ms).
    "RetransSegs",
    "TCPTimeouts",
    "TCPSynRetrans",
    "ListenOverflows",
    "ListenDrops",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
];

impl KernelCounters {
    /// Empty when /proc/net cannot be read: the figures are extra.
    pub fn read() -> Self {
        let mut counters = BTreeMap::new();
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            Self::parse_into(&text, &mut counters);
        }
        KernelCounters(counters)
    }

    fn parse_into(text: &str, counters: &mut BTreeMap<String, u64>) {
        let mut lines = text.lines();
        // Pairs of lines: `TcpExt: Name …` then `TcpExt: value …`.
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            if !(names.starts_with("TcpExt:") || names.starts_with("Tcp:")) {
                continue;
            }
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if KERNEL_REPORTED.contains(&name) {
                    counters.insert(name.to_string(), value.parse().unwrap_or(0));
                }
            }
        }
    }

    /// The counters that moved since `before`.
    pub fn deltas_since(&self, before: &KernelCounters) -> Vec<(String, u64)> {
        self.0
            .iter()
            .filter_map(|(name, v)| {
                let d = v.saturating_sub(before.0.get(name).copied().unwrap_or(0));
                (d > 0).then(|| (name.clone(), d))
            })
            .collect()
    }
}
