#!/usr/bin/env python3
"""A flood of QUIC handshakes that never complete, built by aioquic (PyPI aioquic, pinned in
scripts/requirements-test.txt): each one is a real client's first flight (Initial packets
with a ClientHello) from a UDP socket of its own, and then silence, as from a client that
spoofs its address or gave up.

Usage: h3_flood.py [JOB_JSON]   (without an argument the job is read from stdin)

Job: {"host": "127.0.0.1", "port": N, "count": 2000,
      "server_name": "tls.test",
      "batch": 50,     # handshakes started at once; the next batch after their answers
      "wait": 0.5}     # seconds to wait for a batch's answers

What the server answered is read (decrypted by each one's aioquic connection, which never
sends again) and counted by the first thing it said:
  {"sent": N, "retry": n (a Retry), "refused": n (CONNECTION_CLOSE with CONNECTION_REFUSED),
   "handshake": n (the server's handshake went on), "closed": {"0x..": n} (another close),
   "silent": n (nothing within `wait`)}
"""
import json
import logging
import select
import socket
import ssl
import sys
import time

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

CONNECTION_REFUSED = 0x2


def classify(conn):
    if conn._retry_count > 0:
        return "retry"
    # A CONNECTION_CLOSE received is recorded at once; its ConnectionTerminated event only
    # comes after the draining period.
    close = conn._close_event
    if close is not None:
        if close.error_code == CONNECTION_REFUSED:
            return "refused"
        return f"0x{close.error_code:x}"
    return "handshake"


def run_batch(job, n, counts):
    addr = (job["host"], int(job["port"]))
    socks = {}
    for _ in range(n):
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name=job.get("server_name", "tls.test"),
            # What the certificate is does not matter here: the handshake never completes.
            verify_mode=ssl.CERT_NONE,
        )
        conn = QuicConnection(configuration=configuration)
        conn.connect(addr, now=time.time())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for data, to in conn.datagrams_to_send(now=time.time()):
            sock.sendto(data, to)
        socks[sock] = [conn, None]
        counts["sent"] += 1
    deadline = time.time() + float(job.get("wait", 0.5))
    pending = set(socks)
    while pending and time.time() < deadline:
        ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.time()))
        for sock in ready:
            conn, _ = socks[sock]
            try:
                data, frm = sock.recvfrom(65536)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            conn.receive_datagram(data, frm, now=time.time())
            socks[sock][1] = classify(conn)
            pending.discard(sock)
    for sock, (_, what) in socks.items():
        sock.close()
        if what is None:
            counts["silent"] += 1
        elif what in ("retry", "refused", "handshake"):
            counts[what] += 1
        else:
            counts["closed"][what] = counts["closed"].get(what, 0) + 1


def main():
    logging.getLogger("quic").setLevel(logging.CRITICAL)
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    job = json.loads(text)
    count = int(job.get("count", 1))
    batch = max(1, int(job.get("batch", 50)))
    counts = {"sent": 0, "retry": 0, "refused": 0, "handshake": 0, "closed": {}, "silent": 0}
    started = time.time()
    while counts["sent"] < count:
        run_batch(job, min(batch, count - counts["sent"]), counts)
    counts["seconds"] = round(time.time() - started, 2)
    json.dump(counts, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
