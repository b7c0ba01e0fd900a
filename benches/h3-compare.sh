#!/usr/bin/env bash
# HTTP/3 against HTTP/2 over TLS on one Tollgate listener ([listeners.quic] beside
# [listeners.tls], the same address and port), with the same client library for both:
#   1. throughput: niquests (benches/h3_load.py load) in multiplexed mode, PROCS processes each
#      with one connection and INFLIGHT requests in flight, TOTAL requests per row, the protocol
#      forced (HTTP/3: HTTP/1 and HTTP/2 disabled, the host seeded into the QUIC cache; HTTP/2:
#      HTTP/3 disabled) and checked on every response (http_version 30 / 20). Two routes: `hello`
#      (a direct response) and `echo` (proxied to a built-in [[demo]] backend, which runs inside
#      the gateway process, so its CPU is counted with the gateway's). Prints requests/s, the
#      gateway's CPU (utime+stime from /proc/PID/stat over the measured window) per request and
#      the client's CPU per request. The Python client is the bottleneck (it spends several times
#      the gateway's CPU per request), so requests/s measure the client: read the gateway
#      CPU µs per request. Connections are opened and warmed before the window.
#   2. memory per idle connection: CONNS connections each make one GET / and then stay idle
#      (HTTP/3: aioquic, idle_timeout 5m on both sides; HTTP/2: TLS sockets with ALPN h2 and
#      hand-written preface, SETTINGS and HEADERS frames, since the h2 package is not installed);
#      the gateway's VmRSS before and after, divided by CONNS. A fresh gateway for each row.
#      HTTP/3 twice: with the listener's default stream limit (100) and with H3_STREAMS as in 1.
# The QUIC listener allows H3_STREAMS (1000) streams per connection, not the default 100: with
# 100 in flight at a limit of 100, each batch waits for MAX_STREAMS credit and the client
# (urllib3-future/qh3) then spins or opens extra connections: runs fell to under 100 requests/s
# with minutes of client CPU. HTTP/2 advertises 100 too (Pingora), but an HTTP/2 stream's slot
# is free once it closes; a QUIC stream's only once the client has acknowledged the response.
# The two protocols do not share a TLS stack: HTTP/2 is Pingora's OpenSSL, HTTP/3 is quinn's
# rustls. One gateway, THREADS worker threads (QUIC runs on a runtime of the same size).
#
#   benches/h3-compare.sh                                 # TOTAL=20000 INFLIGHT=100 PROCS=2 CONNS=1000
#   TOTAL=5000 CONNS=200 benches/h3-compare.sh            # quick look
#   REPS=3 benches/h3-compare.sh                          # the throughput rows three times, interleaved
#   TOLLGATE_BIN=target/dist/tollgate benches/h3-compare.sh
#
# Needs python3 with niquests==3.21.2 and aioquic==1.7.2 (scripts/requirements-test.txt),
# openssl, curl, jq, and a release build (`cargo build --release`; default
# target/release/tollgate). Waits while rustc runs: do not measure during a build. About 2
# minutes on this 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TOLLGATE_BIN:-$root/target/release/tollgate}
TOTAL=${TOTAL:-20000} INFLIGHT=${INFLIGHT:-100} PROCS=${PROCS:-2} CONNS=${CONNS:-1000}
THREADS=${THREADS:-2} REPS=${REPS:-1} BUILD_WAIT=${BUILD_WAIT:-1200} H3_STREAMS=${H3_STREAMS:-1000}
helper=$root/benches/h3_load.py
for t in python3 openssl curl jq; do
  command -v $t >/dev/null || { echo "h3-compare: missing $t" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "h3-compare: no binary at $bin (cargo build --release)" >&2; exit 2; }
python3 -c 'import niquests, aioquic' 2>/dev/null ||
  { echo "h3-compare: pip install -r scripts/requirements-test.txt (niquests, aioquic)" >&2; exit 2; }

# Each idle connection is a socket in the client and one in the gateway (HTTP/2), or a UDP
# socket in the client (aioquic: one per connection).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNS + 200)) ]; then
  echo "h3-compare: ulimit -n is $(ulimit -n), too low for CONNS=$CONNS" >&2
  exit 2
fi

run=$(mktemp -d /tmp/h3-compare.XXXXXX)
gw=
stop_gateway() { # SIGINT: fast stop (a SIGTERM'd Tollgate drains for grace_period first)
  [ -n "$gw" ] || return 0
  kill -INT "$gw" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  gw=
}
holder=
cleanup() {
  [ -z "$holder" ] || kill "$holder" 2>/dev/null || true
  stop_gateway
}
trap cleanup EXIT

