#!/usr/bin/env python3
"""Load measurements of simple_tcp_server against the reference loops, in one
session, server and load generator in separate processes (issue 4).

    scripts/load_bench.py [--runs 3] [--only flood,chat,hold] [--perf]

- hold:  tcp_load hold --conns 19000 against the server: greetings, errors,
         server RSS per connection, threads.
- flood: tcp_load flood at 1, 100 and 1,000 clients (1 GB in all per run),
         transcript written to a file on tmpfs (/dev/shm), against the
         `write-limit` reference loop (the server's reads, n + 6 bytes of
         filler per 25-byte frame written at 64 KiB). Median MB/s, ratio, and
         server CPU seconds per GB of payload; with --perf, the top symbols
         of the server's CPU (`perf record`) in one run per client count.
- chat:  tcp_load chat --conns 10000 --rate 50000, server CPU per message,
         two comparisons that each hold one thing equal: like for like, the
         server with `--coalesce 0` against the `bare` loop (the server's
         reads, prints nothing); coalesced, the server as it runs by default
         against `bare-coalesce` (the same loop with the server's coalescing
         pause). Medians, ratios; with --perf, system calls per message from
         `perf stat -e syscalls:sys_enter_*`.

The reference loops (examples/reference_server.rs) do I/O as the server does:
its read size, its short-read rule, its read budget, its write threshold.

Runs of the designs are interleaved so that the machine's noise falls on all
of them alike. Every run is bounded in time and stops by itself; only
processes this script started are signalled, by PID.

Standard library only. Prints markdown tables, stamped with the commit
measured and the command, and writes the raw numbers as JSON (--json-out,
default target/load_bench.json).
"""

import argparse
import contextlib
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


# Files the measuring scripts write themselves: a tree that differs only in
# them is the commit measured, not a dirty one.
GENERATED = [":(exclude)README.md", ":(exclude)docs/throughput.svg"]


def head_commit():
    """The commit measured: short hash, `-dirty` if the tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("-dirty" if git("status", "--porcelain", "--", ".", *GENERATED) else "")


def build():
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples"], cwd=ROOT, check=True)


# The transcript file on tmpfs, preallocated once and overwritten by every
# run. Growing a fresh file makes the kernel allocate and fill a page per
# 4 KiB written, and on this VM that cost swings fourfold from run to run
# (perf: copy_folio_from_iter_atomic between 15% and 42% of the server's
# CPU for the same bytes), which drowns the comparison; overwriting pages
# that exist leaves the servers' own work. --growing-file measures the
# other way.
SINK = os.path.join(TMPFS, f"load_bench_{os.getpid()}.sink")
SINK_BYTES = 1_500_000_000
GROWING = False


def prepare_sink():
    with open(SINK, "wb") as f:
        block = b"\0" * (1 << 20)
        for _ in range(SINK_BYTES // len(block) + 1):
            f.write(block)


class Server:
    """A server process with stdout to a file on tmpfs; stopped by PID."""

    def __init__(self, kind, extra=()):
        self.out_path = os.path.join(TMPFS, f"load_bench_{os.getpid()}_{kind}.out")
        self.err_path = self.out_path + ".err"
        if kind == "server":
            cmd = [SERVER, "127.0.0.1", "0", *extra]
        else:
            cmd = [REFERENCE, kind, "127.0.0.1", "0"]
        if GROWING:
            self.out = open(self.out_path, "wb")
        else:
            # Written from the start, without truncation: the pages exist.
            # The previous run's first line is wiped so that its port is not
            # taken for this one's.
            self.out = open(SINK, "r+b")
            self.out.write(b"\0" * 4096)
            self.out.flush()
            self.out.seek(0)
            self.out_path = SINK
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
            if path == SINK:
                continue
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


def quartiles(values):
    """(25th, 75th) percentiles, for the spread of noisy runs."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def perf_top(pid, path, limit=10):
    """Starts `perf record` on `pid`; returns a function that stops it and
    gives the top `limit` symbols as (share %, symbol, where) rows."""
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish():
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        rep = subprocess.run(["perf", "report", "-i", path, "--stdio", "--sort", "dso,sym", "--percent-limit", "1"],
                             capture_output=True, text=True, timeout=300)
        os.unlink(path)
        rows = []
        for line in rep.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)", line)
            if m:
                where = "kernel" if m.group(3) == "k" else m.group(2)
                rows.append((float(m.group(1)), m.group(4).strip(), where))
        return rows[:limit]

    return finish


