#!/usr/bin/env python3
"""Capacity: how many concurrent connections this machine holds,
and what each costs, measured with the real binaries on loopback.

    scripts/capacity.py [--target 1000000] [--hold 60] [--churn-rate 1000]
                        [--keep-free-fds 200000] [--keep-free-gib 2] [--doc] [--server PATH]

What it does:
1. Reads the machine's limits: fs.file-max and the descriptors in use,
   MemAvailable, fs.nr_open, the open-file hard limit of one process,
   net.ipv4.ip_local_port_range, net.core.somaxconn. It protects the
   machine first: every connection costs two descriptors (client and server
   ends, both on this box) and kernel memory for both sockets, so the target
   is lowered (and it says so) until at least --keep-free-fds descriptors
   and --keep-free-gib of memory would stay free for everything else.
2. Starts `simple_tcp_server --workers W` (enough workers for the target,
   each under its own descriptor limit) with the transcript on tmpfs, and
   `tcp_load --procs P hold` (P generator processes, each with its own
   block of loopback source addresses, so that ephemeral ports never run
   out) to open the target number of connections and hold them.
3. Once all are up, runs `tcp_load churn` beside them (connections opened
   and closed at --churn-rate per second for --hold seconds) and samples,
   every 5 s: MemAvailable (the run is stopped at once if it falls under
   --keep-free-gib), the kernel's slab memory and TCP socket counts
   (/proc/meminfo, /proc/net/sockstat), the server's memory (the RSS of the
   supervisor and every worker) and descriptors.
   With a server that has `--metrics`, it also times scrapes of
   `/metrics`: ten with no client connected, and one at every sample
   while the connections are held, and checks that the open-connection
   gauges add up to the count held.
4. When the hold ends (tcp_load closes its connections and reports), sends
   SIGTERM to the server, checks that it exits 0 and that its summary
   counts every connection, and that the transcript has each connection's
   message.
It stops every process it started, by PID, on any exit (including Ctrl-C).

The result is written as JSON (docs/measurements/capacity.json with --doc,
else target/capacity.json), and with --doc into docs/PERFORMANCE.md between
<!-- capacity:start --> and <!-- capacity:end -->, stamped with the commit
measured and the command. --server PATH measures another build of the
server (say, an older commit's) with the same load. Standard library only;
loopback only.
"""

import argparse
import json
import math
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

# Descriptors kept back per process (stdio, poll, listener, pipes, logs).
RESERVE_PER_PROC = 64
# Connections given to one worker or generator process, under the 20,000
# descriptor cap, with room for SO_REUSEPORT's uneven spread.
PER_PROC = 18_000
# A first guess at the machine's cost of one connection (two sockets and
# both processes' state), refined from the measurement of the run itself.
GUESS_BYTES_PER_CONN = 12 * 1024

STARTED = []  # every process this script started


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
from blocks import head_commit  # noqa: E402


def stop_all(*_):
    for proc in STARTED:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
    for proc in STARTED:
        try:
            proc.wait(timeout=30)
        except Exception:
            pass


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def read(path):
    with open(path) as f:
        return f.read()


def meminfo():
    out = {}
    for line in read("/proc/meminfo").splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def sockstat():
    text = read("/proc/net/sockstat")
    tcp = re.search(r"TCP: inuse (\d+) orphan (\d+) tw (\d+) alloc (\d+) mem (\d+)", text)
    return {"inuse": int(tcp[1]), "tw": int(tcp[3]), "alloc": int(tcp[4]), "mem_pages": int(tcp[5])}


def files_in_use():
    return int(read("/proc/sys/fs/file-nr").split()[0])


def sysctls():
    names = {
        "fs.file-max": "/proc/sys/fs/file-max",
        "fs.nr_open": "/proc/sys/fs/nr_open",
        "net.ipv4.ip_local_port_range": "/proc/sys/net/ipv4/ip_local_port_range",
        "net.core.somaxconn": "/proc/sys/net/core/somaxconn",
        "net.ipv4.tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    }
    return {name: " ".join(read(path).split()) for name, path in names.items()}


def hard_nofile():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read(f"/proc/{entry}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def process_rss_and_fds(pids):
    rss = 0
    fds = 0
    for pid in pids:
        try:
            status = read(f"/proc/{pid}/status")
            rss += int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, TypeError):
            pass
    return rss, fds


def scrape(addr):
    """One GET /metrics: (milliseconds to the whole answer, body)."""
    host, port = addr.rsplit(":", 1)
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: capacity\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    ms = (time.perf_counter() - t0) * 1000
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"capacity: scrape answered {head[:80]!r}")
    return ms, body.decode()


