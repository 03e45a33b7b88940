"""Self-test of the OTLP trace receiver fixture: `tests/otlp-receiver/run.sh`.

Starts receiver.py as a child process and sends real protobuf ExportTraceServiceRequests built with
opentelemetry-proto, over OTLP/HTTP (plain and gzip) and OTLP/gRPC (grpcio's client, plain and gzip,
over TLS with a client certificate), then checks /spans, the modes and the process lifecycle.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "receiver.py")

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
ROOT_ID = bytes.fromhex("00f067aa0ba902b7")
CHILD_ID = bytes.fromhex("b7ad6b7169203331")


def start(args=("--port", "0"), stdin=subprocess.PIPE):
    """Start the receiver; returns (process, ready line dict, stdout lines after the first)."""
    proc = subprocess.Popen(
        [sys.executable, RECEIVER, *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read()
        proc.wait(5)
        raise AssertionError(f"receiver printed no ready line (exit {proc.returncode}); stderr:\n{err}")
    return proc, json.loads(line)


def wait_exit(proc, timeout=5.0):
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()


def kv(key, value) -> KeyValue:
    return KeyValue(key=key, value=to_any(value))


def to_any(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[to_any(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    return AnyValue(string_value=value)


def export_request(service="intellia-token-broker", trace_id=TRACE_ID, name_prefix="") -> ExportTraceServiceRequest:
    t0 = 1_764_531_600_000_000_000
    root = Span(
        trace_id=trace_id, span_id=ROOT_ID, name=f"{name_prefix}POST /v1/token", kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=t0, end_time_unix_nano=t0 + 5_000_000, trace_state="vendor=1", flags=0x301,
        attributes=[
            kv("http.request.method", "POST"), kv("http.response.status_code", 200), kv("retry", False),
            kv("ratio", 0.25), kv("tags", ["a", "b", 3]), kv("nested", {"k": "v", "n": 1}), kv("raw", b"\x01\xff"),
        ],
        status=Status(code=Status.STATUS_CODE_OK),
        events=[Span.Event(name="cache miss", time_unix_nano=t0 + 1000, attributes=[kv("key", "x")])],
    )
    child = Span(
        trace_id=trace_id, span_id=CHILD_ID, parent_span_id=ROOT_ID, name=f"{name_prefix}intellia.upstream",
        kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=t0 + 1_000_000, end_time_unix_nano=t0 + 4_000_000,
        status=Status(code=Status.STATUS_CODE_ERROR, message="upstream 503"),
        links=[Span.Link(trace_id=trace_id, span_id=ROOT_ID, attributes=[kv("why", "retry")])],
    )
    resource = Resource(attributes=[kv("service.name", service), kv("service.version", "1.2.3")])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=resource, schema_url="https://opentelemetry.io/schemas/1.26.0",
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name="intellia-token-broker", version="0.9.0"), spans=[root, child])],
    )])


class ReceiverTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.ready = start()
        cls.base = cls.ready["endpoint"]

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        wait_exit(cls.proc)
        rest = cls.proc.stdout.read()
        cls.proc.stdout.close()
        if rest:
            raise AssertionError(f"stdout carried more than the ready line: {rest!r}")
        cls.proc.stderr.close()

    def setUp(self):
        self.call("POST", "/__control/mode", {"mode": "ok"})
        self.call("DELETE", "/spans")

    # --- helpers

    def call(self, method, path, body=None, headers=None, raw=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.ready["port"], timeout=timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=data, headers=headers or {})
            res = conn.getresponse()
            payload = res.read()
            ctype = res.getheader("Content-Type", "")
            return res.status, (json.loads(payload) if ctype.startswith("application/json") else payload), res
        finally:
            conn.close()

    def post_traces(self, req: ExportTraceServiceRequest, gzipped=False, timeout=10, ctype="application/x-protobuf"):
        data = req.SerializeToString()
        headers = {"Content-Type": ctype}
        if gzipped:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
        return self.call("POST", "/v1/traces", headers=headers, raw=data, timeout=timeout)

    # --- tests

    def test_ready_line(self):
        r = self.ready
        self.assertEqual(set(r), {"endpoint", "traces_url", "port", "grpc_endpoint", "grpc_port", "pid"})
        self.assertEqual(r["endpoint"], f"http://127.0.0.1:{r['port']}")
        self.assertEqual(r["grpc_endpoint"], f"http://127.0.0.1:{r['grpc_port']}")
        self.assertNotEqual(r["grpc_port"], r["port"])
        self.assertEqual(r["traces_url"], f"{r['endpoint']}/v1/traces")
        self.assertEqual(r["pid"], self.proc.pid)
        self.assertGreater(r["port"], 0)

    def check_spans(self, spans, service="intellia-token-broker"):
        self.assertEqual(len(spans), 2, spans)
        root, child = spans
        self.assertEqual(root["trace_id"], TRACE_ID.hex())
        self.assertEqual(root["span_id"], ROOT_ID.hex())
        self.assertEqual(root["parent_span_id"], "")
        self.assertEqual(root["name"], "POST /v1/token")
        self.assertEqual(root["kind"], "SPAN_KIND_SERVER")
        self.assertEqual(root["start_time_unix_nano"], 1_764_531_600_000_000_000)
        self.assertEqual(root["end_time_unix_nano"], 1_764_531_600_005_000_000)
        self.assertEqual(root["trace_state"], "vendor=1")
        self.assertEqual(root["flags"], 0x301)
        self.assertEqual(root["attributes"], {
            "http.request.method": "POST", "http.response.status_code": 200, "retry": False, "ratio": 0.25,
            "tags": ["a", "b", 3], "nested": {"k": "v", "n": 1}, "raw": "01ff",
        })
        self.assertEqual(root["status"], {"code": "STATUS_CODE_OK", "message": ""})
        self.assertEqual(root["events"], [{"name": "cache miss", "time_unix_nano": 1_764_531_600_000_001_000, "attributes": {"key": "x"}}])
        self.assertEqual(root["resource_attributes"], {"service.name": service, "service.version": "1.2.3"})
        self.assertEqual(root["resource_schema_url"], "https://opentelemetry.io/schemas/1.26.0")
        self.assertEqual(root["scope_name"], "intellia-token-broker")
        self.assertEqual(root["scope_version"], "0.9.0")
        self.assertEqual(child["trace_id"], TRACE_ID.hex())
        self.assertEqual(child["span_id"], CHILD_ID.hex())
        self.assertEqual(child["parent_span_id"], ROOT_ID.hex())
        self.assertEqual(child["kind"], "SPAN_KIND_CLIENT")
        self.assertEqual(child["attributes"], {})
        self.assertEqual(child["status"], {"code": "STATUS_CODE_ERROR", "message": "upstream 503"})
        self.assertEqual(child["links"], [{"trace_id": TRACE_ID.hex(), "span_id": ROOT_ID.hex(), "trace_state": "", "attributes": {"why": "retry"}}])
        for s in spans:
            self.assertGreater(s["received_at_unix_nano"], 0)

    def test_export_plain_protobuf(self):
        status, body, res = self.post_traces(export_request())
        self.assertEqual(status, 200)
        self.assertEqual(res.getheader("Content-Type"), "application/x-protobuf")
        resp = ExportTraceServiceResponse()
        resp.ParseFromString(body)
        self.assertFalse(resp.HasField("partial_success"))
        status, spans, _ = self.call("GET", "/spans")
        self.assertEqual(status, 200)
        self.check_spans(spans)
        self.assertEqual({s["request"] for s in spans}, {1})

    def test_export_gzip(self):
        status, _, _ = self.post_traces(export_request(service="gz"), gzipped=True)
        self.assertEqual(status, 200)
        _, spans, _ = self.call("GET", "/spans")
        self.check_spans(spans, service="gz")
        _, reqs, _ = self.call("GET", "/requests")
        self.assertEqual(len(reqs), 1)
        self.assertEqual(reqs[0]["content_encoding"], "gzip")
        self.assertEqual(reqs[0]["content_type"], "application/x-protobuf")
        self.assertEqual(reqs[0]["outcome"], "ok")
        self.assertEqual(reqs[0]["status"], 200)
        self.assertEqual(reqs[0]["spans"], 2)
        self.assertIn("content-length", reqs[0]["headers"])

    def test_chunked_body(self):
        data = export_request().SerializeToString()
        conn = http.client.HTTPConnection("127.0.0.1", self.ready["port"], timeout=10)
        try:
            conn.putrequest("POST", "/v1/traces")
            conn.putheader("Content-Type", "application/x-protobuf")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(data), 50):
                chunk = data[i:i + 50]
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
            res = conn.getresponse()
            res.read()
            self.assertEqual(res.status, 200)
        finally:
            conn.close()
        self.check_spans(self.call("GET", "/spans")[1])

    def test_filters_wait_and_reset(self):
        other = bytes.fromhex("11111111111111111111111111111111")
        self.post_traces(export_request())
        self.post_traces(export_request(trace_id=other, name_prefix="b:"), gzipped=True)
        _, spans, _ = self.call("GET", "/spans")
        self.assertEqual(len(spans), 4)
        self.assertEqual([s["request"] for s in spans], [1, 1, 2, 2])
        _, spans, _ = self.call("GET", f"/spans?trace_id={other.hex()}")
        self.assertEqual([s["name"] for s in spans], ["b:POST /v1/token", "b:intellia.upstream"])
        _, spans, _ = self.call("GET", "/spans?name=intellia.upstream")
        self.assertEqual(len(spans), 1)
        _, spans, _ = self.call("GET", "/spans?kind=SPAN_KIND_SERVER")
        self.assertEqual(len(spans), 2)

        # ?min=N&timeout_ms=T waits for spans that arrive later
        threading.Timer(0.3, lambda: self.post_traces(export_request(name_prefix="late:"))).start()
        t0 = time.monotonic()
        _, spans, _ = self.call("GET", "/spans?name=late:POST%20/v1/token&min=1&timeout_ms=5000")
        self.assertEqual(len(spans), 1)
        self.assertLess(time.monotonic() - t0, 4)
        t0 = time.monotonic()
        _, spans, _ = self.call("GET", "/spans?name=never&min=1&timeout_ms=300")
        self.assertEqual(spans, [])
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)

        status, body, _ = self.call("DELETE", "/spans")
        self.assertEqual((status, body), (200, {"deleted": 6}))
        self.assertEqual(self.call("GET", "/spans")[1], [])
        self.assertEqual(self.call("GET", "/requests")[1], [])
        self.assertEqual(self.call("GET", "/__control/stats")[1]["requests"], 0)

    def test_bad_requests(self):
        status, _, _ = self.post_traces(export_request(), ctype="application/json")
        self.assertEqual(status, 415)
        status, body, _ = self.call("POST", "/v1/traces", headers={"Content-Type": "application/x-protobuf"}, raw=b"\xff\xff\xff")
        self.assertEqual(status, 400, body)
        status, _, _ = self.call("POST", "/v1/traces", headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, raw=b"not gzip")
        self.assertEqual(status, 400)
        self.assertEqual(self.call("GET", "/spans")[1], [])
        stats = self.call("GET", "/__control/stats")[1]
        self.assertEqual(stats["by_outcome"], {"ok": 0, "500": 0, "hang": 0, "rejected": 3})
        self.assertEqual(self.call("GET", "/nope")[0], 404)
        self.assertEqual(self.call("POST", "/__control/mode", {"mode": "nope"})[0], 400)
        self.assertEqual(self.call("POST", "/__control/mode", raw=b"{")[0], 400)

    def test_mode_500(self):
        self.assertEqual(self.call("POST", "/__control/mode", {"mode": "500"})[1], {"mode": "500"})
        self.assertEqual(self.call("GET", "/__control/mode")[1]["mode"], "500")
        status, _, _ = self.post_traces(export_request())
        self.assertEqual(status, 500)
        self.assertEqual(self.call("GET", "/spans")[1], [])
        self.call("POST", "/__control/mode", {"mode": "ok"})
        self.assertEqual(self.post_traces(export_request())[0], 200)
        self.assertEqual(len(self.call("GET", "/spans")[1]), 2)
        stats = self.call("GET", "/__control/stats")[1]
        self.assertEqual(stats["by_outcome"], {"ok": 1, "500": 1, "hang": 0, "rejected": 0})
        self.assertEqual(stats["requests"], 2)

    def test_mode_hang(self):
        self.call("POST", "/__control/mode", {"mode": "hang"})
        t0 = time.monotonic()
        with self.assertRaises((socket.timeout, TimeoutError)):
            self.post_traces(export_request(), timeout=0.5)
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        # a hung request is counted, its spans are not kept
        self.assertEqual(self.call("GET", "/__control/stats")[1]["by_outcome"]["hang"], 1)

        # switching back to "ok" cuts the hung requests (connection closed, no answer)
        result = {}

        def hung():
            try:
                result["res"] = self.post_traces(export_request(), timeout=10)
            except Exception as err:  # noqa: BLE001
                result["err"] = err

        t = threading.Thread(target=hung)
        t.start()
        time.sleep(0.3)
        self.assertTrue(t.is_alive())
        self.call("POST", "/__control/mode", {"mode": "ok"})
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertIn("err", result, result)
        self.assertIsInstance(result["err"], (http.client.RemoteDisconnected, ConnectionError))
        self.assertEqual(self.call("GET", "/spans")[1], [])
        self.assertEqual(self.post_traces(export_request())[0], 200)
        self.assertEqual(len(self.call("GET", "/spans")[1]), 2)

    # --- OTLP/gRPC

    def grpc_export(self, req, compression=None, timeout=10, metadata=()):
        with grpc.insecure_channel(f"127.0.0.1:{self.ready['grpc_port']}", compression=compression) as ch:
            return trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=timeout, metadata=metadata)

    def test_grpc_export(self):
        resp = self.grpc_export(export_request(service="grpc"), metadata=[("x-tenant", "acme")])
        self.assertFalse(resp.HasField("partial_success"))
        self.check_spans(self.call("GET", "/spans")[1], service="grpc")
        _, reqs, _ = self.call("GET", "/requests")
        self.assertEqual(len(reqs), 1)
        self.assertEqual(reqs[0]["protocol"], "grpc")
        self.assertEqual(reqs[0]["content_type"], "application/grpc")
        self.assertEqual((reqs[0]["outcome"], reqs[0]["status"], reqs[0]["spans"]), ("ok", 0, 2))
        self.assertEqual(reqs[0]["headers"]["x-tenant"], "acme")
        self.assertIn("grpc-python", reqs[0]["user_agent"])

    def test_grpc_gzip(self):
        self.grpc_export(export_request(service="gz"), compression=grpc.Compression.Gzip)
        self.check_spans(self.call("GET", "/spans")[1], service="gz")

    def test_grpc_modes(self):
        self.call("POST", "/__control/mode", {"mode": "500"})
        with self.assertRaises(grpc.RpcError) as failed:
            self.grpc_export(export_request())
        self.assertEqual(failed.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.call("POST", "/__control/mode", {"mode": "hang"})
        t0 = time.monotonic()
        with self.assertRaises(grpc.RpcError) as hung:
            self.grpc_export(export_request(), timeout=0.5)
        self.assertEqual(hung.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        self.call("POST", "/__control/mode", {"mode": "ok"})
        self.grpc_export(export_request())
        stats = self.call("GET", "/__control/stats")[1]
        self.assertEqual(stats["by_outcome"], {"ok": 1, "500": 1, "hang": 1, "rejected": 0})
        self.assertEqual(len(self.call("GET", "/spans")[1]), 2)

    def test_stdout_only_ready_line(self):
        # nothing else is written to stdout while serving (checked at the end in tearDownClass too)
        self.post_traces(export_request())
        self.assertEqual(self.call("GET", "/__control")[1]["traces_url"], self.ready["traces_url"])


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory):
    """A CA, and a certificate for 127.0.0.1 signed by it that serves as server and client."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with open(os.path.join(directory, "leaf.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-x509", "-days", "1", "-subj", "/CN=receiver test CA", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-keyout", "ca.key", "-out", "ca.crt", *ec, cwd=directory)
    openssl("req", "-new", "-subj", "/CN=localhost", "-keyout", "leaf.key", "-out", "leaf.csr", *ec, cwd=directory)
    openssl("x509", "-req", "-days", "1", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-extfile", "leaf.ext", "-out", "leaf.crt", cwd=directory)
    return {k: os.path.join(directory, f) for k, f in (("ca", "ca.crt"), ("cert", "leaf.crt"), ("key", "leaf.key"))}


class TlsAndCompressionTest(unittest.TestCase):
    """Both ports over TLS with a client certificate required; a receiver refusing gzip."""

    def test_tls_with_client_certificate(self):
        with tempfile.TemporaryDirectory() as d:
            files = make_certificates(d)
            proc, ready = start(("--tls-cert", files["cert"], "--tls-key", files["key"], "--client-ca", files["ca"]))
            try:
                self.assertTrue(ready["endpoint"].startswith("https://"))
                self.assertTrue(ready["grpc_endpoint"].startswith("https://"))

                def read(name):
                    with open(files[name], "rb") as f:
                        return f.read()

                good = grpc.ssl_channel_credentials(read("ca"), read("key"), read("cert"))
                with grpc.secure_channel(f"127.0.0.1:{ready['grpc_port']}", good) as ch:
                    trace_service_pb2_grpc.TraceServiceStub(ch).Export(export_request(), timeout=10)
                anonymous = grpc.ssl_channel_credentials(read("ca"))
                with grpc.secure_channel(f"127.0.0.1:{ready['grpc_port']}", anonymous) as ch:
                    with self.assertRaises(grpc.RpcError):
                        trace_service_pb2_grpc.TraceServiceStub(ch).Export(export_request(), timeout=10)
                ctx = ssl.create_default_context(cafile=files["ca"])
                ctx.load_cert_chain(files["cert"], files["key"])
                req = urllib.request.Request(ready["traces_url"], data=export_request().SerializeToString(),
                                             headers={"Content-Type": "application/x-protobuf"}, method="POST")
                self.assertEqual(urllib.request.urlopen(req, context=ctx, timeout=10).status, 200)
                spans = json.loads(urllib.request.urlopen(f"{ready['endpoint']}/spans", context=ctx, timeout=10).read())
                self.assertEqual(len(spans), 4)
                with self.assertRaises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
                    urllib.request.urlopen(f"{ready['endpoint']}/spans",
                                           context=ssl.create_default_context(cafile=files["ca"]), timeout=10).read()
            finally:
                proc.send_signal(signal.SIGTERM)
                wait_exit(proc)
                proc.stdout.close()
                proc.stderr.close()

    def test_identity_only_refuses_gzip(self):
        proc, ready = start(("--grpc-identity-only",))
        try:
            target = f"127.0.0.1:{ready['grpc_port']}"
            with grpc.insecure_channel(target, compression=grpc.Compression.Gzip) as ch:
                with self.assertRaises(grpc.RpcError) as refused:
                    trace_service_pb2_grpc.TraceServiceStub(ch).Export(export_request(), timeout=10)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
            with grpc.insecure_channel(target) as ch:
                trace_service_pb2_grpc.TraceServiceStub(ch).Export(export_request(), timeout=10)
        finally:
            proc.send_signal(signal.SIGTERM)
            wait_exit(proc)
            proc.stdout.close()
            proc.stderr.close()


class LifecycleTest(unittest.TestCase):
    def test_sigterm(self):
        proc, _ = start()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(wait_exit(proc), 0)
        self.assertEqual(proc.stdout.read(), "")
        self.assertIn("SIGTERM", proc.stderr.read())
        proc.stdout.close()
        proc.stderr.close()

    def test_sigterm_while_hanging(self):
        proc, ready = start()
        urllib.request.urlopen(urllib.request.Request(
            f"{ready['endpoint']}/__control/mode", data=b'{"mode":"hang"}', method="POST"), timeout=5).read()
        sock = socket.create_connection(("127.0.0.1", ready["port"]))
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(wait_exit(proc), 0)
        self.assertLess(time.monotonic() - t0, 3)
        sock.close()
        proc.stdout.close()
        proc.stderr.close()

    def test_stdin_eof(self):
        proc, ready = start()
        self.assertEqual(urllib.request.urlopen(f"{ready['endpoint']}/spans", timeout=5).status, 200)
        proc.stdin.close()
        self.assertEqual(wait_exit(proc), 0)
        self.assertIn("stdin closed", proc.stderr.read())
        proc.stdout.close()
        proc.stderr.close()

    def test_stdin_devnull_keeps_running_and_port(self):
        probe, ready = start(stdin=subprocess.DEVNULL)
        port = ready["port"]
        probe.send_signal(signal.SIGTERM)
        wait_exit(probe)
        probe.stdout.close()
        probe.stderr.close()
        proc, ready = start(("--port", str(port)), stdin=subprocess.DEVNULL)
        try:
            self.assertEqual(ready["port"], port)
            time.sleep(0.3)
            self.assertIsNone(proc.poll())
            self.assertEqual(urllib.request.urlopen(f"{ready['endpoint']}/spans", timeout=5).status, 200)
        finally:
            proc.send_signal(signal.SIGTERM)
            wait_exit(proc)
            proc.stdout.close()
            proc.stderr.close()

    def test_port_in_use_exits_1_bad_args_exit_2(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            proc = subprocess.run([sys.executable, RECEIVER, "--port", str(port)], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=10)
            self.assertEqual(proc.returncode, 1)
            self.assertEqual(proc.stdout, "")
        proc = subprocess.run([sys.executable, RECEIVER, "--bogus"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=10)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stdout, "")
        proc = subprocess.run([sys.executable, RECEIVER, "--tls-cert", "/nonexistent"], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=10)
        self.assertEqual(proc.returncode, 2)


if __name__ == "__main__":
    unittest.main()
