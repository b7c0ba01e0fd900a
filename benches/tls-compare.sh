#!/usr/bin/env bash
# TLS side by side: Tollgate and nginx with the same certificate, one worker each, proxying
# to the same tiny keep-alive backend (../shared/perf fastback) on this machine.
#   - handshake rate: wrk over HTTPS with `Connection: close` (a new TLS connection per request)
#   - HTTP/2 throughput: h2load over 32 connections x 10 streams for DURATION seconds
# Needs: h2load (nghttp2-client), wrk, nginx, openssl, and the perf helpers built by compare.sh.
#   benches/tls-compare.sh              (DURATION=8)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
bin=${TOLLGATE_BIN:-$root/target/release/tollgate}
fastback=${FASTBACK_BIN:-/tmp/perf-target/release/fastback}
duration=${DURATION:-8}
run=$(mktemp -d)
pids=()
# The proxies stop before the backend, so streams they are still finishing do not log a
# refused upstream connect.
cleanup() { for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done; rm -rf "$run"; }
trap cleanup EXIT
[ -x "$fastback" ] || CARGO_TARGET_DIR=/tmp/perf-target cargo build --release -q --manifest-path "$perf/fastback/Cargo.toml"
[ -x "$bin" ] || (cd "$root" && cargo build --release --locked)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null

"$fastback" 127.0.0.1:19301 >/dev/null 2>&1 & pids+=($!)

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
nginx -c "$run/nginx.conf" -g 'daemon off;' & pids+=($!)

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
RUST_LOG=error "$bin" -c "$run/tollgate.toml" & pids+=($!)
for port in 19443 19444; do
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$port/" && break; sleep 0.1; done
done

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
