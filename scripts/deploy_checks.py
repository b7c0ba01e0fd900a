"""What scripts/check-deploy.py and scripts/check-compose.py share: the pass/fail tally and
the readers of durations and addresses as the configuration writes them."""

import re


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, why=""):
        if ok:
            self.passed += 1
            print(f"ok: {what}")
        else:
            self.failed += 1
            print(f"FAIL: {what}" + (f": {why}" if why else ""))
        return ok


def seconds(duration):
    """A humantime duration ("20s", "1m30s", "500ms") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
             "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", str(duration)):
        raise ValueError(f"cannot read duration {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address):
    """`HOST:PORT` or `[V6]:PORT` as (host, port)."""
    host, _, port = str(address).rpartition(":")
    return host.strip("[]"), int(port)
