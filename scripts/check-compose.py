#!/usr/bin/env python3
"""Cross-check deploy/compose/docker-compose.yml against the files and configs it runs.

`docker-compose config` (scripts/validate-deploy.sh runs it first) checks the file's shape,
not that what it mounts exists or that the containers agree with each other. This script
reads it (YAML, anchors and merge keys resolved) and checks, printing one line each:

- every bind-mounted file or directory, every secret file and the build context and
  Dockerfile exist;
- every container of the Tollgate image gets a configuration that passes `tollgate -t` as
  the container sees it: the mounts and secrets copied into a scratch root at their container
  paths, the config's absolute paths under them moved into that root;
- the gateway's routes, consumers, authentication and the other policies equal
  conf/platform.toml's (the platform walked in docs/platform.md), so the two cannot drift;
- every upstream target of the gateway names a service of the file on the port its demo
  backend listens on; the Redis of [rate_limit] is a service of the file;
- the gateway publishes its listener ports, and its admin port on 127.0.0.1 only;
  stop_grace_period covers grace_period + graceful_shutdown_timeout;
- Prometheus scrapes the gateway's admin port as job "tollgate", and its rule files resolve
  to mounted files in the container; Grafana's data source is the Prometheus service and its
  dashboard provider reads the directory where the dashboard is mounted.

Usage: check-compose.py [COMPOSE_FILE] [--tollgate BIN]; exits 1 if any check fails.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

import yaml

from deploy_checks import Checks, port_of, seconds

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "conf/platform.toml"
# Keys of the gateway's config that must equal conf/platform.toml's; what may differ is
# where things run (listeners, admin, pid files, upstream targets, the limiter's store, the
# JWT secret's location, the OpenAPI servers).
SAME_AS_PLATFORM = ["routes", "rate_limits", "consumers", "limits", "security_headers", "cache"]


def mounts(svc, base):
    """(host path, container path) of the service's bind mounts (named volumes skipped)."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type", "bind") != "bind":
                continue
            src, dst = v["source"], v["target"]
        else:
            parts = v.split(":")
            if len(parts) < 2:
                continue
            src, dst = parts[0], parts[1]
        if not (src.startswith(".") or src.startswith("/")):
            continue  # a named volume
        out.append(((base / src).resolve(), dst))
    return out


def secrets_of(svc, compose):
    """(host path, container path) of the service's file secrets."""
    out = []
    for s in svc.get("secrets", []):
        name = s if isinstance(s, str) else s["source"]
        target = name if isinstance(s, str) else s.get("target", name)
        path = compose.get("secrets", {}).get(name, {}).get("file")
        dst = target if target.startswith("/") else f"/run/secrets/{target}"
        out.append((name, path, dst))
    return out


def config_arg(svc):
    cmd = svc.get("command", [])
    if isinstance(cmd, str):
        cmd = cmd.split()
    for i, a in enumerate(cmd):
        if a in ("-c", "--config") and i + 1 < len(cmd):
            return cmd[i + 1]
    return None


