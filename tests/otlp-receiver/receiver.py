#!/usr/bin/env python3
"""Test-only OTLP trace receiver for intellia-token-broker's integration tests.

Accepts `POST /v1/traces` (OTLP/HTTP: protobuf ExportTraceServiceRequest, optionally gzip) and the
OTLP/gRPC trace service (`TraceService/Export`, served by `grpcio` on a second port), decodes both
with the `opentelemetry-proto` package and exposes the spans as JSON (`GET /spans`). A control API
switches it into a dead (`500`) or hanging (`hang`) collector; both ports can serve TLS, asking for
a client certificate. See README.md next to this file.

stdout carries exactly one line: the JSON "ready" line. Everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import ssl
import stat
import sys
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
MAX_REQUESTS_KEPT = 1000
MODES = ("ok", "hang", "500")
VERBOSE = bool(os.environ.get("OTLP_RECEIVER_LOG"))


def log(msg: str) -> None:
    sys.stderr.write(f"otlp-receiver: {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# protobuf -> JSON


def any_value(v) -> object:
    """An OTLP AnyValue as a plain JSON value (bytes as lower-case hex)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return v.bool_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return None  # a newer AnyValue kind this decoder does not know


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


def enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:  # a value newer than this decoder
        return str(value)


def span_json(span, resource_attrs: dict, resource_schema: str, scope, received_at: int, request_no: int) -> dict:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "trace_state": span.trace_state,
        "flags": span.flags,
        "name": span.name,
        "kind": enum_name(Span.SpanKind, span.kind),
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "dropped_attributes_count": span.dropped_attributes_count,
        "events": [
            {"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attributes(e.attributes)}
            for e in span.events
        ],
        "links": [
            {"trace_id": li.trace_id.hex(), "span_id": li.span_id.hex(), "trace_state": li.trace_state,
             "attributes": attributes(li.attributes)}
            for li in span.links
        ],
        "status": {"code": enum_name(Status.StatusCode, span.status.code), "message": span.status.message},
        "resource_attributes": resource_attrs,
        "resource_schema_url": resource_schema,
        "scope_name": scope.name if scope is not None else "",
        "scope_version": scope.version if scope is not None else "",
        "received_at_unix_nano": received_at,
        "request": request_no,
    }


def decode_spans(req: ExportTraceServiceRequest, received_at: int, request_no: int) -> list[dict]:
    out = []
    for rs in req.resource_spans:
        res_attrs = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope if ss.HasField("scope") else None
            for span in ss.spans:
                out.append(span_json(span, res_attrs, rs.schema_url, scope, received_at, request_no))
    return out


# ------------------------------------------------------------------------------------------------
# state


class State:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.spans: list[dict] = []
        self.requests: list[dict] = []  # metadata of every POST /v1/traces, last MAX_REQUESTS_KEPT
        self.request_count = 0
        self.counts = {"ok": 0, "500": 0, "hang": 0, "rejected": 0}
        self.mode = "ok"
        self.release = threading.Event()  # set = hung requests are cut
        self.since = time.time_ns()

    def set_mode(self, mode: str) -> None:
        with self.lock:
            if mode == self.mode:
                return
            if self.mode == "hang":
                self.release.set()  # cut the hung requests
            if mode == "hang":
                self.release = threading.Event()
            self.mode = mode

    def reset(self) -> int:
        with self.lock:
            n = len(self.spans)
            self.spans = []
            self.requests = []
            self.request_count = 0
            self.counts = {k: 0 for k in self.counts}
            self.since = time.time_ns()
            return n


STATE = State()
SHUTDOWN = threading.Event()


def span_filter(query: dict):
    wanted = {k: v[-1] for k, v in query.items() if k in ("name", "trace_id", "span_id", "parent_span_id", "kind", "scope_name")}

    def ok(span: dict) -> bool:
        return all(str(span.get(k)) == v for k, v in wanted.items())

    return ok


