#!/usr/bin/env python3
"""Soak test, outside CI: churn connections at about
1,000 per second (connect, greeting, one message, close) while a few
thousand are held open, and sample the server's RSS and open descriptors
every 10 seconds.

    scripts/soak.py [--minutes 10 | --secs 20] [--hold 3000] [--rate 1000] [--interval 10]
                    [--max-rss-growth-kb 256] [--doc]

The server runs with --tag and writes its transcript to a file on tmpfs
(/dev/shm), which the script reads at the end: every connection must appear
with its `Connection from` line and its `Closed connection` line, in that
order, and each churned connection its one message (`churn N says bye`) in
between; the held ones (opened first) send nothing. The churned connections
whose message was printed must be as many as tcp_load churned. The run
fails (exit 1) if any connection's message is missing, if tcp_load reports
errors or says the run was not clean, if the descriptors do not come back
to their baseline, or if the server's RSS grows by more than
--max-rss-growth-kb over the second half of the load (the slab and buffers
keep their high-water mark by design; what matters is that it stops
growing).

Loopback only; bounded (the load stops after its time, the script a few
seconds later); only the processes it starts are signalled, by PID. With
--doc, the result goes into docs/PERFORMANCE.md between <!-- soak:start -->
and <!-- soak:end -->, stamped with the commit measured and the command, and
its samples into docs/measurements/soak.json. Standard library only.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
TMPFS = "/dev/shm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
from blocks import head_commit  # noqa: E402


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    rss_kb = int(status["VmRSS"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = int(status["Threads"])
    return rss_kb, fds, threads


FRAME = re.compile(rb"^(\S+) <(\d+):(.*)>$")


def check_transcript(path, held):
    """Walks a --tag transcript: each connection's lines in order; the first
    `held` connections print nothing, every later one its one message.
    Returns (counts, problems)."""
    open_conns = {}
    counts = {"connections": 0, "churned": 0, "held": 0}
    problems = []

    def problem(text):
        problems.append(text)

    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n")
            if line.startswith(b"Listening to:  "):
                continue
            if line.startswith(b"Connection from:  "):
                addr = line[len(b"Connection from:  "):]
                if addr in open_conns:
                    problem(f"{addr.decode()} connected twice without closing")
                open_conns[addr] = (counts["connections"] < held, b"")
                counts["connections"] += 1
            elif line.startswith(b"Closed connection:  "):
                addr = line[len(b"Closed connection:  "):]
                is_held, text = open_conns.pop(addr, (None, None))
                if text is None:
                    problem(f"{addr.decode()} closed without connecting")
                elif is_held and text == b"":
                    counts["held"] += 1
                elif not is_held and re.fullmatch(rb"churn \d+ says bye", text):
                    counts["churned"] += 1
                else:
                    kind = "held" if is_held else "churned"
                    problem(f"{kind} {addr.decode()} closed after printing {text!r}")
            else:
                m = FRAME.match(line)
                if not m:
                    problem(f"not a transcript line: {line[:80]!r}")
                elif m.group(1) not in open_conns:
                    problem(f"frame from {m.group(1).decode()}, which is not connected")
                else:
                    is_held, text = open_conns[m.group(1)]
                    open_conns[m.group(1)] = (is_held, text + m.group(3))
    for addr in open_conns:
        problem(f"{addr.decode()} never closed")
    if len(problems) > 10:
        problems = problems[:10] + [f"... and {len(problems) - 10} more"]
    return counts, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--secs", type=float, help="run this many seconds instead of --minutes (a smoke run)")
    ap.add_argument("--hold", type=int, default=3000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--max-rss-growth-kb", type=int, default=256,
                    help="fail if RSS grows more than this over the second half of the load")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--doc", action="store_true",
                    help="put the result in docs/PERFORMANCE.md between <!-- soak:start --> and <!-- soak:end -->, "
                         "and the samples in docs/measurements/soak.json")
    args = ap.parse_args()
    if args.doc:
        blocks.check("soak")
    command = " ".join(["scripts/soak.py", *sys.argv[1:]])
    commit = head_commit()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)

    secs = int(args.secs if args.secs is not None else args.minutes * 60)
    port = free_port()
    out_path = os.path.join(TMPFS, f"soak_{os.getpid()}.transcript")
    err_path = os.path.join(TMPFS, f"soak_{os.getpid()}.err")
    server = subprocess.Popen(
        [os.path.join(REL, "simple_tcp_server"), "127.0.0.1", str(port), "--tag", "--stats", "60s"],
        stdout=open(out_path, "wb"), stderr=open(err_path, "wb"),
    )
    try:
        deadline = time.time() + 10
        while b"Listening to:" not in open(out_path, "rb").read(256):
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start; see {err_path}")
            time.sleep(0.02)
        base = sample(server.pid)
        started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        print(f"{started_at}: server pid {server.pid}, port {port}, commit {commit}; "
              f"hold {args.hold}, churn {args.rate}/s for {secs} s")
        print(f"{'t (s)':>6} {'RSS kB':>8} {'fds':>6} {'threads':>7}  phase")
        print(f"{0:>6} {base[0]:>8} {base[1]:>6} {base[2]:>7}  baseline")
        load = subprocess.Popen(
            [os.path.join(REL, "tcp_load"), "--port", str(port), "--quiet", "--json",
             "--server-pid", str(server.pid), "--timeout", f"{secs + 120}s",
             "churn", "--hold", str(args.hold), "--rate", str(args.rate), "--secs", f"{secs}s"],
            stdout=subprocess.PIPE, text=True,
        )
        started = time.time()
        series = []
        while load.poll() is None:
            time.sleep(args.interval)
            if load.poll() is not None:
                break
            rss, fds, threads = sample(server.pid)
            t = time.time() - started
            series.append((t, rss, fds, threads))
            print(f"{t:>6.0f} {rss:>8} {fds:>6} {threads:>7}  load", flush=True)
            if t > secs + 180:
                load.send_signal(signal.SIGTERM)
        report = json.loads(load.communicate(timeout=60)[0])
        # tcp_load exits non-zero when the run was not clean (its report says why).
        clean = load.returncode == 0
        # The held connections close when tcp_load exits: wait for their
        # lines (bounded), then sample.
        expected = args.hold + report["churned"]
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(out_path, "rb") as f:
                if f.read().count(b"\nClosed connection:  ") >= expected:
                    break
            time.sleep(0.2)
        time.sleep(1)
        after = sample(server.pid)
        t = time.time() - started
        print(f"{t:>6.0f} {after[0]:>8} {after[1]:>6} {after[2]:>7}  after the load")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    counts, problems = check_transcript(out_path, args.hold)
    os.unlink(out_path)
    with open(err_path) as f:
        server_log = f.read()
    os.unlink(err_path)
    errors = sum(report["errors"].values())
    peak = max((s[1] for s in series), default=after[0])
    fds_back = after[1] == base[1]
    half = len(series) // 2
    growth = (series[-1][1] - series[half][1]) if len(series) > 2 else None
    churned_printed = counts["churned"] == report["churned"]
    print(f"\ntcp_load: {report['churned']} churned at {report['rate_achieved']:.0f}/s, {errors} errors; "
          f"server CPU {report['server_cpu_secs']} s")
    print(f"transcript: {counts['connections']} connections: {counts['churned']} churned ones with their "
          f"message, {counts['held']} held ones; {len(problems)} problems")
    for p in problems:
        print(f"  {p}")
    print(f"RSS: baseline {base[0]} kB, peak {peak} kB, after {after[0]} kB; "
          f"growth over the second half of the load: {growth if growth is not None else '?'} kB "
          f"(limit {args.max_rss_growth_kb})")
    print(f"descriptors: baseline {base[1]}, after {after[1]}")
    failures = []
    if not clean:
        failures.append(f"tcp_load: the run was not clean: {report.get('reason', 'see its report')}")
    if errors:
        failures.append(f"{errors} tcp_load errors {report['errors']}")
    if problems:
        failures.append("transcript problems")
    if not churned_printed:
        failures.append(f"{counts['churned']} churned messages printed, {report['churned']} churned")
    if counts["held"] != args.hold:
        failures.append(f"{counts['held']} of {args.hold} held connections connected and closed cleanly")
    if not fds_back:
        failures.append("descriptors not back to baseline")
    if growth is None:
        failures.append("too few samples to judge memory growth (use a shorter --interval)")
    elif growth > args.max_rss_growth_kb:
        failures.append(f"RSS grew {growth} kB over the second half of the load")
    if failures:
        print("server stderr (tail):\n" + server_log[-2000:])
    print("verdict: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))

    if args.doc:
        with open(os.path.join(ROOT, "docs", "measurements", "soak.json"), "w") as f:
            json.dump({"commit": commit, "date": started_at, "command": command, "report": report,
                       "baseline": base, "after": after, "samples": series, "rss_growth_kb": growth,
                       "failures": failures}, f, indent=1)
        rows = [("0 (before)", base)] + [(f"{t:.0f}", s) for t, *s in series] + [(f"{t:.0f} (after)", after)]
        if len(rows) > 8:
            # The first samples, a few across the run, the last ones.
            keep = sorted({0, 1, 2, len(rows) // 3, 2 * len(rows) // 3, len(rows) - 2, len(rows) - 1})
            rows = [rows[i] for i in keep]
        lines = [
            f"Soak at commit `{commit}`, {started_at}, with `{command}`: {args.hold:,} connections held while "
            f"{report['churned']:,} came and went ({report['rate_achieved']:.0f} a second; each greeted, its "
            f"message printed, closed; checked in the transcript line by line), {errors} errors; server CPU "
            f"{float(report['server_cpu_secs'] or 0):.0f} s of {secs} s. "
            + ("Passed" if not failures else "FAILED: " + "; ".join(failures)) + ".",
            "",
            "| t (s) | RSS | descriptors | threads |",
            "|---:|---:|---:|---:|",
        ]
        lines += [f"| {t} | {s[0]:,} kB | {s[1]:,} | {s[2]} |" for t, s in rows]
        most_fds = max((s[2] for s in series), default=after[1])
        lines += ["", f"RSS grew {growth if growth is not None else '?'} kB over the second half of the load "
                  f"(limit {args.max_rss_growth_kb} kB); descriptors went from {most_fds:,} during the load "
                  f"back to {after[1]} (baseline {base[1]})."]
        lines += ["", "Data: [`docs/measurements/soak.json`](measurements/soak.json)."]
        blocks.write("soak", "\n".join(lines))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
