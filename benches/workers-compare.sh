#!/usr/bin/env bash
# Worker scaling in one run: saturation throughput and CPU per request of Tollgate (plain
# route and full HS256 policy chain), plain HAProxy, the HAProxy gateway peer and the minimal
# Pingora proxy, each at 1 and at 2 worker threads, measured side by side in ONE run of
# ../shared/perf/compare.sh (interleaved over REPS), then a table of the 1 -> 2 worker ratio.
#
# compare.sh takes one WORKERS for everybody, so every worker count is its own proxy name
# (<base>-w<N>) whose PROXY_CMD forces WORKERS=N: Tollgate through benches/run-tollgate.sh,
# the HAProxy gateway peer through peers/run-haproxy-gateway.sh, plain HAProxy and pgmin
# through benches/peers/haproxy.sh and benches/peers/pgmin.sh, which copy compare.sh's own
# start_haproxy / start_pingora settings except for the thread count.
#
# This box has 2 cores and the load generator (wrk) and the backend run on them too (PIN=none),
# so a second worker competes with them for a contended core: the w2/w1 ratio is how much a
# second worker still gains when the box is already busy, not linear scaling (1.0 = nothing
# gained; 2.0 is out of reach here). CPU µs/request shows what the second worker costs per
# request (cross-thread handoff, lock contention, idle spinning).
#
#   flock /tmp/tollgate-cargo.lock benches/workers-compare.sh          # REPS=3 DURATION=5
#   flock /tmp/tollgate-cargo.lock env REPS=1 DURATION=2 benches/workers-compare.sh   # smoke
#   flock /tmp/tollgate-cargo.lock env PROXIES="tollgate-w1 tollgate-w2 pingora-w1 pingora-w2" \
#       REF=pingora-w1 benches/workers-compare.sh
#   flock /tmp/tollgate-cargo.lock env RATE=5000 IDLE_CONNS=1000 benches/workers-compare.sh
#   ../shared/perf/compare.sh --summarize /tmp/perf-results/workers-*/results.csv   # full tables again
#   benches/workers-compare.sh --summary /tmp/perf-results/workers-.../results.csv  # this table again
#
# Names: <base>-w<N> with base haproxy | pingora | tollgate | haproxy-gw | tollgate-gw and any N
# (the table shows w1 and w2). Other compare.sh knobs (CONNS, WARMUP, PIN, DIRECT, BACKEND,
# OUT, ...) pass through. Defaults here: REPS=3 DURATION=5 RATE=0 IDLE_CONNS=0 (only saturation
# throughput and CPU per request matter), REF=haproxy-w1, TOLLGATE_BIN=target/dist/tollgate.
# Every proxied request carries the peers' bench JWT (peers/bench.jwt); plain proxies ignore it.
#
# Do not run while something compiles. Run it under flock /tmp/tollgate-cargo.lock (builds and
# benchmarks share that lock on this machine; it may build pgmin or Tollgate if missing). It
# refuses to start otherwise (LOCK_CHECK=0 skips the check).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
LOCK=/tmp/tollgate-cargo.lock

# w2/w1 table from compare.sh's results.csv (rep,proxy,sat_rps,...,sat_cpu_us,...): medians over
# reps; w2/w1 = median over reps of (w2 rps / w1 rps of the same rep).
summary() {
  awk -F, '
  function med(s,   a, n, i, j, t) { n = split(s, a, " "); if (n == 0) return ""
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function f(s, fmt,   m) { m = med(s); return (m == "") ? "NA" : sprintf(fmt, m) }
  function ok(v) { return v != "" && v != "NA" }
  NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  match($2, /-w[0-9]+$/) {
    base = substr($2, 1, RSTART - 1); w = substr($2, RSTART + 2)
    if (!(base in seen)) { seen[base] = 1; order[++nb] = base }
    rps = $(col["sat_rps"]); cpu = $(col["sat_cpu_us"]); err = $(col["sat_errors"])
    if (ok(rps)) { R[base, w] = R[base, w] " " rps; byrep[$1, base, w] = rps }
    if (ok(cpu)) C[base, w] = C[base, w] " " cpu
    if (ok(err)) E[base, w] += err; else fail[base, w]++
    reps[$1] = 1 }
  END {
    for (rp in reps) for (i = 1; i <= nb; i++) { b = order[i]
      if (((rp, b, 1) in byrep) && ((rp, b, 2) in byrep) && byrep[rp, b, 1] > 0)
        Q[b] = Q[b] " " byrep[rp, b, 2] / byrep[rp, b, 1] }
    print "### Worker scaling: saturation throughput and proxy CPU per request, 1 vs 2 workers (median of reps)\n"
    print "| proxy | sat rps w1 | sat rps w2 | w2/w1 | CPU µs/req w1 | CPU µs/req w2 | sat errors w1/w2 |"
    print "|---|---|---|---|---|---|---|"
    for (i = 1; i <= nb; i++) { b = order[i]
      printf "| %s | %s | %s | %s | %s | %s | %s%s/%s%s |\n", b, f(R[b, 1], "%.0f"), f(R[b, 2], "%.0f"),
        f(Q[b], "%.2f"), f(C[b, 1], "%.1f"), f(C[b, 2], "%.1f"),
        E[b, 1] + 0, (fail[b, 1] ? " (" fail[b, 1] " failed)" : ""), E[b, 2] + 0, (fail[b, 2] ? " (" fail[b, 2] " failed)" : "") }
    print "\nw2/w1 = median over reps of (rps at 2 workers / rps at 1 worker, same rep). Load generator"
    print "and backend share the 2 cores, so this is the gain of a second worker on a contended box."
  }' "$1"
}
if [[ "${1:-}" == --summary ]]; then summary "$2"; exit; fi

# The shared lock: some ancestor must be `flock .../tollgate-cargo.lock ...`.
under_lock() {
  local pid=$$ cmd
  while [[ -n "$pid" && "$pid" -gt 1 ]]; do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *flock*"$LOCK"* ]] && return 0
    pid=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $2}')
  done
  return 1
}
if [[ "${LOCK_CHECK:-1}" != 0 ]] && ! under_lock; then
  echo "workers-compare: run me under flock $LOCK (builds and benchmarks must not overlap)," >&2
  echo "  e.g. flock $LOCK env REPS=1 DURATION=2 $0   (LOCK_CHECK=0 skips this check)" >&2
  exit 2
