#!/usr/bin/env python3
"""The request-smuggling corpus of AWS's `http_desync_guardian` crate (its tests/*.yaml, read
from the pinned crate's source as Cargo fetched it), as raw requests.

Usage: desync_corpus.py CRATE_DIR
Prints one JSON list: [{"file", "name", "tier": "Compliant" | "Acceptable" | "Ambiguous" |
"Severe", "request": "<base64 raw request>"}].

Each request is the case's request line and headers as written, `Host: a` added when the
case has none (the corpus is about other headers; a missing Host is refused on its own), and
a body fitting its framing: `0\\r\\n\\r\\n` when a Transfer-Encoding names chunked, else as many
bytes as a valid Content-Length says (none past 16 MiB: such a case is about the number).
"""
import base64
import glob
import json
import os
import sys

import yaml


def octets(text):
    """`\\xff` in the YAML is the byte 0xff; a character above 255 is its UTF-8."""
    return b"".join(
        bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in str(text)
    )


def raw_request(case):
    headers = case.get("headers") or []
    line = f'{case["method"]} {case["uri"]} {case["version"]}'.rstrip()
    out = [octets(line)]
    names = []
    for h in headers:
        name, value = str(h["name"]), str(h["value"])
        names.append(name.strip().lower())
        out.append(octets(name) + b": " + octets(value))
    if "host" not in names:
        out.append(b"Host: a")
    out.append(b"")
    out.append(b"")
    body = b""
    te = [str(h["value"]) for h in headers if str(h["name"]).strip().lower() == "transfer-encoding"]
    cl = [str(h["value"]).strip() for h in headers if str(h["name"]).strip().lower() == "content-length"]
    if any("chunked" in v.lower() for v in te):
        body = b"0\r\n\r\n"
    elif cl and cl[0].isdigit() and int(cl[0]) <= 16 << 20:
        body = b"x" * int(cl[0])
    return b"\r\n".join(out) + body


def main():
    crate = sys.argv[1]
    cases = []
    for path in sorted(glob.glob(os.path.join(crate, "tests", "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or []
        for case in doc:
            expected = case.get("expected") or {}
            cases.append(
                {
                    "file": os.path.basename(path),
                    "name": case.get("name", ""),
                    "tier": expected.get("tier", ""),
                    "request": base64.b64encode(raw_request(case)).decode(),
                }
            )
    print(json.dumps(cases))


if __name__ == "__main__":
    main()
