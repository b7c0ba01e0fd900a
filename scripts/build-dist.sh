#!/usr/bin/env bash
# The production build: `cargo build --profile dist` (fat LTO, one codegen unit), then,
# when asked, optimized with a profile of a training run:
#   BOLT=1  the dist build linked with --emit-relocs (in target/bolt), instrumented by
#           llvm-bolt, trained, and its code laid out again by llvm-bolt from the profile
#           (hot paths together, cold code split away: fewer instruction-cache misses);
#           the result is target/dist/tollgate. See docs/performance.md for what it gains.
#   PGO=1   an instrumented dist build (-Cprofile-generate) in target/pgo-gen, trained,
#           its profile merged by llvm-profdata, then the dist build with -Cprofile-use.
#           Opt-in and not used: the profile-guided build of the tollgate crate under fat
#           LTO had not finished after 32 min of CPU on this 2-core machine.
# The training run (either way): benches/pgo/train.toml.in, the request mix of a production
# gateway (plain proxying, the JWT chain with limits, API keys, cache hits and misses,
# compression, request validation, refusals, HTTP/2 over TLS, new TLS handshakes), driven by
# h2load against a demo backend in a process of its own.
# Usage: scripts/build-dist.sh (the plain dist build), BOLT=1 scripts/build-dist.sh, or
# PGO=1 scripts/build-dist.sh.
# Needs (installed by scripts/setup.sh --dist): bolt-19 or llvm-19, nghttp2-client (h2load),
# openssl, envsubst. Prints where each step's output is.
set -euo pipefail
cd "$(dirname "$0")/.."

pgo=${PGO:-0}
bolt=${BOLT:-0}
profdata=$(command -v llvm-profdata-19 || true)
llvm_bolt=$(command -v llvm-bolt-19 || true)
if [[ $pgo == 1 && ( -z $profdata || -z $(command -v h2load) ) ]]; then
  echo "build-dist: llvm-profdata-19 or h2load missing (scripts/setup.sh --dist installs them); building without PGO" >&2
  pgo=0
fi
if [[ $bolt == 1 && ( -z $llvm_bolt || -z $(command -v h2load) ) ]]; then
  echo "build-dist: llvm-bolt-19 or h2load missing (scripts/setup.sh --dist installs them); building without BOLT" >&2
  bolt=0
fi
if [[ $pgo == 0 && $bolt == 0 ]]; then
  exec cargo build --profile dist --locked --bin tollgate
fi
run=$(mktemp -d /tmp/tollgate-pgo.XXXXXX)

# The training run of "$1" (the gateway binary to profile; its environment for writing the
# profile in GATEWAY_ENV), against a demo backend run by "$2" (its environment in
# BACKEND_ENV: an instrumented backend's profile goes elsewhere and is not merged).
train() {
  local bin=$1 backend_bin=$2
  # Ports from the kernel's ephemeral range are avoided: fixed, high, and checked.
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  export DIR=$run PORT=$(free_port) TLS_PORT=$(free_port) BACKEND_LISTENER=$(free_port)
  export BACKEND=127.0.0.1:$(free_port)
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$run/key.pem" -out "$run/cert.pem" \
    -days 2 -subj /CN=localhost >/dev/null 2>&1
  printf '%s' "train-secret-0123456789abcdef0123" >"$run/jwt.secret"
  cp benches/pgo/orders.yaml "$run/orders.yaml"
  envsubst <benches/pgo/train.toml.in >"$run/train.toml"
  envsubst <benches/pgo/backend.toml.in >"$run/backend.toml"
  env ${BACKEND_ENV:+"$BACKEND_ENV"} RUST_LOG=error "$backend_bin" -c "$run/backend.toml" \
    >"$run/backend.log" 2>&1 &
  backend=$!
  env ${GATEWAY_ENV:+"$GATEWAY_ENV"} RUST_LOG=error "$bin" -c "$run/train.toml" \
    >"$run/gateway.log" 2>&1 &
  gateway=$!
  stop() { kill -INT "$gateway" "$backend" 2>/dev/null || true; }
  trap stop EXIT
  for _ in $(seq 300); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/plain/" && curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/plain/" && break
    sleep 0.2
  done
  token=$(python3 - "$run/jwt.secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
secret = open(sys.argv[1], "rb").read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "trainer", "iss": "train", "exp": int(time.time()) + 3600}).encode())
sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
  )
  n=${TRAIN_REQUESTS:-20000}
  plain="http://127.0.0.1:$PORT"
  load() { h2load "$@" >>"$run/h2load.log" 2>&1 || echo "build-dist: a training load failed (see $run/h2load.log)" >&2; }
  echo "build-dist: training run, $n requests per kind" >&2
  load --h1 -n "$n" -c 8 "$plain/plain/x"
  load --h1 -n "$n" -c 8 -H "Authorization: Bearer $token" "$plain/jwt/x"
  load --h1 -n "$((n / 2))" -c 8 -H "X-API-Key: train-key-0123456789abcdef" "$plain/key/x"
  load --h1 -n "$((n / 2))" -c 8 "$plain/cached/hit"
  for i in $(seq 200); do curl -s -o /dev/null "$plain/cached/miss-$i"; done
  load --h1 -n "$((n / 4))" -c 8 -H "Accept-Encoding: br, gzip" "$plain/gz/x"
  load --h1 -n "$((n / 4))" -c 8 -H "Accept-Encoding: zstd" "$plain/gz/x"
  printf '{"customer":"c-1","items":[{"sku":"AB-1","quantity":2},{"sku":"CD-2","quantity":1}]}' >"$run/order.json"
  load --h1 -n "$((n / 4))" -c 8 -d "$run/order.json" -H "Content-Type: application/json" "$plain/orders"
  load --h1 -n "$((n / 4))" -c 8 "$plain/jwt/no-token"
  load --h1 -n "$((n / 4))" -c 8 "$plain/nowhere"
  load --h1 -n "$((n / 4))" -c 8 "$plain/limited/x"
  load -n "$n" -c 8 -m 10 -H "Authorization: Bearer $token" "https://127.0.0.1:$TLS_PORT/jwt/x"
  load -n "$((n / 20))" -c "$((n / 20))" -m 1 "https://127.0.0.1:$TLS_PORT/plain/x"
  stop
  wait "$gateway" "$backend" 2>/dev/null || true
  trap - EXIT
}

