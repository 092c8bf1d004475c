//! What an attack scenario reports: its own outcome (counts, timings,
//! checks) and the harness's readings of the server and the probe, printed
//! as a table for people and one JSON line for scripts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::probe::ProbeFigures;
use super::watch::{Peak, ProcReading};
use super::{check, ms};

/// A named check of the scenario's expectation, and the figure behind it.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Counts by outcome label ("close 1009", "HTTP 429", "EOF after 5.0 s"…),
/// shared by an attack's tasks.
#[derive(Debug, Default)]
pub(crate) struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub fn add(&self, label: impl Into<String>) {
        self.add_n(label, 1);
    }

    pub fn add_n(&self, label: impl Into<String>, n: u64) {
        // A poisoned lock only means another task panicked mid-insert; the
        // counts are still worth reporting.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(label.into()).or_insert(0) += n;
    }

    pub fn get(&self, label: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(label).copied().unwrap_or(0)
    }

    /// The sum over labels starting with `prefix`.
    pub fn sum_prefix(&self, prefix: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn into_map(self) -> BTreeMap<String, u64> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// A distribution of durations (µs resolution), shared by an attack's
/// tasks.
#[derive(Debug)]
pub(crate) struct Timings(Mutex<Histogram<u64>>);

impl Default for Timings {
    fn default() -> Self {
        // 1 µs to 10 minutes, 3 significant digits.
        Timings(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid"),
        ))
    }
}

impl Timings {
    pub fn record(&self, d: Duration) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Beyond the upper bound saturates rather than failing.
        h.saturating_record(d.as_micros().max(1) as u64);
    }

    pub fn into_histogram(self) -> Histogram<u64> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a scenario found, before the harness adds the server's and the
/// probe's figures.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// What the attack did, in one sentence.
    pub load: String,
    /// What happened to the attacking connections, by outcome.
    pub counts: BTreeMap<String, u64>,
    /// Named distributions ("time to close", …).
    pub timings: Vec<(String, Histogram<u64>)>,
    /// Other figures worth a line (name, value as shown).
    pub figures: Vec<(String, Value)>,
    pub checks: Vec<Check>,
    /// The server's RSS may grow at most this much (KiB) above its
    /// baseline at the peak.
    pub rss_budget_kib: Option<u64>,
    /// The server's RSS after settling may stay at most this much (KiB)
    /// above its baseline.
    pub rss_after_budget_kib: Option<u64>,
    /// Open files and connections must be back to the baseline afterwards
    /// (a leak check).
    pub expect_baseline: bool,
}

impl Outcome {
    pub fn new(load: impl Into<String>) -> Self {
        Outcome {
            load: load.into(),
            ..Outcome::default()
        }
    }

    pub fn timing(&mut self, name: &str, t: Timings) {
        self.timings.push((name.to_string(), t.into_histogram()));
    }

    pub fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.push((name.to_string(), value.into()));
    }

    pub fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(check(name, ok, detail));
    }
}

pub(crate) struct Report {
    pub scenario: &'static str,
    pub outcome: Outcome,
    pub attack_secs: f64,
    pub before: ProcReading,
    pub peak: Peak,
    /// At the end of the attack (CPU time).
    pub end: ProcReading,
    /// After settling.
    pub after: ProcReading,
    /// Server CPU s/s while only the probe ran.
    pub baseline_cpu_rate: f64,
    /// `/metrics` counters that moved during the run.
    pub counters: Vec<(String, f64)>,
    /// Kernel TCP counters (machine-wide) that moved during the run.
    pub kernel: Vec<(String, u64)>,
    pub connections_before: Option<f64>,
    pub connections_after: Option<f64>,
    pub probe: ProbeFigures,
    pub p99_budget_ms: f64,
}

/// Open files the server may differ by afterwards without it being a leak:
/// a probe handshake or a `/metrics` request may be in flight.
const FD_SLACK: usize = 8;

