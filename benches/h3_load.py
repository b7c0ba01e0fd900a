#!/usr/bin/env python3
"""Clients for benches/h3-compare.sh (see its header).

  h3_load.py load {h2|h3} URL --pid PID [--total N] [--inflight K] [--procs P] [--cafile F]
                 [--admin http://ADMIN]
      P processes, each one niquests multiplexed Session (one connection) with K requests in
      flight, N requests in all; the protocol is forced (h3: HTTP/1 and HTTP/2 disabled and the
      host seeded into the session's QUIC cache; h2: HTTP/3 disabled). Connections are opened
      and warmed before the measured window; the gateway's utime+stime (/proc/PID/stat) is read
      at its start and end. Prints one JSON line.
  h3_load.py idle {h3|h2} HOST PORT --count N [--cafile F]
      Opens N connections, makes one GET / on each, prints one JSON line, then holds them idle
      until stdin closes. h3: aioquic. h2: TLS sockets with ALPN h2, the HTTP/2 preface,
      SETTINGS and one HEADERS frame written by hand (no h2 package here).
"""
import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import sys
import threading
import time
from collections import Counter

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime + stime of a process in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# ---------------------------------------------------------------- load (niquests)


def make_session(proto, url, cafile):
    import niquests
    from urllib.parse import urlsplit

    if proto == "h3":
        s = niquests.Session(multiplexed=True, disable_http1=True, disable_http2=True)
        u = urlsplit(url)
        s.quic_cache_layer.add_domain(u.hostname, u.port)
    else:
        s = niquests.Session(multiplexed=True, disable_http3=True)
    # trust_env off: otherwise REQUESTS_CA_BUNDLE / SSL_CERT_FILE in the environment replace
    # session.verify (requests' merge order), and proxies from the environment apply.
    s.trust_env = False
    s.verify = cafile if cafile else False
    return s


def batch(s, url, k, versions, statuses):
    rs = [s.get(url) for _ in range(k)]
    s.gather()
    errors = 0
    for r in rs:
        try:
            versions[r.http_version] += 1
            statuses[r.status_code] += 1
            r.content
        except Exception as e:  # a lazy response that failed raises on access
            errors += 1
            statuses[type(e).__name__] += 1
    return errors


def load_worker(proto, url, n, inflight, cafile, ready, go, out):
    try:
        s = make_session(proto, url, cafile)
        wv, ws = Counter(), Counter()
        batch(s, url, 1, wv, ws)  # open the connection
        batch(s, url, inflight, wv, ws)  # warm it
        ready.put(("ok", dict(wv), {str(k): v for k, v in ws.items()}))
    except Exception as e:
        ready.put(("error", repr(e), {}))
        return
    go.wait()
    versions, statuses = Counter(), Counter()
    c0, t0 = os.times(), time.perf_counter()
    done = errors = 0
    fatal = None
    try:
        while done < n:
            k = min(inflight, n - done)
            errors += batch(s, url, k, versions, statuses)
            done += k
    except Exception as e:  # the connection failed as a whole
        fatal = repr(e)[:300]
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    out.put(
        {
            "requests": done,
            "errors": errors,
            "seconds": t1 - t0,
            "client_cpu": cpu,
            "versions": {str(k): v for k, v in versions.items()},
            "statuses": {str(k): v for k, v in statuses.items()},
            "fatal": fatal,
        }
    )
    s.close()


def open_connections(admin):
    import urllib.request

    with urllib.request.urlopen(admin + "/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tollgate_downstream_connections "):
                return float(line.split()[1])
    return None


