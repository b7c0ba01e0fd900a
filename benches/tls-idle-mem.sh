#!/usr/bin/env bash
# Memory per idle TLS keep-alive connection, Tollgate beside nginx (one worker each, the same
# certificate, proxying to ../shared/perf's fastback): CONNS connections (default 1000) each
# make one HTTP/1.1 request over TLS and then stay open and idle (held by a Python client); the server's PSS (its
# whole process tree) before and after, divided by CONNS. With H2=1 the connections speak
# HTTP/2 (ALPN h2) instead. Needs: nginx, openssl, python3, the dist build.
# With DHAT=1, Tollgate alone runs under valgrind's DHAT heap profiler, twice (CONNS, default
# 100, and 3 x CONNS connections held): once they are held it is stopped, and
# benches/dhat-sites.py prints the heap bytes live at the peak of the second run less the
# first, per extra connection, by owner (OpenSSL, h2, Pingora, tokio...) and by allocation
# site: what one more idle connection is made of. DHAT follows the C library's
# malloc, so the binary is a build with the `system-allocator` feature (made here, once, in
# target/sysalloc; the sizes asked for are the same as with mimalloc).
#   benches/tls-idle-mem.sh            CONNS=1000 H2=0
#   DHAT=1 H2=1 benches/tls-idle-mem.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TOLLGATE_BIN:-$here/../target/dist/tollgate}
conns=${CONNS:-1000}
h2=${H2:-0}
run=$(mktemp -d /tmp/tls-idle.XXXXXX)
chmod 755 "$run"
fastback=${FASTBACK:-/tmp/perf-target/release/fastback}
[[ -x $fastback ]] || { echo "build fastback first (../shared/perf/icount.sh does)" >&2; exit 2; }
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$run/key.pem" -out "$run/cert.pem" \
  -days 2 -subj /CN=localhost >/dev/null 2>&1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$fastback" 127.0.0.1:19480 raw >"$run/backend.log" 2>&1 &
pids=($!)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

cat >"$run/nginx.conf" <<NGINX
worker_processes 1;
pid $run/nginx.pid;
error_log $run/nginx-error.log;
events { worker_connections 65536; }
http {
  access_log off;
  keepalive_timeout 300s;
  http2_idle_timeout 300s;
  upstream b { server 127.0.0.1:19480; keepalive 16; }
  server {
    listen 127.0.0.1:19443 ssl http2;   # nginx 1.22 (Debian 12) syntax
    ssl_certificate $run/cert.pem;
    ssl_certificate_key $run/key.pem;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
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
certificates = [{ cert = "$run/cert.pem", key = "$run/key.pem" }]
[admin]
enabled = false
[access_log]
target = "off"
[limits]
keepalive_timeout = "300s"
h2_idle_timeout = "300s"
[upstreams.b]
targets = [{ address = "127.0.0.1:19480" }]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "b"
TOML

pss() { # pid... -> total PSS in kB of the processes and their children
  local p c total=0
  for p in "$@"; do
    for c in $p $(pgrep -P "$p" || true); do
      total=$((total + $(awk '/^Pss:/ {s += $2} END {print s + 0}' /proc/"$c"/smaps_rollup 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

hold() { # port connections -> holds that many idle connections until stdin closes
  python3 - "$1" "$2" "$h2" <<'PY'
import socket, ssl, sys, time
port, n, h2 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
held = []
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    if h2:
        # SETTINGS (empty), then a HEADERS frame for GET / with an HPACK static-table head.
        hdr = bytes([0x82, 0x87, 0x84, 0x41, 0x09]) + b"localhost"
        s.sendall(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                  + len(hdr).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + hdr)
    else:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    s.settimeout(5)
    got = s.recv(65536)
    assert got, "no answer"
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
PY
}

# Called in this shell, not in $(...): the holder must be this script's child to be let go.
holding='' held=''
hold_start() { # port connections seconds -> holds them in the background, waiting at most
  # that long for all to be made; sets $held to how many are held
  rm -f "$run/held"
  sleep 100000 | hold "$1" "$2" >"$run/held" &
  holding=$!
  for _ in $(seq "$(($3 * 10))"); do [[ -s $run/held ]] && break; sleep 0.1; done
  held=$(cat "$run/held")
}
hold_stop() { # lets the held connections go
  pkill -P $$ sleep 2>/dev/null || true
  wait "$holding" 2>/dev/null || true
}

measure() { # name port pid...
  local name=$1 port=$2; shift 2
  sleep 1
  local before after n
  before=$(pss "$@")
  hold_start "$port" "$conns" 60
  n=$held
  sleep 2
  after=$(pss "$@")
  hold_stop
  awk -v n="$name" -v c="$n" -v b="$before" -v a="$after" \
    'BEGIN { printf "%-9s %5d conns  PSS %7d -> %7d kB  %.1f KB per idle connection\n", n, c, b, a, (a - b) / c }'
}

if [[ ${DHAT:-0} == 1 ]]; then
  conns=${CONNS:-100}
  if [[ -z ${TOLLGATE_BIN:-} ]]; then
    (cd "$here/.." && cargo build --locked --features system-allocator --bin tollgate \
      --target-dir target/sysalloc)
    bin=$here/../target/sysalloc/debug/tollgate
  fi
  dhat_run() { # connections -> profile in $run/dhat.N.json; sets $held
    local n=$1 tg
    valgrind --tool=dhat --dhat-out-file="$run/dhat.$n.json" "$bin" -c "$run/tollgate.toml" \
      >"$run/tollgate.$n.log" 2>&1 &
    tg=$!
    for _ in $(seq 600); do curl -sk -o /dev/null "https://127.0.0.1:19444/" && break; sleep 0.2; done
    hold_start 19444 "$n" 600
    sleep 2
    kill -INT "$tg"
    wait "$tg" 2>/dev/null || true
    hold_stop
  }
  # Twice, with N and 3N connections: the difference over 2N is what one more idle
  # connection holds, without the process's own state (CA bundle, runtimes, tables).
  n1=$conns n3=$((3 * conns))
  dhat_run "$n1"
  held1=$held
  dhat_run "$n3"
  held3=$held
  echo "# DHAT N=$held1 3N=$held3 H2=$h2 bin=$bin run=$run"
  python3 "$here/dhat-sites.py" "$run/dhat.$n1.json" "$held1" "$run/dhat.$n3.json" "$held3"
  exit 0
fi

nginx -c "$run/nginx.conf" -g 'daemon off;' >"$run/nginx.log" 2>&1 &
pids+=($!)
ngx=$!
"$bin" -c "$run/tollgate.toml" >"$run/tollgate.log" 2>&1 &
pids+=($!)
tg=$!
for p in 19443 19444; do
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$p/" && break; sleep 0.1; done
done
echo "# CONNS=$conns H2=$h2 bin=$bin run=$run"
measure nginx 19443 "$ngx"
measure tollgate 19444 "$tg"