def run_flood(runs, results, clients, with_perf):
    # 1 GB in all per run, whatever the client count.
    for conns in clients:
        per_conn = f"{1_000_000_000 // conns}B"
        rates = {"server": [], "write-limit": []}
        cpu_per_gb = {"server": [], "write-limit": []}
        top = None
        for run in range(runs):
            for kind in ("server", "write-limit"):
                s = Server(kind)
                try:
                    profile = None
                    if with_perf and run == 0 and kind == "server":
                        profile = perf_top(s.pid, os.path.join(TMPFS, f"load_bench_{os.getpid()}.perf"))
                    r = load(s.port, s.pid, ["flood", "--conns", str(conns), "--bytes", per_conn])
                    if profile:
                        top = profile()
                finally:
                    s.stop()
                if r["errors"]:
                    raise RuntimeError(f"flood errors against {kind}: {r['errors']}")
                rates[kind].append(r["mb_per_sec"])
                cpu_per_gb[kind].append(r["server_cpu_secs"] / (r["bytes_sent"] / 1e9))
        results["flood"].append({"conns": conns, "server": rates["server"], "write_limit": rates["write-limit"],
                                 "server_cpu_s_per_gb": cpu_per_gb["server"],
                                 "write_limit_cpu_s_per_gb": cpu_per_gb["write-limit"], "perf_top": top})
        print(f"flood {conns}: server {rates['server']} write-limit {rates['write-limit']}", file=sys.stderr)


# The chat designs: (name, binary kind, extra server arguments), in the
# pairs the table compares. Like for like: neither pauses between polls.
# Coalesced: both pause as the server does by default.
CHAT_DESIGNS = [
    ("server --coalesce 0", "server", ["--coalesce", "0"]),
    ("bare", "bare", []),
    ("server", "server", []),
    ("bare-coalesce", "bare-coalesce", []),
]
CHAT_PAIRS = [
    ("like for like, no pause", "server --coalesce 0", "bare"),
    ("coalesced (the server's default)", "server", "bare-coalesce"),
]