fi

for t in envsubst haproxy wrk; do
  command -v "$t" >/dev/null || { echo "workers-compare: $t missing (scripts/setup.sh --bench installs it)" >&2; exit 2; }
done

export TOLLGATE_BIN=${TOLLGATE_BIN:-$root/target/dist/tollgate}
if [[ ! -x "$TOLLGATE_BIN" ]]; then
  (cd "$root" && cargo build --profile dist --locked)
fi

export PROXIES=${PROXIES:-"haproxy-w1 haproxy-w2 pingora-w1 pingora-w2 tollgate-w1 tollgate-w2 haproxy-gw-w1 haproxy-gw-w2 tollgate-gw-w1 tollgate-gw-w2"}

# compare.sh only builds pgmin when a proxy is literally named "pingora": build it here the
# same way (same target dir, same command) when a pingora-w<N> is asked for.
export BUILD_TARGET=${BUILD_TARGET:-/tmp/perf-target}
export PINGORA_BIN=${PINGORA_BIN:-$BUILD_TARGET/release/pgmin}
if [[ " $PROXIES " == *" pingora-w"* && ! -x "$PINGORA_BIN" ]]; then
  echo "workers-compare: building pgmin into $BUILD_TARGET (one-time; a few minutes on 2 cores)" >&2
  CARGO_TARGET_DIR="$BUILD_TARGET" cargo build --release -q --manifest-path "$perf/pgmin/Cargo.toml"
fi

for name in $PROXIES; do
  [[ "$name" =~ ^(.+)-w([0-9]+)$ ]] || { echo "workers-compare: '$name' is not <base>-w<N>" >&2; exit 2; }
  base=${BASH_REMATCH[1]} n=${BASH_REMATCH[2]}
  case "$base" in
    tollgate)    cmd="$root/benches/run-tollgate.sh plain" ;;
    tollgate-gw) cmd="$root/benches/run-tollgate.sh gateway" ;;
    haproxy)     cmd="$root/benches/peers/haproxy.sh" ;;
    haproxy-gw)  cmd="$perf/peers/run-haproxy-gateway.sh" ;;   # nbthread ${WORKERS} in its cfg
    pingora)     cmd="$root/benches/peers/pgmin.sh" ;;
    *) echo "workers-compare: unknown base '$base' in '$name'" >&2; exit 2 ;;
  esac
  export "PROXY_CMD_${name//[^A-Za-z0-9_]/_}=env WORKERS=$n $cmd"
done

export REQ_HEADER=${REQ_HEADER:-"Authorization: Bearer $(cat "$perf/peers/bench.jwt")"}
export REF=${REF:-haproxy-w1}
export REPS=${REPS:-3} DURATION=${DURATION:-5} RATE=${RATE:-0} IDLE_CONNS=${IDLE_CONNS:-0}
export OUT=${OUT:-/tmp/perf-results/workers-$(date +%Y%m%d-%H%M%S)}

rc=0
"$perf/compare.sh" || rc=$?
if [[ -s "$OUT/results.csv" ]] && (($(wc -l <"$OUT/results.csv") > 1)); then
  echo
  summary "$OUT/results.csv" | tee "$OUT/workers.md"
  echo "workers-compare: results $OUT/results.csv, this table $OUT/workers.md, compare.sh's $OUT/summary.md" >&2
else
  echo "workers-compare: compare.sh left no results (rc=$rc, see $OUT/compare.log)" >&2
fi
exit "$rc"