# ------------------------------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "otlp-receiver-fixture"
    sys_version = ""

    def log_message(self, fmt, *args):  # noqa: N802 (stdlib name)
        if VERBOSE:
            log(f"{self.address_string()} {fmt % args}")

    # --- helpers

    def send_json(self, status: int, body) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def json_body(self) -> dict:
        raw = self.read_body().strip()
        if not raw:
            return {}
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def cut(self) -> None:
        """Close the connection without an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- routes

    def do_POST(self):  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/v1/traces":
            return self.export()
        if path == "/__control/mode":
            try:
                body = self.json_body()
            except ValueError as err:
                return self.send_json(400, {"error": f"bad JSON body: {err}"})
            mode = str(body.get("mode", ""))
            if mode not in MODES:
                return self.send_json(400, {"error": '"mode" must be "ok", "hang" or "500"'})
            STATE.set_mode(mode)
            return self.send_json(200, {"mode": STATE.mode})
        if path == "/__control/reset":
            self.read_body()
            return self.send_json(200, {"deleted": STATE.reset()})
        self.read_body()
        return self.send_json(404, {"error": f"no route POST {path}"})

    def do_DELETE(self):  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/") or "/"
        self.read_body()
        if path in ("/spans", "/__control/reset"):
            return self.send_json(200, {"deleted": STATE.reset()})
        return self.send_json(404, {"error": f"no route DELETE {path}"})

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query)
        if path == "/spans":
            ok = span_filter(query)
            try:
                want = int(query.get("min", ["0"])[-1])
                timeout_ms = int(query.get("timeout_ms", ["0"])[-1])
            except ValueError:
                return self.send_json(400, {"error": '"min" and "timeout_ms" must be integers'})
            deadline = time.monotonic() + min(max(timeout_ms, 0), 60_000) / 1000
            with STATE.lock:
                while True:
                    spans = [s for s in STATE.spans if ok(s)]
                    left = deadline - time.monotonic()
                    if len(spans) >= want or left <= 0 or SHUTDOWN.is_set():
                        break
                    STATE.lock.wait(min(left, 0.5))
            return self.send_json(200, spans)
        if path == "/requests":
            with STATE.lock:
                return self.send_json(200, list(STATE.requests))
        if path in ("/__control/mode", "/__control/stats", "/__control"):
            with STATE.lock:
                return self.send_json(200, {
                    "mode": STATE.mode,
                    "requests": STATE.request_count,
                    "by_outcome": dict(STATE.counts),
                    "spans": len(STATE.spans),
                    "since_unix_nano": STATE.since,
                    **READY,
                })
        return self.send_json(404, {"error": f"no route GET {path}"})

    def export(self) -> None:
        received_at = time.time_ns()
        headers = {k.lower(): v for k, v in self.headers.items()}
        meta = request_meta("http", received_at, headers, headers.get("content-type", ""),
                            headers.get("content-encoding", ""))

        def finish(outcome: str, status: int | None, spans: list[dict] | None = None) -> None:
            record(meta, outcome, status, spans)

        try:
            raw = self.read_body()
        except (ValueError, OSError) as err:
            finish("rejected", 413)
            self.close_connection = True
            return self.send_json(413, {"error": str(err)})
        meta["bytes"] = len(raw)

        mode = STATE.mode
        if mode == "hang":
            release = STATE.release
            finish("hang", None)
            while not release.wait(0.2) and not SHUTDOWN.is_set():
                pass
            return self.cut()
        if mode == "500":
            finish("500", 500)
            return self.send_json(500, {"error": "simulated collector failure (/__control/mode)"})

        ctype = meta["content_type"].split(";")[0].strip().lower()
        if ctype != "application/x-protobuf":
            finish("rejected", 415)
            return self.send_json(415, {"error": "only Content-Type application/x-protobuf is accepted"})
        encoding = meta["content_encoding"].strip().lower()
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "deflate":
                raw = zlib.decompress(raw)
            elif encoding not in ("", "identity"):
                finish("rejected", 415)
                return self.send_json(415, {"error": f"unsupported Content-Encoding {encoding}"})
            req = ExportTraceServiceRequest()
            req.ParseFromString(raw)
        except (OSError, EOFError, zlib.error, DecodeError) as err:
            finish("rejected", 400)
            return self.send_json(400, {"error": f"cannot decode ExportTraceServiceRequest: {err}"})

        spans = decode_spans(req, received_at, 0)
        finish("ok", 200, spans)
        data = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def request_meta(protocol: str, received_at: int, headers: dict, content_type: str, encoding: str) -> dict:
    return {
        "protocol": protocol,
        "received_at_unix_nano": received_at,
        "content_type": content_type,
        "content_encoding": encoding,
        "user_agent": headers.get("user-agent", ""),
        "headers": headers,
        "bytes": 0,
        "spans": 0,
        "status": None,
        "outcome": None,
    }


def record(meta: dict, outcome: str, status, spans: list[dict] | None = None) -> None:
    """Keeps an export request's metadata and its spans, numbering both."""
    with STATE.lock:
        STATE.request_count += 1
        meta["request"] = STATE.request_count
        meta["outcome"], meta["status"] = outcome, status
        STATE.counts[outcome] += 1
        if spans:
            for s in spans:
                s["request"] = STATE.request_count
            meta["spans"] = len(spans)
            STATE.spans.extend(spans)
        STATE.requests.append(meta)
        del STATE.requests[:-MAX_REQUESTS_KEPT]
        STATE.lock.notify_all()


