#!/usr/bin/env python3
"""evaluate.py DIR --mode sqlite|redis --minutes M [--warmup-secs S]

The soak's verdict for one mode, from what soak.sh left in DIR:
samples.csv (sample.mjs), load-stats.json (load.mjs), node-*.log (the
servers' JSON logs), exit-codes, load-start-secs / load-end-secs.

Prints the figures and one PASS/FAIL line per criterion, writes
summary.json beside them, and exits 1 when any criterion fails. The
criteria are the ones in soak.sh's header; the allowances are below, each
with its reason.
"""

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

RSS_BAND = 0.05  # +-5 % of the post-warm-up start
# Warm-up: 40 % of the run, at least 3 min. It must cover the longest
# history TTL the load fills (thread channels keep 10 min): until then
# memory grows with the history kept, by design; the 30-min run of
# 2026-12-03 flattened at ~11 min.
WARMUP_SHARE, WARMUP_MIN_SECS = 0.40, 180

# The store's pool opens connections on demand and keeps idle ones (sqlx:
# idle_timeout 10 min), so connections opened under load may still be open
# 20 s after it: the pool working, not a leak, and bounded by the pool's
# size (crates/storage/src/lib.rs). So store fds are checked against the
# pool's maximum, and every other fd must be exactly back to the baseline.
#   SQLite: 1 writer + 4 readers, each holding the database file and its
#     -wal file, plus the -shm file once per process: 5 x 2 + 1 = 11.
#     sqlx runs one worker thread per SQLite connection, so each pooled
#     connection opened since the baseline may also add one thread.
#   PostgreSQL (redis mode): 8 connections, one socket each; no threads.
STORE_FDS_MAX = {"sqlite": 11, "redis": 8}
FDS_PER_STORE_CONN = {"sqlite": 2, "redis": 1}
THREADS_PER_STORE_CONN = {"sqlite": 1, "redis": 0}
# Tokio's blocking pool lets an idle thread go after 10 s, well inside the
# 20 s wait, so no other thread may remain.

