#!/usr/bin/env python3
"""Pools the flood runs of several `load_bench.py --scenario cores` sessions:
per session and over all of them, each of two designs' median
MB/s, the ratio of those medians, and the median of their run-by-run ratios (runs are
interleaved, so run i of each design ran side by side).

    scripts/cores_pool.py docs/measurements/cores.json target/cores-second-session.json ...
    scripts/cores_pool.py --over threads-1 --design threads-2 FILE...       (the default pair)
    scripts/cores_pool.py --over tokio-direct --design threads-2 FILE...

A FILE is the JSON that load_bench.py writes (--json-out), or the text it
prints (its `cores flood N: DESIGN [MB/s, ...] ...` progress lines carry
every run's MB/s). A session without one of the two designs is skipped.
Standard library only.
"""

import argparse
import ast
import json
import re
import statistics
import sys

PROGRESS = re.compile(r"^cores flood (\d+): (.*)$")
LIST = re.compile(r"(\S+) (\[[^\]]*\])")


def sessions_of(path):
    """{clients: {design: [MB/s per run]}} of one file."""
    runs = {}
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        for entry in (data.get("cores") or {}).get("flood") or []:
            runs[entry["conns"]] = {k: v["mb_per_sec"] for k, v in entry["per"].items()}
        return runs
    for line in text.splitlines():
        m = PROGRESS.match(line)
        if m:
            runs[int(m.group(1))] = {k: ast.literal_eval(v) for k, v in LIST.findall(m.group(2))}
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--over", default="threads-1", help="the design divided by (default: threads-1)")
    ap.add_argument("--design", default="threads-2", help="the design divided (default: threads-2)")
    args = ap.parse_args()

    files = []
    for path in args.files:
        try:
            files.append((path, sessions_of(path)))
        except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
            sys.exit(f"cores_pool: {path}: {e}")
    pooled = {}
    print(f"| session | clients | runs | {args.design} MB/s | {args.over} MB/s | ratio of medians | "
          f"median of run-by-run ratios |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, sessions in files:
        for clients, per in sorted(sessions.items()):
            a, b = per.get(args.design), per.get(args.over)
            if not a or not b or len(a) != len(b):
                continue
            pool = pooled.setdefault(clients, ([], []))
            pool[0].extend(a)
            pool[1].extend(b)
            paired = statistics.median(x / y for x, y in zip(a, b))
            print(f"| {path} | {clients} | {len(a)} | {statistics.median(a):.0f} | {statistics.median(b):.0f} | "
                  f"{statistics.median(a) / statistics.median(b):.3f}x | {paired:.3f}x |")
    if not pooled:
        sys.exit(f"cores_pool: no session has both {args.design} and {args.over}")
    for clients, (a, b) in sorted(pooled.items()):
        paired = statistics.median(x / y for x, y in zip(a, b))
        print(f"| all pooled | {clients} | {len(a)} | {statistics.median(a):.0f} | {statistics.median(b):.0f} | "
              f"{statistics.median(a) / statistics.median(b):.3f}x | {paired:.3f}x |")


if __name__ == "__main__":
    main()
