#!/usr/bin/env python3
"""The held million, alive: connections held while a message rate is spread
over all of them, with a latency probe beside, measured with the real
binaries on loopback.

    scripts/alive.py --runs HELD:RATE[:COALESCE[:NICE]] ... [--secs 120] [--tick 10ms]
                     [--load-nice 10] [--probe-rate 100] [--workers W] [--procs P]
                     [--keep-free-fds 200000] [--keep-free-gib 2] [--in-flight 64]
                     [--perf SECONDS] [--connect-perf SECONDS] [--doc] [--server PATH]

Each run:
1. Plans as scripts/capacity.py does: every connection costs two
   descriptors and kernel memory for both ends, so HELD is lowered (and it
   says so) until --keep-free-fds descriptors and --keep-free-gib of memory
   stay free; then enough workers and generator processes for it.
2. Starts `simple_tcp_server --workers W` (with `--coalesce COALESCE` when
   the run names one) with the transcript on tmpfs, and
   `tcp_load --procs P chat --conns HELD --rate RATE --secs SECS`: every
   connection is opened and greeted, then RATE messages a second go round
   robin over all of them (with a million held and 50,000 a second, each
   connection speaks every 20 s), each message 25 bytes with its own
   identifier. The generator stands in for clients on other machines: it
   runs at niceness NICE (default --load-nice 10), so that on these shared
   cores the server's processes come first, and each of its processes
   wakes every --tick to send what is due (a 1 ms tick would cost 56
   processes 56,000 wakeups a second).
3. Once every connection is up, starts `tcp_load probe` beside them: four
   clients send --probe-rate numbered messages a second and time each
   from its write to its line in the transcript file.
4. Samples every 2 s: MemAvailable (the run stops at once under
   --keep-free-gib), the server's memory (RSS of every worker and the
   supervisor), and the CPU time of the server's processes, the
   generator's and the whole machine's.
5. When the chat ends (tcp_load half-closes every connection and waits for
   the server to close each), sends SIGTERM to the server and checks: it
   exits 0; its summary counts every connection; and the transcript has
   every chat message the generator wrote exactly once (by identifier:
   each generator process numbers its messages 0, 1, 2 ...).

The result is JSON (docs/measurements/alive.json with --doc, else
target/alive.json), and with --doc the block between <!-- alive:start -->
and <!-- alive:end --> of docs/PERFORMANCE.md, stamped with the commit
measured and the command. Runs of the same HELD:RATE:COALESCE:NICE are
summarised by their medians. A run is clean when nothing was lost or
printed twice, no connection failed and the server exited 0; whether the
generator reached the rate asked is reported apart, as the delivered rate. It stops every process it started, by PID, on
any exit (including Ctrl-C). Standard library only; loopback only.
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocks  # noqa: E402
import capacity  # noqa: E402
from blocks import head_commit  # noqa: E402
from capacity import (REL, ROOT, TMPFS, children, files_in_use, fmt_bytes, hard_nofile,  # noqa: E402
                      meminfo, read, sockstat, sysctls)

# The binaries: this checkout's release build, or STCP_BIN_DIR's.
BIN = os.environ.get("STCP_BIN_DIR", REL)
CHAT_ID = re.compile(rb"<25:c\d{5} says: (\d{3})\.(\d{8})>")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# --connect-perf starts this long after the generator, past its start-up.
CONNECT_PERF_AFTER = 10
PERF_FILES = []  # perf data files, removed however the script ends


def cpu_secs(pids):
    """User + system CPU seconds of `pids` (those still running)."""
    total = 0
    for pid in pids:
        try:
            stat = read(f"/proc/{pid}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def profile(seconds, path, top=8):
    """`perf record -a` of the whole machine for `seconds`: the share of its
    CPU samples by process kind (generator, workers, supervisor, probe,
    idle, other) and the `top` symbols, of all and of each kind, counted
    from sample counts (56 workers' shares would drift if their rounded
    percentages were added). Returns a function that waits for it and gives
    the summary, with when it started (None without perf, or if perf
    failed)."""
    started = time.time()
    try:
        rec = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-F", "499", "-o", path, "--", "sleep",
                                str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return lambda: None
    capacity.STARTED.append(rec)
    PERF_FILES.append(path)

    def finish():
        if rec.wait() != 0 or not os.path.exists(path):
            remove_quietly(path)
            return None
        def report(sort):
            out = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none", "-n",
                                  "--sort", sort, "--percent-limit", "0"], capture_output=True, text=True).stdout
            return [(int(m[1]), m[2].strip()) for m in re.finditer(r"^\s+[\d.]+%\s+(\d+)\s+(.+)$", out, re.M)]
        def kind_of(comm):
            return ("tcp_load (generator, probe)" if comm.startswith("tcp_load") else "workers"
                    if comm.startswith("stcp worker") else "supervisor" if comm.startswith("stcp supervisor")
                    else "idle" if comm == "swapper" else "other")
        by_comm = report("comm")
        total = sum(n for n, _ in by_comm) or 1
        pct = lambda n, digits: round(100 * n / total, digits)  # noqa: E731
        kinds = {}
        for n, comm in by_comm:
            kinds[kind_of(comm)] = kinds.get(kind_of(comm), 0) + n
        symbols = [{"pct": pct(n, 2), "symbol": sym} for n, sym in report("sym")[:top]]
        # The same split by the kind of process each sample was in (comm and
        # symbol are the report's columns after the sample count; a symbol
        # is `[k]`, `[.]` or another one-letter mark, then its name).
        by_kind = {}
        for n, line in report("comm,sym"):
            m = re.match(r"(.+?)\s+(\[[^\]]\] .+)$", line)
            if m:
                entries = by_kind.setdefault(kind_of(m[1].strip()), {})
                entries[m[2]] = entries.get(m[2], 0) + n
        by_kind = {k: [{"pct": pct(n, 2), "symbol": sym} for sym, n in sorted(v.items(), key=lambda e: -e[1])[:top]]
                   for k, v in by_kind.items()}
        remove_quietly(path)
        return {"seconds": seconds, "started": started, "samples": total,
                "by_process": {k: pct(n, 1) for k, n in kinds.items()}, "symbols": symbols,
                "symbols_by_process": by_kind}
    return finish


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def server_rss(pids):
    """The RSS of `pids` (not their descriptors: listing a million costs
    the machine more than the sample is worth)."""
    rss = 0
    for pid in pids:
        try:
            rss += int(re.search(r"VmRSS:\s+(\d+) kB", read(f"/proc/{pid}/status"))[1]) * 1024
        except (OSError, TypeError):
            pass
    return rss


def machine_busy():
    """(busy, total, softirq, steal) jiffies of the whole machine, from
    /proc/stat. Busy is all but idle and iowait: it counts steal (time the
    hypervisor gave to others), reported apart, and softirq (the kernel's
    packet work; without CONFIG_IRQ_TIME_ACCOUNTING the ticks it takes are
    also charged to the process it interrupted, so softirq overlaps the
    processes' CPU and is not to be added to it)."""
    fields = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields), fields[6], fields[7]


