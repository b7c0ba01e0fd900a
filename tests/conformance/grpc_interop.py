#!/usr/bin/env python3
"""gRPC's interop test cases with grpcio (the C-core implementation), server and client,
written here from gRPC's interop test descriptions (doc/interop-test-descriptions.md) and
compiled with grpcio-tools at run time from proto/interop/test.proto (package
grpc.testing, as the interop service is).

  grpc_interop.py server            serve TestService on a free loopback port; print
                                    "PORT <n>" when serving
  grpc_interop.py client ADDR [--tls CA_FILE --authority NAME]
                                    run every case against ADDR; print one JSON object
                                    {case: "passed" | "failed: <why>"}

Run direct against the server and through the gateway: each case must give the same result.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
FOUR_MIB = 4 * 1024 * 1024
MAX_MESSAGE = 8 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.enable_retries", 0),
]
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


def compiled():
    """The generated modules (messages, services), compiled into a temporary directory."""
    out = tempfile.mkdtemp(prefix="grpc-interop-")
    proto_dir = os.path.join(HERE, "proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "interop/test.proto",
        ],
        check=True,
    )
    sys.path.insert(0, out)
    from interop import test_pb2, test_pb2_grpc  # noqa: E402  (generated)

    return test_pb2, test_pb2_grpc


def serve():
    pb, rpc = compiled()

    def payload(size):
        return pb.Payload(type=pb.COMPRESSABLE, body=b"\0" * size)

    def echo_metadata(context):
        md = dict(context.invocation_metadata())
        if ECHO_INITIAL in md:
            context.send_initial_metadata(((ECHO_INITIAL, md[ECHO_INITIAL]),))
        if ECHO_TRAILING in md:
            context.set_trailing_metadata(((ECHO_TRAILING, md[ECHO_TRAILING]),))

    def maybe_fail(status, context):
        if status is not None and status.code != 0:
            context.abort(grpc.StatusCode(_code(status.code)), status.message)

    class TestService(rpc.TestServiceServicer):
        def EmptyCall(self, request, context):
            return pb.Empty()

        def UnaryCall(self, request, context):
            echo_metadata(context)
            if request.HasField("response_status"):
                maybe_fail(request.response_status, context)
            return pb.SimpleResponse(payload=payload(request.response_size))

        def StreamingOutputCall(self, request, context):
            for p in request.response_parameters:
                if p.interval_us:
                    time.sleep(p.interval_us / 1e6)
                yield pb.StreamingOutputCallResponse(payload=payload(p.size))
            if request.HasField("response_status"):
                maybe_fail(request.response_status, context)

        def StreamingInputCall(self, request_iterator, context):
            total = sum(len(r.payload.body) for r in request_iterator)
            return pb.StreamingInputCallResponse(aggregated_payload_size=total)

        def FullDuplexCall(self, request_iterator, context):
            echo_metadata(context)
            for request in request_iterator:
                if request.HasField("response_status"):
                    maybe_fail(request.response_status, context)
                for p in request.response_parameters:
                    if p.interval_us:
                        time.sleep(p.interval_us / 1e6)
                    yield pb.StreamingOutputCallResponse(payload=payload(p.size))

        def HalfDuplexCall(self, request_iterator, context):
            requests = list(request_iterator)
            for request in requests:
                for p in request.response_parameters:
                    yield pb.StreamingOutputCallResponse(payload=payload(p.size))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    rpc.add_TestServiceServicer_to_server(TestService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    # Until stdin closes (the test that started it ends) or the process is killed.
    sys.stdin.read()
    server.stop(0)


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.value
    return grpc.StatusCode.UNKNOWN.value


def cases(pb, rpc, channel):
    stub = rpc.TestServiceStub(channel)

    def payload(size):
        return pb.Payload(type=pb.COMPRESSABLE, body=b"\0" * size)

    def expect(cond, why):
        if not cond:
            raise AssertionError(why)

    def empty_unary():
        expect(stub.EmptyCall(pb.Empty(), timeout=10) == pb.Empty(), "not Empty")

    def large_unary():
        r = stub.UnaryCall(
            pb.SimpleRequest(response_size=314159, payload=payload(271828)), timeout=10
        )
        expect(len(r.payload.body) == 314159, f"payload {len(r.payload.body)}")

    def large_unary_4mib():
        r = stub.UnaryCall(
            pb.SimpleRequest(response_size=FOUR_MIB, payload=payload(FOUR_MIB)), timeout=30
        )
        expect(len(r.payload.body) == FOUR_MIB, f"payload {len(r.payload.body)}")

    def client_streaming():
        sizes = [27182, 8, 1828, 45904]
        r = stub.StreamingInputCall(
            iter([pb.StreamingInputCallRequest(payload=payload(s)) for s in sizes]), timeout=10
        )
        expect(r.aggregated_payload_size == 74922, f"aggregate {r.aggregated_payload_size}")

    def server_streaming():
        sizes = [31415, 9, 2653, 58979]
        req = pb.StreamingOutputCallRequest(
            response_parameters=[pb.ResponseParameters(size=s) for s in sizes]
        )
        got = [len(r.payload.body) for r in stub.StreamingOutputCall(req, timeout=10)]
        expect(got == sizes, f"sizes {got}")

    def ping_pong():
        pairs = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
        requests = Feed()
        responses = stub.FullDuplexCall(iter(requests), timeout=10)
        for out, size in pairs:
            requests.put(
                pb.StreamingOutputCallRequest(
                    response_parameters=[pb.ResponseParameters(size=out)], payload=payload(size)
                )
            )
            r = next(responses)
            expect(len(r.payload.body) == out, f"response {len(r.payload.body)}, want {out}")
        requests.close()
        expect(next(responses, None) is None, "more responses than requests")

    def empty_stream():
        got = list(stub.FullDuplexCall(iter([]), timeout=10))
        expect(got == [], f"{len(got)} responses")

    def custom_metadata():
        md = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\x0a\x0b\x0a\x0b\x0a\x0b"))
        req = pb.SimpleRequest(response_size=314159, payload=payload(271828))
        _, call = stub.UnaryCall.with_call(req, metadata=md, timeout=10)
        initial = dict(call.initial_metadata())
        trailing = dict(call.trailing_metadata())
        expect(initial.get(ECHO_INITIAL) == md[0][1], f"initial {initial}")
        expect(trailing.get(ECHO_TRAILING) == md[1][1], f"trailing {trailing}")
        responses = stub.FullDuplexCall(
            iter(
                [
                    pb.StreamingOutputCallRequest(
                        response_parameters=[pb.ResponseParameters(size=314159)],
                        payload=payload(271828),
                    )
                ]
            ),
            metadata=md,
            timeout=10,
        )
        list(responses)
        initial = dict(responses.initial_metadata())
        trailing = dict(responses.trailing_metadata())
        expect(initial.get(ECHO_INITIAL) == md[0][1], f"stream initial {initial}")
        expect(trailing.get(ECHO_TRAILING) == md[1][1], f"stream trailing {trailing}")

    def status(message):
        def check():
            code = 2
            req = pb.SimpleRequest(response_status=pb.EchoStatus(code=code, message=message))
            try:
                stub.UnaryCall(req, timeout=10)
                raise AssertionError("no error")
            except grpc.RpcError as e:
                expect(e.code() == grpc.StatusCode.UNKNOWN, f"code {e.code()}")
                expect(e.details() == message, f"message {e.details()!r}")
            responses = stub.FullDuplexCall(
                iter([pb.StreamingOutputCallRequest(response_status=pb.EchoStatus(code=code, message=message))]),
                timeout=10,
            )
            try:
                list(responses)
                raise AssertionError("no stream error")
            except grpc.RpcError as e:
                expect(e.code() == grpc.StatusCode.UNKNOWN, f"stream code {e.code()}")
                expect(e.details() == message, f"stream message {e.details()!r}")

        return check

    def unimplemented_method():
        try:
            stub.UnimplementedCall(pb.Empty(), timeout=10)
            raise AssertionError("no error")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNIMPLEMENTED, f"code {e.code()}")

    def unimplemented_service():
        try:
            rpc.UnimplementedServiceStub(channel).UnimplementedCall(pb.Empty(), timeout=10)
            raise AssertionError("no error")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNIMPLEMENTED, f"code {e.code()}")

    def cancel_after_begin():
        requests = Feed()
        future = stub.StreamingInputCall.future(iter(requests), timeout=10)
        future.cancel()
        requests.close()
        try:
            future.result()
            raise AssertionError("no error")
        except grpc.FutureCancelledError:
            pass
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.CANCELLED, f"code {e.code()}")

    def cancel_after_first_response():
        requests = Feed()
        responses = stub.FullDuplexCall(iter(requests), timeout=10)
        requests.put(
            pb.StreamingOutputCallRequest(
                response_parameters=[pb.ResponseParameters(size=31415)], payload=payload(27182)
            )
        )
        r = next(responses)
        expect(len(r.payload.body) == 31415, "first response")
        responses.cancel()
        requests.close()
        try:
            next(responses)
            raise AssertionError("no error after cancel")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.CANCELLED, f"code {e.code()}")

    def timeout_on_sleeping_server():
        requests = Feed()
        responses = stub.FullDuplexCall(iter(requests), timeout=0.001)
        requests.put(pb.StreamingOutputCallRequest(payload=payload(27182)))
        try:
            next(responses)
            raise AssertionError("no error")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"code {e.code()}")
        finally:
            requests.close()

    return {
        "empty_unary": empty_unary,
        "large_unary": large_unary,
        "large_unary_4mib": large_unary_4mib,
        "client_streaming": client_streaming,
        "server_streaming": server_streaming,
        "ping_pong": ping_pong,
        "empty_stream": empty_stream,
        "custom_metadata": custom_metadata,
        "status_code_and_message": status("test status message"),
        "special_status_message": status(
            "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
        ),
        "unimplemented_method": unimplemented_method,
        "unimplemented_service": unimplemented_service,
        "cancel_after_begin": cancel_after_begin,
        "cancel_after_first_response": cancel_after_first_response,
        "timeout_on_sleeping_server": timeout_on_sleeping_server,
    }


class Feed:
    """Requests handed to a streaming call one at a time, from the test's thread."""

    _END = object()

    def __init__(self):
        self._items = []
        self._cv = threading.Condition()

    def put(self, item):
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def close(self):
        self.put(self._END)

    def __iter__(self):
        while True:
            with self._cv:
                while not self._items:
                    self._cv.wait()
                item = self._items.pop(0)
            if item is self._END:
                return
            yield item


def client(addr, ca=None, authority=None):
    pb, rpc = compiled()
    options = list(OPTIONS)
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.secure_channel(addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(addr, options=options)
    results = {}
    with channel:
        for name, case in cases(pb, rpc, channel).items():
            try:
                case()
                results[name] = "passed"
            except Exception as e:  # a case that fails in any way is reported, not raised
                results[name] = f"failed: {type(e).__name__}: {e}"
    print(json.dumps(results))


def main():
    if sys.argv[1] == "server":
        serve()
    else:
        args = sys.argv[2:]
        ca = authority = None
        if "--tls" in args:
            ca = args[args.index("--tls") + 1]
            authority = args[args.index("--authority") + 1]
        client(args[0], ca, authority)


if __name__ == "__main__":
    main()
