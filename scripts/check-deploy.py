#!/usr/bin/env python3
"""Cross-check the Kubernetes manifests against the gateway configuration they ship.

A schema validator (scripts/validate-deploy.sh runs one first) knows each manifest's shape but
not that they must agree with each other and with the TOML in the ConfigMap. This script
extracts that TOML, runs `tollgate -t` on it, parses it and checks, printing one line each:

- the kustomization lists exactly the manifests of the directory;
- the config file is mounted where `-c` points (a directory mount, not subPath), and every
  path the gateway writes (pid file, upgrade socket, log files) is on a writable emptyDir;
- listeners and the admin listener bind all interfaces; container ports are exactly the
  listener ports and the admin port; the Service targets the listener ports and never the
  admin port; the probes are /livez and /readyz on the admin port;
- terminationGracePeriodSeconds > preStop sleep + grace_period + graceful_shutdown_timeout,
  and the liveness probe outlasts a drain; upstream read timeouts fit in grace_period;
- the security context (non-root, read-only root, no privilege escalation, capabilities
  dropped, seccomp), resources, threads within the CPU limit;
- the checksum/config annotation is the sha256 of the config;
- every env secretKeyRef names a Secret of the directory and one of its keys, every Secret
  is used, every `*_env` key of the config is a variable of the container, and `tollgate -t`
  runs with the container's variables (the Secrets' values included);
- the PodDisruptionBudget and the HorizontalPodAutoscaler select and target the Deployment,
  and the Deployment's replicas equal the HPA's minReplicas;
- the Dockerfile runs as the same numeric user and exposes the ports, its default config
  passes `tollgate -t` and listens on all interfaces, and its runtime base has every shared
  library the binary links.

Usage: check-deploy.py [DIR] [--tollgate BIN] [--dockerfile FILE]; exits 1 if any check fails.
"""

import argparse
import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

from deploy_checks import Checks, port_of, seconds

ROOT = Path(__file__).resolve().parent.parent

# Defaults of the keys the checks read (docs/configuration.md).
DEFAULT_GRACE = "30s"
DEFAULT_SHUTDOWN_TIMEOUT = "10s"
DEFAULT_READ_TIMEOUT = "30s"
DEFAULT_PID_FILE = "/tmp/tollgate.pid"
DEFAULT_UPGRADE_SOCK = "/tmp/tollgate_upgrade.sock"
DEFAULT_ADMIN = "127.0.0.1:9090"
DEFAULT_CONFIG = "/etc/tollgate/tollgate.toml"

# Shared libraries of gcr.io/distroless/cc-debian12: glibc (base), libssl3 (base), and the
# libgcc-s1, libstdc++6, libgomp1 that cc adds.
RUNTIME_BASE = "gcr.io/distroless/cc-debian12"
RUNTIME_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
    "libresolv.so.2", "libutil.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libgomp.so.1", "libssl.so.3", "libcrypto.so.3",
}