impl Report {
    /// The probe's checks: did the legitimate clients notice?
    fn probe_checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        let p = &self.probe;
        checks.push(check(
            "probe round trips unaffected",
            p.during.failures == 0 && p.during.p99_ms <= self.p99_budget_ms,
            format!(
                "p99 {:.2} ms during (budget {:.0}, {:.2} before), {} failures",
                p.during.p99_ms, self.p99_budget_ms, p.before.p99_ms, p.during.failures,
            ),
        ));
        if p.during.connects_ok + p.during.connects_failed > 0 {
            checks.push(check(
                "legitimate clients still connect",
                p.during.connects_failed == 0,
                format!(
                    "{} of {} fresh handshakes failed during the attack (p99 {:.1} ms)",
                    p.during.connects_failed,
                    p.during.connects_failed + p.during.connects_ok,
                    p.during.connect_p99_ms
                ),
            ));
        }
        checks
    }

    /// The harness's checks of the server, added to the scenario's own.
    fn server_checks(&self) -> Vec<Check> {
        let mut checks = self.outcome.checks.clone();
        if let Some(budget) = self.outcome.rss_budget_kib {
            let growth = self.peak.rss_kib.saturating_sub(self.before.rss_kib);
            checks.push(check(
                "memory bounded",
                growth <= budget,
                format!("peak RSS {growth} KiB above baseline (budget {budget} KiB)"),
            ));
        }
        if let Some(budget) = self.outcome.rss_after_budget_kib {
            let left = self.after.rss_kib.saturating_sub(self.before.rss_kib);
            checks.push(check(
                "memory back near baseline",
                left <= budget,
                format!("RSS {left} KiB above baseline after settling (allowed {budget} KiB)"),
            ));
        }
        if self.outcome.expect_baseline {
            checks.push(check(
                "open files back to baseline",
                self.after.fds <= self.before.fds + FD_SLACK,
                format!("{} before, {} after", self.before.fds, self.after.fds),
            ));
            checks.push(check(
                "connections back to baseline",
                matches!(
                    (self.connections_before, self.connections_after),
                    (Some(b), Some(a)) if a <= b
                ),
                format!(
                    "{} before, {} after",
                    opt(self.connections_before),
                    opt(self.connections_after)
                ),
            ));
        }
        checks
    }

    pub fn print(self) {
        let server_checks = self.server_checks();
        let probe_checks = self.probe_checks();
        let verdict = |checks: &[Check]| {
            if checks.iter().all(|c| c.ok) {
                "pass"
            } else {
                "fail"
            }
        };
        let (server_verdict, probe_verdict) = (verdict(&server_checks), verdict(&probe_checks));
        let checks: Vec<Check> = server_checks.into_iter().chain(probe_checks).collect();
        let pass = checks.iter().all(|c| c.ok);
        let o = &self.outcome;
        let cpu = self.end.cpu.saturating_sub(self.before.cpu).as_secs_f64();
        let probe_cpu = self.baseline_cpu_rate * self.attack_secs;
        let mib = |kib: u64| kib as f64 / 1024.0;

        println!("== attack {} ==", self.scenario);
        println!("load: {}", o.load);
        println!("outcome of the attacking connections:");
        for (label, n) in &o.counts {
            println!("  {label:<48} {n:>8}");
        }
        for (name, h) in &o.timings {
            if h.is_empty() {
                continue;
            }
            println!(
                "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1e3,
                h.len()
            );
        }
        for (name, value) in &o.figures {
            match value {
                Value::String(s) => println!("{name}: {s}"),
                other => println!("{name}: {other}"),
            }
        }
        if !self.counters.is_empty() {
            println!("server counters (change over the run):");
            for (name, v) in &self.counters {
                println!("  {name:<64} {v:>+10}");
            }
        }
        if !self.kernel.is_empty() {
            println!("kernel TCP counters (machine-wide, change over the run):");
            for (name, v) in &self.kernel {
                println!("  {name:<64} {v:>+10}");
            }
        }
        println!(
            "server: RSS {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after; \
             CPU {cpu:.2} s over the {:.1} s attack (the probe alone used ~{probe_cpu:.2} s; \
             busiest 100 ms: {:.1} cores; {:.1} s at ≥ 90 % of a core); \
             open files {} before, {} peak, {} after; connections {} before, {} after",
            mib(self.before.rss_kib),
            mib(self.peak.rss_kib),
            mib(self.after.rss_kib),
            self.attack_secs,
            self.peak.cpu_cores,
            self.peak.saturated_secs,
            self.before.fds,
            self.peak.fds,
            self.after.fds,
            opt(self.connections_before),
            opt(self.connections_after),
        );
        let p = &self.probe;
        println!(
            "probe ({} clients, {}): p50/p99 {:.2}/{:.2} ms before ({} pings, {} failed), \
             {:.2}/{:.2} ms during ({} pings, {} failed), max during {:.1} ms; \
             fresh handshakes during: {} ok, {} failed (p99 {:.1} ms)",
            p.clients,
            p.priority,
            p.before.p50_ms,
            p.before.p99_ms,
            p.before.pings,
            p.before.failures,
            p.during.p50_ms,
            p.during.p99_ms,
            p.during.pings,
            p.during.failures,
            p.during.max_ms,
            p.during.connects_ok,
            p.during.connects_failed,
            p.during.connect_p99_ms,
        );
        for e in &p.errors {
            println!("  probe error: {e}");
        }
        for c in &checks {
            println!(
                "[{}] {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        println!(
            "verdict: {} (the server's handling: {server_verdict}; the probe: {probe_verdict})",
            if pass { "PASS" } else { "FAIL" }
        );

        let timings: serde_json::Map<String, Value> = o
            .timings
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| {
                (
                    name.clone(),
                    json!({"p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99),
                           "max_ms": h.max() as f64 / 1e3, "n": h.len()}),
                )
            })
            .collect();
        let line = json!({
            "scenario": self.scenario,
            "verdict": if pass { "pass" } else { "fail" },
            "server_verdict": server_verdict,
            "probe_verdict": probe_verdict,
            "load": o.load,
            "counts": o.counts,
            "timings": timings,
            "figures": o.figures.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "server_counters": self.counters.iter().cloned().collect::<BTreeMap<_, _>>(),
            "kernel_counters": self.kernel.iter().cloned().collect::<BTreeMap<_, _>>(),
            "server": {
                "rss_kib_before": self.before.rss_kib,
                "rss_kib_peak": self.peak.rss_kib,
                "rss_kib_after": self.after.rss_kib,
                "cpu_secs": cpu,
                "cpu_secs_probe_alone": probe_cpu,
                "cpu_cores_peak_100ms": self.peak.cpu_cores,
                "cpu_saturated_secs": self.peak.saturated_secs,
                "attack_secs": self.attack_secs,
                "fds_before": self.before.fds,
                "fds_peak": self.peak.fds,
                "fds_after": self.after.fds,
                "connections_before": self.connections_before,
                "connections_after": self.connections_after,
            },
            "probe": p.to_json(),
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        });
        println!("{line}");
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_string(), |v| format!("{v:.0}"))
}
