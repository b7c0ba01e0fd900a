#!/usr/bin/env bash
# Why the same instructions take longer: cache misses and branch mispredictions per request,
# from valgrind's cache and branch simulators. Runs ../shared/perf/icount.sh unchanged, with a
# `valgrind` first on PATH that adds --cache-sim=yes --branch-sim=yes, then prints, for each
# proxy, every event per request (benches/cgevents.py: N and 3N runs, difference / 2N).
# The simulator models this machine's L1 and last-level caches (from CPUID) and a simple
# branch predictor: its figures repeat like icount's and compare proxies, not absolute cycles.
# This VM reports a 320 MB last-level cache (valgrind simulates 256 MB): read the L1 events.
#
#   benches/cache-profile.sh                          # haproxy-gw tggw pingora tgplain
#   PROXIES="haproxy-gw tggw" N=10000 benches/cache-profile.sh
#   benches/cgevents.py RUN_DIR/cg.tggw.10000 RUN_DIR/cg.tggw.30000 10000 D1mr   # by function
#
# Needs what icount.sh needs, and a release build of Tollgate. Takes about 3 minutes a proxy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
bin=${TOLLGATE_BIN:-$root/target/dist/tollgate}
export N=${N:-10000}
export PROXIES=${PROXIES:-"haproxy-gw tggw pingora tgplain"}
export RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/cache-profile.XXXXXX)}
shim="$RUN_DIR/shim"
mkdir -p "$shim"
real=$(command -v valgrind)
printf '#!/bin/sh\nexec %s --cache-sim=yes --branch-sim=yes "$@"\n' "$real" >"$shim/valgrind"
chmod 755 "$shim/valgrind"
export PROXY_CMD_tgplain="env TOLLGATE_BIN=$bin $root/benches/run-tollgate.sh plain"
export PROXY_CMD_tggw="env TOLLGATE_BIN=$bin $root/benches/run-tollgate.sh gateway"
export REQ_HEADER="Authorization: Bearer $(cat "$perf/peers/bench.jwt")"
PATH="$shim:$PATH" "$perf/icount.sh"
for p in $PROXIES; do
  a="$RUN_DIR/cg.$p.$N" b="$RUN_DIR/cg.$p.$((3 * N))"
  [ -d "$b" ] || continue
  echo "== $p (per request)"
  "$root/benches/cgevents.py" "$a" "$b" "$N"
done