def check_transcript(path, sent):
    """Every chat message exactly once: each generator process numbers its
    messages 0, 1, 2 ...; returns (distinct, duplicates, missing, gaps,
    the processes seen)."""
    counts = {}
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(64 << 20)
            if not chunk:
                break
            chunk = tail + chunk
            cut = chunk.rfind(b"\n") + 1
            tail = chunk[cut:]
            for m in CHAT_ID.finditer(chunk, 0, cut):
                proc, seq = int(m[1]), int(m[2])
                seen = counts.get(proc)
                if seen is None:
                    seen = counts[proc] = bytearray()
                if seq >= len(seen):
                    seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
                if seen[seq] < 255:
                    seen[seq] += 1
    distinct = duplicates = gaps = 0
    for seen in counts.values():
        top = len(seen.rstrip(b"\0"))
        ones, zeros = seen.count(1, 0, top), seen.count(0, 0, top)
        distinct += top - zeros
        duplicates += top - zeros - ones
        gaps += zeros
    # Numbers run from 0 with no gaps in each process: if exactly as many
    # distinct ones were printed as were sent (the caller checks), every one
    # sent was printed.
    return distinct, duplicates, max(0, sent - distinct), gaps, sorted(counts)


def plan(held, rate, args):
    """The run's connection count (lowered to keep the reserve), workers and
    generator processes, and notes on what was lowered."""
    limits = sysctls()
    file_max = int(limits["fs.file-max"])
    in_use = files_in_use()
    mem = meminfo()
    per_proc = min(capacity.PER_PROC, hard_nofile() - capacity.RESERVE_PER_PROC)
    by_fds = (file_max - in_use - args.keep_free_fds) // 2
    # The transcript grows in tmpfs (memory): about 40 bytes a message.
    transcript = 40 * (rate + args.probe_rate) * args.secs
    by_mem = (mem["MemAvailable"] - int(args.keep_free_gib * (1 << 30)) - (1 << 30) - transcript) \
        // capacity.GUESS_BYTES_PER_CONN
    target = min(held, by_fds, by_mem)
    notes = []
    if target < held:
        why = "descriptors" if by_fds <= by_mem else "memory"
        notes.append(f"held lowered from {held:,} to {target:,} to keep {args.keep_free_fds:,} descriptors "
                     f"and {args.keep_free_gib} GiB free ({why} bound)")
        print("alive: " + notes[-1], file=sys.stderr)
    procs = max(1, math.ceil(target / per_proc))
    workers = max(procs, args.workers or 0)
    return target, workers, max(procs, args.procs or 0), notes, limits


