#!/usr/bin/env bash
# Response-cache throughput in one run: Tollgate serving HITs (one cached path), Tollgate
# taking MISSes (a new path every request: lookup, stampede lock, fetch, store, eviction),
# Tollgate with no cache on the route (plain proxying), and nginx serving HITs from its
# proxy_cache — all in front of the same tiny backend and its same small response, one
# worker each, wrk with CONNS keep-alive connections. Interleaved over REPS repetitions;
# prints medians of requests/s and of proxy CPU µs per request (user+sys from /proc).
#
#   benches/cache-compare.sh                  # REPS=3 DURATION=10 CONNS=64
#   REPS=1 DURATION=5 benches/cache-compare.sh
#   TOLLGATE_BEFORE_BIN=/path/to/older/tollgate benches/cache-compare.sh   # adds before-* rows
#
# Needs wrk and nginx (apt-get install -y wrk nginx gettext-base). Do not run while
# something else is compiling.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
REPS=${REPS:-3} DURATION=${DURATION:-10} CONNS=${CONNS:-64}
export WORKERS=${WORKERS:-1}
build=${BUILD_TARGET:-/tmp/perf-target}
fastback=${FASTBACK_BIN:-$build/release/fastback}
tollgate=${TOLLGATE_BIN:-$root/target/dist/tollgate}
for t in wrk nginx envsubst curl; do
  command -v $t >/dev/null || { echo "cache-compare: missing $t" >&2; exit 2; }
done
[ -x "$fastback" ] || CARGO_TARGET_DIR=$build cargo build --release -q --manifest-path "$perf/fastback/Cargo.toml"
[ -x "$tollgate" ] || (cd "$root" && cargo build --profile dist --locked)

export RUN_DIR=$(mktemp -d /tmp/cache-compare.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BACKEND_PORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$fastback" "127.0.0.1:$BACKEND_PORT" raw >"$RUN_DIR/backend.log" 2>&1 & pids+=($!)

start_tollgate() { # name template [binary]
  local bin=${3:-$tollgate}
  export PROXY_PORT=$(free_port)
  envsubst '${WORKERS} ${RUN_DIR} ${PROXY_PORT} ${BACKEND_PORT}' <"$root/benches/conf/$2.toml.in" >"$RUN_DIR/$1.toml"
  sed -i "s/tollgate-$2\./tollgate-$1./" "$RUN_DIR/$1.toml"
  RUST_LOG=error "$bin" -c "$RUN_DIR/$1.toml" >"$RUN_DIR/$1.log" 2>&1 & pids+=($!)
  eval "port_$1=$PROXY_PORT pid_$1=$!"
}
start_tollgate tg_cache cache
start_tollgate tg_plain plain
before=${TOLLGATE_BEFORE_BIN:-}
[ -z "$before" ] || start_tollgate tg_before cache "$before"

port_nginx=$(free_port)
# nginx workers drop privileges when started as root: let them write their cache.
mkdir -p "$RUN_DIR/nginx-cache" "$RUN_DIR/nginx-tmp"
chmod 0755 "$RUN_DIR"; chmod 0777 "$RUN_DIR/nginx-cache" "$RUN_DIR/nginx-tmp"
cat >"$RUN_DIR/nginx.conf" <<NGINX
worker_processes $WORKERS;
daemon off;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $RUN_DIR/nginx-cache keys_zone=c:10m max_size=256m;
  proxy_temp_path $RUN_DIR/nginx-tmp;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$port_nginx;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      proxy_cache_valid 200 60s;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
NGINX
nginx -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/nginx-error.log" & pids+=($!)
pid_nginx=$!

for port in $port_tg_cache $port_tg_plain $port_nginx ${port_tg_before:-}; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
# Warm the cached path and check that HITs are HITs.
for port in $port_tg_cache $port_nginx ${port_tg_before:-}; do
  curl -s -o /dev/null "http://127.0.0.1:$port/hit"
  curl -s -D - -o /dev/null "http://127.0.0.1:$port/hit" | grep -qi '^x-cache: HIT' ||
    { echo "cache-compare: no HIT from port $port" >&2; exit 1; }
done

cat >"$RUN_DIR/miss.lua" <<'LUA'
local n = 0
local rep = os.getenv("REP") or "0"
request = function()
  n = n + 1
  return wrk.format("GET", "/miss/" .. rep .. "/" .. n)
end
LUA

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tree_ticks() { # the process and its children (nginx master + worker)
  local sum=0 p
  for p in $1 $(pgrep -P "$1" || true); do sum=$((sum + $(ticks "$p"))); done
  echo $sum
}
hz=$(getconf CLK_TCK)
# args: name pid url [lua]; appends "name rps cpu_us" to results
measure() {
  local name=$1 pid=$2 url=$3 lua=${4:-} t0 t1 out reqs
  t0=$(tree_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" ${lua:+-s "$lua"} "$url")
  t1=$(tree_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local cpu=$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$hz" 'BEGIN {printf "%.1f", t * 1e6 / hz / r}')
  echo "$name $rps $cpu" >>"$RUN_DIR/results"
  echo "$(date +%T) $name: $rps req/s, $cpu µs CPU/req" >&2
}

for rep in $(seq "$REPS"); do
  export REP=$rep
  measure "tollgate-hit" "$pid_tg_cache" "http://127.0.0.1:$port_tg_cache/hit"
  measure "tollgate-miss" "$pid_tg_cache" "http://127.0.0.1:$port_tg_cache/" "$RUN_DIR/miss.lua"
  measure "tollgate-no-cache" "$pid_tg_plain" "http://127.0.0.1:$port_tg_plain/hit"
  if [ -n "$before" ]; then
    measure "before-hit" "$pid_tg_before" "http://127.0.0.1:$port_tg_before/hit"
    measure "before-miss" "$pid_tg_before" "http://127.0.0.1:$port_tg_before/" "$RUN_DIR/miss.lua"
  fi
  measure "nginx-hit" "$pid_nginx" "http://127.0.0.1:$port_nginx/hit"
done

echo
echo "| proxy | req/s (median) | req/s / nginx HIT | CPU µs/req (median) | CPU / nginx HIT |"
echo "|---|---|---|---|---|"
awk '
  { rps[$1] = rps[$1] " " $2; cpu[$1] = cpu[$1] " " $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
  function median(s,   a, k, i, j, t) {
    k = split(s, a, " ")
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
  }
  END {
    nr = median(rps["nginx-hit"]); nc = median(cpu["nginx-hit"])
    for (i = 1; i <= n; i++) { p = order[i]; r = median(rps[p]); c = median(cpu[p])
      printf "| %s | %.0f | %.2f | %.1f | %.2f |\n", p, r, r / nr, c, c / nc }
  }' "$RUN_DIR/results"
echo
echo "raw results: $RUN_DIR/results (WORKERS=$WORKERS CONNS=$CONNS DURATION=${DURATION}s REPS=$REPS)"