def container_view(c, name, svc, compose, base, tollgate):
    """Lay the service's mounts out under a scratch root and run `tollgate -t` on its
    config there. Returns the parsed config, or None."""
    conf_path = config_arg(svc)
    if not c.check(conf_path is not None, f"{name}: the command names a config (-c)",
                   f"command: {svc.get('command')}"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        placed = []
        for src, dst in mounts(svc, base):
            target = root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target)
            elif src.is_file():
                shutil.copy(src, target)
            placed.append(dst)
        for _, path, dst in secrets_of(svc, compose):
            if path and (base / path).is_file():
                target = root / dst.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(base / path, target)
                placed.append(dst)
        conf_file = root / conf_path.lstrip("/")
        if not c.check(conf_file.is_file(), f"{name}: {conf_path} is mounted",
                       f"mounts: {placed}"):
            return None
        text = conf_file.read_text()
        parsed = tomllib.loads(text)
        # Absolute paths into mounted files or secrets, moved under the scratch root.
        for dst in sorted(placed, key=len, reverse=True):
            text = text.replace(f'"{dst}', f'"{root}{dst}')
        conf_file.write_text(text)
        run = subprocess.run([tollgate, "-t", "-c", str(conf_file)], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        out = (run.stdout + run.stderr).strip().replace(str(root), "")
        c.check(run.returncode == 0, f"{name}: `tollgate -t` accepts {conf_path} as the container sees it",
                "\n  " + out.replace("\n", "\n  "))
        return parsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compose", nargs="?", default=str(ROOT / "deploy/compose/docker-compose.yml"))
    ap.add_argument("--tollgate", default=str(ROOT / "target/debug/tollgate"))
    args = ap.parse_args()
    path = Path(args.compose).resolve()
    base = path.parent
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    c = Checks()

    # --- Files. ------------------------------------------------------------------------------
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = (base / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            dockerfile = ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            c.check(ctx.is_dir() and dockerfile.is_file(),
                    f"{name}: build context {ctx} and its Dockerfile exist")
        for src, dst in mounts(svc, base):
            c.check(src.exists(), f"{name}: mounted {src.relative_to(ROOT) if src.is_relative_to(ROOT) else src} exists ({dst})")
        for secret, spath, _ in secrets_of(svc, compose):
            c.check(spath is not None and (base / spath).is_file(),
                    f"{name}: secret {secret} is a file that exists", f"file: {spath}")

    # --- The Tollgate containers. -------------------------------------------------------------
    tollgate_image = {n for n, s in services.items()
                      if s.get("build") or str(s.get("image", "")).startswith("tollgate:")}
    demo_ports = {}
    gateway, gw_name = None, None
    for name in sorted(tollgate_image):
        conf = container_view(c, name, services[name], compose, base, args.tollgate)
        if conf is None:
            continue
        if conf.get("routes"):
            if c.check(gateway is None, f"{name}: the one gateway (the only config with routes)",
                       f"{gw_name} has routes too"):
                gateway, gw_name = conf, name
        else:
            for d in conf.get("demo", []):
                host, port = port_of(d["address"])
                c.check(host in ("0.0.0.0", "::"), f"{name}: demo backend {d['name']} binds all interfaces",
                        "other containers reach it on the Compose network, not its loopback")
                demo_ports.setdefault(name, set()).add(port)
    if not c.check(gateway is not None, "a gateway container (a config with routes)"):
        return finish(c)
    gw = services[gw_name]

    # --- The gateway against conf/platform.toml. ----------------------------------------------
    platform = tomllib.loads(PLATFORM.read_text())
    for key in SAME_AS_PLATFORM:
        c.check(gateway.get(key) == platform.get(key),
                f"{gw_name}: [{key}] is conf/platform.toml's", "the two have drifted")
    strip = ("secret_file", "secret_env")

    def jwt(conf):
        return {n: {k: v for k, v in p.items() if k not in strip}
                for n, p in conf.get("auth", {}).get("jwt", {}).items()}

    c.check(jwt(gateway) == jwt(platform), f"{gw_name}: [auth.jwt] is conf/platform.toml's (but the secret's place)")
    c.check({k: v for k, v in gateway.get("auth", {}).items() if k != "jwt"}
            == {k: v for k, v in platform.get("auth", {}).items() if k != "jwt"},
            f"{gw_name}: [auth] is conf/platform.toml's")
    for key in ("request_id_header",):
        c.check(gateway.get("server", {}).get(key) == platform.get("server", {}).get(key),
                f"{gw_name}: server.{key} is conf/platform.toml's")
    c.check(set(gateway.get("upstreams", {})) == set(platform.get("upstreams", {})),
            f"{gw_name}: the upstream groups are conf/platform.toml's")
    c.check({k: v for k, v in gateway.get("openapi", {}).items() if k != "servers"}
            == {k: v for k, v in platform.get("openapi", {}).items() if k != "servers"},
            f"{gw_name}: [openapi] is conf/platform.toml's (but servers)")

    # --- Upstreams, Redis. --------------------------------------------------------------------
    for group, g in gateway.get("upstreams", {}).items():
        for t in g.get("targets", []):
            host, port = port_of(t["address"])
            ok = host in services and (host not in demo_ports or port in demo_ports[host])
            c.check(ok, f"{gw_name}: upstreams.{group} target {t['address']} is a service of the file on its port",
                    f"services: {sorted(services)}, demo ports: {demo_ports.get(host)}")
    rl = gateway.get("rate_limit", {})
    c.check(rl.get("backend") in ("redis", "sync"), f"{gw_name}: rate limits are counted in Redis",
            f"backend is {rl.get('backend', 'local')}")
    m = re.match(r"rediss?://([^:/]+)", rl.get("redis_url", ""))
    c.check(m is not None and m.group(1) in services,
            f"{gw_name}: rate_limit.redis_url names a service of the file", rl.get("redis_url", ""))
    if m and m.group(1) in services:
        deps = gw.get("depends_on", {})
        c.check(m.group(1) in deps, f"{gw_name} depends on {m.group(1)}")

    # --- Ports and stop timing. ---------------------------------------------------------------
    published = {}
    for p in gw.get("ports", []):
        parts = str(p).split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        published[int(parts[-1].split("/")[0])] = host_ip
    listen = [port_of(lst["address"]) for lst in gateway.get("listeners", [])]
    for host, port in listen:
        c.check(host in ("0.0.0.0", "::"), f"{gw_name}: listener :{port} binds all interfaces")
        c.check(port in published, f"{gw_name}: listener port {port} is published")
    admin_host, admin_port = port_of(gateway.get("admin", {}).get("address", "127.0.0.1:9090"))
    c.check(admin_host in ("0.0.0.0", "::"), f"{gw_name}: the admin listener binds all interfaces (Prometheus scrapes it)")
    c.check(published.get(admin_port) == "127.0.0.1",
            f"{gw_name}: the admin port {admin_port} is published on 127.0.0.1 only",
            f"published on {published.get(admin_port)}")
    srv = gateway.get("server", {})
    need = seconds(srv.get("grace_period", "30s")) + seconds(srv.get("graceful_shutdown_timeout", "10s"))
    have = seconds(gw.get("stop_grace_period", "10s"))
    c.check(have > need, f"{gw_name}: stop_grace_period {have:g} s > grace_period + graceful_shutdown_timeout {need:g} s",
            "Docker would SIGKILL in the middle of the drain")

    # --- Prometheus. --------------------------------------------------------------------------
    prom = next(((n, s) for n, s in services.items() if "prometheus" in str(s.get("image", ""))), None)
    if c.check(prom is not None, "a Prometheus service"):
        pname, psvc = prom
        cmd = psvc.get("command", [])
        cfg = next((a.split("=", 1)[1] for a in cmd if a.startswith("--config.file=")),
                   "/etc/prometheus/prometheus.yml")
        by_dst = {dst: src for src, dst in mounts(psvc, base)}
        src = by_dst.get(cfg)
        if c.check(src is not None and src.is_file(), f"{pname}: {cfg} is a mounted file"):
            pconf = yaml.safe_load(src.read_text())
            for rf in pconf.get("rule_files", []):
                in_container = str(PurePosixPath(cfg).parent / rf)
                in_container = str(PurePosixPath(*_normalize(PurePosixPath(in_container).parts)))
                c.check(in_container in by_dst, f"{pname}: rule file {rf} is mounted at {in_container}",
                        f"mounts: {sorted(by_dst)}")
            jobs = {j["job_name"]: j for j in pconf.get("scrape_configs", [])}
            job = jobs.get("tollgate")
            if c.check(job is not None, f"{pname}: a scrape job \"tollgate\" (the alerts and dashboard expect it)"):
                targets = [t for s in job.get("static_configs", []) for t in s.get("targets", [])]
                targets += [f"{n}:{d.get('port')}" for d in job.get("dns_sd_configs", []) for n in d.get("names", [])]
                c.check(f"{gw_name}:{admin_port}" in targets,
                        f"{pname}: job tollgate scrapes {gw_name}:{admin_port}", f"targets: {targets}")
                c.check(job.get("metrics_path", "/metrics") == "/metrics", f"{pname}: metrics_path is /metrics")

    # --- Grafana. -----------------------------------------------------------------------------
    graf = next(((n, s) for n, s in services.items() if "grafana" in str(s.get("image", ""))), None)
    if c.check(graf is not None, "a Grafana service"):
        gname, gsvc = graf
        by_dst = {dst: src for src, dst in mounts(gsvc, base)}
        ds = [src for dst, src in by_dst.items() if dst.startswith("/etc/grafana/provisioning/datasources/")]
        boards = [src for dst, src in by_dst.items() if dst.startswith("/etc/grafana/provisioning/dashboards/")]
        if c.check(len(ds) == 1, f"{gname}: one data source provisioning file"):
            doc = yaml.safe_load(ds[0].read_text())
            sources = doc.get("datasources", [])
            url = next((d.get("url", "") for d in sources if d.get("type") == "prometheus"), "")
            m = re.match(r"https?://([^:/]+)(?::(\d+))?", url)
            c.check(m is not None and prom is not None and m.group(1) == prom[0],
                    f"{gname}: the Prometheus data source is the {prom[0] if prom else '?'} service", url)
            c.check(any(d.get("isDefault") for d in sources if d.get("type") == "prometheus"),
                    f"{gname}: Prometheus is the default data source (the dashboard's datasource variable)")
        if c.check(len(boards) == 1, f"{gname}: one dashboard provider file"):
            doc = yaml.safe_load(boards[0].read_text())
            paths = [p.get("options", {}).get("path", "") for p in doc.get("providers", [])]
            dashboards = [(dst, src) for dst, src in by_dst.items() if dst.endswith(".json")]
            c.check(bool(dashboards) and all(any(dst.startswith(p.rstrip("/") + "/") for p in paths)
                                             for dst, _ in dashboards),
                    f"{gname}: every mounted dashboard is in a provider's path", f"{paths} vs {dashboards}")
            c.check(any(src == (ROOT / "deploy/grafana/tollgate.json").resolve() for _, src in dashboards),
                    f"{gname}: deploy/grafana/tollgate.json is provisioned")

    return finish(c)


def _normalize(parts):
    out = []
    for p in parts:
        if p == "..":
            if len(out) > 1:
                out.pop()
        elif p != ".":
            out.append(p)
    return out


def finish(c):
    print(f"check-compose: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
