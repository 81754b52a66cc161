#!/usr/bin/env python3
"""Load measurements of simple_tcp_server against the reference loops, in one
session, server and load generator in separate processes.

    scripts/load_bench.py [--runs 3] [--only flood,chat,hold] [--perf]
                          [--server-args "--threads 2"] [--design "threads2=--threads 2"]
    scripts/load_bench.py --scenario cores [--runs 5] [--doc]

- hold:  tcp_load hold --conns 19000 against the server: greetings, errors,
         server RSS per connection, threads.
- flood: tcp_load flood at 1, 100 and 1,000 clients (1 GB in all per run),
         transcript written to a file on tmpfs (/dev/shm), against the
         `write-limit` reference loop (the server's reads, n + 6 bytes of
         filler per 25-byte frame written at 64 KiB; with a `--format json`
         design, also `write-limit-json`, the same loop at JSON line sizes:
         a JSON flood with the server's reads and writes and encoding
         free). Median MB/s, ratio, and server CPU seconds per GB of
         payload; with --perf, the top symbols of the server's CPU (`perf
         record`) in one run per client count.
- chat:  tcp_load chat --conns 10000 --rate 50000, server CPU per message,
         two comparisons that each hold one thing equal: like for like, the
         server with `--coalesce 0` against the `write-limit` loop (the
         server's reads, and writes of as many bytes as its lines take);
         coalesced, the server as it runs by default against
         `write-limit-coalesce` (the same loop with the server's coalescing
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
the same interleaved runs (e.g. --design "threads2=--threads 2"); ARGS that
start with @PATH run the binary at PATH instead, such as an older commit's
build (--design "before=@../old/target/release/simple_tcp_server").

--scenario cores (several cores) measures, in one interleaved
session, `simple_tcp_server --threads 1`, `simple_tcp_server --threads 2`
(and each --design) and the tokio servers a tokio user would write
(examples/tokio_server.rs: a task per connection on tokio's multi-thread
runtime, one worker per core, with the server's framing): `tokio-writer`
(the tasks hand whole-line batches to one writer thread),
`tokio-writer-prefault` (the same with every buffer it will need touched
before it listens, as the reactor's are) and `tokio-direct` (the tasks write
whole lines themselves under a lock, from their worker thread's touched
buffers, as the reactors do):

- flood at 1, 100 and 1,000 clients: MB/s, server CPU seconds per GB, and
  the load generator's own CPU (in cores, and per 1.5 GB/s of flood: near
  1 core with one tcp_load process means the generator, not the server,
  may be the limit; --load-args "--procs 2" splits it), and the whole
  machine's idle CPU over the run (in cores, from /proc/stat: near 0 means
  every core was busy);
- chat at 10,000 connections and 50,000 messages/s: server CPU per message,
  like for like: no design coalesces (`--coalesce 0`; the tokio servers
  have no such pause), and the server's default beside;
- hold 19,000 with `--threads 1` and `--threads 2` (and each --design):
  server memory before the connections (the fixed cost) and per connection.

Each figure is a median with ratios against `--threads 1` and against the
fastest tokio server at that point, and the targets are checked; --perf
adds the top symbols of each design's CPU under flood. --doc puts the block in docs/PERFORMANCE.md
between <!-- cores:start --> and <!-- cores:end -->.

Standard library only. Prints markdown tables, stamped with the commit
measured and the command, and writes the raw numbers as JSON (--json-out;
by default target/load_bench.json, or with --doc docs/measurements/load.json
or cores.json, so that a block's data is committed with it).
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(REL, "simple_tcp_server")
REFERENCE = os.path.join(REL, "examples", "reference_server")
TOKIO = os.path.join(REL, "examples", "tokio_server")
LOAD = os.path.join(REL, "tcp_load")
TMPFS = "/dev/shm"


# Files the measuring scripts write themselves: a tree that differs only in
# them is the commit measured, not a dirty one.


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
from blocks import head_commit  # noqa: E402


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
GROWING = False


def option(args, name):
    """The value of simple_tcp_server option `name` in `args` (`--name V` or
    `--name=V`; the last one given), or None."""
    value = None
    for a, nxt in zip(args, [*args[1:], None]):
        if a == name:
            value = nxt
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def writes_json(args):
    """True if simple_tcp_server arguments `args` ask for `--format json`."""
    return option(args, "--format") == "json"


def json_designs():
    """The simple_tcp_server kinds of this session that write JSON lines:
    "server" when --server-args asks for it, and --design names."""
    return ((["server"] if writes_json(SERVER_ARGS) else [])
            + [name for name, args in DESIGNS.items() if writes_json(SERVER_ARGS + args)])


def expansion(args):
    """Transcript bytes per payload byte, at most, of simple_tcp_server with
    `args` flooded by tcp_load (printable text from 127.0.0.x peers): per
    frame of --max-read M bytes (25), a text line adds `<M:` and `>\n`, and
    --tag a peer of up to 17 characters and a space; a JSON line adds 80
    bytes, the length's digits and the peer (the reference loops write as
    the server does at 25 bytes, whatever its --max-read)."""
    try:
        m = max(1, int(option(args, "--max-read") or 25))
    except ValueError:
        m = 25
    digits = len(str(m))
    extra = 80 + digits + 17 if writes_json(args) else 4 + digits + (18 if "--tag" in args else 0)
    return (m + extra) / m


def prepare_sink(payload_bytes):
    """The transcript file, preallocated for the most any design of this
    session writes, plus 5% and 64 MiB, so that no run grows it."""
    # The servers, and the reference loops (25-byte frames whatever
    # --max-read says; at JSON line sizes when a design writes JSON).
    writers = [SERVER_ARGS + args for args in [[], *DESIGNS.values()]]
    writers += [[], *([["--format", "json"]] if json_designs() else [])]
    most = max(expansion(args) for args in writers)
    size = int(payload_bytes * most * 1.05) + (64 << 20)
    with open(SINK, "wb") as f:
        block = b"\0" * (1 << 20)
        for _ in range(size // len(block) + 1):
            f.write(block)


# Extra simple_tcp_server designs: name -> arguments (--design), and the
# arguments every simple_tcp_server run gets (--server-args).
DESIGNS = {}
SERVER_ARGS = []
# The reference loops of examples/reference_server.rs.
REFERENCE_KINDS = ("bare", "bare-coalesce", "write-limit", "write-limit-json", "write-limit-coalesce")
# simple_tcp_server runs of this script's own, beside --design's.
OWN_DESIGNS = {"server-coalesce-0": ["--coalesce", "0"], "threads-1": ["--threads", "1"],
               "threads-2": ["--threads", "2"],
               "threads-1-coalesce-0": ["--threads", "1", "--coalesce", "0"],
               "threads-2-coalesce-0": ["--threads", "2", "--coalesce", "0"]}
# The tokio servers (examples/tokio_server.rs) and their arguments; {conns}
# is the run's client count.
TOKIO_KINDS = {
    "tokio-writer": [],
    "tokio-writer-prefault": ["--prefault", "{conns}"],
    "tokio-direct": ["--design", "direct"],
}
TOKIO_LABELS = {
    "tokio-writer": "tokio: tasks + writer thread",
    "tokio-writer-prefault": "tokio: tasks + writer thread, buffers touched before it listens",
    "tokio-direct": "tokio: tasks writing directly, worker threads' buffers",
}
# Arguments for every tcp_load run (--load-args), e.g. ["--procs", "2"].
LOAD_ARGS = []


class NotClean(Exception):
    """A run that did not do all it was asked: never averaged in."""


class Server:
    """A server process with stdout to a file on tmpfs; stopped by PID."""

    def __init__(self, kind, conns=1):
        self.out_path = os.path.join(TMPFS, f"load_bench_{os.getpid()}_{kind}.out")
        self.err_path = self.out_path + ".err"
        if kind in REFERENCE_KINDS:
            cmd = [REFERENCE, kind, "127.0.0.1", "0"]
        elif kind in TOKIO_KINDS:
            cmd = [TOKIO, *(a.format(conns=conns) for a in TOKIO_KINDS[kind]), "127.0.0.1", "0"]
        else:
            extra = DESIGNS.get(kind, OWN_DESIGNS.get(kind, []))
            binary = SERVER
            if extra and extra[0].startswith("@"):
                # --design "NAME=@PATH ARGS": another build of the server
                # (e.g. an older commit's), measured in the same runs.
                binary, extra = extra[0][1:], extra[1:]
            cmd = [binary, "127.0.0.1", "0", *SERVER_ARGS, *extra]
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
        # Touching a thousand clients' buffers takes a while.
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            for path in (self.out_path, self.err_path):
                with open(path, "rb") as f:
                    # The text format's line, or the JSON format's event.
                    m = re.search(rb"Listening to:  [^\n]*:(\d+)\n|"
                                  rb'"event":"listening","addr":"[^"\n]*:(\d+)"', f.read(4096))
                    if m:
                        self.port = int(m.group(1) or m.group(2))
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


def children_cpu():
    """CPU seconds (user + system) of this script's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_ticks():
    """(idle, total) clock ticks of all CPUs so far, from /proc/stat; idle
    counts iowait, total counts steal (time the hypervisor gave elsewhere)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return ticks[3] + ticks[4], sum(ticks)


def load(kind, port, pid, mode_args, timeout="120s"):
    """tcp_load's report of a clean run, plus its own CPU: `load_cpu_secs`
    and `load_cores` (CPU over wall time; tcp_load and the processes it
    waits for are the only children reaped meanwhile), and `idle_cores`:
    the whole machine's idle CPU over the run, in cores (near 0: every core
    was busy, with the server, the generator or anything else)."""
    cmd = [LOAD, "--port", str(port), "--json", "--quiet", "--timeout", timeout, *LOAD_ARGS]
    if pid:
        cmd += ["--server-pid", str(pid)]
    cpu, started, ticks = children_cpu(), time.monotonic(), machine_ticks()
    out = subprocess.run(cmd + mode_args, capture_output=True, text=True, timeout=600)
    cpu, wall = children_cpu() - cpu, time.monotonic() - started
    idle, total = (b - a for a, b in zip(ticks, machine_ticks()))
    report = check_clean(kind, mode_args, out.returncode, out.stdout, out.stderr)
    report["load_cpu_secs"] = cpu
    report["load_cores"] = cpu / wall if wall > 0 else float("nan")
    report["idle_cores"] = idle / total * (os.cpu_count() or 1) if total > 0 else float("nan")
    return report


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


def perf_top(pid, path, limit=5):
    """Starts `perf record` on `pid`; returns a function that stops it and
    gives the top `limit` symbols as (share %, symbol, where) rows."""
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish():
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        if not os.path.exists(path):
            # A run too short for perf to have started: no profile.
            return []
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


# Bytes of client payload per flood run, whatever the client count
# (--flood-bytes): 1 GB.
FLOOD_BYTES = 1_000_000_000


def flood_once(kind, conns, per_conn, tops=None):
    """One flood run of design `kind`: tcp_load's report. With `tops` (a
    dict), the server is profiled too, and its top symbols go in
    tops[kind]."""
    s = Server(kind, conns)
    try:
        profile = None
        if tops is not None:
            profile = perf_top(s.pid, os.path.join(TMPFS, f"load_bench_{os.getpid()}.perf"))
        r = load(kind, s.port, s.pid, ["flood", "--conns", str(conns), "--bytes", per_conn])
        if profile:
            tops[kind] = profile()
        return r
    finally:
        s.stop()


def scrape_every_second(addr, stop):
    """GETs http://ADDR/metrics once a second until `stop` is set, as a
    Prometheus would (a design with --metrics ADDR is then measured while
    scraped); a failed scrape (no server yet) is simply tried again."""
    host, _, port = addr.rpartition(":")
    while not stop.wait(1.0):
        try:
            import socket
            with socket.create_connection((host, int(port)), timeout=1) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
        except OSError:
            pass


def run_flood(runs, results, clients, with_perf):
    # With a JSON design (or --server-args "--format json"), the write-limit
    # loop at JSON line sizes too: the JSON flood with the server's reads and
    # writes and encoding free.
    kinds = ["server", *DESIGNS, "write-limit", *(["write-limit-json"] if json_designs() else [])]
    for conns in clients:
        per_conn = f"{FLOOD_BYTES // conns}B"
        rates = {kind: [] for kind in kinds}
        cpu_per_gb = {kind: [] for kind in kinds}
        tops = {}
        for run in range(runs):
            for kind in kinds:
                # Every design's first run is profiled alike.
                r = flood_once(kind, conns, per_conn, tops if with_perf and run == 0 else None)
                rates[kind].append(r["mb_per_sec"])
                cpu_per_gb[kind].append(r["server_cpu_secs"] / (r["bytes_acked"] / 1e9))
        entry = {"conns": conns, "server": rates["server"], "write_limit": rates["write-limit"],
                 "cpu_s_per_gb": cpu_per_gb, "perf_top": tops.get("server"), "perf_tops": tops}
        if DESIGNS:
            entry["designs"] = {name: rates[name] for name in DESIGNS}
        if "write-limit-json" in rates:
            entry["write_limit_json"] = rates["write-limit-json"]
        results["flood"].append(entry)
        print(f"flood {conns}: " + " ".join(f"{k} {v}" for k, v in rates.items()), file=sys.stderr)


# The chat comparisons, each holding one thing equal: (label, server kind,
# reference loop). Like for like: neither pauses between polls. Coalesced:
# both pause as the server does by default (so do --design runs, unless
# their arguments say otherwise).
CHAT_PAIRS = [
    ("like for like, no pause", "server-coalesce-0", "write-limit"),
    ("coalesced (the server's default)", "server", "write-limit-coalesce"),
]


def run_chat(runs, results, conns, rate, secs, with_perf):
    kinds = ["server-coalesce-0", "write-limit", "server", *DESIGNS, "write-limit-coalesce"]
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
    results["chat"] = {"conns": conns, "rate": rate, "secs": secs, "server": per["server"],
                       "write_limit": per["write-limit"], "server_coalesce_0": per["server-coalesce-0"],
                       "write_limit_coalesce": per["write-limit-coalesce"], "syscalls_per_msg": sys_counts}
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


# --scenario cores: the designs it compares, in table order (each --design
# goes after `--threads 2`), and the targets it checks.
CORES_ONE, CORES_TWO = "threads-1", "threads-2"
CHAT_ONE, CHAT_TWO = "threads-1-coalesce-0", "threads-2-coalesce-0"
TARGET_FLOOD = 1.35       # --threads 2 at least this many times --threads 1's MB/s (100 and 1,000 clients)
TARGET_FLOOD_TOKIO = 1.25  # --threads 2 at least this many times the fastest tokio's (100 and 1,000 clients)
TARGET_ONE_TOKIO = 1.0    # --threads 1 at least this many times the fastest tokio's at 1 client
TARGET_LOAD_CORES = 0.25  # tcp_load flood's CPU at 1.5 GB/s, in cores, at most
TARGET_CHAT = 1.1    # --threads 2's CPU per message at most this many times --threads 1's
TARGET_HOLD = 64     # bytes of server memory per held connection, at most


def cores_kinds(chat=False):
    if chat:
        # Like for like first: nobody coalesces; then the server's default.
        return [CHAT_ONE, CHAT_TWO, CORES_ONE, CORES_TWO, *DESIGNS,
                *(k for k in TOKIO_KINDS if k != "tokio-writer-prefault")]
    return [CORES_ONE, CORES_TWO, *DESIGNS, *TOKIO_KINDS]


def fastest_tokio(per, key, lower_is_better=False):
    """(kind, median) of the best tokio server in `per` by `key`."""
    found = [(kind, median(per[kind][key])) for kind in TOKIO_KINDS if kind in per]
    if not found:
        return None, 0
    return (min if lower_is_better else max)(found, key=lambda kv: kv[1])


def run_cores_flood(runs, cores, clients, with_perf):
    kinds = cores_kinds()
    for conns in clients:
        per_conn = f"{FLOOD_BYTES // conns}B"
        per = {kind: {"mb_per_sec": [], "cpu_s_per_gb": [], "load_cores": [], "idle_cores": []} for kind in kinds}
        tops = {}
        for run in range(runs):
            for kind in kinds:
                r = flood_once(kind, conns, per_conn, tops if with_perf and run == 0 else None)
                per[kind]["mb_per_sec"].append(r["mb_per_sec"])
                per[kind]["cpu_s_per_gb"].append(r["server_cpu_secs"] / (r["bytes_acked"] / 1e9))
                per[kind]["load_cores"].append(r["load_cores"])
                per[kind]["idle_cores"].append(r["idle_cores"])
        cores["flood"].append({"conns": conns, "bytes": FLOOD_BYTES, "per": per, "perf_top": tops})
        print(f"cores flood {conns}: " + " ".join(f"{k} {v['mb_per_sec']}" for k, v in per.items()), file=sys.stderr)


def run_cores_chat(runs, cores, conns, rate, secs):
    kinds = cores_kinds(chat=True)
    per = {kind: {"cpu_us_per_msg": [], "server_cpu_util": [], "load_cores": []} for kind in kinds}
    mode_args = ["chat", "--conns", str(conns), "--rate", str(rate), "--secs", f"{secs}s"]
    for _ in range(runs):
        for kind in kinds:
            s = Server(kind, conns)
            try:
                r = load(kind, s.port, s.pid, mode_args)
            finally:
                s.stop()
            for key in per[kind]:
                per[kind][key].append(r[key])
    cores["chat"] = {"conns": conns, "rate": rate, "secs": secs, "per": per}


def run_cores_hold(cores, conns):
    cores["hold"] = {"conns": conns, "per": {}}
    for kind in (CORES_ONE, CORES_TWO, *DESIGNS):
        s = Server(kind)
        try:
            cores["hold"]["per"][kind] = load(kind, s.port, s.pid, ["hold", "--conns", str(conns), "--hold", "1s"],
                                              timeout="300s")
        finally:
            s.stop()


def cores_label(kind, designs):
    if kind in TOKIO_LABELS:
        return TOKIO_LABELS[kind]
    args = OWN_DESIGNS.get(kind) or designs.get(kind, [])
    if args and args[0].startswith("@"):
        # Another build of the server: its name, then the binary and args.
        return f"{kind}: `{' '.join(args)}`"
    return f"`simple_tcp_server {' '.join(args)}`"


def spread(values, digits=0):
    """`median (25th–75th percentile)` of `values`."""
    q25, q75 = quartiles(values)
    return f"{median(values):.{digits}f} ({q25:.{digits}f}–{q75:.{digits}f})"


def render_cores(results):
    """Prints the --scenario cores block for `results`."""
    cores, designs = results["cores"], results.get("designs", {})
    command = results.get("command") or "scripts/load_bench.py --scenario cores"
    print(f"Measured at commit `{results.get('commit', 'unknown')}`, {results['date']}, on {results['machine']}, "
          f"with `{command}`. Medians of interleaved runs (25th–75th percentile in brackets); "
          f"ratios are of medians.")
    targets = []
    flood = cores.get("flood") or []
    if flood:
        runs = len(flood[0]["per"][CORES_ONE]["mb_per_sec"])
        sink = results.get("sink", "new file per run")
        print(f"\n#### Flood ({flood[0]['bytes'] / 1e6:.0f} MB of client payload per run, transcript to tmpfs, "
              f"{sink}; {runs} runs)\n")
        print("| clients | design | MB/s | vs `--threads 1` | vs the fastest tokio | server CPU per GB "
              "| tcp_load CPU (cores) | tcp_load cores per 1.5 GB/s | machine idle (cores) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for f in flood:
            per = f["per"]
            one = median(per[CORES_ONE]["mb_per_sec"])
            best_kind, tokio = fastest_tokio(per, "mb_per_sec")
            for kind, v in per.items():
                m = median(v["mb_per_sec"])
                # Runs from before the column was measured have no idle.
                idle = f"{median(v['idle_cores']):.2f}" if v.get("idle_cores") else "n/a"
                load_cores = median(v["load_cores"])
                fastest = " (fastest tokio)" if kind == best_kind else ""
                print(f"| {f['conns']} | {cores_label(kind, designs)}{fastest} | {spread(v['mb_per_sec'])} "
                      f"| {ratio(m, one)} | {ratio(m, tokio)} | {median(v['cpu_s_per_gb']):.2f} s "
                      f"| {load_cores:.2f} | {load_cores * 1500 / m:.2f} | {idle} |")
            two = median(per[CORES_TWO]["mb_per_sec"])
            if f["conns"] == 1:
                targets.append((f"flood, 1 client: `--threads 1` >= {TARGET_ONE_TOKIO}x the fastest tokio",
                                ratio(one, tokio), bool(tokio) and one / tokio >= TARGET_ONE_TOKIO))
            else:
                targets.append((f"flood, {f['conns']} clients: `--threads 2` >= {TARGET_FLOOD}x `--threads 1`",
                                f"{two / one:.3f}x" if one else "n/a", bool(one) and two / one >= TARGET_FLOOD))
                targets.append((f"flood, {f['conns']} clients: `--threads 2` >= {TARGET_FLOOD_TOKIO}x the fastest "
                                "tokio", ratio(two, tokio), bool(tokio) and two / tokio >= TARGET_FLOOD_TOKIO))
            v = per[CORES_TWO]
            per_1500 = median(v["load_cores"]) * 1500 / median(v["mb_per_sec"])
            targets.append((f"flood, {f['conns']} clients: tcp_load <= {TARGET_LOAD_CORES} core per 1.5 GB/s "
                            "(beside `--threads 2`)", f"{per_1500:.2f}", per_1500 <= TARGET_LOAD_CORES))
        for f in flood:
            for kind, top in (f.get("perf_top") or {}).items():
                if not top:
                    continue
                print(f"\nWhere the CPU of {cores_label(kind, designs)} goes at {f['conns']} clients "
                      "(`perf record`, first run; the top 5 symbols, each 1% or more):\n")
                print("| share | symbol | in |")
                print("|---:|---|---|")
                for share, sym, where in top:
                    print(f"| {share:.1f}% | `{sym}` | {where} |")
    chat = cores.get("chat")
    if chat:
        per = chat["per"]
        runs = len(per[CORES_ONE]["cpu_us_per_msg"])
        print(f"\n#### Chat ({chat['conns']} connections, {chat['rate']} messages/s, {chat['secs']} s; {runs} runs)\n")
        print("| design | server CPU per message | vs `--threads 1` | vs the fastest tokio | server CPU (cores) "
              "| tcp_load CPU (cores) |")
        print("|---|---:|---:|---:|---:|---:|")
        # Like for like: the server without its pause against `--threads 1`
        # without it; the rows of the default against the default's.
        def base_of(kind):
            if CHAT_ONE in per and (kind in (CHAT_ONE, CHAT_TWO) or kind in TOKIO_KINDS):
                return CHAT_ONE
            return CORES_ONE

        ones = {kind: median(per[base_of(kind)]["cpu_us_per_msg"]) for kind in per}
        best_kind, tokio = fastest_tokio(per, "cpu_us_per_msg", lower_is_better=True)
        for kind, v in per.items():
            m = median(v["cpu_us_per_msg"])
            fastest = " (the cheapest tokio)" if kind == best_kind else ""
            print(f"| {cores_label(kind, designs)}{fastest} | {spread(v['cpu_us_per_msg'], 2)} us "
                  f"| {ratio(m, ones[kind])} | {ratio(m, tokio)} | {median(v['server_cpu_util']):.2f} "
                  f"| {median(v['load_cores']):.2f} |")
        one = median(per[CORES_ONE]["cpu_us_per_msg"])
        two = median(per[CORES_TWO]["cpu_us_per_msg"])
        targets.append((f"chat: `--threads 2` CPU per message <= {TARGET_CHAT}x `--threads 1`",
                        ratio(two, one), bool(one) and two / one <= TARGET_CHAT))
    hold = cores.get("hold")
    if hold:
        print(f"\n#### Hold ({hold['conns']} connections)\n")
        print("| design | established | greeted | errors | server RSS before | RSS per connection | threads |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind, r in hold["per"].items():
            print(f"| {cores_label(kind, designs)} | {r['established']} | {r['greetings']} | "
                  f"{sum(r['errors'].values())} | {r['server_rss_before'] / 1024:.0f} KiB | "
                  f"{r['rss_per_conn']:.1f} B | {r['server_threads']} |")
        two = hold["per"].get(CORES_TWO)
        if two:
            targets.append((f"hold {hold['conns']}: `--threads 2` <= {TARGET_HOLD} B per connection",
                            f"{two['rss_per_conn']:.1f} B", two["rss_per_conn"] <= TARGET_HOLD))
    if targets:
        print("\n#### Targets\n")
        print("| target | measured | met |")
        print("|---|---:|---|")
        for label, measured, met in targets:
            print(f"| {label} | {measured} | {'yes' if met else '**no**'} |")



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
        if writes_json(results.get("server_args", [])) and any(f.get("write_limit_json") for f in results["flood"]):
            # --server-args "--format json": the server writes JSON lines, so
            # its own loop is the one at JSON line sizes.
            print("\nThe write-limit loop at JSON line sizes, which simple_tcp_server's lines are here:\n")
            print("| clients | median (quartiles), best | ratio of simple_tcp_server's median to it |")
            print("|---:|---:|---:|")
            for f in results["flood"]:
                lim = f.get("write_limit_json")
                if lim:
                    l25, l75 = quartiles(lim)
                    print(f"| {f['conns']} | {median(lim):.0f} ({l25:.0f}–{l75:.0f}), {max(lim):.0f} "
                          f"| {median(f['server']) / median(lim):.2f}x |")
        for f in results["flood"]:
            if f.get("perf_top"):
                print(f"\nWhere simple_tcp_server's CPU goes at {f['conns']} clients (`perf record`, one run; "
                      "the top 5 symbols, each 1% or more):\n")
                print("| share | symbol | in |")
                print("|---:|---|---|")
                for share, sym, where in f["perf_top"]:
                    print(f"| {share:.1f}% | `{sym}` | {where} |")
        last = results["flood"][-1] if results["flood"] else {}
        for kind, top in (last.get("perf_tops") or {}).items():
            if kind == "server" or not top:
                continue
            label = "the write-limit loop" if kind == "write-limit" else \
                "the write-limit loop at JSON line sizes" if kind == "write-limit-json" else \
                f"`simple_tcp_server {' '.join(results.get('designs', {}).get(kind, []))}` ({kind})"
            print(f"\nWhere the CPU of {label} goes at {last['conns']} clients (`perf record`, one run; "
                  "the top 5 symbols, each 1% or more):\n")
            print("| share | symbol | in |")
            print("|---:|---|---|")
            for share, sym, where in top:
                print(f"| {share:.1f}% | `{sym}` | {where} |")
        extra = [name for f in results["flood"] for name in f.get("designs", {})]
        for name in dict.fromkeys(extra):
            args = " ".join(results.get("designs", {}).get(name, []))
            print(f"\n`simple_tcp_server {args}` ({name}):\n")
            # The write-limit loop at JSON line sizes, where it was measured:
            # a JSON flood with encoding free, against the text server.
            with_json_limit = writes_json(results.get("server_args", []) + results.get("designs", {}).get(name, [])) \
                and any(f.get("write_limit_json") for f in results["flood"])
            json_cols = (" | write-limit loop at JSON line sizes: median (quartiles) | ratio of medians to it "
                         "| that loop's median / simple_tcp_server's") if with_json_limit else ""
            print("| clients | median (quartiles), best | ratio of medians to write-limit "
                  f"| ratio of medians to simple_tcp_server{json_cols} |")
            print("|---:|---:|---:|---:" + ("|---:|---:|---:" if with_json_limit else "") + "|")
            for f in results["flood"]:
                rates, ref = f.get("designs", {}).get(name), f["write_limit"]
                if rates:
                    q25, q75 = quartiles(rates)
                    row = (f"| {f['conns']} | {median(rates):.0f} ({q25:.0f}–{q75:.0f}), {max(rates):.0f} "
                           f"| {median(rates) / median(ref):.2f}x | {median(rates) / median(f['server']):.2f}x")
                    lim = f.get("write_limit_json") if with_json_limit else None
                    if lim:
                        l25, l75 = quartiles(lim)
                        row += (f" | {median(lim):.0f} ({l25:.0f}–{l75:.0f}) | {median(rates) / median(lim):.2f}x "
                                f"| {median(lim) / median(f['server']):.2f}x")
                    elif with_json_limit:
                        row += " | | |"
                    print(row + " |")
    chat = results.get("chat")
    if chat:
        runs = len(chat["server"])
        print(f"\n### Chat ({chat['conns']} connections, {chat['rate']} messages/s, {chat['secs']} s; "
              f"server CPU per message, median of {runs})\n")
        print("| comparison | simple_tcp_server | reference loop | ratio |")
        print("|---|---:|---:|---:|")
        per = {"server": chat["server"], "server-coalesce-0": chat.get("server_coalesce_0"),
               "write-limit": chat.get("write_limit"), "write-limit-coalesce": chat.get("write_limit_coalesce")}
        names = {"server-coalesce-0": "simple_tcp_server --coalesce 0", "server": "simple_tcp_server",
                 "write-limit": "write-limit", "write-limit-coalesce": "write-limit-coalesce"}
        for label, srv, ref in CHAT_PAIRS:
            if per.get(srv) and per.get(ref):
                m_s, m_r = median(per[srv]), median(per[ref])
                print(f"| {label} | `{names[srv]}`: {m_s:.2f} us | `{names[ref]}`: {m_r:.2f} us "
                      f"| {ratio(m_s, m_r)} |")
        ref = "write-limit-coalesce"
        for name, values in chat.get("designs", {}).items():
            args = " ".join(results.get("designs", {}).get(name, []))
            m_d, m_r = median(values), median(per[ref])
            print(f"| {name} ({ratio(m_d, median(per['server']))} of `simple_tcp_server`'s) "
                  f"| `simple_tcp_server {args}`: {m_d:.2f} us | `{ref}`: {m_r:.2f} us | {ratio(m_d, m_r)} |")
        sys_counts = chat.get("syscalls_per_msg")
        if sys_counts:
            print("\nSystem calls (and context switches) per message, from `perf stat` over a third of the run:\n")
            names = sorted({n for c in sys_counts.values() for n in c})
            print("| design | " + " | ".join(names) + " |")
            print("|---|" + "---:|" * len(names))
            for kind, counts in sys_counts.items():
                print(f"| {kind} | " + " | ".join(f"{counts.get(n, 0):.3f}" for n in names) + " |")


def main():
    global FLOOD_BYTES, LOAD_ARGS, SERVER_ARGS, GROWING
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="hold,flood,chat")
    ap.add_argument("--hold-conns", type=int, default=19000)
    ap.add_argument("--scenario", choices=("load", "cores"), default="load",
                    help="load: the server against the reference loops (default); cores: --threads 1, --threads 2 "
                         "and the tokio servers")
    ap.add_argument("--flood-clients", help="client counts for flood, comma-separated (default: 1,100,1000)")
    ap.add_argument("--flood-bytes", type=int, default=FLOOD_BYTES,
                    help="bytes of client payload per flood run, whatever the client count (default: 1 GB)")
    ap.add_argument("--chat-conns", type=int, default=10000)
    ap.add_argument("--chat-rate", type=int, default=50000)
    ap.add_argument("--chat-secs", type=int, default=10)
    ap.add_argument("--chat-runs", type=int, help="runs of chat (default: --runs)")
    ap.add_argument("--perf", action="store_true",
                    help="chat: count system calls per message; flood: the server's top symbols (perf record)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json-out", help="where the raw numbers go (default: target/load_bench.json; with --doc, "
                                       "docs/measurements/load.json or cores.json, the data behind the block)")
    ap.add_argument("--render-json", metavar="PATH", help="print the tables of an earlier run's JSON; measure nothing")
    ap.add_argument("--growing-file", action="store_true",
                    help="write each run's transcript to a new file on tmpfs instead of overwriting a preallocated one")
    ap.add_argument("--server-args", default="", metavar="ARGS",
                    help='extra arguments for every simple_tcp_server run, e.g. "--threads 2"')
    ap.add_argument("--design", action="append", default=[], metavar="NAME=ARGS",
                    help='also measure simple_tcp_server with ARGS as design NAME, e.g. "threads2=--threads 2"; '
                         "repeatable")
    ap.add_argument("--load-args", default="", metavar="ARGS",
                    help='extra arguments for every tcp_load run, e.g. "--procs 2"')
    ap.add_argument("--scrape", metavar="ADDR",
                    help="GET http://ADDR/metrics every second during the whole session (for a design run "
                         "with --metrics ADDR)")
    ap.add_argument("--block", help="the block of docs/PERFORMANCE.md that --doc writes (default: load, or cores)")
    ap.add_argument("--doc", action="store_true",
                    help="also put the tables in docs/PERFORMANCE.md between <!-- load:start --> and "
                         "<!-- load:end --> (cores: <!-- cores:start --> and <!-- cores:end -->)")
    args = ap.parse_args()
    if args.flood_clients is None:
        args.flood_clients = "1,100,1000"
    if args.flood_bytes <= 0:
        ap.error("--flood-bytes must be positive")
    FLOOD_BYTES = args.flood_bytes
    LOAD_ARGS = shlex.split(args.load_args)

    SERVER_ARGS = shlex.split(args.server_args)
    for design in args.design:
        name, sep, extra = design.partition("=")
        if not sep or not name or name in ("server", *TOKIO_KINDS, *REFERENCE_KINDS, *OWN_DESIGNS) \
                or name in DESIGNS:
            ap.error(f"--design {design!r}: expected a new NAME=ARGS")
        DESIGNS[name] = shlex.split(extra)

    if args.render_json:
        with open(args.render_json) as f:
            results = json.load(f)
    scenario = results.get("scenario", "load") if args.render_json else args.scenario
    block = args.block or ("cores" if scenario == "cores" else "load")
    if args.doc:
        # Before any measuring: a long run must not end without a place to go.
        blocks.check(block)
    if not args.render_json:
        if not args.no_build:
            build()
        results = {
            "commit": head_commit(),
            "command": shlex.join(["scripts/load_bench.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
            "runs": args.runs, "flood": [], "hold": {}, "chat": None,
            "server_args": SERVER_ARGS, "designs": DESIGNS, "load_args": LOAD_ARGS, "scenario": scenario,
        }
        GROWING = args.growing_file
        scraping = threading.Event()
        if args.scrape:
            results["scrape"] = args.scrape
            threading.Thread(target=scrape_every_second, args=(args.scrape, scraping), daemon=True).start()
        results["sink"] = "new file per run" if GROWING else "preallocated file, overwritten"
        only = set(args.only.split(","))
        try:
            if not GROWING:
                prepare_sink(FLOOD_BYTES)
            if scenario == "cores":
                results["cores"] = {"flood": [], "chat": None, "hold": None}
                if "hold" in only:
                    run_cores_hold(results["cores"], args.hold_conns)
                if "flood" in only:
                    run_cores_flood(args.runs, results["cores"], [int(c) for c in args.flood_clients.split(",")],
                                    args.perf)
                if "chat" in only:
                    run_cores_chat(args.chat_runs or args.runs, results["cores"], args.chat_conns, args.chat_rate,
                                   args.chat_secs)
            else:
                if "hold" in only:
                    run_hold(results, args.hold_conns)
                if "flood" in only:
                    run_flood(args.runs, results, [int(c) for c in args.flood_clients.split(",")], args.perf)
                if "chat" in only:
                    run_chat(args.chat_runs or args.runs, results, args.chat_conns, args.chat_rate,
                             args.chat_secs, args.perf)
        except NotClean as e:
            print(f"load_bench: {e}", file=sys.stderr)
            print("load_bench: stopped; no results written (a run that is not clean is not a measurement)",
                  file=sys.stderr)
            sys.exit(1)
        finally:
            scraping.set()
            if os.path.exists(SINK):
                os.unlink(SINK)
        if args.json_out is None:
            # A block keeps its raw numbers beside it in the repo.
            args.json_out = (os.path.join(ROOT, "docs", "measurements", f"{block}.json") if args.doc
                             else os.path.join(ROOT, "target", "load_bench.json"))
        os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        render_cores(results) if scenario == "cores" else render(results)
    print(out.getvalue(), end="")
    if args.doc:
        blocks.write(block, out.getvalue())


if __name__ == "__main__":
    main()
