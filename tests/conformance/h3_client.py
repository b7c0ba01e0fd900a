#!/usr/bin/env python3
"""HTTP/3 requests through the gateway with aioquic (PyPI aioquic, pinned in
scripts/requirements-test.txt): a QUIC and HTTP/3 stack written by others, so that the
gateway's HTTP/3 is checked by a client that did not grow up beside it (quinn and h3 accept
what quinn and h3 send).

Usage: h3_client.py [JOB_JSON]   (without an argument the job is read from stdin)

Job:
  {"host": "127.0.0.1", "port": N,
   "server_name": "tls.test",          # SNI and certificate name (default: host)
   "authority": "tls.test",            # :authority (default: server_name)
   "ca": "/path/ca.pem" | "insecure": true,
   "requests": [{"method": "GET", "path": "/x",
                 "headers": [["authorization", "Bearer ..."]],
                 "body_size": N | "body": "text"    # N bytes of pattern(N), see below
                   | "body_base64": "...",          # binary bodies (a gRPC-Web frame)
                 "content_length": true}, ...],     # send content-length with a body
   "concurrency": "all" | N,           # "all": every request at once on one connection
   "migrate_after": k,                 # after k requests completed: rebind to a new local
                                       # UDP port, the rest go on over the same connection
   "pause_after": k,                   # after k requests completed: write "paused_file"
   "paused_file": "/path",             # (and print "h3_client: paused" on stderr), wait
   "resume_file": "/path",             # until "resume_file" exists (at most "timeout"),
                                       # then send the rest over the same connection
   "session_ticket_out": "/path",      # save the session ticket the server sends
   "session_ticket_in": "/path",       # resume with it, the first request in 0-RTT
   "eager": true,                      # without a ticket too: the first request is queued
                                       # before the handshake, to leave in 1-RTT at once,
                                       # beside the client's Finished
   "connect_timeout": 10, "timeout": 60, "idle_timeout": 30}

Prints one JSON object:
  {"alpn", "retry": bool, "migrated": bool, "local_ports": [...],
   "peer_certificate_cn": "...",       # the common name of the certificate served
   "goaway": [id, ...],                # the stream ids of the GOAWAY frames received
   "session_resumed": bool, "early_data_accepted": bool, "early_data_sent": bool,
   "session_ticket_saved": bool, "connection_error": null | "...",
   "responses": [{"stream_id", "status", "headers": [[k, v], ...], "trailers": [...],
                  "body_len", "body_sha256", "body" (UTF-8 text when <= 64 KiB and valid),
                  "body_base64" (when <= 64 KiB),
                  "error" (a request that got no complete answer: "stream reset ...")}]}
Exit status 2 with a message on stderr when no connection could be made (refused, timed
out, certificate not trusted).

pattern(N): byte i is ord("a") + (7 * (i % 4096) + i // 4096) % 26 (tests rebuild it to
compare what the upstream received).
"""
import asyncio
import base64
import hashlib
import json
import os
import pickle
import socket
import ssl
import sys
from collections import deque

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)

QUIC_ERRORS = {
    0x0: "NO_ERROR",
    0x1: "INTERNAL_ERROR",
    0x2: "CONNECTION_REFUSED",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "STREAM_LIMIT_ERROR",
    0x5: "STREAM_STATE_ERROR",
    0x6: "FINAL_SIZE_ERROR",
    0x7: "FRAME_ENCODING_ERROR",
    0x8: "TRANSPORT_PARAMETER_ERROR",
    0x9: "CONNECTION_ID_LIMIT_ERROR",
    0xA: "PROTOCOL_VIOLATION",
    0xB: "INVALID_TOKEN",
    0xC: "APPLICATION_ERROR",
    0xD: "CRYPTO_BUFFER_EXCEEDED",
    0xE: "KEY_UPDATE_ERROR",
    0xF: "AEAD_LIMIT_REACHED",
    0x10: "NO_VIABLE_PATH",
}

