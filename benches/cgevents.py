#!/usr/bin/env python3
"""Per-request cache misses and branch mispredictions, from two callgrind runs made with
valgrind's cache and branch simulation on (benches/cache-profile.sh makes them).

Like ../shared/perf/cgdiff.py, the figures are the difference of a run of N requests and one
of 3N, divided by 2N, so start-up and shutdown cancel out.

usage: cgevents.py RUN_DIR/cg.NAME.N RUN_DIR/cg.NAME.3N N            per-request totals
       cgevents.py RUN_DIR/cg.NAME.N RUN_DIR/cg.NAME.3N N EVENT [top] functions by EVENT
EVENT is one of callgrind's names: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim."""
import collections
import glob
import re
import subprocess
import sys


def totals(d):
    """Summed totals of every callgrind file in d, by event name."""
    tot = collections.Counter()
    for f in glob.glob(d + "/cg.*"):
        events = []
        for line in open(f, errors="replace"):
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                for e, v in zip(events, line.split()[1:]):
                    tot[e] += int(v)
                break
    return tot


def by_function(d, event):
    """Self cost of event by function, summed over every callgrind file in d."""
    tot = collections.Counter()
    for f in glob.glob(d + "/cg.*"):
        out = subprocess.run(
            ["callgrind_annotate", "--threshold=100", "--inclusive=no", f"--show={event}", f"--sort={event}", f],
            capture_output=True,
            text=True,
        ).stdout
        body = out.split("file:function", 1)[-1]
        body = re.split(r"\n-+\n-- (Auto|User)-annotated", body)[0]
        for line in body.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
            if m and "PROGRAM TOTALS" not in line:
                name = m.group(2).split(" [")[0]
                name = re.sub(r"^.*?:(?=[^:/][^/]*$)", "", name) if ":" in name else name
                tot[name] += int(m.group(1).replace(",", ""))
    return tot


def main():
    a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) < 5:
        ta, tb = totals(a), totals(b)
        for e in tb:
            print(f"{e:>5} {(tb[e] - ta.get(e, 0)) / (2 * n):12.1f}")
        return
    event = sys.argv[4]
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 25
    ca, cb = by_function(a, event), by_function(b, event)
    diff = {k: (cb[k] - ca.get(k, 0)) / (2 * n) for k in cb}
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{v:10.1f}  {k[:150]}")
    print(f"{sum(diff.values()):10.1f}  TOTAL (self)")


main()
