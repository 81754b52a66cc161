#!/usr/bin/env python3
"""Turns the last criterion results into the benchmark block of
docs/PERFORMANCE.md, its data (docs/measurements/bench.json) and the chart
docs/throughput.svg (throughput against client count, one line per design).

    cargo bench                      # writes target/criterion/
    scripts/bench_chart.py           # writes docs/throughput.svg, the block and its data

Reads target/criterion/{ingest,accept,frame}/**/new/{estimates,benchmark}.json
(criterion's median estimate and the throughput it was told), so the numbers
are exactly criterion's, and the `measured.json` the benches write beside
each id (benches/stamp/mod.rs: the commit measured, `-dirty` if the tree
differed, and the command), so the table names the commit it measured. The
table sits between the markers <!-- bench:start --> and <!-- bench:end -->.
Standard library only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITERION = os.path.join(ROOT, "target", "criterion")

# Every design a bench may measure (its id in benches/baselines/mod.rs), its
# label, its colour in the chart, and the server threads it runs ({cores}:
# this machine's core count, tokio's default worker count). Designs
# without results are left out, so a design can be listed before it exists.
DESIGNS = [
    ("reactor", "reactor (this crate)", "#d62728", "1"),
    ("reactor_2_threads", "reactor, 2 threads (this crate)", "#8c564b", "2"),
    ("thread_per_conn", "thread per connection", "#1f77b4", "1 per client + acceptor"),
    ("tokio_current_thread", "tokio, current_thread", "#2ca02c", "1"),
    ("tokio_multi_thread", "tokio, multi_thread", "#9467bd", "{cores} workers + accept loop"),
    ("tokio_multi_thread_writer", "tokio, multi_thread + writer thread", "#17becf",
     "{cores} workers + accept loop + writer"),
    ("tokio_multi_thread_direct", "tokio, multi_thread, direct writes, worker buffers", "#bcbd22",
     "{cores} workers + accept loop"),
    ("reactor_25B_reads", "reactor, 25-byte reads", "#ff7f0e", "1"),
]
CLIENTS = [1, 64, 1000]
ACCEPT_CONNS = 512
FRAME_CASES = ["printable", "printable_tagged", "printable_512", "utf8_text", "hostile", "hostile_raw"]


def git(*args):
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
from blocks import head_commit  # noqa: E402


def stamp(group, function, param=None):
    """The bench's measured.json for one id: commit, command, date; or None."""
    parts = [CRITERION, group, function] + ([str(param)] if param is not None else []) + ["measured.json"]
    try:
        with open(os.path.join(*parts)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load(group, function, param=None):
    """(median ns, throughput dict) of one benchmark, or None."""
    parts = [CRITERION, group, function] + ([str(param)] if param is not None else []) + ["new"]
    base = os.path.join(*parts)
    try:
        with open(os.path.join(base, "estimates.json")) as f:
            median = json.load(f)["median"]["point_estimate"]
        with open(os.path.join(base, "benchmark.json")) as f:
            throughput = json.load(f).get("throughput") or {}
    except FileNotFoundError:
        return None
    return median, throughput


def per_second(result):
    median_ns, throughput = result
    amount = throughput.get("Bytes") or throughput.get("BytesDecimal") or throughput.get("Elements")
    return amount / (median_ns / 1e9)


def svg_chart(series, path, subtitle):
    """A line chart: x = client count (1, 64, 1000), y = GiB/s."""
    w, h, left, right, top, bottom = 760, 430, 70, 250, 50, 60
    pw, ph = w - left - right, h - top - bottom
    ymax = max(v for *_, pts in series for v in pts.values()) * 1.1
    xs = {c: left + i * pw / (len(CLIENTS) - 1) for i, c in enumerate(CLIENTS)}

    def y(v):
        return top + ph - v / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="15">Ingest throughput (GiB/s, higher is better)</text>',
           f'<text x="{left}" y="36" font-size="11" fill="#555">{subtitle}</text>']
    steps = 5
    for i in range(steps + 1):
        v = ymax * i / steps
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for c, x in xs.items():
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 15}" text-anchor="middle">clients</text>')
    for i, (_, label, color, _, pts) in enumerate(series):
        coords = [(xs[c], y(pts[c])) for c in CLIENTS if c in pts]
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f},{py:.1f}" for j, (px, py) in enumerate(coords))
        out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for px, py in coords:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"/>')
        ly = top + 10 + i * 20
        out.append(f'<line x1="{left + pw + 20}" y1="{ly}" x2="{left + pw + 44}" y2="{ly}" stroke="{color}" stroke-width="2.5"/>')
        out.append(f'<text x="{left + pw + 50}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def describe_stamps(stamps):
    """One sentence naming the commits and commands behind the results."""
    by_commit = {}
    missing = []
    for (group, name), st in stamps.items():
        if st is None:
            missing.append(f"{group}/{name}")
        else:
            key = (st.get("commit", "unknown"), st.get("command", "cargo bench"))
            by_commit.setdefault(key, set()).add(group)
    parts = [f"commit `{commit}` with `{command}` ({', '.join(sorted(groups))})"
             for (commit, command), groups in sorted(by_commit.items())]
    text = "Measured at " + "; ".join(parts) if parts else "Measured at an unknown commit"
    if missing:
        text += (f"; {len(missing)} result(s) carry no stamp (measured before the benches stamped them), "
                 f"charted at `{head_commit()}`")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-doc", action="store_true", help="print the table, leave docs/ alone")
    args = ap.parse_args()

    gib = 1024 ** 3
    series = []
    stamps = {}
    for key, label, color, threads in DESIGNS:
        pts = {}
        for c in CLIENTS:
            r = load("ingest", key, c)
            if r:
                pts[c] = per_second(r) / gib
                stamps[("ingest", f"{key}/{c}")] = stamp("ingest", key, c)
        if pts:
            series.append((key, label, color, threads, pts))
    if not series:
        raise SystemExit("no criterion results under target/criterion/ingest: run `cargo bench` first")
    reactor = dict((k, p) for k, *_, p in series).get("reactor", {})

    accept = []
    for key, label, *_ in DESIGNS:
        r = load("accept", key, ACCEPT_CONNS)
        if r:
            accept.append((label, per_second(r)))
            stamps[("accept", f"{key}/{ACCEPT_CONNS}")] = stamp("accept", key, ACCEPT_CONNS)
    frames = []
    for n in FRAME_CASES:
        r = load("frame", n)
        if r:
            j = load("frame", "json_" + n)
            frames.append((n, per_second(r) / 1e9, per_second(j) / 1e9 if j else None))
            stamps[("frame", n)] = stamp("frame", n)
            if j:
                stamps[("frame", "json_" + n)] = stamp("frame", "json_" + n)

    cores = os.cpu_count()
    dates = sorted({st["date"] for st in stamps.values() if st and st.get("date")})
    when = f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else (dates[0] if dates else time.strftime("%Y-%m-%d"))
    command = "scripts/bench_chart.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "scripts/bench_chart.py"
    lines = [f"{describe_stamps(stamps)}, {when}, on {platform.machine()}, {cores} cores "
             f"(Linux {platform.release()}): criterion medians; table and chart by `{command.strip()}`.", ""]
    lines += ["**Ingest** (GiB/s of client payload; ratio = reactor / design):", "",
              "| design | server threads | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in CLIENTS) + " |",
              "|---|---|" + "---:|" * len(CLIENTS)]
    for key, label, _, threads, pts in series:
        cells = []
        for c in CLIENTS:
            if c not in pts:
                cells.append("–")
                continue
            value = f"{pts[c]:.2f}" if pts[c] >= 0.1 else f"{pts[c] * 1024:.0f} MiB/s"
            if key == "reactor":
                cells.append(value)
            else:
                cells.append(f"{value} ({reactor.get(c, float('nan')) / pts[c]:.2f}x)")
        lines.append(f"| {label} | {threads.format(cores=cores)} | " + " | ".join(cells) + " |")
    lines += ["", f"Every design shares the machine's {cores} cores with the clients, which run in the same "
              "process (the library's load generator, one thread): no design has a core to itself, and a "
              "design's threads beyond the first take CPU time from the clients as well as give it "
              "to the server."]

    if accept:
        base = accept[0][1]
        lines += ["", "**Accept** (connect, greeting, one message, close; connections per second; "
                  "8 client threads in the same process):", "",
                  "| design | connections/s | ratio |", "|---|---:|---:|"]
        lines += [f"| {label} | {v:,.0f} | {base / v:.2f}x |" for label, v in accept]

    if frames:
        lines += ["", "**Framing + escaping alone** (one core, one 256 KiB block at a time into a reused "
                  "buffer, GB/s of input; JSON lines as `--format json` writes them, the timestamp built "
                  "again for every block; ratio = text / JSON):", "",
                  "| input | text | JSON lines | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {v:.2f} | " + (f"{j:.2f} | {v / j:.2f}x |" if j else "- | - |")
                  for n, v, j in frames]

    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    commits = sorted({st["commit"] for st in stamps.values() if st and st.get("commit")}) or [head_commit()]
    subtitle = (f"criterion medians at {', '.join(commits)}, {when}, {platform.machine()}, "
                f"{cores} cores shared with the clients, Linux {platform.release()}")
    svg_chart(series, os.path.join(ROOT, "docs", "throughput.svg"), subtitle)
    print(table)
    if not args.no_doc:
        data = {
            "stamps": {f"{g}/{i}": st for (g, i), st in stamps.items()},
            "ingest_gib_per_sec": {key: {str(c): v for c, v in pts.items()} for key, _, _, _, pts in series},
            "accept_per_sec": {label: v for label, v in accept},
            "frame_gb_per_sec": {n: {"text": v, "json": j} for n, v, j in frames},
        }
        with open(os.path.join(ROOT, "docs", "measurements", "bench.json"), "w") as f:
            json.dump(data, f, indent=1)
        blocks.write("bench", table + "\n\nData: [`docs/measurements/bench.json`](measurements/bench.json); "
                     "chart: [`docs/throughput.svg`](throughput.svg).")


if __name__ == "__main__":
    main()
