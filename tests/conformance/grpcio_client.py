#!/usr/bin/env python3
"""Calls through the gateway with grpcio, the C-core gRPC client behind Python, Ruby, PHP,
C++ and Objective-C gRPC: a second implementation, so that the gateway's gRPC answers are
checked by a client that did not grow up beside it (tonic accepts what tonic sends).

Usage: grpcio_client.py HOST:PORT CASES_JSON
Each case: {"name", "method": "/pkg.Service/Method", "metadata": [[k, v], ...],
            "message": "text", "pad": N (bytes of padding in field 15), "timeout": seconds,
            "delay_ms": N (the server waits this long),
            "repeat": N (calls in a row, the last one reported)}
Prints one JSON list: [{"name", "code": "OK" | "UNAUTHENTICATED" | ..., "details"}].
The request is an EchoRequest (field 1: message, field 15, unknown to the server: padding) encoded by hand, so no
generated code is needed.
"""
import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def main():
    addr, cases = sys.argv[1], json.loads(sys.argv[2])
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 0),
    ]
    results = []
    with grpc.insecure_channel(addr, options=options) as channel:
        for case in cases:
            call = channel.unary_unary(
                case["method"],
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            body = field(1, case.get("message", "").encode())
            if case.get("delay_ms"):
                body += varint(2 << 3) + varint(case["delay_ms"])
            if case.get("pad"):
                body += field(15, b"x" * case["pad"])
            result = None
            for _ in range(case.get("repeat", 1)):
                try:
                    call(
                        body,
                        metadata=[tuple(m) for m in case.get("metadata", [])],
                        timeout=case.get("timeout", 10),
                    )
                    result = {"name": case["name"], "code": "OK", "details": ""}
                except grpc.RpcError as e:
                    result = {
                        "name": case["name"],
                        "code": e.code().name,
                        "details": e.details() or "",
                    }
            results.append(result)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
