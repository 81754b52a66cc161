#!/usr/bin/env python3
"""What `--workers` costs on the accept path and the data path, measured in
one interleaved session against a baseline: by default the same number of
reactors in one process (`--threads W`); with --other, another build of
the server (say, an older commit's) with `--workers W` too:

    scripts/workers_bench.py [--other PATH [--name NAME]] [--runs 5]
                             [--workers 4] [--conns 19000] [--flood-conns 100]
                             [--flood-bytes 1GB] [--doc]

Per run and design:
1. `simple_tcp_server --workers W` or `--threads W` (transcript to a file
   on tmpfs).
2. accept: `tcp_load --procs 2 hold --conns C`: the connect rate (all C
   connected and greeted, from tcp_load's `connect_secs`), and, under
   --workers, how they are spread over the workers while they are held
   (each worker's sockets, from /proc/PID/fd): the busiest worker's share
   against the mean.
3. flood: `tcp_load flood --conns F` with B bytes in all: MB/s acknowledged.
4. SIGTERM; the server must exit 0.

Designs alternate within each run, so the machine's noise falls on both.
With --doc the table goes into docs/PERFORMANCE.md between
<!-- workers:start --> and <!-- workers:end -->, and the data into
docs/measurements/workers.json (else target/workers_bench.json).
Every run is bounded in time; only processes this script started are
signalled, by PID. Standard library only; loopback only.
"""

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
TMPFS = "/dev/shm"
STARTED = []


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
from blocks import head_commit  # noqa: E402


