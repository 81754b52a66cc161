"""Generated blocks of docs/PERFORMANCE.md: each measurement script puts its
result between `<!-- NAME:start -->` and `<!-- NAME:end -->`, stamped with
the commit it measured and its command, and keeps its data in
docs/measurements/. Standard library only."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
MEASUREMENTS = os.path.join(ROOT, "docs", "measurements")
# Files the scripts write: a run that changed only these measured clean code.
GENERATED = [":(exclude)README.md", ":(exclude)docs", ":(exclude)scripts"]


def check(name):
    """Exits with a clear message unless the document has block `name`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(DOC) as f:
        text = f.read()
    if start not in text or end not in text.split(start, 1)[1]:
        sys.exit(f"{os.path.basename(sys.argv[0])}: docs/PERFORMANCE.md has no {start} ... {end} block; "
                 "add the markers where the result goes")


def write(name, block):
    """Replaces block `name` of docs/PERFORMANCE.md with `block`."""
    check(name)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(DOC) as f:
        text = f.read()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(DOC, "w") as f:
        f.write(f"{head}{start}\n{block.strip()}\n{end}{tail}")
    print(f"docs/PERFORMANCE.md: block {name} written", file=sys.stderr)


def head_commit():
    """The commit measured: short hash, `-dirty` if the measured code (src,
    benches, examples, Cargo.toml, Cargo.lock) differs from it."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "src", "benches", "examples", "Cargo.toml", "Cargo.lock")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("-dirty" if dirty else "")
