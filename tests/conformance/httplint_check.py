#!/usr/bin/env python3
"""Lint exchanges with httplint (the engine of REDbot), request and response together, so
that notes depending on the request (a CORS preflight, HEAD) are judged as REDbot judges
them.

Usage: httplint_check.py EXCHANGES_JSON_FILE
The file: [{"name", "request": "<base64 raw request>", "response": "<base64 raw response>",
            "time": <unix seconds when the response was received>}].
Prints one JSON list: [{"name", "notes": [{"level": "bad" | "warning" | ..., "summary"}]}].
"""
import base64
import json
import sys
import time

from httplint import HttpRequestLinter, HttpResponseLinter


def fields(lines):
    out = []
    for line in lines:
        name, _, value = line.partition(b":")
        out.append((name.strip(), value.strip()))
    return out


def dechunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return out


def notes_of(linter):
    found = []

    def walk(notes):
        for n in notes:
            found.append({"level": n.level.value, "summary": str(n.summary)})
            walk(n.subnotes)

    walk(linter.notes)
    return found


def lint(request, response, now):
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ", 2)
    req = HttpRequestLinter(start_time=now)
    req.process_request_topline(method, target, version)
    req.process_headers(fields(lines[1:]))
    req.finish_content(True)

    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    version, code, phrase = (lines[0].split(b" ", 2) + [b""])[:3]
    resp = HttpResponseLinter(start_time=now, _related=req)
    resp.is_head_response = method == b"HEAD"
    resp.process_response_topline(version, code, phrase)
    resp.process_headers(fields(lines[1:]))
    chunked = any(
        n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
        for n, v in fields(lines[1:])
    )
    if method != b"HEAD":
        resp.feed_content(dechunk(body) if chunked else body)
    resp.finish_content(True)
    return notes_of(resp)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        exchanges = json.load(f)
    out = []
    for e in exchanges:
        notes = lint(
            base64.b64decode(e["request"]),
            base64.b64decode(e["response"]),
            e.get("time", time.time()),
        )
        out.append({"name": e["name"], "notes": notes})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
