#!/usr/bin/env bash
# Memory held by half-open HTTP/2 connections, and whether the gateway reclaims it.
# N TLS clients negotiate h2, send the preface, SETTINGS and a HEADERS frame without
# END_HEADERS (a CONTINUATION is owed and never sent), then nothing. Reports the gateway's RSS
# before, with all N open, and `limits.header_timeout` + 2 s after the last was opened, and
# how many connections it closed by then (h2_idle_timeout is IDLE, longer).
#   benches/h2-halfopen.sh          (N=1000, HEADER_TIMEOUT=2s, IDLE=60s; TOLLGATE_BIN
#                                    defaults to the release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TOLLGATE_BIN:-$root/target/dist/tollgate}
n=${N:-1000}
idle=${IDLE:-60}
header_timeout=${HEADER_TIMEOUT:-2}
port=${PORT:-19543}
run=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
ulimit -n $((n * 2 + 256))
[ -x "$bin" ] || (cd "$root" && cargo build --profile dist --locked)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null
cat >"$run/tollgate.toml" <<EOF
[server]
threads = 1
pid_file = "$run/tollgate.pid"
upgrade_sock = "$run/upgrade.sock"

[[listeners]]
address = "127.0.0.1:$port"
[listeners.tls]
certificates = [{ cert = "$run/cert.pem", key = "$run/key.pem" }]

[admin]
enabled = false

[access_log]
target = "off"

[limits]
h2_idle_timeout = "${idle}s"
header_timeout = "${header_timeout}s"

[[routes]]
name = "ok"
respond = { status = 200, body = "ok" }
EOF
RUST_LOG=error "$bin" -c "$run/tollgate.toml" &
pid=$!

python3 - "$n" "$port" "$pid" "$header_timeout" <<'PY'
import socket, ssl, sys, time
n, port, pid, wait = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

deadline = time.time() + 20
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("gateway did not start")
        time.sleep(0.05)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
partial_headers = b"\x00\x00\x01\x01\x00\x00\x00\x00\x01\x82"

time.sleep(0.5)
before = rss_kib()
conns = []
start = time.time()
for _ in range(n):
    t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.test")
    assert t.selected_alpn_protocol() == "h2"
    t.sendall(preface + partial_headers)
    conns.append(t)
opened = time.time() - start
time.sleep(0.5)
held = rss_kib()
last = time.time()
time.sleep(wait + 2)
closed = 0
for t in conns:
    t.settimeout(0.05)
    try:
        while True:
            if not t.recv(65536):
                closed += 1
                break
    except (ssl.SSLError, ConnectionError):
        closed += 1
    except socket.timeout:
        pass
after = rss_kib()
print(f"connections: {n} half-open h2 (opened in {opened:.1f} s), header_timeout {wait} s")
print(f"RSS before:      {before / 1024:7.1f} MiB")
print(f"RSS with {n} open: {held / 1024:7.1f} MiB  ({(held - before) / n:.1f} KiB per connection)")
print(f"RSS at header_timeout + 2 s: {after / 1024:7.1f} MiB  ({closed} of {n} closed by the gateway, {n - closed} left)")
PY
