#!/usr/bin/env python3
"""Soak test (issue 6), outside CI: churn connections at about 1,000 per
second (connect, greeting, one message, close) while a few thousand are held
open, and sample the server's RSS and open descriptors every 10 seconds.

    scripts/soak.py [--minutes 10] [--hold 3000] [--rate 1000] [--interval 10]

Loopback only; bounded (the load stops after --minutes, the script after a
few more seconds); only the processes it starts are signalled, by PID. At
the end it says whether memory and descriptors came back to their baseline.
Standard library only.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    rss_kb = int(status["VmRSS"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = int(status["Threads"])
    return rss_kb, fds, threads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--hold", type=int, default=3000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(REL, "simple_tcp_server"), "127.0.0.1", str(port), "--stats", "60s"],
        stdout=subprocess.DEVNULL, stderr=open("/tmp/soak_server.err", "w"),
    )
    try:
        time.sleep(0.5)
        base = sample(server.pid)
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: server pid {server.pid}, port {port}; "
              f"hold {args.hold}, churn {args.rate}/s for {args.minutes} min")
        print(f"{'t (s)':>6} {'RSS kB':>8} {'fds':>6} {'threads':>7}  phase")
        print(f"{0:>6} {base[0]:>8} {base[1]:>6} {base[2]:>7}  baseline")
        secs = int(args.minutes * 60)
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
        report = load.communicate(timeout=60)[0]
        clean = load.returncode == 0
        time.sleep(3)
        after = sample(server.pid)
        t = time.time() - started
        print(f"{t:>6.0f} {after[0]:>8} {after[1]:>6} {after[2]:>7}  after the load")
        print(f"tcp_load: {report.strip()}")
        peak = max((s[1] for s in series), default=after[0])
        print(f"\nRSS: baseline {base[0]} kB, peak {peak} kB, after {after[0]} kB; "
              f"descriptors: baseline {base[1]}, after {after[1]}")
        fds_back = after[1] == base[1]
        # RSS: the slab and buffers keep their high-water mark by design (no
        # shrinking); what matters is that it stops growing.
        half = len(series) // 2
        growth = (series[-1][1] - series[half][1]) if len(series) > 2 else 0
        print(f"descriptors back to baseline: {'yes' if fds_back else 'NO'}; "
              f"RSS growth over the second half of the load: {growth} kB")
        if not clean:
            print("tcp_load: the run was NOT CLEAN (see its reason above)")
        return 0 if fds_back and clean else 1
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
