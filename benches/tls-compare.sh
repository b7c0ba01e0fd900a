#!/usr/bin/env bash
# TLS side by side: Tollgate and nginx with the same certificate, one worker each, proxying
# to the same tiny keep-alive backend (../shared/perf fastback) on this machine.
#   - handshake rate: wrk over HTTPS with `Connection: close` (a new TLS connection per request)
#   - HTTP/2 throughput: h2load over 32 connections x 10 streams for DURATION seconds
# With ICOUNT=1, each server runs under callgrind instead, as ../shared/perf/icount.sh does
# (twice, N and then 3N units, difference / 2N; the callgrind files stay in RUN_DIR for
# ../shared/perf/cgdiff.py), and the script prints user-space instructions
#   - per HTTP/2 request: h2load, 8 connections x 10 streams, N requests;
#   - per new TLS connection: N connections of one HTTP/2 request each (h2load, 50 at a time).
# Needs: h2load (nghttp2-client), wrk, nginx, openssl, valgrind for ICOUNT, and the perf
# helpers built by compare.sh.
#   benches/tls-compare.sh              (DURATION=8)
#   ICOUNT=1 benches/tls-compare.sh     (N=10000 h2 requests, N/20 connections)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
bin=${TOLLGATE_BIN:-$root/target/dist/tollgate}
fastback=${FASTBACK_BIN:-/tmp/perf-target/release/fastback}
duration=${DURATION:-8}
run=${RUN_DIR:-$(mktemp -d)}
chmod 755 "$run" # nginx workers write their callgrind files as an unprivileged user
pids=()
backend=
# The proxies stop before the backend, so streams they are still finishing do not log a
# refused upstream connect. The proxies get SIGINT: a SIGTERM'd Tollgate drains for its grace
# period (40 s by default) and outlived the script, still holding its port. The backend gets
# SIGTERM: a background job of a script ignores SIGINT unless it installs a handler.
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -INT "${pids[i]}" 2>/dev/null || true; done
  [ -z "$backend" ] || kill "$backend" 2>/dev/null || true
  [ -n "${ICOUNT:-}${RUN_DIR:-}" ] || rm -rf "$run"
}
trap cleanup EXIT
[ -x "$fastback" ] || CARGO_TARGET_DIR=/tmp/perf-target cargo build --release -q --manifest-path "$perf/fastback/Cargo.toml"
[ -x "$bin" ] || (cd "$root" && cargo build --profile dist --locked)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null

"$fastback" 127.0.0.1:19301 >/dev/null 2>&1 &
backend=$!

cat >"$run/nginx.conf" <<NGINX
worker_processes 1;
pid $run/nginx.pid;
error_log $run/nginx-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;   # nginx closes HTTP/2 connections after 1000 requests by default
  upstream be { server 127.0.0.1:19301; keepalive 64; }
  server {
    listen 127.0.0.1:19443 ssl http2;
    ssl_certificate $run/cert.pem;
    ssl_certificate_key $run/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

cat >"$run/tollgate.toml" <<TOML
[server]
threads = 1
work_stealing = false
pid_file = "$run/tollgate.pid"
upgrade_sock = "$run/tollgate.sock"
[[listeners]]
address = "127.0.0.1:19444"
[listeners.tls]
certificates = [{ cert = "$run/cert.pem", key = "$run/key.pem", names = ["bench.test"] }]
[admin]
enabled = false
[access_log]
target = "off"
[security_headers]
enabled = false
[upstreams.be]
targets = [{ address = "127.0.0.1:19301" }]
[[routes]]
name = "all"
upstream = "be"
TOML
# stop: SIGINT (a clean exit for both, so callgrind writes its totals), then wait.
stop() {
  kill -INT "$server" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  wait "$server" 2>/dev/null || true
}
# start NAME [WRAPPER...]: the server in the background, its pid in $server, once it answers
# (stopped again if it never does: under ICOUNT it runs in a subshell the trap cannot see).
start() {
  local name=$1 port
  shift
  case "$name" in
    nginx) port=19443; "$@" nginx -c "$run/nginx.conf" -g 'daemon off;' >"$run/$name.log" 2>&1 & ;;
    tollgate) port=19444; RUST_LOG=error "$@" "$bin" -c "$run/tollgate.toml" >"$run/$name.log" 2>&1 & ;;
  esac
  server=$!
  pids+=("$server")
  for _ in $(seq 600); do curl -sk -o /dev/null "https://127.0.0.1:$port/" && return 0; sleep 0.1; done
  echo "tls-compare: $name did not come up (see $run/$name.log)" >&2
  stop
  return 1
}

