#!/usr/bin/env python3
"""Autobahn's WebSocket test cases, run by kosoku (PyPI, a Python runner of Autobahn's case
files) against a WebSocket echo server.

Usage: autobahn.py URL [--exclude CASE ...]
Prints one JSON object {case_id: "<behavior>/<close behavior>"} (Autobahn's verdicts: OK,
NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ERROR).
"""
import asyncio
import json
import os
import sys

from kosoku import FailureError, run_fuzzingclient


async def run(url, exclude):
    try:
        results = await run_fuzzingclient(url, None, exclude or None, concurrency=4)
    except FailureError as e:
        results = e.results
    return {
        r.case_id: f"{r.behavior.value}/{r.behavior_close.value}" for r in results
    }


def main():
    url = sys.argv[1]
    args = sys.argv[2:]
    exclude = [args[i + 1] for i, a in enumerate(args) if a == "--exclude"]
    print(json.dumps(asyncio.run(run(url, exclude))), flush=True)
    # kosoku 0.1.0's native module sometimes aborts (SIGABRT) while the interpreter tears
    # down, after every result was printed: end without that teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