H3_ERRORS = {
    0x100: "H3_NO_ERROR",
    0x101: "H3_GENERAL_PROTOCOL_ERROR",
    0x102: "H3_INTERNAL_ERROR",
    0x103: "H3_STREAM_CREATION_ERROR",
    0x104: "H3_CLOSED_CRITICAL_STREAM",
    0x105: "H3_FRAME_UNEXPECTED",
    0x106: "H3_FRAME_ERROR",
    0x107: "H3_EXCESSIVE_LOAD",
    0x108: "H3_ID_ERROR",
    0x109: "H3_SETTINGS_ERROR",
    0x10A: "H3_MISSING_SETTINGS",
    0x10B: "H3_REQUEST_REJECTED",
    0x10C: "H3_REQUEST_CANCELLED",
    0x10D: "H3_REQUEST_INCOMPLETE",
    0x10E: "H3_MESSAGE_ERROR",
    0x10F: "H3_CONNECT_ERROR",
    0x110: "H3_VERSION_FALLBACK",
    0x200: "QPACK_DECOMPRESSION_FAILED",
    0x201: "QPACK_ENCODER_STREAM_ERROR",
    0x202: "QPACK_DECODER_STREAM_ERROR",
}


def error_name(code, application=True):
    """`code` with its name: an HTTP/3 code when `application` (stream resets, CONNECTION_CLOSE
    of type 0x1d), else a QUIC transport code (type 0x1c; 0x1XX are TLS alerts)."""
    if application:
        name = H3_ERRORS.get(code)
    elif 0x100 <= code <= 0x1FF:
        name = f"CRYPTO_ERROR, TLS alert {code - 0x100}"
    else:
        name = QUIC_ERRORS.get(code)
    return f"0x{code:x} ({name or 'unknown'})"


def close_reason(event):
    """A ConnectionTerminated event in words."""
    application = event.frame_type is None
    kind = "application" if application else "transport"
    return (
        f"{kind} error {error_name(event.error_code, application)}"
        f" reason {event.reason_phrase!r}"
    )


