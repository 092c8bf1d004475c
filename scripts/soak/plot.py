#!/usr/bin/env python3
"""plot.py SAMPLES.csv OUT.png [--title TEXT] [--warmup-secs S]

The soak's picture, from sample.mjs's CSV: on top, each node's RSS over
time, with the warm-up shaded, the +-5 % pass band after it dotted and the
load's end marked; below, each node's open file descriptors and, on a
second axis, its open connections (the /metrics gauge).
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

WARMUP_SHARE, WARMUP_MIN_SECS = 0.40, 180  # as evaluate.py
RSS_BAND = 0.05


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--title", default="wsgate soak")
    ap.add_argument("--warmup-secs", type=float, help="as given to evaluate.py (default: its rule)")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    nodes = sorted({r["node"] for r in rows})
    load = [fnum(r["t_s"]) / 60 for r in rows if r["phase"] == "load"]

    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax_conn = ax_fd.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(nodes):
        nr = [r for r in rows if r["node"] == n and fnum(r["rss_kib"]) is not None]
        t = [fnum(r["t_s"]) / 60 for r in nr]
        c = colors[i % len(colors)]
        ax_rss.plot(t, [fnum(r["rss_kib"]) / 1024 for r in nr], marker=".", ms=3, color=c, label=f"node {n} RSS")
        ax_fd.plot(t, [fnum(r["fds"]) for r in nr], color=c, label=f"node {n} open fds")
        ax_conn.plot(t, [fnum(r["m_connections_active"]) for r in nr], color=c, ls="--",
                     label=f"node {n} connections (/metrics)")
        # One label for the last sample (the nodes' points nearly coincide).
        for r in (r for r in nr if r["phase"] == "after" and i == 0):
            ax_rss.annotate("after clients left", (fnum(r["t_s"]) / 60, fnum(r["rss_kib"]) / 1024),
                            textcoords="offset points", xytext=(-150, -40), fontsize=8,
                            arrowprops={"arrowstyle": "->", "color": "0.4"})
    if load:
        start, end = min(load), max(load)
        warm = start + (a.warmup_secs / 60 if a.warmup_secs is not None
                        else max(WARMUP_SHARE * (end - start), WARMUP_MIN_SECS / 60))
        for ax in (ax_rss, ax_fd):
            ax.axvspan(start, min(warm, end), color="0.9", zorder=0)
            ax.axvline(end, color="0.5", lw=0.8, ls=":")
        ax_rss.text(start, 0.03, " warm-up", transform=blended_transform_factory(ax_rss.transData, ax_rss.transAxes),
                    fontsize=8, color="0.4")
        # The pass band: +-5 % around the mean of each node's first three
        # samples after warm-up (as evaluate.py).
        for i, n in enumerate(nodes):
            w = [fnum(r["rss_kib"]) / 1024 for r in rows if r["node"] == n and r["phase"] == "load"
                 and fnum(r["rss_kib"]) is not None and fnum(r["t_s"]) / 60 >= warm]
            if len(w) >= 3:
                ref = sum(w[:3]) / 3
                for y in (ref * (1 - RSS_BAND), ref * (1 + RSS_BAND)):
                    ax_rss.hlines(y, warm, end, colors=colors[i % len(colors)], linestyles=":", lw=1)
        ax_rss.plot([], [], color="0.4", ls=":", label="±5 % band after warm-up")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    ax_rss.set_title(a.title)
    ax_rss.legend(loc="lower right", fontsize=8)
    ax_rss.grid(alpha=0.3)
    ax_fd.set_ylabel("open fds")
    ax_fd.set_ylim(bottom=0)
    ax_conn.set_ylabel("open connections")
    ax_conn.set_ylim(bottom=0)
    ax_fd.set_xlabel("minutes since the servers started")
    ax_fd.grid(alpha=0.3)
    h1, l1 = ax_fd.get_legend_handles_labels()
    h2, l2 = ax_conn.get_legend_handles_labels()
    ax_fd.legend(h1 + h2, l1 + l2, loc="lower center", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(a.png, dpi=100)


if __name__ == "__main__":
    main()
