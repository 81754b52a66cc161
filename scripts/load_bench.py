#!/usr/bin/env python3
"""Load measurements of simple_tcp_server against the reference loops, in one
session, server and load generator in separate processes (issue 4).

    scripts/load_bench.py [--runs 3] [--only flood,chat,hold] [--perf]
                          [--server-args "--threads 2"] [--design "threads2=--threads 2"]

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

Every run must be clean (tcp_load exits 0 and reports "ok": true: every
connection greeted and acknowledged, chat kept up): a run that is not stops
the script with tcp_load's reason and exit status 1, and nothing is written
or averaged.

--server-args adds arguments to every simple_tcp_server run; each --design
NAME=ARGS adds a design, simple_tcp_server with those arguments, measured in
the same interleaved runs (e.g. --design "threads2=--threads 2").

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
import shlex
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


# Extra simple_tcp_server designs: name -> arguments (--design), and the
# arguments every simple_tcp_server run gets (--server-args).
DESIGNS = {}
SERVER_ARGS = []
# The reference loops of examples/reference_server.rs.
REFERENCE_KINDS = ("bare", "bare-coalesce", "write-limit", "write-limit-coalesce")
# simple_tcp_server runs of this script's own, beside --design's.
OWN_DESIGNS = {"server-coalesce-0": ["--coalesce", "0"]}


class NotClean(Exception):
    """A run that did not do all it was asked: never averaged in."""


class Server:
    """A server process with stdout to a file on tmpfs; stopped by PID."""

    def __init__(self, kind):
        self.out_path = os.path.join(TMPFS, f"load_bench_{os.getpid()}_{kind}.out")
        self.err_path = self.out_path + ".err"
        if kind in REFERENCE_KINDS:
            cmd = [REFERENCE, kind, "127.0.0.1", "0"]
        else:
            cmd = [SERVER, "127.0.0.1", "0", *SERVER_ARGS, *DESIGNS.get(kind, OWN_DESIGNS.get(kind, []))]
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


def check_clean(kind, mode_args, returncode, stdout, stderr):
    """The report of a clean run, or NotClean with tcp_load's reason."""
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    if returncode == 0 and report is not None and report.get("ok") is True:
        return report
    reason = (report or {}).get("reason") or (stderr or "").strip() or "no report"
    raise NotClean(f"{kind}: tcp_load {' '.join(mode_args)}: not clean (exit {returncode}): {reason}")


def load(kind, port, pid, mode_args, timeout="120s"):
    cmd = [LOAD, "--port", str(port), "--json", "--quiet", "--timeout", timeout]
    if pid:
        cmd += ["--server-pid", str(pid)]
    out = subprocess.run(cmd + mode_args, capture_output=True, text=True, timeout=600)
    return check_clean(kind, mode_args, out.returncode, out.stdout, out.stderr)


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


def ratio(a, b):
    """a / b as `1.23x`, or n/a when b is zero (a run too short to measure)."""
    return f"{a / b:.2f}x" if b else "n/a"


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
    kinds = ["server", *DESIGNS, "write-limit"]
    for conns in clients:
        per_conn = f"{1_000_000_000 // conns}B"
        rates = {kind: [] for kind in kinds}
        cpu_per_gb = {kind: [] for kind in kinds}
        top = None
        for run in range(runs):
            for kind in kinds:
                s = Server(kind)
                try:
                    profile = None
                    if with_perf and run == 0 and kind == "server":
                        profile = perf_top(s.pid, os.path.join(TMPFS, f"load_bench_{os.getpid()}.perf"))
                    r = load(kind, s.port, s.pid, ["flood", "--conns", str(conns), "--bytes", per_conn])
                    if profile:
                        top = profile()
                finally:
                    s.stop()
                rates[kind].append(r["mb_per_sec"])
                cpu_per_gb[kind].append(r["server_cpu_secs"] / (r["bytes_acked"] / 1e9))
        entry = {"conns": conns, "server": rates["server"], "write_limit": rates["write-limit"],
                 "cpu_s_per_gb": cpu_per_gb, "perf_top": top}
        if DESIGNS:
            entry["designs"] = {name: rates[name] for name in DESIGNS}
        results["flood"].append(entry)
        print(f"flood {conns}: " + " ".join(f"{k} {v}" for k, v in rates.items()), file=sys.stderr)


# The chat comparisons, each holding one thing equal: (label, server kind,
# reference loop). Like for like: neither pauses between polls. Coalesced:
# both pause as the server does by default (so do --design runs, unless
# their arguments say otherwise).
CHAT_PAIRS = [
    ("like for like, no pause", "server-coalesce-0", "bare"),
    ("coalesced (the server's default)", "server", "bare-coalesce"),
]