def pattern(n):
    """n bytes: byte i is ord("a") + (7 * (i % 4096) + i // 4096) % 26."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz"
    blocks = [
        bytes(alphabet[(7 * j + k) % 26] for j in range(4096)) for k in range(26)
    ]
    out = b"".join(blocks[k % 26] for k in range((n + 4095) // 4096))
    return out[:n]


class RequestFailed(Exception):
    pass


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        # The stream ids of the GOAWAY frames received: aioquic skips their payload, so the
        # server's control stream is read here too.
        self.goaways = []
        self.uni = {}
        self.streams = {}
        self.handshake = None
        self.terminated = None
        # Set when the handshake completes or the connection ends.
        self.settled = asyncio.Event()

    def read_control(self, event):
        """Frames of the server's control stream (unidirectional, type 0x00): GOAWAYs."""
        data = self.uni.get(event.stream_id, b"")
        if event.stream_id % 4 != 3 or data is None:
            return
        # Small: the whole stream is kept and read again from its start.
        data += event.data
        self.uni[event.stream_id] = data
        buf = Buffer(data=data)
        goaways = []
        try:
            if buf.pull_uint_var() != 0x00:
                self.uni[event.stream_id] = None
                return
            while not buf.eof():
                frame_type = buf.pull_uint_var()
                frame = buf.pull_bytes(buf.pull_uint_var())
                if frame_type == FrameType.GOAWAY:
                    goaways.append(Buffer(data=frame).pull_uint_var())
        except BufferReadError:
            pass
        self.goaways = goaways

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.read_control(event)
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
            self.settled.set()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
            self.settled.set()
            reason = f"connection closed: {close_reason(event)}"
            for stream in list(self.streams.values()):
                if not stream["done"].done():
                    stream["done"].set_exception(RequestFailed(reason))
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream["done"].done():
                stream["done"].set_exception(
                    RequestFailed(f"stream reset: error {error_name(event.error_code)}")
                )
        for h3 in self.http.handle_event(event):
            stream = self.streams.get(getattr(h3, "stream_id", None))
            if stream is None:
                continue
            if isinstance(h3, HeadersReceived):
                if stream["headers"] is None:
                    stream["headers"] = h3.headers
                else:
                    stream["trailers"] = h3.headers
            elif isinstance(h3, DataReceived):
                stream["body"].append(h3.data)
            if h3.stream_ended and not stream["done"].done():
                stream["done"].set_result(None)

    def start_request(self, job, req):
        """Send one request's headers and body; returns the stream's record."""
        stream_id = self._quic.get_next_available_stream_id()
        body = b""
        if "body_size" in req:
            body = pattern(int(req["body_size"]))
        elif "body" in req:
            body = req["body"].encode()
        elif "body_base64" in req:
            body = base64.b64decode(req["body_base64"])
        authority = job.get("authority") or job.get("server_name") or job["host"]
        headers = [
            (b":method", req.get("method", "GET").encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", req.get("path", "/").encode()),
            (b"user-agent", b"tollgate-tests-aioquic"),
        ]
        if body and req.get("content_length", True):
            headers.append((b"content-length", str(len(body)).encode()))
        headers += [(k.lower().encode(), v.encode()) for k, v in req.get("headers", [])]
        record = {
            "stream_id": stream_id,
            "headers": None,
            "trailers": None,
            "body": deque(),
            "done": self._loop.create_future(),
        }
        self.streams[stream_id] = record
        self.http.send_headers(stream_id=stream_id, headers=headers, end_stream=not body)
        if body:
            self.http.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.transmit()
        return record

    async def request(self, job, req, timeout):
        record = self.start_request(job, req)
        return await self.finish(record, timeout)

    async def finish(self, record, timeout):
        try:
            await asyncio.wait_for(asyncio.shield(record["done"]), timeout)
        except asyncio.TimeoutError:
            return {"error": f"no complete answer in {timeout}s", **partial(record)}
        except RequestFailed as e:
            return {"error": str(e), **partial(record)}
        return result(record)

    async def rebind(self, family, local_host):
        """Move the connection to a new local UDP port (client migration)."""
        old = self._transport
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((local_host, 0))
        await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        old.close()
        # A fresh connection ID on the new path, as RFC 9000 9.5 asks of a client that
        # migrates, when the server gave us a spare one.
        if self._quic._peer_cid_available:
            self._quic.change_connection_id()
        self.transmit()
        return sock.getsockname()[1]


def decode_headers(headers):
    return [[k.decode(errors="replace"), v.decode(errors="replace")] for k, v in headers or []]


def partial(record):
    got = {"stream_id": record["stream_id"]}
    if record["headers"] is not None:
        got = result(record)
    return got


def result(record):
    headers = decode_headers(record["headers"])
    status = next((int(v) for k, v in headers if k == ":status"), None)
    body = b"".join(record["body"])
    out = {
        "stream_id": record["stream_id"],
        "status": status,
        "headers": [[k, v] for k, v in headers if not k.startswith(":")],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    if record["trailers"] is not None:
        out["trailers"] = decode_headers(record["trailers"])
    if len(body) <= 64 * 1024:
        out["body_base64"] = base64.b64encode(body).decode()
        try:
            out["body"] = body.decode()
        except UnicodeDecodeError:
            pass
    return out


async def pause(job, protocol, timeout):
    """Tell the test the client is paused (a marker file and a stderr line), and wait until
    it says go on (its resume file exists), keeping the connection alive meanwhile."""
    if job.get("paused_file"):
        with open(job["paused_file"], "w") as f:
            f.write("paused\n")
    print("h3_client: paused", file=sys.stderr, flush=True)
    resume = job.get("resume_file")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while resume and not os.path.exists(resume):
        if loop.time() > deadline:
            print(f"h3_client: {resume} did not appear in {timeout}s", file=sys.stderr)
            break
        await asyncio.sleep(0.02)


def fail(message):
    print(f"h3_client: {message}", file=sys.stderr)
    sys.exit(2)


async def run(job):
    loop = asyncio.get_running_loop()
    host, port = job["host"], int(job["port"])
    connect_timeout = float(job.get("connect_timeout", 10))
    timeout = float(job.get("timeout", 60))

    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=job.get("server_name") or host,
        idle_timeout=float(job.get("idle_timeout", 30)),
    )
    if job.get("insecure"):
        configuration.verify_mode = ssl.CERT_NONE
    elif job.get("ca"):
        configuration.load_verify_locations(job["ca"])
    if job.get("session_ticket_in"):
        with open(job["session_ticket_in"], "rb") as f:
            configuration.session_ticket = pickle.load(f)
    early = configuration.session_ticket is not None

    tickets = []

    def ticket_handler(ticket):
        tickets.append(ticket)
        if job.get("session_ticket_out"):
            with open(job["session_ticket_out"], "wb") as f:
                pickle.dump(ticket, f)

    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    local_host = "0.0.0.0" if family == socket.AF_INET else "::"
    connection = QuicConnection(
        configuration=configuration, session_ticket_handler=ticket_handler
    )
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((local_host, 0))
    local_ports = [sock.getsockname()[1]]
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Client(connection), sock=sock
    )
    requests = list(job.get("requests", []))
    responses = [None] * len(requests)
    out = {"early_data_sent": False}
    try:
        first = None
        protocol.connect(addr, transmit=False)
        if (early or job.get("eager")) and requests:
            # The first request goes out with the ClientHello: 0-RTT when the ticket
            # allows early data.
            first = protocol.start_request(job, requests[0])
            out["early_data_sent"] = connection.tls.session_ticket is not None and (
                connection.tls.session_ticket.max_early_data_size is not None
            )
        else:
            protocol.transmit()
        try:
            await asyncio.wait_for(protocol.settled.wait(), connect_timeout)
        except asyncio.TimeoutError:
            pass
        if protocol.handshake is None:
            # A CONNECTION_CLOSE received is recorded at once, its event comes after draining.
            t = protocol.terminated or connection._close_event
            why = (
                f"closed: {close_reason(t)}"
                if t is not None
                else f"no handshake within {connect_timeout}s"
            )
            fail(f"cannot connect to {host}:{port} over QUIC: {why}")

        async def one(i, sem):
            async with sem:
                responses[i] = await protocol.request(job, requests[i], timeout)

        concurrency = job.get("concurrency", 1)
        limit = (len(requests) or 1) if concurrency == "all" else max(1, int(concurrency))
        start = 0
        if first is not None:
            responses[0] = await protocol.finish(first, timeout)
            start = 1
        migrate_after = job.get("migrate_after")
        migrate_at = None if migrate_after is None else max(int(migrate_after), start)
        pause_after = job.get("pause_after")
        pause_at = None if pause_after is None else max(int(pause_after), start)
        # Batches of requests, split where the client migrates or pauses.
        cuts = {c for c in (migrate_at, pause_at) if c is not None and c <= len(requests)}
        bounds = sorted(cuts | {start}) + [len(requests)]
        out["migrated"] = False
        for lo, hi in zip(bounds, bounds[1:]):
            if lo == pause_at:
                await pause(job, protocol, timeout)
            if lo == migrate_at:
                local_ports.append(await protocol.rebind(family, local_host))
            sem = asyncio.Semaphore(limit)
            await asyncio.gather(*(one(i, sem) for i in range(lo, hi)))
        if migrate_at is not None:
            ok = all(r is not None and "error" not in r for r in responses[migrate_at:])
            out["migrated"] = ok and protocol.terminated is None
        if job.get("session_ticket_out") and not tickets:
            # Tickets come after the handshake, usually before the first answer.
            for _ in range(100):
                if tickets or protocol.terminated is not None:
                    break
                await asyncio.sleep(0.02)
    finally:
        closed_by_peer = protocol.terminated
        if protocol.terminated is None:
            protocol.close()
            try:
                await asyncio.wait_for(protocol.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
        protocol._transport.close()
        transport.close()
    hs = protocol.handshake
    t = closed_by_peer
    cn = None
    peer = connection.tls._peer_certificate
    if peer is not None:
        from cryptography.x509.oid import NameOID

        names = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = names[0].value if names else None
    out.update(
        {
            "alpn": hs.alpn_protocol if hs else None,
            "retry": connection._retry_count > 0,
            "local_ports": local_ports,
            "peer_certificate_cn": cn,
            "goaway": protocol.goaways,
            "session_resumed": bool(hs and hs.session_resumed),
            "early_data_accepted": bool(hs and hs.early_data_accepted),
            "session_ticket_saved": bool(tickets),
            "connection_error": (
                close_reason(t)
                if t is not None and t.error_code not in (0, 0x100)
                else None
            ),
            "responses": responses,
        }
    )
    return out


def main():
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    job = json.loads(text)
    out = asyncio.run(run(job))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