def one_run(held, rate, coalesce, load_nice, args):
    target, workers, procs, notes, limits = plan(held, rate, args)
    if target < 1:
        raise SystemExit("alive: this machine has no room for the run")
    keep_mem = int(args.keep_free_gib * (1 << 30))
    print(f"alive: {target:,} held, {rate:,} msg/s, {workers} workers, {procs} generator processes"
          + (f", --coalesce {coalesce}" if coalesce else ""), file=sys.stderr)
    transcript = os.path.join(TMPFS, f"alive-{os.getpid()}.out")
    log = os.path.join(TMPFS, f"alive-{os.getpid()}.err")
    server_bin = args.server or os.path.join(BIN, "simple_tcp_server")
    server_cmd = [server_bin, "127.0.0.1", "0", "--workers", str(workers), "--backlog", "4096"]
    if coalesce:
        server_cmd += ["--coalesce", coalesce]
    try:
        return measure(target, workers, procs, notes, limits, held, rate, coalesce, load_nice, args,
                       transcript, log, server_cmd)
    finally:
        capacity.stop_all()
        for path in (transcript, log, *PERF_FILES):
            remove_quietly(path)
        PERF_FILES.clear()


def lines_of(pipe, into):
    """Collects `pipe`'s lines into the list `into` (on a thread)."""
    for line in pipe:
        into.append(line.decode(errors="replace").rstrip("\n"))


