#!/usr/bin/env python3
"""plot.py RESULTS.json OUT.svg - grouped-bar SVG of bench/run results (standard library only).

Panel 1: IOPS per workload, file back-end: bare-metal fio vs qemu-storage-daemon vs vblkd.
Panel 2: IOPS per workload, null back-end: qsd vs vblkd, --poll and --wait.
Panel 3: 4k randread QD1 latency percentiles p50/p99/p99.9 per system (1 queue).
Log-scale y axes (IOPS span 10^3..10^6); every bar carries its value.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = {
    "fio": "#6b6b6b",
    "qsd-file": "#e07b20",
    "vblkd-file": "#1f5fa8",
    "qsd-null-poll": "#e07b20",
    "qsd-null-wait": "#f4b97f",
    "vblkd-null-poll": "#1f5fa8",
    "vblkd-null-wait": "#8db6e3",
    "kernel-null": "#3a9a4a",
}
LABELS = {
    "fio": "bare metal (fio io_uring, direct)",
    "qsd-file": "qemu-storage-daemon (file, --wait)",
    "vblkd-file": "vblkd (file, --wait)",
    "qsd-null-poll": "qsd null --poll",
    "qsd-null-wait": "qsd null --wait",
    "vblkd-null-poll": "vblkd null --poll",
    "vblkd-null-wait": "vblkd null --wait",
    "kernel-null": "kernel io_uring on /dev/zero",
}
PCT_COLORS = {"p50_us": "#4c78a8", "p99_us": "#f58518", "p999_us": "#b23a48"}
PCT_LABELS = {"p50_us": "p50", "p99_us": "p99", "p999_us": "p99.9"}


def human(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.1f}"


class Svg:
    def __init__(self, w, h):
        self.w, self.h, self.parts = w, h, []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", rotate=None, color="#222"):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{color}"{tr}>{escape(str(s))}</text>')

    def rect(self, x, y, w, h, color, title=None):
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{max(h, 0):.1f}" '
                 f'fill="{color}">{t}</rect>')

    def line(self, x1, y1, x2, y2, color="#ccc", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                 f'stroke-width="{width}"{d}/>')

    def render(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(self.parts) + "\n</svg>\n")


def bar_panel(svg, x0, y0, w, h, title, groups, series, unit, legend_labels, colors):
    """groups: list of (label, {series: value}); log y axis."""
    svg.text(x0, y0 - 12, title, size=15, weight="bold")
    vals = [v for _, d in groups for v in d.values() if v and v > 0]
    if not vals:
        svg.text(x0 + w / 2, y0 + h / 2, "no data", anchor="middle")
        return
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals) * 1.6))
    left, bottom = 62, 46
    px, pw, ph = x0 + left, w - left, h - bottom

    def ypos(v):
        return y0 + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph

    # grid and ticks
    e = int(math.log10(lo))
    while 10 ** e <= hi:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                y = ypos(v)
                svg.line(px, y, px + pw, y, "#ddd" if m == 1 else "#f0f0f0")
                if m == 1 or (math.log10(hi) - math.log10(lo)) <= 3:
                    svg.text(px - 6, y + 4, human(v), size=11, anchor="end", color="#555")
        e += 1
    svg.text(x0 + 12, y0 + ph / 2, unit, size=12, anchor="middle", rotate=-90, color="#444")
    svg.line(px, y0, px, y0 + ph, "#888")
    svg.line(px, y0 + ph, px + pw, y0 + ph, "#888")
    # bars
    gw = pw / len(groups)
    bw = min(30.0, gw * 0.8 / len(series))
    for gi, (glabel, d) in enumerate(groups):
        gx = px + gi * gw + (gw - bw * len(series)) / 2
        for si, s in enumerate(series):
            v = d.get(s)
            x = gx + si * bw
            if not v or v <= 0:
                svg.text(x + bw / 2, y0 + ph - 4, "n/a", size=8, anchor="middle", color="#999")
                continue
            y = ypos(max(v, lo))
            svg.rect(x + 1, y, bw - 2, y0 + ph - y, colors[s], f"{glabel} {legend_labels[s]}: {v:,.1f} {unit}")
            svg.text(x + bw / 2 + 3.5, y - 4, human(v), size=10, rotate=-90, color="#333")
        for li, part in enumerate(glabel.split("\n")):
            svg.text(px + gi * gw + gw / 2, y0 + ph + 16 + li * 14, part, size=11, anchor="middle")
        if gi:
            svg.line(px + gi * gw, y0 + ph, px + gi * gw, y0 + ph + 6, "#888")
    # legend (top right, inside the plot)
    lx, ly = px + 8, y0 + 4
    for s in series:
        svg.rect(lx, ly, 12, 12, colors[s])
        svg.text(lx + 17, ly + 10.5, legend_labels[s], size=11)
        lx += 30 + 6.6 * len(legend_labels[s])


def main():
    res = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    pts = [p for p in res["points"] if "iops" in p]
    wls = [w["name"] for w in res["config"]["workloads"]]
    queues = res["config"]["queues"]

    def groups_for(systems):
        gs = []
        for w in wls:
            for q in queues:
                d = {p["system"]: p["iops"] for p in pts
                     if p["workload"] == w and p["queues"] == q and p["system"] in systems}
                if d:
                    gs.append((f"{w}\n{q} queue{'s' if q > 1 else ''}", d))
        return gs

    file_series = [s for s in ("fio", "qsd-file", "vblkd-file") if any(p["system"] == s for p in pts)]
    null_series = [s for s in ("qsd-null-poll", "qsd-null-wait", "vblkd-null-poll", "vblkd-null-wait")
                   if any(p["system"] == s for p in pts)]
    g1, g2 = groups_for(file_series), groups_for(null_series)
    ngroups = max(len(g1), len(g2), 1)
    W = max(1100, 70 + ngroups * 110)
    H = 1360
    svg = Svg(W, H)
    m = res["machine"]
    svg.text(20, 28, "vblkd vs qemu-storage-daemon vs bare-metal fio", size=19, weight="bold")
    svg.text(20, 48, f"{m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, {m['date']}, "
                     f"{res['config']['runtime_s']}s/point, pinned={m['pinned']}, "
                     f"{res['config']['size'] >> 20} MiB backing file on {m['backing_fs']}; "
                     f"client vblk-bench; log scales",
             size=12, color="#555")
    bar_panel(svg, 20, 110, W - 40, 360, "IOPS, file back-end (O_DIRECT, io_uring)", g1, file_series,
              "IOPS", LABELS, COLORS)
    bar_panel(svg, 20, 580, W - 40, 360, "IOPS, null back-end (reads return zeroes, nothing stored)",
              g2, null_series, "IOPS", LABELS, COLORS)
    # latency panel
    lat_sys = [s for s in ("fio", "qsd-file", "vblkd-file", "kernel-null", "qsd-null-poll",
                           "qsd-null-wait", "vblkd-null-poll", "vblkd-null-wait")]
    g3 = []
    for s in lat_sys:
        p = next((p for p in pts if p["workload"] == "4k-randread-qd1" and p["queues"] == 1
                  and p["system"] == s), None)
        if p:
            lab = LABELS[s].replace(" (fio io_uring, direct)", "\n(fio)").replace(
                "qemu-storage-daemon (file, --wait)", "qsd file\n--wait").replace(
                "vblkd (file, --wait)", "vblkd file\n--wait").replace(
                "kernel io_uring on /dev/zero", "io_uring\n/dev/zero").replace(" --", "\n--")
            g3.append((lab, {k: p[k] for k in ("p50_us", "p99_us", "p999_us")}))
    bar_panel(svg, 20, 1050, W - 40, 270 if g3 else 100,
              "Latency, 4k randread QD1, 1 queue (percentiles, microseconds)",
              g3, ["p50_us", "p99_us", "p999_us"], "us", PCT_LABELS, PCT_COLORS)
    with open(out, "w") as f:
        f.write(svg.render())


if __name__ == "__main__":
    main()
