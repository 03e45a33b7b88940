"""Metric names for the chart's alerts and dashboard (used by chart_checks.py).

- `known_metrics()`: the series names a broker exposes, from a live broker's
  /metrics (BROKER_BIN: the binary is started on free loopback ports with a
  throw-away config) or from tests/deploy/metrics.txt.
- `metric_names(expr)`: the metric names a PromQL expression selects. It is a
  careful lexer, not a full parser: strings, label matchers, grouping label
  lists, durations, numbers, keywords and function names are removed, and what
  is left are metric names. The syntax itself is checked by promtool.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def from_list(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, kind = line.split()[:2]
        names.add(name)
        if kind == "histogram" or kind == "summary":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names


def from_exposition(text: str) -> set[str]:
    """Names from Prometheus text or OpenMetrics: # TYPE lines (which also
    cover families without a sample yet) and sample lines."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            kind = kind.strip()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")  # OpenMetrics: family name without _total
            if kind in ("histogram", "summary", "gaugehistogram"):
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, 1)[0])
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> None:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError:
        pass  # 4xx/5xx answers are what some of these calls are for
    except OSError:
        pass


def from_broker(binary: Path, timeout: float = 30) -> set[str]:
    """Starts the broker with every optional part configured (a JWKS issuer, the
    backend route, Redis on a closed port, tight limits), sends it traffic that
    touches every labelled family (a refused session, backend mints that fail
    upstream and then hit the per-user limit, a rotated and a vanished secret
    file), and reads its /metrics: a labelled family appears only once it has a
    series."""
    with tempfile.TemporaryDirectory(prefix="itb-metrics.") as tmp:
        d = Path(tmp)
        (d / "api-key").write_text("metrics-check-api-key-not-real\n")
        (d / "backend-secret").write_text("metrics-check-backend-secret-not-real-0123456789\n")
        http, admin, backend, closed = _free_port(), _free_port(), _free_port(), _free_port()
        (d / "config.toml").write_text(f"""
[server]
listen = "127.0.0.1:{http}"
admin_listen = "127.0.0.1:{admin}"
secret_poll_secs = 1
[intellia]
base_url = "http://127.0.0.1:{closed}"
organization_id = "org-metrics-check"
api_key_file = "{d}/api-key"
[backend]
listen = "127.0.0.1:{backend}"
secret_file = "{d}/backend-secret"
[[session.jwt]]
issuer = "http://127.0.0.1:{closed}/issuer"
audience = "metrics-check"
jwks_url = "http://127.0.0.1:{closed}/jwks"
algorithms = ["RS256"]
[rate_limit.per_user]
per_minute = 1
burst = 2
[rate_limit.per_ip]
per_minute = 60
burst = 20
[rate_limit.upstream]
per_second = 50
burst = 100
[redis]
url = "redis://127.0.0.1:{closed}"
on_unavailable = "local"
""")
        log = open(d / "broker.log", "w")
        proc = subprocess.Popen([str(binary), "serve", "--config", str(d / "config.toml")],
                                stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"RUST_LOG": "warn"})
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
                        r.read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        raise AssertionError(
                            f"{binary} served no /metrics (exit {proc.poll()}): "
                            + (d / "broker.log").read_text()[-600:])
                    time.sleep(0.2)
            base = f"http://127.0.0.1:{http}"
            for path in ("/healthz", "/readyz", "/openapi.json", "/nope"):
                _request(base + path)
            _request(base + "/v1/token", b"{}", {"Authorization": "Bearer not-a-token", "Origin": "http://x"})
            secret = (d / "backend-secret").read_text().strip()
            for _ in range(4):  # upstream down, then the per-user limit
                _request(f"http://127.0.0.1:{backend}/v1/backend/token", b'{"userId":"metrics-check"}',
                         {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
            (d / "api-key").write_text("metrics-check-api-key-rotated-not-real\n")
            (d / "backend-secret").unlink()
            time.sleep(3)  # two secret polls: one reload, one failed re-read
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
                        return from_exposition(r.read().decode())
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        raise AssertionError(
                            f"{binary} served no /metrics (exit {proc.poll()}): "
                            + (d / "broker.log").read_text()[-600:])
                    time.sleep(0.2)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


# Series Prometheus itself writes for every scrape target, whatever the target exposes: an alert on
# a broker that is down or no longer scraped reads them.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def known_metrics(broker_bin: str | None, list_file: Path) -> tuple[set[str], str]:
    if broker_bin:
        return from_broker(Path(broker_bin)) | SCRAPE_SERIES, f"live /metrics of {broker_bin} (and Prometheus' {sorted(SCRAPE_SERIES)})"
    return from_list(list_file) | SCRAPE_SERIES, f"{list_file} (and Prometheus' {sorted(SCRAPE_SERIES)})"


def metric_names(expr: str) -> set[str]:
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    prev = None
    while prev != s:  # grouping label lists, also nested after the aggregation
        prev, s = s, GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names
