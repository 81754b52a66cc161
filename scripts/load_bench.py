#!/usr/bin/env python3
"""Load measurements of simple_tcp_server against the reference loops, in one
session, server and load generator in separate processes (issue 4).

    scripts/load_bench.py [--runs 3] [--only flood,chat,hold] [--perf]

- hold:  tcp_load hold --conns 19000 against the server: greetings, errors,
         server RSS per connection, threads.
- flood: tcp_load flood at 1, 100 and 1,000 clients (1 GB in all per run),
         transcript written to a file on tmpfs (/dev/shm), against the
         `write-limit` reference loop (64 KiB reads, n + 6 bytes of filler per
         25-byte frame written through a 64 KiB buffer). Median MB/s, ratio.
- chat:  tcp_load chat --conns 10000 --rate 50000 against the server and the
         `bare` reference loop (reads to WouldBlock, prints nothing). Median
         server CPU per message, ratio; with --perf, system calls per message
         from `perf stat -e syscalls:sys_enter_*`.

Runs of the designs are interleaved so that the machine's noise falls on all
of them alike. Every run is bounded in time and stops by itself; only
processes this script started are signalled, by PID.

Standard library only. Prints a markdown table and writes the raw numbers as
JSON (--json-out, default target/load_bench.json).
"""

import argparse
import builtins
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(REL, "simple_tcp_server")
REFERENCE = os.path.join(REL, "examples", "reference_server")
LOAD = os.path.join(REL, "tcp_load")
TMPFS = "/dev/shm"


def build():
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples"], cwd=ROOT, check=True)