def run_chat(runs, results, conns, rate, secs, with_perf):
    per = {name: [] for name, _, _ in CHAT_DESIGNS}
    sys_counts = {}
    chat_args = ["chat", "--conns", str(conns), "--rate", str(rate), "--secs", f"{secs}s"]
    for _ in range(runs):
        for name, kind, extra in CHAT_DESIGNS:
            s = Server(kind, extra)
            try:
                if with_perf and name not in sys_counts:
                    # Sample system calls in the middle of the paced phase.
                    proc = subprocess.Popen(
                        [LOAD, "--port", str(s.port), "--json", "--quiet", "--server-pid", str(s.pid), *chat_args],
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(min(3.0, secs / 3) + 1.0)
                    window = max(1, secs // 3)
                    counts = perf_syscalls(s.pid, window)
                    sys_counts[name] = {k: v / (rate * window) for k, v in counts.items()}
                    r = json.loads(proc.communicate(timeout=secs + 120)[0])
                else:
                    r = load(s.port, s.pid, chat_args)
            finally:
                s.stop()
            if r["errors"] or not r["kept_up"]:
                print(f"chat against {name}: errors {r['errors']} kept_up {r['kept_up']}", file=sys.stderr)
            per[name].append(r["cpu_us_per_msg"])
    results["chat"] = {"conns": conns, "rate": rate, "secs": secs, "designs": per,
                       "syscalls_per_msg": sys_counts}


def run_hold(results, conns):
    for kind in ("server", "bare"):
        s = Server(kind)
        try:
            results["hold"][kind] = load(s.port, s.pid, ["hold", "--conns", str(conns), "--hold", "1s"], timeout="300s")
        finally:
            s.stop()
    results["hold_conns"] = conns


def render(results):
    """Prints the tables for `results` (fresh, or read back with --render-json)."""
    command = results.get("command") or f"scripts/load_bench.py --runs {results['runs']}"
    print(f"Measured at commit `{results.get('commit', 'unknown')}`, {results['date']}, on {results['machine']}, "
          f"with `{command}`.")
    if results.get("hold"):
        conns = results.get("hold_conns") or next(iter(results["hold"].values()))["conns"]
        print(f"\n### Hold ({conns} connections)\n")
        print("| design | established | greeted | errors | connect time | RSS per connection | threads |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind, r in results["hold"].items():
            print(f"| {'simple_tcp_server' if kind == 'server' else 'bare mio loop'} | {r['established']} | "
                  f"{r['greetings']} | {sum(r['errors'].values())} | {r['connect_secs']:.2f} s | "
                  f"{r['rss_per_conn']:.1f} B | {r['server_threads']} |")
    if results.get("flood"):
        runs = len(results["flood"][0]["server"])
        sink = results.get("sink", "new file per run")
        print(f"\n### Flood (MB/s of client payload; transcript to tmpfs, {sink}; {runs} interleaved runs each)\n")
        print("| clients | simple_tcp_server: median (quartiles), best | write-limit loop: median (quartiles), best "
              "| ratio of medians | ratio of bests | server CPU per GB: simple_tcp_server, write-limit loop |")
        print("|---:|---:|---:|---:|---:|---:|")
        for f in results["flood"]:
            srv, ref = f["server"], f["write_limit"]
            (s25, s75), (w25, w75) = quartiles(srv), quartiles(ref)
            cpu = ""
            if f.get("server_cpu_s_per_gb"):
                cpu = (f"{median(f['server_cpu_s_per_gb']):.2f} s, "
                       f"{median(f['write_limit_cpu_s_per_gb']):.2f} s")
            print(f"| {f['conns']} | {median(srv):.0f} ({s25:.0f}–{s75:.0f}), {max(srv):.0f} "
                  f"| {median(ref):.0f} ({w25:.0f}–{w75:.0f}), {max(ref):.0f} "
                  f"| {median(srv) / median(ref):.2f}x | {max(srv) / max(ref):.2f}x | {cpu} |")
        for f in results["flood"]:
            if f.get("perf_top"):
                print(f"\nWhere simple_tcp_server's CPU goes at {f['conns']} clients (`perf record`, one run; "
                      "symbols with 1% or more):\n")
                print("| share | symbol | in |")
                print("|---:|---|---|")
                for share, sym, where in f["perf_top"]:
                    print(f"| {share:.1f}% | `{sym}` | {where} |")
    chat = results.get("chat")
    if chat:
        designs = chat.get("designs") or {"server": chat["server"], "bare": chat["bare"]}
        runs = len(next(iter(designs.values())))
        print(f"\n### Chat ({chat['conns']} connections, {chat['rate']} messages/s, {chat['secs']} s; "
              f"server CPU per message, median of {runs})\n")
        print("| comparison | simple_tcp_server | reference loop | ratio |")
        print("|---|---:|---:|---:|")
        # JSON from before the two comparisons holds "server" and "bare" only.
        pairs = CHAT_PAIRS if "designs" in chat else [("server against bare (earlier loops)", "server", "bare")]
        for label, srv, ref in pairs:
            if srv in designs and ref in designs:
                m_s, m_r = median(designs[srv]), median(designs[ref])
                print(f"| {label} | `{srv}`: {m_s:.2f} us | `{ref}`: {m_r:.2f} us | {m_s / m_r:.2f}x |")
        sys_counts = chat.get("syscalls_per_msg")
        if sys_counts:
            print("\nSystem calls (and context switches) per message, from `perf stat` over a third of the run:\n")
            names = sorted({n for c in sys_counts.values() for n in c})
            print("| design | " + " | ".join(names) + " |")
            print("|---|" + "---:|" * len(names))
            for kind, counts in sys_counts.items():
                print(f"| {kind} | " + " | ".join(f"{counts.get(n, 0):.3f}" for n in names) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="hold,flood,chat")
    ap.add_argument("--hold-conns", type=int, default=19000)
    ap.add_argument("--flood-clients", default="1,100,1000", help="client counts for flood, comma-separated")
    ap.add_argument("--chat-conns", type=int, default=10000)
    ap.add_argument("--chat-rate", type=int, default=50000)
    ap.add_argument("--chat-secs", type=int, default=10)
    ap.add_argument("--chat-runs", type=int, help="runs of chat (default: --runs)")
    ap.add_argument("--perf", action="store_true",
                    help="chat: count system calls per message; flood: the server's top symbols (perf record)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json-out", default=os.path.join(ROOT, "target", "load_bench.json"))
    ap.add_argument("--render-json", metavar="PATH", help="print the tables of an earlier run's JSON; measure nothing")
    ap.add_argument("--growing-file", action="store_true",
                    help="write each run's transcript to a new file on tmpfs instead of overwriting a preallocated one")
    ap.add_argument("--readme", action="store_true",
                    help="also put the tables in README.md between <!-- load:start --> and <!-- load:end -->")
    args = ap.parse_args()

    if args.render_json:
        with open(args.render_json) as f:
            results = json.load(f)
    else:
        if not args.no_build:
            build()
        results = {
            "commit": head_commit(),
            "command": " ".join(["scripts/load_bench.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
            "runs": args.runs, "flood": [], "hold": {}, "chat": None,
        }
        global GROWING
        GROWING = args.growing_file
        results["sink"] = "new file per run" if GROWING else "preallocated file, overwritten"
        only = set(args.only.split(","))
        try:
            if not GROWING:
                prepare_sink()
            if "hold" in only:
                run_hold(results, args.hold_conns)
            if "flood" in only:
                run_flood(args.runs, results, [int(c) for c in args.flood_clients.split(",")], args.perf)
            if "chat" in only:
                run_chat(args.chat_runs or args.runs, results, args.chat_conns, args.chat_rate, args.chat_secs,
                         args.perf)
        finally:
            if os.path.exists(SINK):
                os.unlink(SINK)
        os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        render(results)
    print(out.getvalue(), end="")
    if args.readme:
        readme = os.path.join(ROOT, "README.md")
        with open(readme) as f:
            text = f.read()
        start, end = "<!-- load:start -->", "<!-- load:end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        with open(readme, "w") as f:
            f.write(f"{head}{start}\n{out.getvalue().strip()}\n{end}{tail}")


if __name__ == "__main__":
    main()
