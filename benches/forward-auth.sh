#!/usr/bin/env bash
# Latency and CPU per request of forward auth, cold (no decision cache: one subrequest per
# request) and cached, next to local JWT verification (verification cache off and on) and no
# auth at all, from one run of one gateway.
#
#   cargo build --profile dist && benches/forward-auth.sh            # TOLLGATE_BIN to use another
#   N=20000 C=16 benches/forward-auth.sh
#
# A second Tollgate instance is both the auth service (`/verify` answers 200 with the
# identity headers) and the upstream (a direct 200), so every hop is real HTTP/1.1 on
# loopback. The load is h2load (nghttp2-client) over HTTP/1.1 keep-alive connections. CPU per
# request is the gateway process's user+system time over the requests of the scenario
# (from /proc/PID/stat); the auth service's own CPU is not counted. The gateway runs one
# worker thread, so the figures compare scenarios, not machines.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TOLLGATE_BIN:-$here/../target/dist/tollgate}
n=${N:-20000}
c=${C:-16}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$run"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
svc_port=$(port); gw_port=$(port)
secret="bench-secret-0123456789abcdef0123"
token=$(python3 - "$secret" <<'EOF'
import base64, hashlib, hmac, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b(json.dumps({"sub": "bench", "iss": "bench", "exp": 4102444800}).encode())
sig = b(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
EOF
)

cat >"$run/svc.toml" <<EOF
[server]
threads = 1
pid_file = "$run/svc.pid"
upgrade_sock = "$run/svc.sock"
[[listeners]]
address = "127.0.0.1:$svc_port"
[admin]
enabled = false
[access_log]
target = "off"
[[routes]]
name = "verify"
path = "/verify"
[routes.respond]
headers = { "x-user-id" = "bench", "x-user-roles" = "reader" }
[[routes]]
name = "app"
path_prefix = "/"
[routes.respond]
body = "ok"
EOF

cat >"$run/gw.toml" <<EOF
[server]
threads = 1
pid_file = "$run/gw.pid"
upgrade_sock = "$run/gw.sock"
[[listeners]]
address = "127.0.0.1:$gw_port"
[admin]
enabled = false
[access_log]
target = "off"
[upstreams.svc]
targets = [{ address = "127.0.0.1:$svc_port" }]
[auth.jwt.verify]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
issuer = "bench"
cache_entries = 0
[auth.jwt.cached]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
issuer = "bench"
[auth.forward.cold]
upstream = "svc"
path = "/verify"
subject_header = "x-user-id"
roles_header = "x-user-roles"
[auth.forward.cached]
upstream = "svc"
path = "/verify"
subject_header = "x-user-id"
roles_header = "x-user-roles"
[auth.forward.cached.cache]
ttl = "10m"
EOF
for r in plain:"" jwt:'"jwt:verify"' jwt-cached:'"jwt:cached"' fa-cold:'"forward:cold"' fa-cached:'"forward:cached"'; do
  name=${r%%:*}; auth=${r#*:}
  cat >>"$run/gw.toml" <<EOF
[[routes]]
name = "$name"
path = "/$name"
upstream = "svc"
rewrite_prefix = "/"
auth = [$auth]
EOF
done

RUST_LOG=error "$bin" -c "$run/svc.toml" & pids+=($!)
BENCH_SECRET=$secret RUST_LOG=error "$bin" -c "$run/gw.toml" & pids+=($!)
gw_pid=$!
for p in $svc_port $gw_port; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
hz=$(getconf CLK_TCK)

printf '%-10s %10s %12s %12s %14s\n' scenario req/s "mean ms" "max ms" "CPU us/req"
for s in plain jwt jwt-cached fa-cold fa-cached; do
  url="http://127.0.0.1:$gw_port/$s"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "$url")
  [ "$code" = 200 ] || { echo "$s answered $code" >&2; exit 1; }
  h2load --h1 -n 2000 -c "$c" -H "authorization: Bearer $token" "$url" >/dev/null  # warm-up
  t0=$(ticks)
  out=$(h2load --h1 -n "$n" -c "$c" -H "authorization: Bearer $token" "$url")
  t1=$(ticks)
  ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
  [ "$ok" = "$n" ] || { echo "$s: only $ok of $n answered 2xx" >&2; echo "$out" >&2; exit 1; }
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  read -r _ _ _ min max mean _ < <(grep '^time for request' <<<"$out")
  cpu=$(python3 -c "print(round(($t1 - $t0) / $hz * 1e6 / $n, 1))")
  printf '%-10s %10s %12s %12s %14s\n' "$s" "$rps" "$mean" "$max" "$cpu"
done