def stop_all():
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def sockets(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


def parse_bytes(text):
    m = re.fullmatch(r"(\d+)\s*([KMG]?B)?", text.strip(), re.I)
    if not m:
        raise SystemExit(f"bad size {text!r}")
    return int(m[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[(m[2] or "B").upper()]


def tcp_load(port, *args, timeout=300):
    cmd = [os.path.join(REL, "tcp_load"), "--port", str(port), "--json", "--quiet", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    STARTED.append(proc)
    return proc, cmd


def one_run(binary, mode, args):
    transcript = os.path.join(TMPFS, f"workers-bench-{os.getpid()}.out")
    log = os.path.join(TMPFS, f"workers-bench-{os.getpid()}.err")
    out, err = open(transcript, "wb"), open(log, "wb")
    server = subprocess.Popen([binary, "127.0.0.1", "0", mode, str(args.workers), "--backlog", "4096"],
                              stdout=out, stderr=err, env={**os.environ, "RUST_LOG": "info"})
    STARTED.append(server)
    try:
        deadline = time.time() + 30
        port = None
        while port is None:
            with open(transcript, "rb") as f:
                m = re.match(rb"Listening to:  127\.0\.0\.1:(\d+)\n", f.readline())
            if m:
                port = int(m[1])
            elif time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start: {open(log).read()[-2000:]}")
            else:
                time.sleep(0.02)
        while mode == "--workers" and len(children(server.pid)) < args.workers:
            if time.time() > deadline:
                raise SystemExit("the workers did not start")
            time.sleep(0.02)
        time.sleep(0.3)
        # Under --threads the one process counts as one "worker".
        workers = children(server.pid) if mode == "--workers" else [server.pid]
        base = {w: sockets(w) for w in workers}
        hold, _ = tcp_load(port, "--procs", "2", "--timeout", "120s", "hold", "--conns", str(args.conns),
                           "--hold", "3s")
        # Sampled while held: every connection is up once the counts stop
        # growing at the target.
        spread = None
        while hold.poll() is None:
            counts = [sockets(w) - base[w] for w in workers]
            if sum(counts) >= args.conns:
                spread = counts
                break
            time.sleep(0.05)
        hold_out, hold_err = hold.communicate(timeout=300)
        report = json.loads(hold_out.decode().strip().splitlines()[-1])
        if not report.get("ok") or spread is None:
            raise SystemExit(f"hold was not clean: {report.get('reason')} {hold_err.decode()[-1000:]}")
        flood, _ = tcp_load(port, "--timeout", "300s", "flood", "--conns", str(args.flood_conns),
                            "--bytes", str(args.flood_bytes // args.flood_conns))
        flood_out, flood_err = flood.communicate(timeout=600)
        flood_report = json.loads(flood_out.decode().strip().splitlines()[-1])
        if not flood_report.get("ok"):
            raise SystemExit(f"flood was not clean: {flood_report.get('reason')} {flood_err.decode()[-1000:]}")
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
        if code != 0:
            raise SystemExit(f"the server exited {code}: {open(log).read()[-2000:]}")
        mean = sum(spread) / len(spread)
        return {
            "connect_per_sec": args.conns / report["connect_secs"],
            "spread": spread if mode == "--workers" else None,
            "busiest_over_mean": max(spread) / mean if mode == "--workers" else None,
            "flood_mb_per_sec": flood_report["mb_per_sec"],
        }
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        out.close()
        err.close()
        for path in (transcript, log):
            try:
                os.remove(path)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", help="another build's simple_tcp_server to compare with (default: this build's "
                    "--threads W)")
    ap.add_argument("--name", default="other", help="what to call the other build")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--conns", type=int, default=19_000)
    ap.add_argument("--flood-conns", type=int, default=100)
    ap.add_argument("--flood-bytes", type=parse_bytes, default=parse_bytes("1GB"))
    ap.add_argument("--doc", action="store_true")
    args = ap.parse_args()
    if args.doc:
        blocks.check("workers")
    signal.signal(signal.SIGINT, lambda *_: (stop_all(), sys.exit(130)))
    subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, check=True)
    ours = os.path.join(REL, "simple_tcp_server")
    other = args.name if args.other else f"--threads {args.workers}"
    this = "this build" if args.other else f"--workers {args.workers}"
    designs = {this: (ours, "--workers"), other: (args.other, "--workers") if args.other else (ours, "--threads")}
    runs = {name: [] for name in designs}
    try:
        for i in range(args.runs):
            order = list(designs.items()) if i % 2 == 0 else list(reversed(designs.items()))
            for name, (binary, mode) in order:
                r = one_run(binary, mode, args)
                runs[name].append(r)
                spread = f", spread {r['spread']} (busiest {r['busiest_over_mean']:.3f}x the mean)" \
                    if r["spread"] else ""
                print(f"run {i + 1} {name}: {r['connect_per_sec']:.0f} conn/s{spread}, "
                      f"flood {r['flood_mb_per_sec']:.0f} MB/s", file=sys.stderr)
    finally:
        stop_all()
    med = {name: {key: statistics.median(r[key] for r in rs) if rs[0][key] is not None else None
                  for key in ("connect_per_sec", "busiest_over_mean", "flood_mb_per_sec")}
           for name, rs in runs.items()}
    result = {
        "commit": head_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(["scripts/workers_bench.py", *sys.argv[1:]]),
        "workers": args.workers, "conns": args.conns, "flood_conns": args.flood_conns,
        "flood_bytes": args.flood_bytes, "runs": runs, "medians": med,
        "designs": {name: {"binary": "this checkout's" if binary == ours else binary, "mode": mode}
                    for name, (binary, mode) in designs.items()},
        "ratios": {key: med[this][key] / med[other][key] for key in ("connect_per_sec", "flood_mb_per_sec")},
    }
    json_path = os.path.join(ROOT, "docs", "measurements", "workers.json") if args.doc else \
        os.path.join(ROOT, "target", "workers_bench.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    lines = [
        f"Measured {result['date']} at commit `{result['commit']}` with `{result['command']}`; data: "
        "[`docs/measurements/workers.json`](measurements/workers.json).",
        "",
        f"| median of {args.runs} interleaved runs | `{this}` | `{other}` | ratio |",
        "|---|---:|---:|---:|",
        f"| accept: connections/s ({args.conns:,} connected and held) | "
        f"{med[this]['connect_per_sec']:,.0f} | {med[other]['connect_per_sec']:,.0f} | "
        f"{result['ratios']['connect_per_sec']:.3f}x |",
        f"| spread: busiest worker / mean | {med[this]['busiest_over_mean']:.3f} | "
        + (f"{med[other]['busiest_over_mean']:.3f} | |" if med[other]["busiest_over_mean"] else "(one process) | |"),
        f"| flood MB/s ({args.flood_conns} clients) | {med[this]['flood_mb_per_sec']:,.0f} | "
        f"{med[other]['flood_mb_per_sec']:,.0f} | {result['ratios']['flood_mb_per_sec']:.3f}x |",
    ]
    print("\n".join(lines))
    if args.doc:
        blocks.write("workers", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