if [ -n "${ICOUNT:-}" ]; then
  n=${N:-10000}
  h2() { h2load -n "$1" -c 8 -m 10 "https://127.0.0.1:$port/" >"$run/h2load.out" 2>&1; }
  conns() { for _ in $(seq $(($1 / 50))); do h2load -n 50 -c 50 "https://127.0.0.1:$port/" >"$run/h2load.out" 2>&1; done; }
  instructions() { # name load count warm-up -> total instructions of one run
    local out="$run/cg.$1-$2.$3" f total=0
    rm -rf "$out"; mkdir -p "$out"; chmod 1777 "$out"
    start "$1" valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p" || return 1
    "$2" "$4" # warm-up, the same in both runs
    "$2" "$3"
    stop
    grep -q "succeeded, 0 failed, 0 errored" "$run/h2load.out" || { echo "tls-compare: $1 $2 failed: $(grep ^requests: "$run/h2load.out")" >&2; return 1; }
    for f in "$out"/cg.*; do total=$((total + $(awk '/^(summary|totals):/ {print $2; exit}' "$f"))); done
    echo "$total"
  }
  for target in nginx:19443 tollgate:19444; do
    name=${target%%:*} port=${target##*:}
    for load in h2:$n conns:$((n / 20)); do
      l=${load%%:*} k=${load##*:}
      t1=$(instructions "$name" "$l" "$k" $((k / 5))) && t3=$(instructions "$name" "$l" $((3 * k)) $((k / 5))) || continue
      printf '%-9s %-6s %10d instructions per %s\n' "$name" "$l" $(((t3 - t1) / (2 * k))) \
        "$([ "$l" = h2 ] && echo "HTTP/2 request" || echo "new TLS connection with one request")"
    done
  done
  echo "# callgrind files: $run/cg.NAME-LOAD.COUNT (cgdiff.py DIR.K DIR.3K K)"
  exit 0
fi

start nginx
start tollgate

for target in nginx:19443 tollgate:19444; do
  name=${target%%:*} port=${target##*:}
  wrk -t1 -c16 -d"${duration}s" -H 'Connection: close' "https://127.0.0.1:$port/" >"$run/wrk.out" 2>&1 || true
  hs=$(awk '/^Requests\/sec/ {print $2}' "$run/wrk.out")
  # wrk prints this line only when some request failed or was answered with an error status.
  hs_err=$(awk '/Non-2xx|Socket errors/ {sub(/^ +/, ""); printf "%s; ", $0}' "$run/wrk.out")
  h2load -D "$duration" -c 32 -m 10 "https://127.0.0.1:$port/" >"$run/h2load.out" 2>&1 || true
  tp=$(awk '/^finished in/ {print $4}' "$run/h2load.out" | tr -d ',')
  tp_failed=$(awk '/^requests:/ {print $(NF-5) + $(NF-3) + $(NF-1)}' "$run/h2load.out")
  printf '%-9s TLS handshakes/s (new connection per request): %-10s  HTTP/2 req/s: %-10s  h2 failed+errored+timeout: %s  %s\n' \
    "$name" "$hs" "$tp" "${tp_failed:-?}" "${hs_err:+wrk: $hs_err}"
done
