#!/usr/bin/env bash
# Rate limiting across backends in one run: requests/s and p99 latency of a rate-limited
# route against an unlimited route of the same instance, for `local`, `redis` and `sync`
# counters (one instance each, limit high enough that nothing is refused, so the cost of
# counting is what differs), Redis commands per request from INFO commandstats, and what
# `sync` (leased budget) admits at three instances hammered at once against one limit of
# LIMIT_FLEET: evenly (one wrk each, CONNS connections) and skewed (SKEW_CONNS connections on
# the first instance, 1 on each other: about 90/5/5 of the requests), as admitted/limit
# (never above 1: only leased budget is spent) with the Redis commands per request.
#
#   benches/fleet-compare.sh                      # DURATION=10 CONNS=32
#   DURATION=5 benches/fleet-compare.sh
#
# Needs wrk, redis-server, redis-cli, envsubst. Do not run while something else is compiling.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
DURATION=${DURATION:-10} CONNS=${CONNS:-32} LIMIT_FLEET=${LIMIT_FLEET:-20000} SKEW_CONNS=${SKEW_CONNS:-18}
export WORKERS=${WORKERS:-1}
build=${BUILD_TARGET:-/tmp/perf-target}
fastback=${FASTBACK_BIN:-$build/release/fastback}
tollgate=${TOLLGATE_BIN:-$root/target/dist/tollgate}
for t in wrk redis-server redis-cli envsubst curl python3; do
  command -v $t >/dev/null || { echo "fleet-compare: missing $t" >&2; exit 2; }
done
[ -x "$fastback" ] || CARGO_TARGET_DIR=$build cargo build --release -q --manifest-path "$perf/fastback/Cargo.toml"
[ -x "$tollgate" ] || (cd "$root" && cargo build --profile dist --locked)

export RUN_DIR=$(mktemp -d /tmp/fleet-compare.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BACKEND_PORT=$(free_port) REDIS_PORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$fastback" "127.0.0.1:$BACKEND_PORT" raw >"$RUN_DIR/backend.log" 2>&1 & pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$RUN_DIR/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
calls() { redis-cli -p "$REDIS_PORT" info commandstats | sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s+0}'; }

start() { # name backend limit
  export NAME=$1 RATE_BACKEND=$2 LIMIT=$3 PROXY_PORT=$(free_port) ADMIN_PORT=$(free_port)
  envsubst '${WORKERS} ${RUN_DIR} ${PROXY_PORT} ${ADMIN_PORT} ${BACKEND_PORT} ${REDIS_PORT} ${RATE_BACKEND} ${LIMIT} ${NAME}' \
    <"$root/benches/conf/limited.toml.in" >"$RUN_DIR/$1.toml"
  RUST_LOG=error "$tollgate" -c "$RUN_DIR/$1.toml" >"$RUN_DIR/$1.log" 2>&1 & pids+=($!)
  eval "pid_$1=$!"
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break; sleep 0.1; done
  eval "port_$1=$PROXY_PORT"
}
# Stop an instance (its heartbeat would count it as a replica of the next run).
stop() { local p; p=$(eval echo "\$pid_$1"); kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; }
# wrk's summary: requests/s, p99 in ms, total requests, non-2xx responses.
run_wrk() { # url
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1" >"$RUN_DIR/wrk.out" 2>&1
  python3 - "$RUN_DIR/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t); p99 = ms(*m.groups())
total = int(re.search(r"(\d+) requests in", t).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{rps:.0f} {p99:.3f} {total} {non2xx.group(1) if non2xx else 0}")
PY
}

echo "# fleet-compare: WORKERS=$WORKERS CONNS=$CONNS DURATION=${DURATION}s, one run"
printf "%-8s %12s %12s %14s %14s %16s\n" backend "limited r/s" "free r/s" "limited p99ms" "free p99ms" "redis cmd/req"
for b in local redis sync; do
  start "$b" "$b" 1000000000
  port=$(eval echo "\$port_$b")
  read -r free_rps free_p99 _ _ <<<"$(run_wrk "http://127.0.0.1:$port/free")"
  before=$(calls)
  read -r lim_rps lim_p99 lim_total _ <<<"$(run_wrk "http://127.0.0.1:$port/limited")"
  after=$(calls)
  per=$(python3 -c "print(f'{($after - $before) / $lim_total:.4f}')")
  printf "%-8s %12s %12s %14s %14s %16s\n" "$b" "$lim_rps" "$free_rps" "$lim_p99" "$free_p99" "$per"
  stop "$b"
done

# Three sync instances at once against one limit: `fleet RUN CONNS1 CONNS2 CONNS3`, one wrk
# per instance. Redis is emptied and the instances are new for each run (one window each).
fleet() {
  local run=$1; shift
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  for i in 1 2 3; do start "$run$i" sync "$LIMIT_FLEET"; done
  sleep 2 # every instance has seen the others' heartbeats
  local before; before=$(calls)
  local wrks=() i=1
  for c in "$@"; do
    local port; port=$(eval echo "\$port_$run$i")
    (RUN_DIR=$RUN_DIR/$run-w$i CONNS=$c; mkdir -p "$RUN_DIR"; run_wrk "http://127.0.0.1:$port/limited" >"$RUN_DIR/../$run$i.res") &
    wrks+=($!); i=$((i + 1))
  done
  for p in "${wrks[@]}"; do wait "$p"; done
  local after; after=$(calls)
  local admitted=0 requests=0 split=""
  for i in 1 2 3; do
    read -r _ _ total non2xx <"$RUN_DIR/$run$i.res"
    admitted=$((admitted + total - non2xx)); requests=$((requests + total))
    split="$split $((total - non2xx))/$total"
  done
  python3 - "$run" "$admitted" "$LIMIT_FLEET" "$requests" "$((after - before))" "$split" <<'PY'
import sys
run, admitted, limit, requests, cmds, split = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
print(f"sync x3 {run}: admitted {admitted} of limit {limit} (admitted/requests per instance:{split}): "
      f"ratio {admitted / limit:.4f}; {cmds} Redis commands for {requests} requests, "
      f"{cmds / requests:.5f} per request")
PY
  for i in 1 2 3; do stop "$run$i"; done
}
fleet even "$CONNS" "$CONNS" "$CONNS"
fleet skew "$SKEW_CONNS" 1 1