class Server:
    """A server process with stdout to a file on tmpfs; stopped by PID."""

    def __init__(self, kind, extra=()):
        self.out_path = os.path.join(TMPFS, f"load_bench_{os.getpid()}_{kind}.out")
        self.err_path = self.out_path + ".err"
        if kind == "server":
            cmd = [SERVER, "127.0.0.1", "0", *extra]
        else:
            cmd = [REFERENCE, kind, "127.0.0.1", "0"]
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=self.err, env=env)
        self.port = None
        deadline = time.time() + 10
        while time.time() < deadline and self.port is None:
            for path in (self.out_path, self.err_path):
                with open(path, "rb") as f:
                    m = re.search(rb"Listening to:  [^\n]*:(\d+)\n", f.read(4096))
                    if m:
                        self.port = int(m.group(1))
            time.sleep(0.02)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"{kind} did not start")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()
        for path in (self.out_path, self.err_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def load(port, pid, mode_args, timeout="120s"):
    cmd = [LOAD, "--port", str(port), "--json", "--quiet", "--timeout", timeout]
    if pid:
        cmd += ["--server-pid", str(pid)]
    out = subprocess.run(cmd + mode_args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"tcp_load failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def perf_syscalls(pid, seconds):
    """System calls by name of process `pid` over `seconds`, from perf."""
    events = ",".join(
        f"syscalls:sys_enter_{n}"
        for n in ("recvfrom", "read", "write", "sendto", "epoll_wait", "clock_nanosleep", "epoll_ctl")
    )
    out = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", events + ",context-switches", "-p", str(pid), "--", "sleep", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    counts = {}
    for line in out.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            counts[parts[2].replace("syscalls:sys_enter_", "")] = int(parts[0])
    return counts


def median(values):
    return statistics.median(values) if values else float("nan")


def run_flood(runs, results, clients):
    # 1 GB in all per run, whatever the client count.
    cases = [(c, f"{1_000_000_000 // c}B") for c in clients]
    table = []
    for conns, per_conn in cases:
        rates = {"server": [], "write-limit": []}
        for _ in range(runs):
            for kind in ("server", "write-limit"):
                s = Server(kind)
                try:
                    r = load(s.port, None, ["flood", "--conns", str(conns), "--bytes", per_conn])
                finally:
                    s.stop()
                if r["errors"]:
                    raise RuntimeError(f"flood errors against {kind}: {r['errors']}")
                rates[kind].append(r["mb_per_sec"])
        m_s, m_w = median(rates["server"]), median(rates["write-limit"])
        results["flood"].append({"conns": conns, "server": rates["server"], "write_limit": rates["write-limit"],
                                 "median_server": m_s, "median_write_limit": m_w, "ratio": m_s / m_w})
        table.append(f"| {conns} | {m_s:.0f} | {m_w:.0f} | {m_s / m_w:.2f}x |")
        print(f"flood {conns}: server {rates['server']} write-limit {rates['write-limit']}", file=sys.stderr)
    print("\n### Flood (MB/s of client payload, transcript to tmpfs; median of %d)\n" % runs)
    print("| clients | simple_tcp_server | write-limit loop | ratio |")
    print("|---:|---:|---:|---:|")
    print("\n".join(table))


def run_chat(runs, results, conns, rate, secs, with_perf):
    per = {"server": [], "bare": []}
    sys_counts = {}
    for _ in range(runs):
        for kind in ("server", "bare"):
            s = Server(kind)
            try:
                if with_perf and kind not in sys_counts:
                    # Sample system calls in the middle of the paced phase.
                    proc = subprocess.Popen(
                        [LOAD, "--port", str(s.port), "--json", "--quiet", "--server-pid", str(s.pid),
                         "chat", "--conns", str(conns), "--rate", str(rate), "--secs", f"{secs}s"],
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(min(3.0, secs / 3) + 1.0)
                    window = max(1, secs // 3)
                    counts = perf_syscalls(s.pid, window)
                    sys_counts[kind] = {k: v / (rate * window) for k, v in counts.items()}
                    r = json.loads(proc.communicate(timeout=secs + 120)[0])
                else:
                    r = load(s.port, s.pid, ["chat", "--conns", str(conns), "--rate", str(rate), "--secs", f"{secs}s"])
            finally:
                s.stop()
            if r["errors"] or not r["kept_up"]:
                print(f"chat against {kind}: errors {r['errors']} kept_up {r['kept_up']}", file=sys.stderr)
            per[kind].append(r["cpu_us_per_msg"])
    m_s, m_b = median(per["server"]), median(per["bare"])
    results["chat"] = {"conns": conns, "rate": rate, "secs": secs, "server": per["server"], "bare": per["bare"],
                       "median_server": m_s, "median_bare": m_b, "ratio": m_s / m_b, "syscalls_per_msg": sys_counts}
    print(f"\n### Chat ({conns} connections, {rate} messages/s, {secs} s; server CPU per message, median of {runs})\n")
    print("| design | CPU per message | ratio |")
    print("|---|---:|---:|")
    print(f"| simple_tcp_server (framing, escaping, printing to tmpfs) | {m_s:.2f} us | {m_s / m_b:.2f}x |")
    print(f"| bare loop (reads to WouldBlock, prints nothing) | {m_b:.2f} us | 1.00x |")
    if sys_counts:
        print("\nSystem calls (and context switches) per message, from `perf stat` over a third of the run:\n")
        names = sorted({n for c in sys_counts.values() for n in c})
        print("| design | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for kind, counts in sys_counts.items():
            print(f"| {kind} | " + " | ".join(f"{counts.get(n, 0):.3f}" for n in names) + " |")


def run_hold(results, conns):
    rows = []
    for kind in ("server", "bare"):
        s = Server(kind)
        try:
            r = load(s.port, s.pid, ["hold", "--conns", str(conns), "--hold", "1s"], timeout="300s")
        finally:
            s.stop()
        results["hold"][kind] = r
        rows.append(f"| {'simple_tcp_server' if kind == 'server' else 'bare mio loop'} | {r['established']} | "
                    f"{r['greetings']} | {sum(r['errors'].values())} | {r['connect_secs']:.2f} s | "
                    f"{r['rss_per_conn']:.1f} B | {r['server_threads']} |")
    print(f"\n### Hold ({conns} connections)\n")
    print("| design | established | greeted | errors | connect time | RSS per connection | threads |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="hold,flood,chat")
    ap.add_argument("--hold-conns", type=int, default=19000)
    ap.add_argument("--flood-clients", default="1,100,1000", help="client counts for flood, comma-separated")
    ap.add_argument("--chat-conns", type=int, default=10000)
    ap.add_argument("--chat-rate", type=int, default=50000)
    ap.add_argument("--chat-secs", type=int, default=10)
    ap.add_argument("--perf", action="store_true", help="count system calls per message with perf")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json-out", default=os.path.join(ROOT, "target", "load_bench.json"))
    ap.add_argument("--readme", action="store_true",
                    help="also put the tables in README.md between <!-- load:start --> and <!-- load:end -->")
    args = ap.parse_args()
    if not args.no_build:
        build()
    # Everything printed to stdout is also kept for the README.
    captured = io.StringIO()
    real_print = builtins.print

    def tee(*a, **k):
        real_print(*a, **k)
        if k.get("file") in (None, sys.stdout):
            real_print(*a, **{**k, "file": captured})

    builtins.print = tee
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
        "runs": args.runs, "flood": [], "hold": {}, "chat": None,
    }
    print(f"Measured {results['date']} on {results['machine']}, with `scripts/load_bench.py --runs {args.runs}`.")
    only = set(args.only.split(","))
    if "hold" in only:
        run_hold(results, args.hold_conns)
    if "flood" in only:
        run_flood(args.runs, results, [int(c) for c in args.flood_clients.split(",")])
    if "chat" in only:
        run_chat(args.runs, results, args.chat_conns, args.chat_rate, args.chat_secs, args.perf)
    os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(results, f, indent=1)
    builtins.print = real_print
    if args.readme:
        readme = os.path.join(ROOT, "README.md")
        with open(readme) as f:
            text = f.read()
        start, end = "<!-- load:start -->", "<!-- load:end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        with open(readme, "w") as f:
            f.write(f"{head}{start}\n{captured.getvalue().strip()}\n{end}{tail}")


if __name__ == "__main__":
    main()