def open_gauge(body):
    """The sum of the open-connection gauges over every reactor."""
    return sum(int(float(m[1])) for m in re.finditer(r"^simple_tcp_server_connections_open\{[^}]*\} (\S+)$", body, re.M))


def ms_stats(values):
    values = sorted(values)
    return {"n": len(values), "median": round(values[len(values) // 2], 2), "max": round(values[-1], 2)} if values else None


def fmt_bytes(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, default=1_000_000)
    ap.add_argument("--hold", type=int, default=60, help="seconds to hold (and churn beside) the connections")
    ap.add_argument("--churn-rate", type=int, default=1000)
    ap.add_argument("--keep-free-fds", type=int, default=200_000)
    ap.add_argument("--keep-free-gib", type=float, default=2.0)
    ap.add_argument("--doc", action="store_true",
                    help="write docs/measurements/capacity.json and the block in docs/PERFORMANCE.md")
    ap.add_argument("--server", metavar="PATH", help="the server binary to measure (default: this checkout's)")
    args = ap.parse_args()
    if args.doc:
        blocks.check("capacity")
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run(args)
    finally:
        stop_all()


def run(args):
    subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, check=True)
    keep_mem = int(args.keep_free_gib * (1 << 30))
    limits = sysctls()
    file_max = int(limits["fs.file-max"])
    in_use = files_in_use()
    mem = meminfo()
    hard = hard_nofile()
    per_proc = min(PER_PROC, hard - RESERVE_PER_PROC)
    # Two descriptors per connection (both ends are here), plus the churn's.
    churn_fds = 2 * args.churn_rate * 2
    by_fds = (file_max - in_use - args.keep_free_fds - churn_fds) // 2
    by_mem = (mem["MemAvailable"] - keep_mem - 512 * (1 << 20)) // GUESS_BYTES_PER_CONN
    target = min(args.target, by_fds, by_mem)
    notes = []
    if target < args.target:
        why = "descriptors" if by_fds <= by_mem else "memory"
        notes.append(
            f"target lowered from {args.target:,} to {target:,} to keep {args.keep_free_fds:,} descriptors "
            f"and {args.keep_free_gib} GiB free ({why} bound: fs.file-max {file_max:,}, {in_use:,} in use, "
            f"MemAvailable {fmt_bytes(mem['MemAvailable'])})"
        )
        print("capacity: " + notes[-1], file=sys.stderr)
    if target <= 0:
        print("capacity: this machine has no room for the run", file=sys.stderr)
        return 1
    workers = max(1, math.ceil(target / per_proc))
    procs = max(1, math.ceil(target / per_proc))
    print(f"capacity: {target:,} connections, {workers} server workers, {procs} generator processes", file=sys.stderr)

    base_mem = meminfo()
    base_sock = sockstat()
    base_files = files_in_use()
    transcript = os.path.join(TMPFS, f"capacity-{os.getpid()}.out")
    log = os.path.join(TMPFS, f"capacity-{os.getpid()}.err")
    server_bin = args.server or os.path.join(REL, "simple_tcp_server")
    server_cmd = [server_bin, "127.0.0.1", "0", "--workers", str(workers), "--backlog", "4096"]
    help_text = subprocess.run([server_bin, "--help"], capture_output=True, text=True).stdout
    metrics = "--metrics" in help_text
    if metrics:
        server_cmd += ["--metrics", "127.0.0.1:0"]
    out = open(transcript, "wb")
    err = open(log, "wb")
    server = subprocess.Popen(server_cmd, stdout=out, stderr=err, env={**os.environ, "RUST_LOG": "info"})
    STARTED.append(server)
    deadline = time.time() + 60
    port = None
    while time.time() < deadline and port is None:
        with open(transcript, "rb") as f:
            first = f.readline()
        m = re.match(rb"Listening to:  127\.0\.0\.1:(\d+)\n", first)
        if m:
            port = int(m[1])
        elif server.poll() is not None:
            print(read(log), file=sys.stderr)
            raise SystemExit("capacity: the server did not start")
        else:
            time.sleep(0.05)
    # One worker runs as one process, with no supervisor and no children.
    while workers > 1 and len(children(server.pid)) < workers and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    metrics_addr = None
    idle_scrapes = []
    while metrics and metrics_addr is None and time.time() < deadline:
        m = re.search(r"metrics on http://(\S+)/metrics", read(log))
        if m:
            metrics_addr = m[1]
        else:
            time.sleep(0.05)
    if metrics and metrics_addr is None:
        raise SystemExit("capacity: the server did not say where its metrics are")
    if metrics_addr:
        for _ in range(10):
            idle_scrapes.append(scrape(metrics_addr)[0])
            time.sleep(0.1)
    start_rss, start_fds = process_rss_and_fds([server.pid, *children(server.pid)])

    hold_secs = args.hold + 5  # covers the churn window and the sampling
    hold_cmd = [os.path.join(REL, "tcp_load"), "--port", str(port), "--procs", str(procs), "--in-flight", "64",
                "--timeout", f"{hold_secs + 600}s", "--json", "--quiet",
                "hold", "--conns", str(target), "--hold", f"{hold_secs}s"]
    hold = subprocess.Popen(hold_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    STARTED.append(hold)
    t0 = time.time()
    samples = []
    # Wait until every connection is up: both ends show in the kernel.
    want = base_sock["inuse"] + 2 * target
    while sockstat()["inuse"] < want:
        if hold.poll() is not None:
            raise SystemExit(f"capacity: tcp_load ended early: {hold.stderr.read().decode()[-2000:]}")
        if meminfo()["MemAvailable"] < keep_mem:
            raise SystemExit("capacity: MemAvailable fell under the floor while connecting; stopped")
        time.sleep(0.5)
    connect_secs = time.time() - t0
    print(f"capacity: {target:,} up in {connect_secs:.1f} s", file=sys.stderr)

    churn_cmd = [os.path.join(REL, "tcp_load"), "--port", str(port), "--source-base", "127.250.0.1",
                 "--json", "--quiet", "--timeout", f"{args.hold + 60}s",
                 "churn", "--rate", str(args.churn_rate), "--secs", f"{args.hold}s"]
    churn = subprocess.Popen(churn_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    STARTED.append(churn)
    min_avail = meminfo()["MemAvailable"]
    t_hold = time.time()
    while time.time() - t_hold < args.hold:
        mi = meminfo()
        min_avail = min(min_avail, mi["MemAvailable"])
        if mi["MemAvailable"] < keep_mem:
            raise SystemExit("capacity: MemAvailable fell under the floor; stopped")
        rss, fds = process_rss_and_fds([server.pid, *children(server.pid)])
        ss = sockstat()
        sample = {
            "t": round(time.time() - t_hold, 1), "rss": rss, "fds": fds, "slab": mi["Slab"],
            "avail": mi["MemAvailable"], "tcp_inuse": ss["inuse"], "files": files_in_use(),
        }
        if metrics_addr:
            ms, body = scrape(metrics_addr)
            sample["scrape_ms"] = round(ms, 2)
            sample["scrape_bytes"] = len(body)
            sample["open_gauge"] = open_gauge(body)
        samples.append(sample)
        time.sleep(5)
    churn_out, churn_err = churn.communicate(timeout=120)
    churn_report = json.loads(churn_out.decode().strip().splitlines()[-1]) if churn_out.strip() else {}
    hold_out, hold_err = hold.communicate(timeout=hold_secs + 600)
    hold_report = json.loads(hold_out.decode().strip().splitlines()[-1]) if hold_out.strip() else {}
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=120)
    out.close()
    err.close()
    stderr = read(log)
    os.remove(log)
    summary = re.search(r"summary: (\d+) connections \((\d+) open at stop", stderr)
    accepted = int(summary[1]) if summary else None

    # Every connection's message: hold sends one, churn one each.
    frames = 0
    with open(transcript, "rb") as f:
        for line in f:
            if line.startswith(b"<"):
                frames += 1
    os.remove(transcript)

    peak = max(samples, key=lambda s: s["slab"]) if samples else None
    held = hold_report.get("greetings", 0)
    churned = churn_report.get("churn_started", 0)
    user_per_conn = (peak["rss"] - start_rss) / target if peak else 0
    kernel_per_conn = (peak["slab"] - base_mem["Slab"]) / target if peak else 0
    held_scrapes = [x["scrape_ms"] for x in samples if "scrape_ms" in x]
    # Churned connections come and go beside the held ones.
    gauges_ok = all(target <= x["open_gauge"] <= target + 2 * args.churn_rate for x in samples if "open_gauge" in x)
    ok = (
        gauges_ok and code == 0 and hold_report.get("ok") is True and churn_report.get("ok") is True
        and held == target and accepted is not None and accepted >= target
        and frames >= target and min_avail >= keep_mem
    )
    result = {
        "commit": head_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "target": target, "requested": args.target, "workers": workers, "procs": procs,
        "connect_secs": round(connect_secs, 1), "held_greeted": held, "hold_errors": sum((hold_report.get("errors") or {}).values()),
        "churned": churned, "churn_errors": sum((churn_report.get("errors") or {}).values()), "server_exit": code,
        "summary_accepted": accepted, "frames_printed": frames,
        "server_rss_start": start_rss, "server_rss_peak": peak["rss"] if peak else None,
        "user_bytes_per_conn": round(user_per_conn, 1), "kernel_slab_bytes_per_conn": round(kernel_per_conn),
        "slab_base": base_mem["Slab"], "slab_peak": peak["slab"] if peak else None,
        "min_mem_available": min_avail, "files_base": base_files,
        "files_peak": max(s["files"] for s in samples) if samples else None,
        "scrape_ms_idle": ms_stats(idle_scrapes), "scrape_ms_held": ms_stats(held_scrapes),
        "scrape_bytes": max((x["scrape_bytes"] for x in samples if "scrape_bytes" in x), default=None),
        "open_gauge_min": min((x["open_gauge"] for x in samples if "open_gauge" in x), default=None),
        "sysctls": limits, "hard_nofile": hard, "notes": notes, "ok": ok,
        "command": "scripts/capacity.py " + " ".join(sys.argv[1:]),
        "hold_command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(hold_cmd)),
        "server_command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(server_cmd)),
        "server_binary": "this checkout's" if not args.server else args.server,
    }
    json_path = os.path.join(ROOT, "docs", "measurements", "capacity.json") if args.doc else \
        os.path.join(ROOT, "target", "capacity.json")
    with open(json_path, "w") as f:
        json.dump({"result": result, "samples": samples, "hold": hold_report, "churn": churn_report}, f, indent=1)
    print(json.dumps(result, indent=1))
    if args.doc:
        write_doc(result, samples)
    if not ok:
        print("capacity: the run was not clean (see target/capacity.json)", file=sys.stderr)
        return 1
    return 0


def write_doc(r, samples):
    lines = [
        f"Measured {r['date']} at commit `{r['commit']}` with `{r['command']}` "
        f"(server: `{r['server_command']}`; load: `{r['hold_command']}`); data: "
        "[`docs/measurements/capacity.json`](measurements/capacity.json).",
        "",
    ]
    for note in r["notes"]:
        lines.append(f"Note: {note}.")
        lines.append("")
    lines += [
        "| | |",
        "|---|---:|",
        f"| connections held at once | {r['held_greeted']:,} (target {r['target']:,}) |",
        f"| server workers / generator processes | {r['workers']} / {r['procs']} |",
        f"| time to connect them all | {r['connect_secs']} s |",
        f"| errors while holding | {r['hold_errors']} |",
        f"| churned beside them ({r['churned']:,} connections) | errors: {r['churn_errors']} |",
        f"| server summary after SIGTERM | {r['summary_accepted']:,} connections, exit {r['server_exit']} |",
        f"| messages printed | {r['frames_printed']:,} |",
        f"| server memory per connection (RSS of all workers) | {r['user_bytes_per_conn']} B |",
        f"| server memory at start (all workers) | {fmt_bytes(r['server_rss_start'])} |",
        f"| kernel slab per connection (both sockets, client and server) | {r['kernel_slab_bytes_per_conn']:,} B |",
        f"| lowest MemAvailable during the hold | {fmt_bytes(r['min_mem_available'])} |",
        f"| descriptors in use: before / peak | {r['files_base']:,} / {r['files_peak']:,} |",
    ]
    if r.get("scrape_ms_held"):
        idle, held = r["scrape_ms_idle"], r["scrape_ms_held"]
        lines += [
            f"| `/metrics` scrape, no client connected: median / max of {idle['n']} | {idle['median']} ms / {idle['max']} ms |",
            f"| `/metrics` scrape while holding them: median / max of {held['n']} | {held['median']} ms / {held['max']} ms |",
            f"| open connections by the scraped gauges (lowest sample) | {r['open_gauge_min']:,} |",
        ]
    lines += [
        "",
        "Limits of this machine that bound the count:",
        "",
        "| limit | value |",
        "|---|---|",
    ]
    for name, value in r["sysctls"].items():
        lines.append(f"| `{name}` | {value} |")
    lines.append(f"| open-file hard limit per process | {r['hard_nofile']:,} |")
    blocks.write("capacity", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
