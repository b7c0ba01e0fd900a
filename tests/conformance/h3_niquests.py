#!/usr/bin/env python3
"""HTTP/3 through the gateway with niquests (PyPI niquests, pinned in
scripts/requirements-test.txt; QUIC and HTTP/3 by qh3): a second third-party client, the way
an application would use it, learning HTTP/3 from Alt-Svc or told up front.

Usage: h3_niquests.py [JOB_JSON]   (without an argument the job is read from stdin)

Job: {"url": "https://tls.test:PORT/path",
      "resolve": {"tls.test": "127.0.0.1"},   # names to resolve without DNS
      "ca": "/path/ca.pem" | "insecure": true,
      "preseed": true,    # tell niquests the origin speaks h3 on its own port up front;
                          # false: it learns it from the Alt-Svc of a first response (TCP)
      "count": 3,         # requests in a row on one session
      "headers": {"k": "v"}}

Prints a JSON list, one per request: {"status", "http_version" (11, 20 or 30 as niquests
reports it), "headers": [[k, v], ...], "body"} or {"error": "..."}.
"""
import json
import sys
from urllib.parse import urlparse

import niquests


def main():
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    job = json.loads(text)
    url = job["url"]
    parsed = urlparse(url)
    port = parsed.port or 443
    kwargs = {}
    if job.get("resolve"):
        hosts = ",".join(f"{k}:{v}" for k, v in job["resolve"].items())
        kwargs["resolver"] = f"in-memory://default/?hosts={hosts}"
    cache = {}
    if job.get("preseed"):
        cache[(parsed.hostname, port)] = (parsed.hostname, port)
    verify = False if job.get("insecure") else job.get("ca", True)
    out = []
    with niquests.Session(quic_cache_layer=cache, retries=False, **kwargs) as session:
        for _ in range(int(job.get("count", 1))):
            try:
                r = session.get(url, headers=job.get("headers") or {}, verify=verify, timeout=20)
                out.append(
                    {
                        "status": r.status_code,
                        "http_version": r.http_version,
                        "headers": [[k.lower(), v] for k, v in r.headers.items()],
                        "body": r.text,
                    }
                )
            except Exception as e:  # noqa: BLE001 - reported to the test as it is
                out.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
