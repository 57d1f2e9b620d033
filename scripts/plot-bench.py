#!/usr/bin/env python3
"""Draws the benchmark charts for docs/benchmarks.md from socksng-bench's JSON lines.

Usage: scripts/plot-bench.py docs/bench/run.jsonl docs/bench
Writes one SVG bar chart per figure (no plotting library needed, so it runs anywhere).
"""
import json
import sys
from pathlib import Path

COLORS = {"direct": "#9e9e9e", "socksng": "#1565c0", "dante": "#ef6c00",
          "microsocks": "#2e7d32", "ssh-d": "#6a1b9a"}


def load(path):
    rows = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        rows[(r["subject"], r["case"])] = r
    return rows


def median(rows, subject, case, metric):
    r = rows.get((subject, case))
    if not r or r.get("status") != "ok":
        return None
    m = r.get("metrics", {}).get(metric)
    return None if m is None else m.get("median")


def bar_chart(title, unit, groups, series, values, out):
    """groups: x labels; series: subjects; values[(group, subject)] -> number or None."""
    width, height, left, bottom, top = 760, 340, 70, 60, 40
    plot_w, plot_h = width - left - 20, height - top - bottom
    vmax = max([v for v in values.values() if v is not None] or [1]) * 1.1
    gw = plot_w / max(len(groups), 1)
    bw = gw * 0.8 / max(len(series), 1)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{width/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{top+plot_h}" x2="{left+plot_w}" y2="{top+plot_h}" stroke="#000"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top+plot_h}" stroke="#000"/>',
           f'<text x="15" y="{top+plot_h/2}" transform="rotate(-90 15 {top+plot_h/2})" '
           f'text-anchor="middle">{unit}</text>']
    for i in range(5):
        v = vmax * i / 4
        y = top + plot_h - plot_h * i / 4
        svg.append(f'<text x="{left-5}" y="{y+4}" text-anchor="end">{v:.3g}</text>')
        svg.append(f'<line x1="{left}" y1="{y}" x2="{left+plot_w}" y2="{y}" stroke="#eee"/>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        svg.append(f'<text x="{left + gi*gw + gw/2}" y="{top+plot_h+16}" text-anchor="middle">{g}</text>')
        for si, s in enumerate(series):
            v = values.get((g, s))
            x = x0 + si * bw
            if v is None:
                svg.append(f'<text x="{x+bw/2}" y="{top+plot_h-4}" text-anchor="middle" '
                           f'font-size="9">n/a</text>')
                continue
            h = plot_h * v / vmax
            svg.append(f'<rect x="{x:.1f}" y="{top+plot_h-h:.1f}" width="{bw-2:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS.get(s, "#455a64")}"><title>{s}: {v:.4g} {unit}</title></rect>')
    for si, s in enumerate(series):
        x = left + si * 120
        svg.append(f'<rect x="{x}" y="{height-22}" width="10" height="10" fill="{COLORS.get(s, "#455a64")}"/>')
        svg.append(f'<text x="{x+14}" y="{height-13}">{s}</text>')
    svg.append("</svg>")
    Path(out).write_text("\n".join(svg) + "\n")


def main():
    rows = load(sys.argv[1])
    out = Path(sys.argv[2])
    subjects = [s for s in ["direct", "socksng", "dante", "microsocks", "ssh-d"]
                if any(k[0] == s for k in rows)]
    tcp = {"1 up": "tcp-up-1", "1 down": "tcp-down-1", "64 up": "tcp-up-par", "64 down": "tcp-down-par"}
    bar_chart("TCP throughput through CONNECT (median)", "Gbit/s", list(tcp), subjects,
              {(g, s): median(rows, s, c, "gbit_s") for g, c in tcp.items() for s in subjects},
              out / "throughput.svg")
    hs = {"no auth": "handshake", "user/pass": "handshake-auth"}
    bar_chart("Handshakes per second (connect, greet, CONNECT, exchange, close)", "per second",
              list(hs), subjects,
              {(g, s): median(rows, s, c, "per_s") for g, c in hs.items() for s in subjects},
              out / "handshakes.svg")
    idle = {"1,000 idle": "idle-small", "max idle (9,872)": "idle-max"}
    proxies = [s for s in subjects if s != "direct"]
    bar_chart("RSS per idle proxied connection", "KiB", list(idle), proxies,
              {(g, s): median(rows, s, c, "rss_kib_per_conn") for g, c in idle.items() for s in proxies},
              out / "memory.svg")


if __name__ == "__main__":
    main()