def run_chat(runs, results, conns, rate, secs, with_perf):
    kinds = ["server-coalesce-0", "bare", "server", *DESIGNS, "bare-coalesce"]
    per = {kind: [] for kind in kinds}
    sys_counts = {}
    mode_args = ["chat", "--conns", str(conns), "--rate", str(rate), "--secs", f"{secs}s"]
    for _ in range(runs):
        for kind in kinds:
            s = Server(kind)
            try:
                if with_perf and kind not in sys_counts:
                    # Sample system calls in the middle of the paced phase.
                    proc = subprocess.Popen(
                        [LOAD, "--port", str(s.port), "--json", "--quiet", "--server-pid", str(s.pid), *mode_args],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    time.sleep(min(3.0, secs / 3) + 1.0)
                    window = max(1, secs // 3)
                    counts = perf_syscalls(s.pid, window)
                    sys_counts[kind] = {k: v / (rate * window) for k, v in counts.items()}
                    stdout, stderr = proc.communicate(timeout=secs + 120)
                    r = check_clean(kind, mode_args, proc.returncode, stdout, stderr)
                else:
                    r = load(kind, s.port, s.pid, mode_args)
            finally:
                s.stop()
            per[kind].append(r["cpu_us_per_msg"])
    results["chat"] = {"conns": conns, "rate": rate, "secs": secs, "server": per["server"], "bare": per["bare"],
                       "server_coalesce_0": per["server-coalesce-0"], "bare_coalesce": per["bare-coalesce"],
                       "syscalls_per_msg": sys_counts}
    if DESIGNS:
        results["chat"]["designs"] = {name: per[name] for name in DESIGNS}


def run_hold(results, conns):
    for kind in ("server", *DESIGNS, "bare"):
        s = Server(kind)
        try:
            results["hold"][kind] = load(kind, s.port, s.pid, ["hold", "--conns", str(conns), "--hold", "1s"],
                                         timeout="300s")
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
        names = {"server": "simple_tcp_server", "bare": "bare mio loop"}
        for kind, r in results["hold"].items():
            name = names.get(kind, f"simple_tcp_server {' '.join(results.get('designs', {}).get(kind, [kind]))}")
            print(f"| {name} | {r['established']} | "
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
            cpu = f.get("cpu_s_per_gb")
            cpu = f"{median(cpu['server']):.2f} s, {median(cpu['write-limit']):.2f} s" if cpu else ""
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
        extra = [name for f in results["flood"] for name in f.get("designs", {})]
        for name in dict.fromkeys(extra):
            args = " ".join(results.get("designs", {}).get(name, []))
            print(f"\n`simple_tcp_server {args}` ({name}):\n")
            print("| clients | median (quartiles), best | ratio of medians to write-limit |")
            print("|---:|---:|---:|")
            for f in results["flood"]:
                rates, ref = f.get("designs", {}).get(name), f["write_limit"]
                if rates:
                    q25, q75 = quartiles(rates)
                    print(f"| {f['conns']} | {median(rates):.0f} ({q25:.0f}–{q75:.0f}), {max(rates):.0f} "
                          f"| {median(rates) / median(ref):.2f}x |")
    chat = results.get("chat")
    if chat:
        runs = len(chat["server"])
        print(f"\n### Chat ({chat['conns']} connections, {chat['rate']} messages/s, {chat['secs']} s; "
              f"server CPU per message, median of {runs})\n")
        print("| comparison | simple_tcp_server | reference loop | ratio |")
        print("|---|---:|---:|---:|")
        per = {"server": chat["server"], "bare": chat["bare"],
               "server-coalesce-0": chat.get("server_coalesce_0"), "bare-coalesce": chat.get("bare_coalesce")}
        names = {"server-coalesce-0": "simple_tcp_server --coalesce 0", "server": "simple_tcp_server",
                 "bare": "bare", "bare-coalesce": "bare-coalesce"}
        # JSON from before the two comparisons holds "server" and "bare" only.
        pairs = CHAT_PAIRS if per["bare-coalesce"] else [("server against bare (earlier loops)", "server", "bare")]
        for label, srv, ref in pairs:
            if per.get(srv) and per.get(ref):
                m_s, m_r = median(per[srv]), median(per[ref])
                print(f"| {label} | `{names[srv]}`: {m_s:.2f} us | `{names[ref]}`: {m_r:.2f} us "
                      f"| {ratio(m_s, m_r)} |")
        ref = "bare-coalesce" if per["bare-coalesce"] else "bare"
        for name, values in chat.get("designs", {}).items():
            args = " ".join(results.get("designs", {}).get(name, []))
            m_d, m_r = median(values), median(per[ref])
            print(f"| {name} | `simple_tcp_server {args}`: {m_d:.2f} us | `{ref}`: {m_r:.2f} us "
                  f"| {ratio(m_d, m_r)} |")
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
    ap.add_argument("--server-args", default="", metavar="ARGS",
                    help='extra arguments for every simple_tcp_server run, e.g. "--threads 2"')
    ap.add_argument("--design", action="append", default=[], metavar="NAME=ARGS",
                    help='also measure simple_tcp_server with ARGS as design NAME, e.g. "threads2=--threads 2"; '
                         "repeatable")
    ap.add_argument("--readme", action="store_true",
                    help="also put the tables in README.md between <!-- load:start --> and <!-- load:end -->")
    args = ap.parse_args()

    global SERVER_ARGS
    SERVER_ARGS = shlex.split(args.server_args)
    for design in args.design:
        name, sep, extra = design.partition("=")
        if not sep or not name or name in ("server", *REFERENCE_KINDS, *OWN_DESIGNS) or name in DESIGNS:
            ap.error(f"--design {design!r}: expected a new NAME=ARGS")
        DESIGNS[name] = shlex.split(extra)

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
            "server_args": SERVER_ARGS, "designs": DESIGNS,
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
        except NotClean as e:
            print(f"load_bench: {e}", file=sys.stderr)
            print("load_bench: stopped; no results written (a run that is not clean is not a measurement)",
                  file=sys.stderr)
            sys.exit(1)
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
