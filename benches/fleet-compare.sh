#!/usr/bin/env bash
# Rate limiting across backends in one run: requests/s and p99 latency of a rate-limited
# route against an unlimited route of the same instance, for `local`, `redis` and `sync`
# counters (one instance each, limit high enough that nothing is refused, so the cost of
# counting is what differs), Redis commands per request from INFO commandstats, and the
# over-admission of `sync` at three instances hammered at once against a limit of LIMIT.
#
#   benches/fleet-compare.sh                      # DURATION=10 CONNS=32
#   DURATION=5 benches/fleet-compare.sh
#
# Needs wrk, redis-server, redis-cli, envsubst. Do not run while something else is compiling.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
DURATION=${DURATION:-10} CONNS=${CONNS:-32} LIMIT_FLEET=${LIMIT_FLEET:-20000}
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
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break; sleep 0.1; done
  eval "port_$1=$PROXY_PORT"
}
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
done

# Three sync instances, one wrk each, at once, against one limit.
for i in 1 2 3; do start "fleet$i" sync "$LIMIT_FLEET"; done
sleep 1
wrks=()
for i in 1 2 3; do
  port=$(eval echo "\$port_fleet$i")
  (RUN_DIR=$RUN_DIR/w$i; mkdir -p "$RUN_DIR"; run_wrk "http://127.0.0.1:$port/limited" >"$RUN_DIR/../fleet$i.res") &
  wrks+=($!)
done
for p in "${wrks[@]}"; do wait "$p"; done
admitted=0 rate=0
for i in 1 2 3; do
  read -r rps _ total non2xx <"$RUN_DIR/fleet$i.res"
  admitted=$((admitted + total - non2xx))
  rate=$(python3 -c "print(max($rate, $rps))")
done
python3 - "$admitted" "$LIMIT_FLEET" "$rate" <<'PY'
import sys
admitted, limit, r = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
print(f"sync x3: admitted {admitted} of limit {limit}: over by {admitted - limit} "
      f"({(admitted - limit) / limit:.2%}); bound N x r x t = 3 x {r:.0f}/s x 0.1s = {3 * r * 0.1:.0f}")
PY