# A CA and a leaf it signs (rustls/webpki in the client's QUIC stack refuses a self-signed
# CA certificate as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=h3-compare CA" -keyout "$run/ca.key" -out "$run/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$run/key.pem" -out "$run/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$run/leaf.ext"
openssl x509 -req -in "$run/leaf.csr" -CA "$run/ca.pem" -CAkey "$run/ca.key" -CAcreateserial \
  -days 2 -extfile "$run/leaf.ext" -out "$run/cert.pem" 2>/dev/null

# Three ports; the listener's must be free over TCP and UDP.
read -r port admin_port demo_port < <(python3 - <<'PY'
import socket
def tcp_udp():
    while True:
        t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", p)); return p, [t, u]
        except OSError:
            t.close(); u.close()
held = []
ports = []
for i in range(3):
    p, s = tcp_udp(); ports.append(p); held += s
print(*ports)
PY
)

write_config() { # file [max_concurrent_streams line]
cat >"$1" <<TOML
[server]
threads = $THREADS
pid_file = "$run/tollgate.pid"
upgrade_sock = "$run/upgrade.sock"
[[listeners]]
address = "127.0.0.1:$port"
[listeners.tls]
certificates = [{ cert = "$run/cert.pem", key = "$run/key.pem" }]
[listeners.quic]
idle_timeout = "5m"
${2:-}
[admin]
address = "127.0.0.1:$admin_port"
[access_log]
target = "off"
[limits]
keepalive_timeout = "300s"
h2_idle_timeout = "300s"
[[demo]]
name = "demo-a"
address = "127.0.0.1:$demo_port"
[upstreams.demo]
targets = [{ address = "127.0.0.1:$demo_port" }]
[[routes]]
name = "hello"
path = "/"
[routes.respond]
status = 200
body = "hello\n"
[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "demo"
TOML
"$bin" -t -c "$1" >/dev/null
}
write_config "$run/load.toml" "max_concurrent_streams = $H3_STREAMS"
write_config "$run/default.toml"

start_gateway() { # config
  echo "== $1" >>"$run/gateway.log"
  "$bin" -c "$1" >>"$run/gateway.log" 2>&1 &
  gw=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$admin_port/health" && return 0
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  echo "h3-compare: gateway did not become ready; $run/gateway.log:" >&2
  tail -20 "$run/gateway.log" >&2
  exit 1
}
wait_for_builds() {
  local waited=0
  while pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; do
    [ $waited -gt 0 ] || echo "# waiting for a cargo build to finish before measuring" >&2
    waited=$((waited + 5))
    [ $waited -le "$BUILD_WAIT" ] || { echo "h3-compare: a build is still running" >&2; exit 1; }
    sleep 5
  done
}
metric() { # name -> value (sum over labels) from the admin /metrics
  curl -s "http://127.0.0.1:$admin_port/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$gw/status"; }

echo "# h3-compare: $0 TOTAL=$TOTAL INFLIGHT=$INFLIGHT PROCS=$PROCS CONNS=$CONNS THREADS=$THREADS REPS=$REPS H3_STREAMS=$H3_STREAMS"
echo "# bin=$bin ($(stat -c %y "$bin" | cut -d. -f1)) run=$run"
echo "# $(python3 -c 'import niquests, qh3, urllib3, aioquic; print(f"niquests {niquests.__version__}, urllib3-future {urllib3.__version__}, qh3 {qh3.__version__}, aioquic {aioquic.__version__}")') ulimit -n $(ulimit -n)"

# ---- 1. throughput and CPU per request
start_gateway "$run/load.toml"
: >"$run/load.jsonl"
for rep in $(seq "$REPS"); do
  for route in hello:/ echo:/echo; do
    for proto in h3 h2; do
      wait_for_builds
      h3_before=$(metric tollgate_http3_requests_total)
      quic_before=$(metric tollgate_quic_connections_total)
      out=$(timeout 300 python3 "$helper" load "$proto" "https://127.0.0.1:$port${route#*:}" --pid "$gw" \
        --total "$TOTAL" --inflight "$INFLIGHT" --procs "$PROCS" --cafile "$run/ca.pem" --admin "http://127.0.0.1:$admin_port") || true
      [ -n "$out" ] || out='{"error": "client failed"}'
      h3_after=$(metric tollgate_http3_requests_total)
      quic_after=$(metric tollgate_quic_connections_total)
      jq -c --arg route "${route%%:*}" --argjson rep "$rep" \
        --argjson h3req $((h3_after - h3_before)) --argjson quic $((quic_after - quic_before)) \
        '. + {route: $route, rep: $rep, gw_h3_requests: $h3req, gw_quic_conns: $quic}' <<<"$out" >>"$run/load.jsonl"
    done
  done
done
stop_gateway

echo
echo "## throughput: one multiplexed niquests connection per client process; the client is the bottleneck, compare gateway CPU µs/request"
python3 - "$run/load.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
want = {"h3": "30", "h2": "20"}
print(f"{'route':<6} {'proto':<5} {'rep':>3} {'requests':>8} {'errors':>6} {'req/s':>8} {'gw CPU s':>8} {'gw µs/req':>9} {'client CPU s':>12} {'client µs/req':>13} {'conns':>5}  http_version counts (gw: h3 requests, QUIC conns accepted)")
for r in rows:
    if "error" in r:
        print(f"{r['route']:<6} {'?':<5} {r['rep']:>3}  FAILED: {r['error']} {r.get('detail')}")
        continue
    n = r["requests"]
    bad = {k: v for k, v in r["versions"].items() if k != want[r["proto"]]}
    note = "" if not bad and r["errors"] == 0 and not r["fatal"] else f"  <-- CHECK {r['fatal']}"
    print(f"{r['route']:<6} {r['proto']:<5} {r['rep']:>3} {n:>8} {r['errors']:>6} {r['rps']:>8.0f} {r['gateway_cpu']:>8.2f} "
          f"{r['gateway_cpu'] / n * 1e6:>9.1f} {r['client_cpu']:>12.2f} {r['client_cpu'] / n * 1e6:>13.1f} {r['gw_open_connections_max'] or 0:>5.0f}  "
          f"{r['versions']} ({r['gw_h3_requests']}, {r['gw_quic_conns']}){note}")
print("# gw CPU: the gateway's utime+stime over the window (the echo rows include the built-in demo backend);")
print("# conns: most client connections open at the gateway during the window (admin gauge);")
print("# gw h3 requests and QUIC conns include the warm-up (one connection and 1+INFLIGHT requests per process)")
PY

# ---- 2. memory per idle connection
echo
echo "## idle connections: gateway VmRSS before and after CONNS connections, one GET / each, then idle"
printf '%-31s %6s %10s %10s %9s  %s\n' protocol open "RSS kB" "after kB" "KB/conn" "gw open conns / client report"
# HTTP/3 with the listener's default stream limit (100), then with H3_STREAMS as in part 1
# (quinn's per-connection state grows with the limit), then HTTP/2.
for case in h3:default h3:load h2:default; do
  proto=${case%%:*}
  wait_for_builds
  start_gateway "$run/${case#*:}.toml"
  # warm the gateway over both protocols (runtimes, TLS contexts, allocator arenas)
  python3 "$helper" idle h3 127.0.0.1 "$port" --count 10 --cafile "$run/ca.pem" </dev/null >/dev/null
  python3 "$helper" idle h2 127.0.0.1 "$port" --count 10 --cafile "$run/ca.pem" </dev/null >/dev/null
  sleep 1
  before=$(rss)
  rm -f "$run/idle.${case/:/-}"
  mkfifo "$run/hold.${case/:/-}"
  python3 "$helper" idle "$proto" 127.0.0.1 "$port" --count "$CONNS" --cafile "$run/ca.pem" \
    <"$run/hold.${case/:/-}" >"$run/idle.${case/:/-}" &
  holder=$!
  exec 7>"$run/hold.${case/:/-}" # the helper holds its connections until this closes
  for _ in $(seq 1200); do [ -s "$run/idle.${case/:/-}" ] && break; sleep 0.1; done
  sleep 2
  after=$(rss)
  open_gw=$(metric tollgate_downstream_connections)
  exec 7>&-
  wait "$holder" || true
  holder=
  case $case in
    h3:default) label="HTTP/3, 100 streams (default)" ;;
    h3:load) label="HTTP/3, $H3_STREAMS streams" ;;
    *) label="HTTP/2 over TLS (raw frames)" ;;
  esac
  opened=$(jq -r .open "$run/idle.${case/:/-}")
  awk -v l="$label" -v o="$opened" -v b="$before" -v a="$after" -v g="$open_gw" -v c="$(jq -c 'del(.proto, .open)' "$run/idle.${case/:/-}")" \
    'BEGIN { printf "%-31s %6d %10d %10d %9.1f  %d / %s\n", l, o, b, a, (o ? (a - b) / o : 0), g, c }'
  stop_gateway
done

echo
n_warn=$(grep -c ' WARN \| ERROR ' "$run/gateway.log" || true)
echo "# gateway log: $n_warn WARN/ERROR lines ($run/gateway.log); most frequent:"
sed -E 's/^[0-9T:.-]+Z +//; s/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+/ADDR/g' "$run/gateway.log" |
  grep -E '^(WARN|ERROR)' | sort | uniq -c | sort -rn | head -5 | sed 's/^/#   /' || true
