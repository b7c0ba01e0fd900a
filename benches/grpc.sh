#!/usr/bin/env bash
# gRPC through Tollgate, from one run:
#   1. unary gRPC calls per second straight to the tonic server and through the gateway
#      (h2c both ways), with the gateway's CPU per call;
#   2. the gateway's CPU per request of a transcoded HTTP/JSON call (GET with a path capture
#      -> Bookstore/GetBook -> JSON) next to a plain proxied JSON call of the same size
#      (to a second Tollgate answering that JSON body).
#
#   cargo build --profile dist -p tollgate -p tollgate-grpc-fixtures --bins
#   TOLLGATE_BIN=.../tollgate GRPC_SERVER_BIN=.../grpc-fixture-server benches/grpc.sh
#   N=20000 C=8 M=16 benches/grpc.sh
#
# The load is h2load (nghttp2-client): gRPC calls as HTTP/2 POSTs with a framed EchoRequest
# body, `C` connections with `M` streams each; the JSON calls over HTTP/1.1 keep-alive. CPU
# is the gateway process's user+system time over the requests (from /proc/PID/stat). The
# gateway runs one worker thread, so figures compare paths, not machines.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TOLLGATE_BIN:-$here/../target/dist/tollgate}
server_bin=${GRPC_SERVER_BIN:-$here/../target/dist/grpc-fixture-server}
n=${N:-20000}
c=${C:-8}
m=${M:-16}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$run"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw_port=$(port); json_port=$(port)

"$server_bin" >"$run/server.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$run/server.out" 2>/dev/null && break; sleep 0.05; done
grpc_addr=$(awk '/listening/ {print $2}' "$run/server.out")

# The descriptor set the fixtures were built with.
desc=$(ls -t "$(dirname "$server_bin")"/build/tollgate-grpc-fixtures-*/out/descriptor.bin | head -1)

# EchoRequest{message: "hello"} as one gRPC frame.
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$run/echo.bin"
# The JSON the transcoded call answers, served as is by the plain upstream.
book='{"id":"7","title":"fiction book 7","author":"Tollgate","pageCount":107}'

cat >"$run/json.toml" <<EOF
[server]
threads = 1
pid_file = "$run/json.pid"
upgrade_sock = "$run/json.sock"
[[listeners]]
address = "127.0.0.1:$json_port"
[admin]
enabled = false
[access_log]
target = "off"
[[routes]]
name = "book"
[routes.respond]
headers = { "content-type" = "application/json" }
body = '$book'
EOF
cat >"$run/gw.toml" <<EOF
[server]
threads = 1
pid_file = "$run/gw.pid"
upgrade_sock = "$run/gw.sock"
[[listeners]]
address = "127.0.0.1:$gw_port"
h2c = true
[admin]
enabled = false
[access_log]
target = "off"
[security_headers]
enabled = false
[upstreams.grpc]
targets = [{ address = "$grpc_addr" }]
h2 = true
[upstreams.json]
targets = [{ address = "127.0.0.1:$json_port" }]
[[routes]]
name = "echo"
path_prefix = "/tollgate.test.Echo"
upstream = "grpc"
[[routes]]
name = "books"
path_prefix = "/v1"
upstream = "grpc"
[routes.transcode]
descriptor = "$desc"
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "json"
EOF
"$bin" -c "$run/json.toml" 2>"$run/json.log" &
pids+=($!)
"$bin" -c "$run/gw.toml" 2>"$run/gw.log" &
gw_pid=$!
pids+=($gw_pid)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$gw_port/plain" >/dev/null 2>&1 && break
  sleep 0.05
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# h2load's summary: requests/s and successful count.
load() {
  local out
  out=$(h2load "$@" 2>&1)
  local rps ok
  rps=$(awk '/finished in/ {print $4}' <<<"$out")
  ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
  echo "$rps $ok"
}

grpc_args=(-n "$n" -c "$c" -m "$m" -d "$run/echo.bin"
  -H 'content-type: application/grpc' -H 'te: trailers')

echo "gRPC unary (h2c, $n calls, $c connections x $m streams)"
read -r rps ok < <(load "${grpc_args[@]}" "http://$grpc_addr/tollgate.test.Echo/Unary")
printf '  %-34s %10s req/s  (%s ok)\n' "direct to tonic" "$rps" "$ok"
before=$(cpu "$gw_pid")
read -r rps ok < <(load "${grpc_args[@]}" "http://127.0.0.1:$gw_port/tollgate.test.Echo/Unary")
after=$(cpu "$gw_pid")
us=$(awk -v d="$((after - before))" -v t="$tck" -v n="$n" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
printf '  %-34s %10s req/s  (%s ok)  gateway CPU %s us/call\n' "through Tollgate" "$rps" "$ok" "$us"

echo "HTTP/JSON (HTTP/1.1 keep-alive, $n requests, $c connections)"
for path in /plain /v1/shelves/fiction/books/7; do
  before=$(cpu "$gw_pid")
  read -r rps ok < <(load --h1 -n "$n" -c "$c" "http://127.0.0.1:$gw_port$path")
  after=$(cpu "$gw_pid")
  us=$(awk -v d="$((after - before))" -v t="$tck" -v n="$n" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
  label=$([ "$path" = /plain ] && echo "proxied JSON" || echo "transcoded to gRPC")
  printf '  %-34s %10s req/s  (%s ok)  gateway CPU %s us/request\n' "$label" "$rps" "$ok" "$us"
done