def measure(target, workers, procs, notes, limits, held, rate, coalesce, load_nice, args, transcript, log,
            server_cmd):
    import threading
    keep_mem = int(args.keep_free_gib * (1 << 30))
    out, err = open(transcript, "wb"), open(log, "wb")
    server = subprocess.Popen(server_cmd, stdout=out, stderr=err, env={**os.environ, "RUST_LOG": "info"})
    capacity.STARTED.append(server)
    deadline = time.time() + 60
    port = None
    while port is None:
        with open(transcript, "rb") as f:
            m = re.match(rb"Listening to:  127\.0\.0\.1:(\d+)\n", f.readline())
        if m:
            port = int(m[1])
        elif server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"alive: the server did not start: {read(log)[-2000:]}")
        else:
            time.sleep(0.05)
    # Every worker said it is ready (a worker's clients wait until it is).
    while workers > 1 and len(re.findall(r"worker \d+ is ready", read(log))) < workers:
        if server.poll() is not None:
            raise SystemExit(f"alive: the server exited before every worker was ready: {read(log)[-2000:]}")
        if time.time() > deadline:
            raise SystemExit(f"alive: not every worker got ready within 60 s: {read(log)[-2000:]}")
        time.sleep(0.05)
    server_pids = lambda: [server.pid, *children(server.pid)]  # noqa: E731
    start_rss = server_rss(server_pids())

    nice = ["nice", "-n", str(load_nice)] if load_nice else []
    chat_cmd = [*nice, os.path.join(BIN, "tcp_load"), "--port", str(port), "--procs", str(procs), "--in-flight", str(args.in_flight),
                "--server-pid", str(server.pid), "--timeout", f"{args.secs + 600}s", "--json", "--quiet", "--announce",
                "chat", "--conns", str(target), "--rate", str(rate), "--secs", f"{args.secs}s", "--tick", args.tick]
    chat = subprocess.Popen(chat_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    capacity.STARTED.append(chat)
    t0 = time.time()
    chat_err = []
    threading.Thread(target=lines_of, args=(chat.stderr, chat_err), daemon=True).start()
    finish_connect_profile = None
    # tcp_load says when the chat begins ("all N" or "M of N connections
    # are up"; a run with some missing is not clean, and says so at the end).
    while not any(line.startswith("tcp_load: ") and line.endswith(" connections are up") for line in chat_err):
        if chat.poll() is not None:
            time.sleep(0.5)
            raise SystemExit("alive: tcp_load ended early: " + "\n".join(chat_err)[-2000:])
        if meminfo()["MemAvailable"] < keep_mem:
            raise SystemExit("alive: MemAvailable fell under the floor while connecting; stopped")
        if args.connect_perf and finish_connect_profile is None and time.time() >= t0 + CONNECT_PERF_AFTER:
            finish_connect_profile = profile(args.connect_perf, transcript + ".connect.perf", top=12)
        time.sleep(0.1)
    t_up = time.time()
    connect_secs = t_up - t0
    print(f"alive: {target:,} up in {connect_secs:.1f} s", file=sys.stderr)
    probe_secs = max(1, args.secs - 10)
    probe_cmd = [os.path.join(BIN, "tcp_load"), "--port", str(port), "--json", "probe",
                 "--transcript", transcript, "--rate", str(args.probe_rate), "--secs", f"{probe_secs}s"]
    probe = subprocess.Popen(probe_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    capacity.STARTED.append(probe)

    samples = []
    finish_profile = None
    load_pids = lambda: [chat.pid, *children(chat.pid)]  # noqa: E731
    first = last = None
    min_avail = meminfo()["MemAvailable"]
    while chat.poll() is None:
        mi = meminfo()
        min_avail = min(min_avail, mi["MemAvailable"])
        if mi["MemAvailable"] < keep_mem:
            raise SystemExit("alive: MemAvailable fell under the floor; stopped")
        rss = server_rss(server_pids())
        loaders = load_pids()
        now = (time.time(), cpu_secs(server_pids()), cpu_secs(loaders), cpu_secs([probe.pid]), machine_busy())
        samples.append({"t": round(now[0] - t0, 1), "rss": rss, "avail": mi["MemAvailable"],
                        "server_cpu": round(now[1], 2), "load_cpu": round(now[2], 2)})
        samples[-1]["load_rss"] = server_rss(loaders)
        # The profile: the middle of the chat, away from its start and end.
        if args.perf and finish_profile is None and now[0] >= t_up + max(0, (args.secs - args.perf) / 2):
            finish_profile = profile(args.perf, transcript + ".perf")
        # CPU shares over the chat itself: from once all are up to the end
        # of its --secs (not the close after it, when processes exit).
        if now[0] <= t_up + args.secs + 1:
            if first is None:
                first = now
            last = now
        time.sleep(2)
    prof = finish_profile() if finish_profile else None
    connect_prof = finish_connect_profile() if finish_connect_profile else None
    if args.connect_perf:
        if connect_prof is None:
            notes.append("--connect-perf: no profile (every connection was up before it was to start, or perf failed)")
        else:
            # Where the profile fell: it should end before all were up.
            connect_prof["from_s"] = round(connect_prof["started"] - t0, 1)
            connect_prof["to_s"] = round(connect_prof["started"] + args.connect_perf - t0, 1)
            if connect_prof["started"] + args.connect_perf > t_up:
                notes.append(f"--connect-perf: the profile ran past the connecting (all up at {connect_secs:.1f} s, "
                             f"the profile to {connect_prof['to_s']} s): it includes the chat")
        if notes and notes[-1].startswith("--connect-perf"):
            print("alive: " + notes[-1], file=sys.stderr)
    chat_out = chat.stdout.read()
    chat.wait(timeout=60)
    chat_report = json.loads(chat_out.decode().strip().splitlines()[-1]) if chat_out.strip() else {}
    probe_out, probe_err = probe.communicate(timeout=120)
    probe_report = json.loads(probe_out.decode().strip().splitlines()[-1]) if probe_out.strip() else {}
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=120)
    out.close()
    err.close()
    stderr = read(log)
    summary = re.search(r"summary: (\d+) connections", stderr)
    accepted = int(summary[1]) if summary else None
    sent = chat_report.get("messages", 0)
    t_check = time.time()
    distinct, duplicates, missing, gaps, processes = check_transcript(transcript, sent)
    transcript_bytes = os.path.getsize(transcript)
    print(f"alive: transcript checked in {time.time() - t_check:.0f} s", file=sys.stderr)

    span = last[0] - first[0] if first and last[0] > first[0] else None
    busy = (last[4][0] - first[4][0]) / max(1, last[4][1] - first[4][1]) if span else None
    # Shares of the machine's time over the chat (of all CPUs' time).
    share = lambda i: round((last[4][i] - first[4][i]) / max(1, last[4][1] - first[4][1]), 3) if span else None  # noqa: E731
    peak_rss = max((s["rss"] for s in samples), default=start_rss)
    # Clean: nothing lost or doubled, no connection failed, a clean exit.
    # Whether the generator reached the rate asked is reported apart (as
    # the delivered rate): on a saturated machine it may fall short.
    errors = sum((chat_report.get("errors") or {}).values())
    probe_clients = probe_report.get("clients", 0)
    ok = (code == 0 and errors == 0 and chat_report.get("established") == target and sent > 0
          and probe_report.get("ok") is True and accepted == target + probe_clients
          and distinct == sent and duplicates == 0 and missing == 0 and gaps == 0
          and processes == (list(range(1, procs + 1)) if procs > 1 else [0])
          and chat_report.get("messages_acked") == sent and min_avail >= keep_mem)
    load_rss = max((s.get("load_rss", 0) for s in samples), default=0)
    return {
        "held": target, "requested_held": held, "rate": rate, "coalesce": coalesce or "500us (default)",
        "workers": workers, "procs": procs, "secs": args.secs, "tick": args.tick, "load_nice": load_nice,
        "connect_secs": round(connect_secs, 1), "in_flight": args.in_flight,
        "connect_rate": round((chat_report.get("established") or 0) / connect_secs) if connect_secs > 0 else None,
        "sent": sent, "acked": chat_report.get("messages_acked"),
        # Acknowledged messages per second of the paced phase.
        "delivered_rate": round(chat_report.get("rate_achieved") or 0),
        "printed_once": distinct - duplicates, "printed_distinct": distinct, "processes_seen": len(processes), "duplicates": duplicates, "missing": missing, "gaps": gaps,
        "blocked_writes": chat_report.get("blocked_writes"),
        "errors": errors, "load_verdict": chat_report.get("reason") or "clean",
        "established": chat_report.get("established"),
        "kept_up": chat_report.get("kept_up"),
        "server_cpu_us_per_msg": chat_report.get("cpu_us_per_msg"),
        "server_cpu_util": chat_report.get("server_cpu_util"),
        "load_cpu_util": round((last[2] - first[2]) / span, 3) if span else None,
        "probe_cpu_util": round((last[3] - first[3]) / span, 3) if span else None,
        "machine_busy": round(busy, 3) if busy is not None else None,
        "softirq_share": share(2), "steal_share": share(3),
        "probe": {k: probe_report.get(k) for k in ("sent", "printed", "missing", "duplicates", "split",
                                                     "p50_ms", "p99_ms", "p999_ms", "max_ms", "ok", "reason")},
        "probe_stderr": probe_err.decode(errors="replace")[-2000:],
        "load_rss_peak": load_rss, "load_bytes_per_conn": round(load_rss / target, 1),
        "server_rss_start": start_rss, "server_rss_peak": peak_rss,
        # User memory (RSS) only; the kernel's socket memory is in the
        # capacity block.
        "server_bytes_per_conn": round((peak_rss - start_rss) / target, 1),
        "min_mem_available": min_avail, "transcript_bytes": transcript_bytes,
        "server_exit": code, "summary_accepted": accepted, "notes": notes, "ok": ok,
        "chat_command": " ".join(os.path.basename(c) if c.startswith("/") else c for c in chat_cmd),
        "server_command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(server_cmd)),
        "probe_command": " ".join(os.path.basename(c) if i == 0 else
                                  ("TRANSCRIPT" if c == transcript else c) for i, c in enumerate(probe_cmd)),
        "profile": prof, "connect_profile": connect_prof, "samples": samples, "limits": limits,
    }


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarise(runs):
    """Runs grouped by held, rate, coalesce and niceness, with medians."""
    groups = {}
    for r in runs:
        groups.setdefault((r["held"], r["rate"], r["coalesce"], r["load_nice"]), []).append(r)
    rows = []
    for (held, rate, coalesce, nice), rs in groups.items():
        rows.append({
            "held": held, "rate": rate, "coalesce": coalesce, "load_nice": nice, "runs": len(rs),
            "delivered_rate": median([r["delivered_rate"] for r in rs]),
            "sent": sum(r["sent"] for r in rs),
            "printed_once": sum(r["printed_once"] for r in rs),
            "duplicates": sum(r["duplicates"] for r in rs), "missing": sum(r["missing"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "p50_ms": median([r["probe"]["p50_ms"] for r in rs]),
            "p99_ms": median([r["probe"]["p99_ms"] for r in rs]),
            "p99_ms_each": [r["probe"]["p99_ms"] for r in rs],
            "p999_ms": median([r["probe"]["p999_ms"] for r in rs]),
            "max_ms": median([r["probe"]["max_ms"] for r in rs]),
            "server_cpu_us_per_msg": median([r["server_cpu_us_per_msg"] for r in rs]),
            "server_cpu_util": median([r["server_cpu_util"] for r in rs]),
            "load_cpu_util": median([r["load_cpu_util"] for r in rs]),
            "machine_busy": median([r["machine_busy"] for r in rs]),
            "server_bytes_per_conn": median([r["server_bytes_per_conn"] for r in rs]),
            "probe_missing": sum(r["probe"]["missing"] or 0 for r in rs),
            "ok": all(r["ok"] for r in rs),
        })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, metavar="HELD:RATE[:COALESCE[:NICE]]",
                    help="one run each (e.g. 1000000:50000: a million held, 50,000 msg/s), in order (repeat one to get a median); COALESCE is the server's "
                         "--coalesce (default its own, 500us), NICE the generator's niceness (default --load-nice)")
    ap.add_argument("--secs", type=int, default=120, help="seconds of chat per run")
    ap.add_argument("--tick", default="10ms",
                    help="the generator's pacing tick (tcp_load chat --tick): each of its processes wakes this "
                         "often, and sends what is due")
    ap.add_argument("--probe-rate", type=int, default=100)
    ap.add_argument("--load-nice", type=int, default=10,
                    help="the generator's niceness (the server and the probe stay at 0): it stands in for "
                         "clients on other machines, so the server's processes come first on shared cores")
    ap.add_argument("--workers", type=int, help="server workers (default and least: as many as HELD needs)")
    ap.add_argument("--procs", type=int, help="generator processes (default and least: as many as HELD needs)")
    ap.add_argument("--keep-free-fds", type=int, default=200_000)
    ap.add_argument("--keep-free-gib", type=float, default=2.0)
    ap.add_argument("--doc", action="store_true",
                    help="write docs/measurements/alive.json and the block in docs/PERFORMANCE.md")
    ap.add_argument("--server", metavar="PATH", help="the server binary to measure (default: this checkout's)")
    ap.add_argument("--perf", type=int, default=0, metavar="SECONDS",
                    help="profile the whole machine (perf record -a) for this long in the middle of each chat")
    ap.add_argument("--connect-perf", type=int, default=0, metavar="SECONDS",
                    help=f"profile the whole machine for this long while the connections are opened, from "
                         f"{CONNECT_PERF_AFTER} s after the generator starts (it must still be connecting then)")
    ap.add_argument("--in-flight", type=int, default=64,
                    help="connections each generator process has connecting at once (tcp_load --in-flight)")
    ap.add_argument("--out", metavar="PATH", help="where the JSON goes (default: target/alive.json)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries as built (in STCP_BIN_DIR if set, else target/release)")
    args = ap.parse_args()
    if args.secs < 1:
        ap.error("--secs must be at least 1")
    specs = []
    for spec in args.runs:
        parts = spec.split(":")
        try:
            held, rate = int(parts[0]), int(parts[1])
            nice = int(parts[3]) if len(parts) > 3 else args.load_nice
        except (IndexError, ValueError):
            ap.error(f"--runs takes HELD:RATE[:COALESCE[:NICE]], not {spec!r}")
        if held < 1 or rate < 1 or len(parts) > 4:
            ap.error(f"--runs takes HELD:RATE[:COALESCE[:NICE]] with positive numbers, not {spec!r}")
        specs.append((held, rate, parts[2] if len(parts) > 2 and parts[2] else None, nice))
    if args.doc:
        blocks.check("alive")
    signal.signal(signal.SIGINT, capacity.on_signal)
    signal.signal(signal.SIGTERM, capacity.on_signal)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, check=True)
    commit = head_commit()
    runs = []
    try:
        for held, rate, coalesce, nice in specs:
            runs.append(one_run(held, rate, coalesce, nice, args))
            capacity.stop_all()
            capacity.STARTED.clear()
            r = runs[-1]
            print(f"alive: {r['held']:,} held at {r['rate']:,}/s: sent {r['sent']:,}, printed once "
                  f"{r['printed_once']:,}, probe p50 {r['probe']['p50_ms']} ms p99 {r['probe']['p99_ms']} ms, "
                  f"server {r['server_cpu_us_per_msg']} us/msg, ok {r['ok']}", file=sys.stderr)
    finally:
        capacity.stop_all()
    result = {
        "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "scripts/alive.py " + " ".join(sys.argv[1:]),
        "summary": summarise(runs), "runs": runs, "ok": all(r["ok"] for r in runs),
    }
    path = args.out or (os.path.join(ROOT, "docs", "measurements", "alive.json") if args.doc
                        else os.path.join(ROOT, "target", "alive.json"))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    if args.doc:
        write_doc(result)
    if not result["ok"]:
        print(f"alive: a run was not clean (see {path})", file=sys.stderr)
        return 1
    return 0


def num(value, fmt):
    """`value` formatted, or n/a when there is none."""
    return "n/a" if value is None else fmt.format(value)


def write_doc(r):
    runs = r["runs"]
    lines = [
        f"Measured {r['date']} at commit `{r['commit']}` with `{r['command']}` "
        f"(server: `{runs[0]['server_command']}`; load: `{runs[0]['chat_command']}`; "
        f"probe: `{runs[0]['probe_command']}`); data: [`docs/measurements/alive.json`](measurements/alive.json).",
        "",
        "| held | `--coalesce` | generator nice | asked msg/s | delivered msg/s | runs | printed exactly once | lost "
        "| probe p50 | p99 | p99.9 | max | server CPU per msg | server CPU | generator CPU | machine busy "
        "| server RSS per conn |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["summary"]:
        coalesce = "500us" if s["coalesce"].startswith("500us") else s["coalesce"]
        p99 = num(s["p99_ms"], "{:.1f} ms")
        if s["runs"] > 1:
            p99 += f" ({', '.join(num(x, '{:.1f}') for x in s['p99_ms_each'])})"

        lines.append(
            f"| {s['held']:,} | {coalesce} | {s['load_nice']} | {s['rate']:,} | {s['delivered_rate']:,} | {s['runs']} "
            f"| {s['printed_once']:,} of {s['sent']:,} | {s['missing'] + s['errors'] + s['probe_missing']} "
            f"| {num(s['p50_ms'], '{:.2f} ms')} | {p99} | {num(s['p999_ms'], '{:.1f} ms')} "
            f"| {num(s['max_ms'], '{:.0f} ms')} "
            f"| {num(s['server_cpu_us_per_msg'], '{:.1f} µs')} | {num(s['server_cpu_util'], '{:.2f} core')} "
            f"| {num(s['load_cpu_util'], '{:.2f} core')} "
            f"| {num(s['machine_busy'] and 100 * s['machine_busy'], '{:.0f} %')} | {s['server_bytes_per_conn']} B |")
    for run in runs:
        prof = run.get("profile")
        if not prof:
            continue
        coalesce = run["coalesce"].split(" ")[0]
        lines += ["", f"Where the CPU went, {run['held']:,} held at {run['rate']:,} msg/s (`--coalesce {coalesce}`, "
                  f"generator at nice {run['load_nice']}): `perf record -a` for {prof['seconds']} s in the middle "
                  "of the chat, share of all samples:", "",
                  "| by process | share |", "|---|---:|"]
        for kind, pct in sorted(prof["by_process"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {kind} | {pct} % |")
        lines += ["", "| top symbols (kernel `[k]`, user `[.]`) | share |", "|---|---:|"]
        for sym in prof["symbols"]:
            lines.append(f"| `{sym['symbol']}` | {sym['pct']} % |")
    notes = sorted({n for run in runs for n in run["notes"]})
    for note in notes:
        lines += ["", f"Note: {note}."]
    blocks.write("alive", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