def cpu_cores(quantity):
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def load_manifests(directory):
    docs = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.setdefault(doc.get("kind"), []).append((path.name, doc))
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=str(ROOT / "deploy/kubernetes"))
    ap.add_argument("--tollgate", default=str(ROOT / "target/debug/tollgate"))
    ap.add_argument("--dockerfile", default=str(ROOT / "Dockerfile"))
    args = ap.parse_args()
    directory = Path(args.dir)
    c = Checks()
    docs = load_manifests(directory)

    def one(kind, api_version):
        found = docs.get(kind, [])
        if not c.check(len(found) == 1, f"one {kind}", f"found {len(found)}"):
            return None
        name, doc = found[0]
        c.check(doc.get("apiVersion") == api_version, f"{name}: {kind} is {api_version}",
                f"apiVersion is {doc.get('apiVersion')}")
        return doc

    # The kustomization lists every manifest, and nothing else.
    kust = docs.get("Kustomization", [])
    manifests = {p.name for p in directory.iterdir()
                 if p.suffix in (".yaml", ".yml") and p.name not in ("kustomization.yaml",
                                                                     "kustomization.yml")}
    if kust:
        listed = set(kust[0][1].get("resources", []))
        c.check(listed == manifests, "kustomization.yaml lists exactly the manifests",
                f"missing {sorted(manifests - listed)}, not there {sorted(listed - manifests)}")

    dep = one("Deployment", "apps/v1")
    svc = one("Service", "v1")
    cm = one("ConfigMap", "v1")
    pdb = one("PodDisruptionBudget", "policy/v1")
    hpa = one("HorizontalPodAutoscaler", "autoscaling/v2")
    if not (dep and svc and cm):
        return finish(c)

    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = pod.get("containers", [])
    if not c.check(len(containers) == 1, "the Deployment runs one container",
                   f"found {len(containers)}"):
        return finish(c)
    ctr = containers[0]
    selector = dep["spec"].get("selector", {}).get("matchLabels", {})
    c.check(selector and selector.items() <= pod_labels.items(),
            "Deployment selector matches its pod labels", f"{selector} vs {pod_labels}")

    # --- The configuration file: where -c points, mounted from the ConfigMap. --------------
    argv = list(ctr.get("command", [])) + list(ctr.get("args", []))
    config_path = DEFAULT_CONFIG
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif a.startswith("--config="):
            config_path = a.split("=", 1)[1]
    config_dir, config_key = os.path.dirname(config_path), os.path.basename(config_path)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = ctr.get("volumeMounts", [])
    cm_name = cm["metadata"]["name"]
    config_mount = next((m for m in mounts if m["mountPath"].rstrip("/") == config_dir), None)
    c.check(config_mount is not None
            and volumes.get(config_mount["name"], {}).get("configMap", {}).get("name") == cm_name,
            f"ConfigMap {cm_name} is mounted at {config_dir} (the directory of -c {config_path})",
            f"mounts: {[(m['name'], m['mountPath']) for m in mounts]}")
    if config_mount is not None:
        c.check("subPath" not in config_mount and "subPathExpr" not in config_mount,
                "the config is a directory mount, not subPath (a subPath never sees updates)")
    text = cm.get("data", {}).get(config_key)
    if not c.check(text is not None, f"ConfigMap data has {config_key}",
                   f"keys: {sorted(cm.get('data', {}))}"):
        return finish(c)

    # --- The container's environment: plain values and Secret keys. ------------------------
    # Every secretKeyRef names a Secret of the directory and a key it has; the values are
    # what `tollgate -t` below gets, as the container would.
    secrets = {doc["metadata"]["name"]: doc for _, doc in docs.get("Secret", [])}
    env = {}
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        sname, skey = ref.get("name"), ref.get("key")
        secret = secrets.get(sname)
        if not c.check(secret is not None,
                       f"env {e['name']}: Secret {sname} is in {directory.name}/",
                       f"Secrets here: {sorted(secrets)}"):
            continue
        string_data, data = secret.get("stringData", {}) or {}, secret.get("data", {}) or {}
        if not c.check(skey in string_data or skey in data,
                       f"env {e['name']}: Secret {sname} has key {skey}",
                       f"its keys: {sorted(set(string_data) | set(data))}"):
            continue
        if skey in string_data:
            env[e["name"]] = str(string_data[skey])
        else:
            try:
                env[e["name"]] = base64.b64decode(data[skey], validate=True).decode()
            except (ValueError, UnicodeDecodeError) as err:
                c.check(False, f"Secret {sname} data.{skey} is base64 text", str(err))
    referenced = {ref["name"] for e in ctr.get("env", [])
                  for ref in [e.get("valueFrom", {}).get("secretKeyRef")] if ref}
    for sname in sorted(secrets):
        c.check(sname in referenced, f"Secret {sname} is used by the container",
                "an unreferenced Secret is dead weight, or a typo in a secretKeyRef")

    # --- tollgate -t, then parse. ---------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / config_key
        f.write_text(text)
        try:
            # The container's variables only (and PATH), so a variable set in this shell
            # cannot stand in for one the manifests forgot.
            run = subprocess.run([args.tollgate, "-t", "-c", str(f)], capture_output=True,
                                 text=True, cwd=ROOT, timeout=60,
                                 env={"PATH": os.environ.get("PATH", ""), **env})
            out = (run.stdout + run.stderr).strip().replace(str(f), f"{cm_name}:{config_key}")
            ok = run.returncode == 0
        except OSError as e:
            out, ok = str(e), False
        c.check(ok, f"`tollgate -t` accepts the ConfigMap's {config_key}",
                "\n  " + out.replace("\n", "\n  "))
        if ok and out:
            print("  " + out.replace("\n", "\n  "))
            if "resolving" in out:
                print("  (expected here: a cluster's Service names resolve only inside it)")
    conf = tomllib.loads(text)

    # Every `*_env` key of the config (auth.jwt.NAME.secret_env, ...) names a variable of the
    # container.
    def env_keys(node, at):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.endswith("_env") and isinstance(v, str):
                    yield f"{at}{k}", v
                else:
                    yield from env_keys(v, f"{at}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from env_keys(v, f"{at[:-1]}[{i}].")

    for key, var in env_keys(conf, ""):
        c.check(var in env, f"{key} = {var!r} is an env var of the container",
                f"the container has {sorted(env)}")

    server = conf.get("server", {})
    listeners = conf.get("listeners", [])
    admin = conf.get("admin", {})
    admin_on = admin.get("enabled", True)
    listener_ports = set()
    for i, lst in enumerate(listeners):
        host, port = port_of(lst["address"])
        listener_ports.add(port)
        c.check(host in ("0.0.0.0", "::"), f"listeners[{i}] binds all interfaces ({lst['address']})",
                "the Service reaches the pod IP, not its loopback")
    if not c.check(admin_on, "[admin] is enabled", "the probes are served on it"):
        return finish(c)
    admin_host, admin_port = port_of(admin.get("address", DEFAULT_ADMIN))
    c.check(admin_host in ("0.0.0.0", "::"), f"[admin] binds all interfaces ({admin_host})",
            "the kubelet probes from the node, not from the pod's loopback")
    c.check(admin_port not in listener_ports, "the admin port is not a listener port")

    # --- Writable paths on a read-only root. ---------------------------------------------
    writable = [m["mountPath"].rstrip("/") for m in mounts
                if "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly")]
    paths = {"server.pid_file": server.get("pid_file", DEFAULT_PID_FILE),
             "server.upgrade_sock": server.get("upgrade_sock", DEFAULT_UPGRADE_SOCK)}
    if "error_log" in server:
        paths["server.error_log"] = server["error_log"]
    log_target = conf.get("access_log", {}).get("target", "stdout")
    if log_target not in ("stdout", "off"):
        paths["access_log.target"] = log_target
    for key, path in paths.items():
        c.check(any(path.startswith(w + "/") for w in writable),
                f"{key} ({path}) is on a writable emptyDir", f"writable mounts: {writable}")

    # --- Ports and probes. ------------------------------------------------------------------
    named = {p["name"]: p["containerPort"] for p in ctr.get("ports", []) if "name" in p}
    container_ports = {p["containerPort"] for p in ctr.get("ports", [])}

    def resolve(port):
        return named.get(port) if isinstance(port, str) else port

    c.check(container_ports == listener_ports | {admin_port},
            f"container ports {sorted(container_ports)} == listener ports "
            f"{sorted(listener_ports)} + admin {admin_port}")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/livez")):
        p = ctr.get(probe)
        if p is None and probe == "startupProbe":
            continue
        get = (p or {}).get("httpGet")
        if not c.check(get is not None, f"{probe} is an httpGet"):
            continue
        c.check(get.get("path") == path, f"{probe} path is {path}", f"it is {get.get('path')}")
        c.check(resolve(get.get("port")) == admin_port,
                f"{probe} port ({get.get('port')}) is the admin port {admin_port}",
                f"resolves to {resolve(get.get('port'))}")
        c.check(get.get("scheme", "HTTP") == "HTTP", f"{probe} uses HTTP (the admin listener has no TLS)")

    svc_sel = svc["spec"].get("selector", {})
    c.check(svc_sel and svc_sel.items() <= pod_labels.items(),
            "Service selector matches the pod labels", f"{svc_sel} vs {pod_labels}")
    targets = {resolve(p.get("targetPort", p["port"])) for p in svc["spec"].get("ports", [])}
    c.check(targets == listener_ports,
            f"Service targetPorts {sorted(t for t in targets if t)} == listener ports {sorted(listener_ports)}",
            "an unnamed or unknown targetPort, or a listener left out")
    c.check(admin_port not in targets, "the admin port is not in the Service")

    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        c.check(str(ann["prometheus.io/port"]) == str(admin_port),
                f"prometheus.io/port ({ann['prometheus.io/port']}) is the admin port")

    # --- Drain timing. ----------------------------------------------------------------------
    grace = seconds(server.get("grace_period", DEFAULT_GRACE))
    shutdown = seconds(server.get("graceful_shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
    pre = ctr.get("lifecycle", {}).get("preStop", {})
    sleep = None
    if "sleep" in pre:
        sleep = int(pre["sleep"]["seconds"])
    elif "exec" in pre:
        m = re.search(r"\bsleep\s+(\d+)", " ".join(pre["exec"].get("command", [])))
        sleep = int(m.group(1)) if m else None
    c.check(sleep is not None and sleep > 0, f"preStop sleeps ({sleep} s) before SIGTERM",
            "without it SIGTERM closes the listeners while endpoints still send traffic")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    need = (sleep or 0) + grace + shutdown
    c.check(tgps > need, f"terminationGracePeriodSeconds {tgps} > preStop {sleep or 0} + "
            f"grace_period {grace:g} + graceful_shutdown_timeout {shutdown:g} = {need:g}",
            "the kubelet would SIGKILL in the middle of the drain")
    live = ctr.get("livenessProbe", {})
    live_window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    c.check(live_window > grace + shutdown,
            f"liveness window {live_window} s > drain {grace + shutdown:g} s",
            "SIGTERM closes the admin listener too; the liveness probe must not cut the drain")
    groups = conf.get("upstreams", {})
    for name, g in groups.items():
        rt = seconds(g.get("read_timeout", DEFAULT_READ_TIMEOUT))
        c.check(rt <= grace, f"upstreams.{name}.read_timeout {rt:g} s <= grace_period {grace:g} s",
                "a request waiting on its upstream would be cut by the end of the drain")
    for i, r in enumerate(conf.get("routes", [])):
        if "read_timeout" in r:
            rt = seconds(r["read_timeout"])
            c.check(rt <= grace, f"routes[{i}].read_timeout {rt:g} s <= grace_period {grace:g} s")

    # --- Security context (the container's value wins over the pod's). ----------------------
    psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})

    def eff(key):
        return csc.get(key, psc.get(key))

    c.check(eff("runAsNonRoot") is True, "runAsNonRoot: true")
    c.check(isinstance(eff("runAsUser"), int) and eff("runAsUser") > 0,
            f"runAsUser is a non-root uid ({eff('runAsUser')})")
    c.check(isinstance(eff("runAsGroup"), int) and eff("runAsGroup") > 0,
            f"runAsGroup is a non-root gid ({eff('runAsGroup')})")
    c.check((eff("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost"),
            "seccompProfile is RuntimeDefault (or Localhost)")
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    c.check(csc.get("privileged") is not True, "not privileged")
    caps = csc.get("capabilities", {})
    c.check("ALL" in caps.get("drop", []), "capabilities drop ALL")
    c.check(not caps.get("add"), "no capabilities added", f"adds {caps.get('add')}")
    low = sorted(p for p in container_ports if p < 1024)
    c.check(not low, "no port below 1024 (binding one needs CAP_NET_BIND_SERVICE)", f"{low}")

    # --- Resources. -------------------------------------------------------------------------
    res = ctr.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            c.check(r in res.get(kind, {}), f"resources.{kind}.{r} is set")
    threads = server.get("threads")
    cpu_limit = res.get("limits", {}).get("cpu")
    c.check(threads is not None, "server.threads is set",
            "its default is the node's CPU count, not the pod's limit")
    if threads is not None and cpu_limit is not None:
        c.check(threads <= max(1, cpu_cores(cpu_limit)),
                f"server.threads ({threads}) <= the CPU limit ({cpu_limit})",
                "more busy threads than the limit are throttled")

    # --- checksum/config. -------------------------------------------------------------------
    digest = hashlib.sha256(text.encode()).hexdigest()
    c.check(ann.get("checksum/config") == digest,
            "checksum/config is the sha256 of the config",
            f"set checksum/config: \"{digest}\" in the Deployment's pod template "
            f"(it is {ann.get('checksum/config')!r})")

    # --- PodDisruptionBudget and HorizontalPodAutoscaler. -----------------------------------
    min_replicas = None
    if hpa:
        ref = hpa["spec"].get("scaleTargetRef", {})
        c.check((ref.get("apiVersion"), ref.get("kind"), ref.get("name"))
                == ("apps/v1", "Deployment", dep["metadata"]["name"]),
                f"HPA targets Deployment {dep['metadata']['name']}", f"it targets {ref}")
        min_replicas = hpa["spec"].get("minReplicas", 1)
        c.check(min_replicas >= 2, f"HPA minReplicas ({min_replicas}) >= 2",
                "one pod cannot be drained or rescheduled without an outage")
        c.check(hpa["spec"].get("maxReplicas", 0) >= min_replicas, "HPA maxReplicas >= minReplicas")
        replicas = dep["spec"].get("replicas")
        if replicas is not None:
            c.check(replicas == min_replicas,
                    f"Deployment replicas ({replicas}) == HPA minReplicas ({min_replicas})",
                    "every apply sets the count to replicas: it should be the floor the HPA "
                    "keeps, neither under it nor a scale-up that no load asked for")
    else:
        replicas = dep["spec"].get("replicas", 1)
        c.check(replicas >= 2, f"Deployment replicas ({replicas}) >= 2 without an HPA",
                "one pod cannot be drained or rescheduled without an outage")
        for m in hpa["spec"].get("metrics", []):
            if m.get("type") == "Resource" and m["resource"]["target"].get("type") == "Utilization":
                r = m["resource"]["name"]
                c.check(r in res.get("requests", {}),
                        f"HPA {r} utilization has a {r} request to be a percentage of")
    if pdb:
        sel = pdb["spec"].get("selector", {})
        ml = sel.get("matchLabels", {})
        c.check(ml and not sel.get("matchExpressions") and ml.items() <= pod_labels.items()
                and ml == selector,
                "PDB selects the Deployment's pods", f"{sel} vs {selector}")
        mu, ma = pdb["spec"].get("maxUnavailable"), pdb["spec"].get("minAvailable")
        if min_replicas is not None and isinstance(mu, int):
            c.check(1 <= mu < min_replicas,
                    f"PDB maxUnavailable {mu} leaves a pod of the minimum {min_replicas}")
        if min_replicas is not None and isinstance(ma, int):
            c.check(ma < min_replicas,
                    f"PDB minAvailable {ma} < HPA minReplicas {min_replicas}",
                    "a node drain would block forever")

    # --- The Dockerfile and the binary's libraries. -----------------------------------------
    dockerfile = Path(args.dockerfile)
    if c.check(dockerfile.is_file(), f"{dockerfile.name} exists"):
        d = dockerfile.read_text()
        froms = re.findall(r"(?im)^FROM\s+(\S+)", d)
        c.check(bool(froms) and froms[-1].startswith(RUNTIME_BASE),
                f"the runtime stage is {RUNTIME_BASE}", f"it is {froms[-1] if froms else None}")
        users = re.findall(r"(?im)^USER\s+(\S+)", d)
        want = f"{eff('runAsUser')}:{eff('runAsGroup')}"
        c.check(bool(users) and users[-1] == want,
                f"Dockerfile USER is {want}, as runAsUser:runAsGroup",
                f"it is {users[-1] if users else None}")
        exposed = {int(p.split("/")[0]) for line in re.findall(r"(?im)^EXPOSE\s+(.+)$", d)
                   for p in line.split()}
        c.check(container_ports <= exposed, f"Dockerfile EXPOSEs {sorted(container_ports)}",
                f"it exposes {sorted(exposed)}")
        # The image's own default configuration, for `docker run`.
        copied = re.findall(rf"(?im)^COPY\s+(?!--from)(\S+)\s+{re.escape(DEFAULT_CONFIG)}\s*$", d)
        if c.check(len(copied) == 1, f"the image has a default {DEFAULT_CONFIG}"):
            image_conf = dockerfile.parent / copied[0]
            run = subprocess.run([args.tollgate, "-t", "-c", str(image_conf)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60)
            c.check(run.returncode == 0, f"`tollgate -t` accepts the image's {copied[0]}",
                    "\n  " + (run.stdout + run.stderr).strip().replace("\n", "\n  "))
            if run.returncode == 0:
                ic = tomllib.loads(image_conf.read_text())
                addrs = [lst["address"] for lst in ic.get("listeners", [])]
                addrs.append(ic.get("admin", {}).get("address", DEFAULT_ADMIN))
                c.check(all(port_of(a)[0] in ("0.0.0.0", "::") and port_of(a)[1] in exposed
                            for a in addrs),
                        f"{copied[0]} listens on all interfaces, on EXPOSEd ports ({', '.join(addrs)})")
    try:
        elf = subprocess.run(["readelf", "-d", args.tollgate], capture_output=True, text=True,
                             check=True).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", elf))
        c.check(needed and needed <= RUNTIME_LIBS,
                f"the binary links only libraries {RUNTIME_BASE} has ({', '.join(sorted(needed))})",
                f"not in the image: {sorted(needed - RUNTIME_LIBS)}")
    except (OSError, subprocess.CalledProcessError) as e:
        c.check(False, "readelf reads the binary's libraries", str(e))

    return finish(c)


def finish(c):
    print(f"check-deploy: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
