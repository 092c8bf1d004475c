//! `wsgate bench attack`: hostile clients against a running server.
//!
//! Every scenario runs beside a probe of legitimate clients (ping → pong
//! round trips and fresh handshakes, `probe.rs`) and reads the server's RSS,
//! CPU time and open files from /proc and its counters from `/metrics`
//! before, during and after the attack (`watch.rs`). Each prints one report
//! (`report.rs`): what the attack did, what the server did to it, what that
//! cost the server, and whether the legitimate clients noticed.
//!
//! Source addresses: the probe uses 127.0.1.x; each scenario has its own
//! 127.0.N.x range (`--net`), so per-address limits that one scenario
//! exhausts do not leak into the next one or into the probe.

mod big_token;
mod bomb;
mod churn;
mod frames;
mod jwks;
mod never_read;
mod probe;
mod raw;
mod report;
mod slow;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use self::probe::{Phase, Probe};
use self::report::{Check, Outcome, Report};
use self::watch::{KernelCounters, ProcReading, ServerCounters, Watch};

#[derive(Debug, Args)]
pub struct AttackArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// TCP connections that never send a byte: each must be closed at the
    /// header timeout (or at once beyond the pending-connection caps).
    Slowloris(slow::SlowlorisArgs),
    /// Upgrade requests sent one byte at a time: closed at the header
    /// timeout, never upgraded.
    Dribble(slow::DribbleArgs),
    /// Rapid connect → authenticate → close cycles from one address range:
    /// the per-IP handshake rate refuses the excess (429); nothing leaks.
    Churn(churn::ChurnArgs),
    /// Subscribers that stop reading while publications flood their
    /// channel: each closed 4009, server memory bounded by the queues.
    NeverRead(never_read::NeverReadArgs),
    /// Frames of exactly `limits.max_message_bytes` from many connections
    /// at once (answered), then one byte more (close 1009).
    MaxFrames(frames::MaxFramesArgs),
    /// A permessage-deflate decompression bomb on every connection at once:
    /// close 1009 each, memory bounded.
    Bomb(bomb::BombArgs),
    /// A token of about 1 MB in `Authorization` and in
    /// `Sec-WebSocket-Protocol`: refused quickly, memory bounded.
    BigToken(big_token::BigTokenArgs),
    /// Handshakes against a server whose `auth.jwks_url` points at a hostile
    /// endpoint (`jwks-serve`): refused in bounded time, memory bounded.
    Jwks(jwks::JwksArgs),
    /// Serve a hostile JWKS endpoint until killed: `/hang` never answers,
    /// `/huge` streams 100 MB. For a second server's `auth.jwks_url`.
    JwksServe(jwks::ServeArgs),
}

/// What every measured scenario shares: where the server is, how to
/// authenticate, and the probe's shape.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The server's pid: RSS, CPU time and open files are read from
    /// /proc/PID.
    #[arg(long)]
    pub pid: u32,
    /// HMAC secret to sign the probe's and the attackers' tokens.
    #[arg(long, env = "WSGATE_AUTH__HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Server API key (`never-read` publishes through `/api/publish`).
    #[arg(long, env = "BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Legitimate clients doing ping → pong round trips throughout (each
    /// its own user, from 127.0.1.1 …).
    #[arg(long, default_value_t = 20)]
    pub probe_clients: usize,
    /// Pause between a probe client's pong and its next ping, in ms. The
    /// server needs `limits.messages_per_minute` above 60,000 / this.
    #[arg(long, default_value_t = 20)]
    pub probe_interval_ms: u64,
    /// A fresh probe handshake (to `connected`) every this many ms, from
    /// 127.0.1.101 … round robin; 0: none.
    #[arg(long, default_value_t = 250)]
    pub probe_connect_ms: u64,
    /// Nice value of the probe's thread (needs root to go below 0; 0 leaves
    /// it alone): the attack's tasks share the bench's core.
    #[arg(long, default_value_t = -15, allow_negative_numbers = true)]
    pub probe_nice: i32,
    /// Seconds of probe before the attack: the baseline.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Seconds between the end of the attack and the "after" reading.
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// The probe counts as unaffected while its p99 during the attack
    /// stays under this (ms) and nothing of it failed.
    #[arg(long, default_value_t = 50.0)]
    pub p99_budget_ms: f64,
}

/// Where the server is and how to get in, as the scenarios need it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// The WebSocket path (and query).
    pub path: String,
    /// `http://host:port`, for `/metrics` and the server API.
    pub http: String,
    pub secret: String,
    pub api_key: Option<String>,
}

impl Target {
    fn new(common: &Common) -> anyhow::Result<Self> {
        let url = crate::url_lite::parse(&common.url)?;
        Ok(Target {
            url: common.url.clone(),
            addr: url.addr,
            path: url.path,
            http: format!("http://{}", url.addr),
            secret: common.secret.clone(),
            api_key: common.api_key.clone(),
        })
    }