def cmd_load(a):
    ctx = mp.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = [a.total // a.procs + (1 if i < a.total % a.procs else 0) for i in range(a.procs)]
    procs = [
        ctx.Process(target=load_worker, args=(a.proto, a.url, n, a.inflight, a.cafile, ready, go, out))
        for n in per
    ]
    for p in procs:
        p.start()
    warm = [ready.get(timeout=60) for _ in procs]
    bad = [w for w in warm if w[0] != "ok"]
    if bad:
        go.set()
        for p in procs:
            p.kill()
        print(json.dumps({"error": "warm-up failed", "detail": [w[1] for w in bad]}))
        return 1
    # Open client connections (the admin gauge), sampled through the window: the protocol's
    # connection count, to see that each process kept to one connection.
    conns, stop = [], threading.Event()

    def sample():
        while not stop.wait(0.25):
            try:
                conns.append(open_connections(a.admin))
            except Exception:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    if a.admin:
        sampler.start()
    g0, t0 = proc_cpu(a.pid), time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    t1, g1 = time.perf_counter(), proc_cpu(a.pid)
    stop.set()
    for p in procs:
        p.join(10)
    versions, statuses = Counter(), Counter()
    for r in results:
        versions.update(r["versions"])
        statuses.update(r["statuses"])
    wv = Counter()
    for w in warm:
        wv.update({str(k): v for k, v in w[1].items()})
    req = sum(r["requests"] for r in results)
    print(
        json.dumps(
            {
                "proto": a.proto,
                "url": a.url,
                "procs": a.procs,
                "inflight": a.inflight,
                "requests": req,
                "errors": sum(r["errors"] for r in results),
                "seconds": t1 - t0,
                "rps": req / (t1 - t0),
                "gateway_cpu": g1 - g0,
                "client_cpu": sum(r["client_cpu"] for r in results),
                "versions": dict(versions),
                "warmup_versions": dict(wv),
                "statuses": dict(statuses),
                "gw_open_connections_max": max(conns) if conns else None,
                "fatal": [r["fatal"] for r in results if r["fatal"]],
            }
        )
    )
    return 0


# ---------------------------------------------------------------- idle connections


async def idle_h3(a):
    import asyncio
    import contextlib
    from aioquic.asyncio import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.h3 = H3Connection(self._quic)
            self.waiting = {}
            self.status = {}

        def quic_event_received(self, event):
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    for k, v in ev.headers:
                        if k == b":status":
                            self.status[ev.stream_id] = int(v)
                if isinstance(ev, (HeadersReceived, DataReceived)) and ev.stream_ended:
                    fut = self.waiting.pop(ev.stream_id, None)
                    if fut and not fut.done():
                        fut.set_result(self.status.get(ev.stream_id))

        async def get(self, authority, path=b"/"):
            sid = self._quic.get_next_available_stream_id()
            self.h3.send_headers(
                sid,
                [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority), (b":path", path)],
                end_stream=True,
            )
            fut = asyncio.get_running_loop().create_future()
            self.waiting[sid] = fut
            self.transmit()
            return await asyncio.wait_for(fut, 10)

    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, idle_timeout=600.0, server_name="localhost")
    if a.cafile:
        cfg.load_verify_locations(a.cafile)
    else:
        cfg.verify_mode = ssl.CERT_NONE
    authority = f"localhost:{a.port}".encode()
    stack = contextlib.AsyncExitStack()
    conns = []
    sem = asyncio.Semaphore(a.parallel)  # under the gateway's max_handshakes_per_ip (32)
    statuses, errors = Counter(), Counter()

    async def one():
        async with sem:
            try:
                c = await stack.enter_async_context(
                    connect(a.host, a.port, configuration=cfg, create_protocol=Client, wait_connected=True)
                )
                conns.append(c)
                statuses[await c.get(authority)] += 1
            except Exception as e:
                errors[type(e).__name__ + ": " + str(e)[:80]] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(a.count)))
    print(
        json.dumps(
            {
                "proto": "h3",
                "open": sum(statuses.values()),
                "statuses": {str(k): v for k, v in statuses.items()},
                "errors": dict(errors),
                "seconds": time.perf_counter() - t0,
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    # Close them all at once (CONNECTION_CLOSE), give the packets a moment, and leave: the
    # connect() contexts close one by one, each waiting out its closing period (~0.3 s).
    for c in conns:
        c.close()
    await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns] or [asyncio.sleep(0)], timeout=3)
    sys.stdout.flush()
    os._exit(0)


def h2_frames(buf):
    """(type, flags, stream) of the complete frames in buf."""
    out, i = [], 0
    while i + 9 <= len(buf):
        ln = int.from_bytes(buf[i : i + 3], "big")
        out.append((buf[i + 3], buf[i + 4], int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF, buf[i + 9 : i + 9 + ln]))
        i += 9 + ln
    return out, i


def idle_h2(a):
    ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else ssl.create_default_context()
    if not a.cafile:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # HEADERS for GET / : :method GET (0x82), :scheme https (0x87), :path / (0x84),
    # :authority literal with incremental indexing (0x41) "localhost".
    hdr = bytes([0x82, 0x87, 0x84, 0x41, 0x09]) + b"localhost"
    first = preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
    first += len(hdr).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + hdr  # END_STREAM|END_HEADERS
    held, statuses, errors, alpn = [], Counter(), Counter(), Counter()
    t0 = time.perf_counter()
    for _ in range(a.count):
        try:
            s = ctx.wrap_socket(socket.create_connection((a.host, a.port)), server_hostname="localhost")
            alpn[s.selected_alpn_protocol()] += 1
            s.sendall(first)
            s.settimeout(10)
            buf, status, acked = b"", None, False
            while status is None:
                got = s.recv(65536)
                if not got:
                    raise ConnectionError("closed")
                buf += got
                frames, used = h2_frames(buf)
                buf = buf[used:]
                for ftype, flags, sid, payload in frames:
                    if ftype == 4 and not flags & 1 and not acked:  # server SETTINGS: ack it
                        s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                        acked = True
                    if ftype == 1 and sid == 1:
                        # 0x88 = indexed :status 200; anything else is counted as "other"
                        status = "200" if payload[:1] == b"\x88" else "other"
            statuses[status] += 1
            held.append(s)
        except Exception as e:
            errors[type(e).__name__ + ": " + str(e)[:80]] += 1
    print(
        json.dumps(
            {
                "proto": "h2",
                "open": len(held),
                "alpn": {str(k): v for k, v in alpn.items()},
                "statuses": dict(statuses),
                "errors": dict(errors),
                "seconds": time.perf_counter() - t0,
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    for s in held:
        s.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("load")
    l.add_argument("proto", choices=["h2", "h3"])
    l.add_argument("url")
    l.add_argument("--pid", type=int, required=True)
    l.add_argument("--total", type=int, default=20000)
    l.add_argument("--inflight", type=int, default=100)
    l.add_argument("--procs", type=int, default=2)
    l.add_argument("--cafile")
    l.add_argument("--admin", help="admin base URL: sample tollgate_downstream_connections")
    i = sub.add_parser("idle")
    i.add_argument("proto", choices=["h2", "h3"])
    i.add_argument("host")
    i.add_argument("port", type=int)
    i.add_argument("--count", type=int, default=1000)
    i.add_argument("--parallel", type=int, default=16)
    i.add_argument("--cafile")
    a = p.parse_args()
    if a.cmd == "load":
        return cmd_load(a)
    if a.proto == "h3":
        import asyncio

        asyncio.run(idle_h3(a))
    else:
        idle_h2(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