# Log lines at WARN or ERROR that are expected in a soak, with the reason.
# Matched on the message; anything else fails the run.
EXPECTED_LOG = [
    # None so far: the churn closes every connection with 1000, runs end
    # before their client leaves, and the stores and Redis stay up.
]


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fit_slope(points):
    """Least-squares slope of (t_s, value) points, per hour."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--mode", required=True, choices=["sqlite", "redis"])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--warmup-secs", type=float)
    a = ap.parse_args()
    d = Path(a.dir)

    rows = list(csv.DictReader(open(d / "samples.csv")))
    stats = json.loads((d / "load-stats.json").read_text())
    load_start = float((d / "load-start-secs").read_text())
    load_end = float((d / "load-end-secs").read_text())
    run_secs = load_end - load_start
    warmup = a.warmup_secs if a.warmup_secs is not None else max(WARMUP_SHARE * run_secs, WARMUP_MIN_SECS)
    nodes = sorted({r["node"] for r in rows})

    checks = []  # (name, ok, detail)
    summary = {"mode": a.mode, "minutes": a.minutes, "run_secs": run_secs, "warmup_secs": warmup, "nodes": {}}

    def check(name, ok, detail):
        checks.append((name, ok, detail))

    out = []
    p = out.append
    p(f"== soak {a.mode}: load {run_secs / 60:.1f} min, warm-up {warmup / 60:.1f} min excluded")

    # ---- the load
    secs = max(1.0, (stats.get("stopped_at", stats["now"]) - stats["started_at"]) / 1000)
    load_rows = [r for r in rows if r["phase"] == "load"]
    load_cpu = [fnum(r["load_cpu_pct"]) for r in load_rows if fnum(r["load_cpu_pct"]) is not None]
    load_rss = [fnum(r["load_rss_kib"]) for r in load_rows if fnum(r["load_rss_kib"]) is not None]
    summary["load"] = {k: stats.get(k) for k in (
        "concurrency", "connects", "publishes", "api_publishes", "deliveries", "cross_node_deliveries",
        "joins_leaves", "runs_started", "runs_completed", "run_events", "threads_created", "threads_deleted",
        "threads_renamed", "history_reads", "subscribes", "unsubscribes", "errors", "delivery_gaps", "errors_by_kind")}
    summary["load"]["secs"] = secs
    summary["load"]["generator_cpu_pct_mean"] = round(sum(load_cpu) / len(load_cpu), 1) if load_cpu else None
    summary["load"]["generator_rss_mib_max"] = round(max(load_rss) / 1024, 1) if load_rss else None
    p(f"load: {stats['concurrency']} clients; {stats['connects']} connects ({stats['connects'] / secs * 60:.0f}/min), "
      f"{stats['publishes']} client + {stats['api_publishes']} API publishes ({(stats['publishes'] + stats['api_publishes']) / secs:.1f}/s), "
      f"{stats['deliveries']} deliveries ({stats['deliveries'] / secs:.0f}/s, {stats['cross_node_deliveries']} cross-node), "
      f"{stats['runs_completed']}/{stats['runs_started']} runs completed ({stats['runs_completed'] / secs * 60:.0f}/min, "
      f"{stats['run_events']} events), threads {stats['threads_created']} created / {stats['threads_deleted']} deleted / "
      f"{stats['threads_renamed']} renamed, {stats['history_reads']} history reads")
    if load_cpu:
        p(f"load generator: {summary['load']['generator_cpu_pct_mean']} % CPU mean, {summary['load']['generator_rss_mib_max']} MiB RSS max")

    # ---- per node
    for n in nodes:
        nr = [r for r in rows if r["node"] == n]
        base = next((r for r in nr if r["phase"] == "baseline"), None)
        after = next((r for r in reversed(nr) if r["phase"] == "after"), None)
        window = [r for r in nr if r["phase"] == "load" and fnum(r["t_s"]) >= load_start + warmup]
        loaded = [r for r in nr if r["phase"] == "load"]
        cpu = [fnum(r["cpu_pct"]) for r in loaded if fnum(r["cpu_pct"]) is not None]
        info = {"cpu_pct_mean": round(sum(cpu) / len(cpu), 1) if cpu else None}
        p(f"-- node {n}: CPU {info['cpu_pct_mean']} % mean under load, peak RSS "
          f"{max(fnum(r['rss_kib']) for r in nr) / 1024:.1f} MiB")

        # RSS over the post-warm-up window
        pts = [(fnum(r["t_s"]), fnum(r["rss_kib"]) / 1024) for r in window if fnum(r["rss_kib"])]
        if len(pts) >= 4:
            start = sum(v for _, v in pts[:3]) / 3
            vals = [v for _, v in pts]
            lo, hi, last = min(vals), max(vals), vals[-1]
            slope = fit_slope(pts)
            drift = (last - start) / start * 100
            band_lo, band_hi = (lo - start) / start * 100, (hi - start) / start * 100
            # Growth per run completed in the window: what each run leaves
            # behind, if anything (the runs are the one thing that creates
            # new state — threads, thread channels — all along).
            runs = [fnum(r["c_runs_completed"]) for r in window if fnum(r["c_runs_completed"]) is not None]
            per_run_kib = (last - start) * 1024 / (runs[-1] - runs[0]) if len(runs) > 1 and runs[-1] > runs[0] else None
            info["rss_growth_kib_per_run"] = round(per_run_kib, 2) if per_run_kib is not None else None
            info["rss"] = {"start_mib": round(start, 2), "first_mib": round(vals[0], 2), "min_mib": round(lo, 2),
                           "max_mib": round(hi, 2), "last_mib": round(last, 2), "drift_pct": round(drift, 2),
                           "band_pct": [round(band_lo, 2), round(band_hi, 2)],
                           "slope_mib_per_hour": round(slope, 2) if slope is not None else None,
                           "samples": len(pts), "window_secs": round(pts[-1][0] - pts[0][0])}
            p(f"   RSS after warm-up ({len(pts)} samples, {(pts[-1][0] - pts[0][0]) / 60:.1f} min): start {start:.1f} MiB "
              f"(first {vals[0]:.1f}), min {lo:.1f}, max {hi:.1f}, last {last:.1f}; drift {drift:+.1f} %, "
              f"band {band_lo:+.1f} % .. {band_hi:+.1f} %, slope {slope:+.2f} MiB/h"
              + (f", {per_run_kib:+.1f} KiB per run completed" if per_run_kib is not None else ""))
            check(f"{n}: RSS within +-{RSS_BAND * 100:.0f} % after warm-up",
                  abs(band_lo) <= RSS_BAND * 100 and abs(band_hi) <= RSS_BAND * 100,
                  f"{band_lo:+.1f} % .. {band_hi:+.1f} % of {start:.1f} MiB")
        else:
            info["rss"] = None
            p(f"   RSS: not evaluated, the run is not longer than its warm-up ({len(pts)} post-warm-up samples)")

        # Back to the baseline once the clients left
        if base and after:
            def both(col):
                return fnum(base[col]), fnum(after[col])
            keys = ["fds", "fds_client", "fds_listen", "fds_store", "fds_redis", "fds_other", "threads",
                    "m_connections_active", "stats_connections", "stats_users", "m_tasks", "rss_kib"]
            info["baseline"] = {k: both(k)[0] for k in keys}
            info["after"] = {k: both(k)[1] for k in keys}
            b, f = info["baseline"], info["after"]
            p("   baseline -> after clients left: " + ", ".join(
                f"{k} {b[k]:g}->{f[k]:g}" for k in keys if b[k] is not None and f[k] is not None and k != "rss_kib")
              + f"; RSS {b['rss_kib'] / 1024:.1f}->{f['rss_kib'] / 1024:.1f} MiB")
            store_max = STORE_FDS_MAX[a.mode]
            extra_conns = max(0, f["fds_store"] - b["fds_store"]) // FDS_PER_STORE_CONN[a.mode]
            check(f"{n}: no client socket left", f["fds_client"] == b["fds_client"],
                  f"{b['fds_client']:g} -> {f['fds_client']:g}")
            check(f"{n}: store fds within the pool's maximum ({store_max})", f["fds_store"] <= store_max,
                  f"{b['fds_store']:g} -> {f['fds_store']:g}")
            check(f"{n}: every other fd back to the baseline",
                  f["fds"] - f["fds_store"] == b["fds"] - b["fds_store"] and f["fds_redis"] == b["fds_redis"]
                  and f["fds_listen"] == b["fds_listen"] and f["fds_other"] == b["fds_other"],
                  f"{b['fds'] - b['fds_store']:g} -> {f['fds'] - f['fds_store']:g} (Redis {b['fds_redis']:g} -> "
                  f"{f['fds_redis']:g}, listening {b['fds_listen']:g} -> {f['fds_listen']:g}, "
                  f"other {b['fds_other']:g} -> {f['fds_other']:g})")
            check(f"{n}: connections and users back to 0",
                  f["m_connections_active"] == 0 and f["stats_connections"] == 0 and f["stats_users"] == 0,
                  f"gauge {f['m_connections_active']:g}, hub {f['stats_connections']:g} connections / {f['stats_users']:g} users")
            thr_allow = extra_conns * THREADS_PER_STORE_CONN[a.mode]
            check(f"{n}: threads <= baseline + {thr_allow:g} (store connections opened since)",
                  f["threads"] <= b["threads"] + thr_allow, f"{b['threads']:g} -> {f['threads']:g}")
            if b["m_tasks"] is not None and f["m_tasks"] is not None:
                check(f"{n}: tasks back to baseline", f["m_tasks"] <= b["m_tasks"], f"{b['m_tasks']:g} -> {f['m_tasks']:g}")
            else:
                p("   tasks: not exposed by /metrics (no wsgate_*task* gauge): judged by connections, hub users, fds and threads")
        else:
            check(f"{n}: baseline and after samples exist", False, "missing")

        for col in ("m_broker_errors", "m_storage_errors"):
            v = fnum(after[col]) if after else None
            if v is not None:
                info[col] = v
                check(f"{n}: {col[2:]} = 0", v == 0, f"{v:g}")
        summary["nodes"][n] = info

    # ---- Redis (two-node mode): its memory and keys, for the record
    rr = [r for r in rows if r["node"] == nodes[0] and fnum(r["redis_used_memory"])]
    if rr:
        first_w = next((r for r in rr if r["phase"] == "load" and fnum(r["t_s"]) >= load_start + warmup), rr[0])
        last_l = [r for r in rr if r["phase"] == "load"][-1]
        summary["redis"] = {k: {"baseline": fnum(rr[0][c]), "after_warmup": fnum(first_w[c]), "end": fnum(last_l[c]),
                                "after": fnum(rr[-1][c])} for k, c in (("used_memory", "redis_used_memory"), ("keys", "redis_keys"))}
        rm = summary["redis"]["used_memory"]
        rk = summary["redis"]["keys"]
        p(f"-- Redis DB 7: used_memory {rm['baseline'] / 2**20:.1f} -> {rm['after_warmup'] / 2**20:.1f} (after warm-up) -> "
          f"{rm['end'] / 2**20:.1f} MiB (end); keys {rk['baseline']:g} -> {rk['after_warmup']:g} -> {rk['end']:g} -> {rk['after']:g} (after)")

    # ---- logs
    seen = {}
    for log in sorted(d.glob("node-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                level = "WARN" if re.search(r"\b(WARN|ERROR|panicked)\b", line) else None
                msg = line[:200]
            else:
                level = str(j.get("level", "")).upper()
                msg = j.get("message") or j.get("fields", {}).get("message") or line[:200]
            if level in ("WARN", "ERROR"):
                key = (log.stem, level, msg)
                seen[key] = seen.get(key, 0) + 1
    unexpected = 0
    summary["logs"] = []
    for (node, level, msg), count in sorted(seen.items()):
        why = next((w for pat, w in EXPECTED_LOG if re.search(pat, msg)), None)
        summary["logs"].append({"node": node, "level": level, "message": msg, "count": count, "expected": why})
        p(f"   log {node} {level} x{count}: {msg}" + (f"  (expected: {why})" if why else "  (UNEXPECTED)"))
        if not why:
            unexpected += count
    if not seen:
        p("   logs: no WARN or ERROR line")
    check("no unexpected WARN/ERROR log line", unexpected == 0, f"{unexpected} unexpected")

    # ---- clients
    check("no client error", stats["errors"] == 0,
          f"{stats['errors']} ({json.dumps(stats['errors_by_kind'])})" if stats["errors"] else "0")
    for e in stats.get("last_errors", [])[-10:]:
        p(f"   client error {e['at']} {e['kind']}: {e['detail']}")
    check("every run started completed", stats["runs_completed"] == stats["runs_started"] and stats["runs_started"] > 0,
          f"{stats['runs_completed']}/{stats['runs_started']}")
    if len(nodes) > 1:
        check("publications crossed nodes", stats["cross_node_deliveries"] > 0, f"{stats['cross_node_deliveries']}")

    # ---- exit
    codes = dict(line.split() for line in (d / "exit-codes").read_text().splitlines() if line.strip())
    summary["exit_codes"] = codes
    check("SIGTERM: every server exited 0", codes and all(c == "0" for c in codes.values()), json.dumps(codes))

    ok = all(c[1] for c in checks)
    for name, good, detail in checks:
        p(f"{'PASS' if good else 'FAIL'}  {name}: {detail}")
    p(f"== soak {a.mode}: {'PASS' if ok else 'FAIL'}")
    summary["checks"] = [{"name": c[0], "ok": c[1], "detail": c[2]} for c in checks]
    summary["pass"] = ok
    (d / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