# ------------------------------------------------------------------------------------------------
# gRPC


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """`opentelemetry.proto.collector.trace.v1.TraceService/Export`, with the same modes and
    records as `POST /v1/traces`. `status` in `/requests` is the gRPC status code (0 = OK)."""

    def Export(self, request, context):  # noqa: N802 (generated name)
        received_at = time.time_ns()
        headers = {}
        for key, value in context.invocation_metadata():
            headers[key.lower()] = value.hex() if isinstance(value, bytes) else value
        # grpc-encoding is consumed by the gRPC core; --grpc-identity-only refuses gzip instead.
        meta = request_meta("grpc", received_at, headers, "application/grpc", "")
        meta["bytes"] = request.ByteSize()
        mode = STATE.mode
        if mode == "hang":
            release = STATE.release
            record(meta, "hang", None)
            while not release.wait(0.2) and not SHUTDOWN.is_set() and context.is_active():
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "hung export cut (/__control/mode)")
        if mode == "500":
            record(meta, "500", grpc.StatusCode.UNAVAILABLE.value[0])
            context.abort(grpc.StatusCode.UNAVAILABLE, "simulated collector failure (/__control/mode)")
        record(meta, "ok", grpc.StatusCode.OK.value[0], decode_spans(request, received_at, 0))
        return ExportTraceServiceResponse()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


# ------------------------------------------------------------------------------------------------
# main

READY: dict = {}


def watch_stdin(mode: str, stop) -> bool:
    watch = mode == "on"
    if mode == "auto":
        try:
            st = os.fstat(0)
            watch = stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)
        except OSError:
            watch = False
    if not watch:
        return False

    def run():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop("stdin closed")

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()
    return True


def tls_files(args) -> tuple[bytes, bytes, bytes | None] | None:
    if not args.tls_cert:
        return None
    with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
        cert, key = c.read(), k.read()
    ca = None
    if args.client_ca:
        with open(args.client_ca, "rb") as f:
            ca = f.read()
    return cert, key, ca


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Test-only OTLP trace receiver (HTTP and gRPC)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--grpc-port", type=int, default=0, help="OTLP/gRPC port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--grpc-identity-only", action="store_true",
                        help="refuse compressed gRPC messages (UNIMPLEMENTED), to tell that a client compresses")
    parser.add_argument("--tls-cert", help="serve both ports over TLS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    parser.add_argument("--client-ca", help="with --tls-cert: require a client certificate signed by this PEM CA")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stdin-exit", dest="stdin_exit", action="store_const", const="on", default="auto")
    group.add_argument("--no-stdin-exit", dest="stdin_exit", action="store_const", const="off")
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    if not (0 <= args.port <= 65535 and 0 <= args.grpc_port <= 65535):
        log(f"bad --port {args.port} or --grpc-port {args.grpc_port}")
        return 2
    if bool(args.tls_cert) != bool(args.tls_key) or (args.client_ca and not args.tls_cert):
        log("--tls-cert and --tls-key go together; --client-ca needs them")
        return 2
    try:
        tls = tls_files(args)
    except OSError as err:
        log(f"cannot read a TLS file: {err}")
        return 2

    grpc_server = None
    try:
        server = Server((HOST, args.port), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            if args.client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(args.client_ca)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        options = [("grpc.compression_enabled_algorithms_bitset", 1)] if args.grpc_identity_only else []
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), grpc_server)
        address = f"{HOST}:{args.grpc_port}"
        if tls:
            cert, key, ca = tls
            credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                      require_client_auth=ca is not None)
            grpc_port = grpc_server.add_secure_port(address, credentials)
        else:
            grpc_port = grpc_server.add_insecure_port(address)
        if not grpc_port:
            raise OSError(f"cannot listen on {address}")
        grpc_server.start()
    except (OSError, RuntimeError, ssl.SSLError) as err:
        log(f"listen error: {err}")
        return 1
    port = server.server_address[1]
    scheme = "https" if tls else "http"
    endpoint = f"{scheme}://{HOST}:{port}"
    READY.update({"endpoint": endpoint, "traces_url": f"{endpoint}/v1/traces", "port": port,
                  "grpc_endpoint": f"{scheme}://{HOST}:{grpc_port}", "grpc_port": grpc_port,
                  "pid": os.getpid()})

    stopping = threading.Lock()

    def stop(reason: str) -> None:
        if not stopping.acquire(blocking=False):
            return
        log(f"shutting down ({reason})")
        SHUTDOWN.set()
        STATE.release.set()
        with STATE.lock:
            STATE.lock.notify_all()
        grpc_server.stop(grace=None)
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop(signal.Signals(signum).name))

    watching = watch_stdin(args.stdin_exit, stop)
    log(f"listening on {endpoint} and gRPC {READY['grpc_endpoint']} (pid {os.getpid()}; exits on SIGTERM/SIGINT{' and when stdin closes' if watching else ''})")
    sys.stdout.write(json.dumps(READY) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