    /// A one-hour HS256 token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        crate::sign_hs256(
            &self.secret,
            sub,
            jsonwebtoken::get_current_timestamp() + 3600,
        )
    }
}

pub async fn attack(args: AttackArgs) -> anyhow::Result<()> {
    // The third argument is how many sockets the attack holds at most.
    match args.scenario {
        Scenario::Slowloris(a) => {
            measured(&a.common, "slowloris", a.connections, |t| {
                slow::slowloris(t, &a)
            })
            .await
        }
        Scenario::Dribble(a) => {
            measured(&a.common, "dribble", a.connections, |t| {
                slow::dribble(t, &a)
            })
            .await
        }
        Scenario::Churn(a) => {
            measured(&a.common, "churn", a.concurrency, |t| churn::churn(t, &a)).await
        }
        Scenario::NeverRead(a) => {
            measured(&a.common, "never-read", a.clients, |t| {
                never_read::never_read(t, &a)
            })
            .await
        }
        Scenario::MaxFrames(a) => {
            measured(&a.common, "max-frames", a.connections, |t| {
                frames::max_frames(t, &a)
            })
            .await
        }
        Scenario::Bomb(a) => {
            measured(&a.common, "bomb", a.connections, |t| bomb::bomb(t, &a)).await
        }
        Scenario::BigToken(a) => {
            measured(&a.common, "big-token", a.concurrency, |t| {
                big_token::big_token(t, &a)
            })
            .await
        }
        Scenario::Jwks(a) => {
            measured(&a.common, "jwks", a.concurrency, |t| jwks::jwks(t, &a)).await
        }
        Scenario::JwksServe(a) => jwks::serve(a).await,
    }
}

/// Runs `attack` between a baseline and a settle phase of the probe, with
/// the server watched throughout, and prints the report. `sockets` is how
/// many sockets the attack holds at most (checked against our own
/// open-files limit before anything starts).
async fn measured<F, A>(
    common: &Common,
    scenario: &'static str,
    sockets: usize,
    attack: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Target) -> A,
    A: Future<Output = anyhow::Result<Outcome>>,
{
    check_open_files(sockets + common.probe_clients + 64)?;
    let target = Target::new(common)?;
    let pid = common.pid;
    ProcReading::read(pid).context("is --pid the server's?")?;

    let probe = Probe::start(&target, common)?;
    probe
        .wait_connected(common.probe_clients, Duration::from_secs(10))
        .await?;
    // A moment for the probe's first round trips (connection set-up,
    // caches) before they count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_start = ProcReading::read(pid)?;
    probe.set_phase(Phase::Before);
    tokio::time::sleep(Duration::from_secs_f64(common.baseline_secs.max(0.5))).await;

    let before = ProcReading::read(pid)?;
    let counters_before = ServerCounters::fetch(&target.http).await?;
    let kernel_before = KernelCounters::read();
    let baseline_cpu_rate =
        before.cpu.saturating_sub(baseline_start.cpu).as_secs_f64() / common.baseline_secs.max(0.5);

    let watch = Watch::start(pid);
    probe.set_phase(Phase::During);
    eprintln!("attack {scenario}: starting");
    let started = Instant::now();
    let outcome = attack(target.clone()).await;
    let attack_secs = started.elapsed().as_secs_f64();
    probe.set_phase(Phase::After);
    let end = ProcReading::read(pid)?;
    let peak = watch.stop().await;
    let outcome = outcome?;

    tokio::time::sleep(Duration::from_secs_f64(common.settle_secs.max(0.0))).await;
    let after = ProcReading::read(pid)?;
    let counters_after = ServerCounters::fetch(&target.http).await?;
    let kernel = KernelCounters::read().deltas_since(&kernel_before);
    let probe = probe.finish().await?;

    let report = Report {
        scenario,
        outcome,
        attack_secs,
        before,
        peak,
        end,
        after,
        baseline_cpu_rate,
        counters: counters_after.deltas_since(&counters_before),
        kernel,
        connections_before: counters_before.connections_active(),
        connections_after: counters_after.connections_active(),
        probe,
        p99_budget_ms: common.p99_budget_ms,
    };
    report.print();
    Ok(())
}

/// Fails early, with the fix, when our open-files limit is below what the
/// scenario will hold: thousands of `EMFILE` would otherwise read as the
/// server refusing connections.
fn check_open_files(needed: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => anyhow::bail!(
            "this scenario holds up to {needed} sockets but the open-files limit is {soft}: \
             raise it (`ulimit -n {needed}`) or lower the counts"
        ),
        _ => Ok(()),
    }
}

/// Percentiles of a distribution in ms, for checks and reports.
pub(crate) fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// A check that holds when `ok`, with the figure that decided it.
pub(crate) fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}
