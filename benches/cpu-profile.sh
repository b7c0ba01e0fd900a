#!/usr/bin/env bash
# Where a proxy's CPU goes, per request: the proxy under wrk at saturation (64 connections,
# one worker, the bench JWT on every request, the same tiny backend as compare.sh), its CPU
# time read from /proc, and `perf record -e cpu-clock` sampling it, so kernel and user time
# and the top functions come out in µs per request. cpu-clock is a software timer: it works
# where the hardware counters are not exposed (`perf stat -e cycles` says "not supported").
# callgrind (icount.sh) counts instructions; this shows what those instructions cost.
#
#   benches/cpu-profile.sh gateway              # Tollgate's full chain (run-tollgate.sh modes)
#   benches/cpu-profile.sh plain haproxy-gw pingora
#   SECONDS_=8 TOP=30 benches/cpu-profile.sh gateway
#
# Needs: perf (linux-perf), wrk, curl, haproxy for haproxy-gw, and the perf helpers built by
# compare.sh. Do not run while something else is compiling; compare rows of one run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf_dir=${PERF_DIR:-$root/../shared/perf}
fastback=${FASTBACK_BIN:-/tmp/perf-target/release/fastback}
pgmin=${PINGORA_BIN:-/tmp/perf-target/release/pgmin}
secs=${SECONDS_:-8}
top=${TOP:-20}
[ $# -gt 0 ] || set -- gateway
export WORKERS=1 PROXY_PORT=${PROXY_PORT:-18480} BACKEND_PORT=${BACKEND_PORT:-18481}
jwt="Authorization: Bearer $(cat "$perf_dir/peers/bench.jwt")"
out=$(mktemp -d)
pids=()
cleanup() { for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done; }
trap cleanup EXIT

"$fastback" "127.0.0.1:$BACKEND_PORT" raw >"$out/backend.log" 2>&1 &
pids+=($!)
for mode in "$@"; do
  export RUN_DIR="$out/$mode"
  mkdir -p "$RUN_DIR"
  case "$mode" in
    pingora) PG_LISTEN="127.0.0.1:$PROXY_PORT" PG_UPSTREAM="127.0.0.1:$BACKEND_PORT" PG_THREADS=1 \
      PG_RUN_DIR="$RUN_DIR" "$pgmin" >"$RUN_DIR/proxy.log" 2>&1 & ;;
    haproxy-gw) "$perf_dir/peers/run-haproxy-gateway.sh" >"$RUN_DIR/proxy.log" 2>&1 & ;;
    *) "$root/benches/run-tollgate.sh" "$mode" >"$RUN_DIR/proxy.log" 2>&1 & ;;
  esac
  proxy=$!
  pids+=("$proxy")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break; sleep 0.1; done
  wrk -t1 -c64 -d2 -H "$jwt" "http://127.0.0.1:$PROXY_PORT/" >/dev/null # warm-up
  ticks() { awk '{ s = 0; for (i = 14; i <= 15; i++) s += $i; print s }' "/proc/$proxy/stat"; }
  t0=$(ticks)
  perf record -q -F 2000 -e cpu-clock -g -p "$proxy" -o "$RUN_DIR/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
  rec=$!
  wrk -t1 -c64 -d"${secs}s" -H "$jwt" "http://127.0.0.1:$PROXY_PORT/" >"$RUN_DIR/wrk.txt"
  wait "$rec" || true
  t1=$(ticks)
  kill -INT "$proxy" # a fast stop: on SIGTERM Tollgate and Pingora drain for their grace period
  wait "$proxy" 2>/dev/null || true
  reqs=$(awk '/requests in/ { print $1 }' "$RUN_DIR/wrk.txt")
  hz=$(getconf CLK_TCK)
  us=$(awk -v t="$((t1 - t0))" -v r="$reqs" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1e6 / hz / r }')
  perf report -i "$RUN_DIR/perf.data" --no-children --stdio -g none --sort sym 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$RUN_DIR/symbols.txt"
  awk -v us="$us" -v mode="$mode" -v reqs="$reqs" -v top="$top" '
    { pct = $1; sub("%", "", pct); if ($2 == "[k]") k += pct; else u += pct
      if (NR <= top) { $1 = ""; line[NR] = sprintf("  %6.2f %s", pct * us / 100, $0) } }
    END { printf "%s: %d requests, %.1f CPU µs/request: user %.1f, kernel %.1f\n", mode, reqs, us, u * us / 100, k * us / 100
          for (i = 1; i <= top && i in line; i++) print line[i] }' "$RUN_DIR/symbols.txt"
  grep -E "Non-2xx|Socket errors" "$RUN_DIR/wrk.txt" || true
done
echo "# perf data and symbol lists: $out"