if [[ $pgo == 1 ]]; then
  profiles="$run/profiles"
  mkdir -p "$profiles"
  echo "build-dist: instrumented build (target/pgo-gen), run directory $run" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
    cargo build --profile dist --locked --bin tollgate --target-dir target/pgo-gen
  GATEWAY_ENV="LLVM_PROFILE_FILE=$profiles/gateway-%p-%m.profraw" \
    BACKEND_ENV="LLVM_PROFILE_FILE=$run/backend-%p.profraw" \
    train target/pgo-gen/dist/tollgate target/pgo-gen/dist/tollgate
  # Only the gateway's: the build scripts and proc macros of the instrumented build wrote
  # theirs into the same directory.
  echo "build-dist: merging $(ls "$profiles"/gateway-*.profraw | wc -l) profiles" >&2
  "$profdata" merge -o "$run/merged.profdata" "$profiles"/gateway-*.profraw
  echo "build-dist: optimized build (target/dist) with $run/merged.profdata" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$run/merged.profdata" \
    cargo build --profile dist --locked --bin tollgate
  echo "build-dist: target/dist/tollgate (PGO; profile $run/merged.profdata)" >&2
  exit 0
fi

# BOLT: the same code as the dist build, linked with its relocations kept so llvm-bolt can
# move every function and block.
echo "build-dist: dist build with --emit-relocs (target/bolt), run directory $run" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Clink-arg=-Wl,--emit-relocs" \
  cargo build --profile dist --locked --bin tollgate --target-dir target/bolt
linked=target/bolt/dist/tollgate
# llvm-bolt finds its instrumentation runtime in ../lib from the path it was started by:
# Debian's /usr/bin/llvm-bolt-19 is a link into LLVM's own bin/, where that works.
llvm_bolt=$(readlink -f "$llvm_bolt")
"$llvm_bolt" "$linked" -instrument -o "$run/tollgate.inst" \
  --instrumentation-file="$run/gateway.fdata" \
  >"$run/bolt-instrument.log" 2>&1 \
  || { echo "build-dist: llvm-bolt -instrument failed: $run/bolt-instrument.log" >&2; exit 1; }
GATEWAY_ENV="" BACKEND_ENV="" train "$run/tollgate.inst" "$linked"
[[ -s $run/gateway.fdata ]] || { echo "build-dist: the training run wrote no profile ($run)" >&2; exit 1; }
mkdir -p target/dist
"$llvm_bolt" "$linked" -o target/dist/tollgate.bolt --data="$run/gateway.fdata" \
  --reorder-blocks=ext-tsp --reorder-functions=cdsort --split-functions --split-all-cold \
  --split-eh --icf=1 --use-gnu-stack --dyno-stats >"$run/bolt-optimize.log" 2>&1 \
  || { echo "build-dist: llvm-bolt failed: $run/bolt-optimize.log" >&2; exit 1; }
mv target/dist/tollgate.bolt target/dist/tollgate
echo "build-dist: target/dist/tollgate (BOLT; profile $run/gateway.fdata, logs in $run)" >&2
