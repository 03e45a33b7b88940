"""Offline checks of the Helm chart (called by tests/deploy/run.sh).

No cluster is needed: Helm's own SDK (helm-python-sdk) lints and renders the
chart and enforces values.schema.json; kubernetes-validate checks the rendered
manifests against the Kubernetes OpenAPI schemas; the ServiceMonitor (a CRD
that kubernetes-validate does not know) is checked against a strict JSON
schema derived from the prometheus-operator CRD models; then the rendered
objects are asserted on (security, secrets as files, checksums, grace period,
config keys), the PrometheusRule is checked against the prometheus-operator
model and with `promtool check rules`, and every PromQL expression of the
rules and of the Grafana dashboard may name only metrics the broker exposes
(promql_names.py: from BROKER_BIN's live /metrics, or tests/deploy/metrics.txt).

Prints one "PASS name" / "FAIL name: why" line per check and exits 1 when any
check failed. Writes the rendered manifests and the rendered broker configs to
--out (one <set>.yaml and <set>.config.json per values set).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml
import helm_python as helm

from promql_names import known_metrics, metric_names

# Kubernetes versions to validate against: the chart's kubeVersion floor
# (Chart.yaml: >=1.30, for the preStop sleep action) and the newest schema
# bundled with kubernetes-validate.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
RELEASE = "broker"
NAMESPACE = "web"
API_KEY_DIR = "/var/run/secrets/intellia"
API_KEY_FILE = f"{API_KEY_DIR}/api-key"
CONFIG_DIR = "/etc/intellia-token-broker"
UID = 65532

# every key the broker's config knows, plus the ones the broker
# added since (src/config.rs: server.drain_delay_secs, server.secret_poll_secs,
# server.workers, server.request_timeout_ms, server.keep_alive_secs, cors.max_age_secs, cache.max_entries; per issuer
# required_claims, userinfo, userinfo_url; in [session.introspection] issuer,
# audience, the claim names, user_id_prefix, required_claims, leeway_secs,
# cache_ttl_secs, negative_cache_secs; intellia.breaker_failures,
# intellia.breaker_open_secs; in [redis] timeout_ms, replicas, key_prefix,
# cache_secret_file), and v0.2: roles,
# introspection client_auth/client_key_file/key_id, backend.max_failures_per_minute,
# rate_limit.per_ip.ipv6_prefix, redis password_file/ca_file/cluster, [telemetry]; v0.3:
# backend.listen (the sidecar route's own listener).
# The rendered config must use no other (the broker rejects unknown keys).
DESIGN_KEYS: dict[str, set[str]] = {
    "server": {"listen", "admin_listen", "trusted_proxies", "max_body_bytes", "shutdown_grace_secs",
               "drain_delay_secs", "secret_poll_secs", "workers", "request_timeout_ms", "keep_alive_secs"},
    "intellia": {"base_url", "organization_id", "api_key_file", "api_key_env", "timeout_ms", "max_retries", "deadline_ms",
                 "breaker_failures", "breaker_open_secs"},
    "cors": {"allowed_origins", "max_age_secs"},
    "session": {"jwt", "introspection", "endpoint"},
    "session.jwt[]": {"issuer", "audience", "jwks_url", "discovery", "hs256_secret_file", "algorithms",
                      "cookie", "user_id_claim", "email_claim", "name_claim", "leeway_secs", "user_id_prefix",
                      "required_claims", "userinfo", "userinfo_url", "roles_claim", "required_roles", "header"},
    "session.introspection": {"url", "client_id", "client_secret_file", "issuer", "audience", "user_id_claim",
                              "email_claim", "name_claim", "user_id_prefix", "required_claims", "leeway_secs",
                              "cache_ttl_secs", "negative_cache_secs", "client_auth", "client_key_file", "key_id",
                              "roles_claim", "required_roles"},
    "session.endpoint[]": {"url", "cookies", "bearer", "user_id_pointer", "email_pointer", "name_pointer",
                           "roles_pointer", "required_roles", "user_id_prefix", "cache_secs", "timeout_ms"},
    "backend": {"secret_file", "max_failures_per_minute", "listen"},
    "rate_limit": {"per_user", "per_ip", "upstream"},
    "rate_limit.per_user": {"per_minute", "burst"},
    "rate_limit.per_ip": {"per_minute", "burst", "ipv6_prefix"},
    "rate_limit.upstream": {"per_second", "burst"},
    "cache": {"enabled", "min_remaining_secs", "max_entries"},
    "redis": {"url", "on_unavailable", "timeout_ms", "replicas", "key_prefix", "cache_secret_file",
              "password_file", "ca_file", "cluster"},
    "telemetry": {"otlp_endpoint", "service_name", "sample_ratio"},
}


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.count = 0

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        self.count += 1
        try:
            result = fn()
        except AssertionError as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}", flush=True)
            return None
        except Exception as e:  # noqa: BLE001 - report any crash as a failure
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {str(e).strip()[:600]}", flush=True)
            return None
        print(f"PASS {name}", flush=True)
        return result


def load_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path in sorted(out):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in docs]


def lint(chart_dir: Path, values: dict[str, Any]) -> None:
    report = helm.lint(str(chart_dir), values=values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    assert not report.get("errors") and not problems, json.dumps(problems or report.get("errors"))[:800]


def kubernetes_validate(venv_bin: Path, path: Path, version: str) -> None:
    proc = subprocess.run(
        [str(venv_bin / "kubernetes-validate"), "--strict", "-k", version, str(path)],
        capture_output=True, text=True, check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    # A kind kubernetes-validate has no schema for is only a warning to it; to
    # us it is a failure (CRDs are split out before this and checked apart).
    assert proc.returncode == 0 and "WARN" not in output and "ERROR" not in output, output[:1200]


def strict_crd_schema(kind: str) -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator import v1

    schema = getattr(v1, kind).model_json_schema(by_alias=True, mode="validation")

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    return schema


def validate_crds(docs: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    for d in docs:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(d)]
        assert not errors, "; ".join(errors)[:800]


def validate_servicemonitors(docs: list[dict[str, Any]], schema: dict[str, Any]) -> None:
    validate_crds(docs, schema)
    for d in docs:
        eps = d["spec"]["endpoints"]
        assert [e.get("port") for e in eps] == ["metrics"], "ServiceMonitor must scrape the metrics port only"


# --- assertions on rendered objects -------------------------------------------------------------

def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The broker's config ConfigMap (not the dashboard's)."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and "config.json" in (d.get("data") or {})]
    assert len(found) == 1, f"expected one config ConfigMap, found {len(found)}"
    return found[0]


def broker_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = config_map(docs)
    return json.loads(cm["data"]["config.json"])


def assert_security(docs: list[dict[str, Any]], uid: int | None = UID, automount: bool = False) -> None:
    """uid None: OpenShift's restricted SCC picks the ids, so none may be rendered. automount: the
    ServiceAccount token only where serviceAccount.automount asks for it."""
    spec = pod_spec(docs)
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, "pod runAsNonRoot"
    ids = {k: psc.get(k) for k in ("runAsUser", "runAsGroup", "fsGroup")}
    assert ids == dict.fromkeys(ids, uid), f"pod uid/gid/fsGroup must be {uid}: {psc}"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is automount, f"pod automountServiceAccountToken must be {automount}"
    for sa in [d for d in docs if d["kind"] == "ServiceAccount"]:
        assert sa.get("automountServiceAccountToken") is automount, "ServiceAccount automountServiceAccountToken"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), "no host namespaces"
    assert_security_containers(spec, uid=uid)


def assert_security_containers(spec: dict[str, Any], names: set[str] | None = None, uid: int | None = UID) -> None:
    for c in spec["containers"] + spec.get("initContainers", []):
        if names is not None and c["name"] not in names:
            continue
        sc = c.get("securityContext", {})
        want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
        for k, v in want.items():
            assert sc.get(k) is v, f"container {c['name']}: {k} must be {v}"
        assert sc.get("runAsUser") == uid and sc.get("runAsGroup") == uid, f"container {c['name']} uid/gid {sc}"
        assert sc.get("privileged") in (None, False), "not privileged"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"container {c['name']}: drop ALL"
        assert not sc.get("capabilities", {}).get("add"), f"container {c['name']}: no added capabilities"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp"
        assert "resources" in c and c["resources"].get("requests") and c["resources"].get("limits"), \
            "container resources (requests and limits)"


def assert_api_key_is_a_file(docs: list[dict[str, Any]], values: dict[str, Any], chart_values: dict[str, Any]) -> None:
    spec = pod_spec(docs)
    key_name = (values.get("secret", {}).get("keys", {}) or {}).get("apiKey") \
        or chart_values["secret"]["keys"]["apiKey"]
    secret_name = values.get("secret", {}).get("existingSecret") or f"{RELEASE}-intellia-token-broker"
    # 1. no environment variable carries it
    for c in spec["containers"] + spec.get("initContainers", []):
        for src in c.get("envFrom", []):
            assert (src.get("secretRef") or {}).get("name") != secret_name, \
                f"container {c['name']}: envFrom of {secret_name} would put the API key in the environment"
        for e in c.get("env", []):
            assert not re.search(r"API_?KEY", e["name"], re.I), f"env {e['name']} looks like an API key"
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert not (ref.get("name") == secret_name and ref.get("key") == key_name), \
                    f"env {e['name']} reads the API key from the Secret"
                assert ref.get("key") == (values.get("redisUrlSecret", {}) or {}).get("key", "redis-url") and \
                    e["name"] == "BROKER__REDIS__URL", f"unexpected secret env {e['name']}"
    # 2. it is mounted as a file, from the Secret, as a directory (no subPath: rotation reaches the pod)
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == API_KEY_DIR]
    assert len(mounts) == 1 and "subPath" not in mounts[0] and mounts[0].get("readOnly") is True, \
        f"{API_KEY_DIR} must be one read-only directory mount"
    vol = vols[mounts[0]["name"]]["secret"]
    assert vol["secretName"] == secret_name, f"api key volume from {vol['secretName']}, want {secret_name}"
    assert vol["items"] == [{"key": key_name, "path": "api-key"}], f"api key item: {vol['items']}"
    assert vol.get("defaultMode") == 0o440, "secret files mode 0440"
    for m in spec["containers"][0]["volumeMounts"]:
        assert "subPath" not in m, f"{m['mountPath']}: subPath mounts never see Secret/ConfigMap updates"
    # 3. the broker is told that path
    conf = broker_config(docs)
    assert conf["intellia"]["api_key_file"] == API_KEY_FILE and "api_key_env" not in conf["intellia"], \
        "config must read the key from the mounted file"
    # 4. a plaintext secret value never appears outside a Secret
    given = (values.get("secret", {}).get("values", {}) or {})
    plain = [v for v in given.values() if v and isinstance(v, str)]
    plain += [v for v in (given.get("hs256Secrets") or {}).values() if v]
    for d in docs:
        if d["kind"] == "Secret":
            for k, v in (d.get("data") or {}).items():
                assert base64.b64decode(v).decode() in plain + [""], f"Secret key {k} holds an unexpected value"
            continue
        text = dump([d])
        for p in plain:
            assert p not in text and base64.b64encode(p.encode()).decode() not in text, \
                f"a secret value appears in {d['kind']}/{d['metadata']['name']}"


def assert_config_mount(docs: list[dict[str, Any]]) -> None:
    c = pod_spec(docs)["containers"][0]
    assert c["args"] == ["serve", "--config", f"{CONFIG_DIR}/config.json"], f"args {c['args']}"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BROKER_CONFIG"] == f"{CONFIG_DIR}/config.json", f"BROKER_CONFIG {env['BROKER_CONFIG']}"
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True, "config dir mount"
    vol = {v["name"]: v for v in pod_spec(docs)["volumes"]}[mounts[0]["name"]]
    assert vol["configMap"]["name"] == config_map(docs)["metadata"]["name"], "config from the ConfigMap"


def check_design_keys(conf: dict[str, Any]) -> None:
    """Every section and key of a broker config is the broker knows."""

    def walk(table: dict[str, Any], path: str) -> None:
        allowed = DESIGN_KEYS.get(path)
        assert allowed is not None, f"[{path}] is not a configuration-reference section"
        extra = set(table) - allowed
        assert not extra, f"[{path}] has keys the broker does not know: {sorted(extra)}"
        for k, v in table.items():
            sub = f"{path}.{k}" if path else k
            if isinstance(v, dict):
                walk(v, sub)
            elif k in ("jwt", "endpoint") and path == "session":
                assert isinstance(v, list), f"session.{k} must be an array of tables"
                for item in v:
                    walk(item, f"session.{k}[]")

    for section, table in conf.items():
        assert isinstance(table, dict), f"top-level key {section} must be a table"
        walk(table, section)


def wants_ipv6(values: dict[str, Any]) -> bool:
    svc = values.get("service") or {}
    return "IPv6" in (svc.get("ipFamilies") or []) or svc.get("ipFamilyPolicy") not in (None, "", "SingleStack")


def assert_config_keys(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    conf = broker_config(docs)
    check_design_keys(conf)
    srv = conf["server"]
    host = "[::]" if wants_ipv6(values) else "0.0.0.0"
    assert srv["listen"] == f"{host}:8080", f"listen {srv['listen']}, want {host}:8080"
    if "admin_listen" in srv:
        assert srv["admin_listen"] == f"{host}:9091", f"admin_listen {srv['admin_listen']}"
    for k in ("max_body_bytes", "shutdown_grace_secs"):
        assert isinstance(srv[k], int) and not isinstance(srv[k], bool), f"server.{k} must be a JSON integer"


def assert_probes_and_ports(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    metrics = (values.get("metrics") or {}).get("enabled", True)
    backend = bool((values.get("backendRoute") or {}).get("enabled"))
    c = pod_spec(docs)["containers"][0]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "liveness /healthz on http"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, "readiness /readyz on http"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    want = {"http": 8080} | ({"metrics": 9091} if metrics else {}) | ({"backend": 8081} if backend else {})
    assert ports == want, f"container ports {ports}"
    svc = one(docs, "Service")
    sports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    svc_values = values.get("service") or {}
    http_port = svc_values.get("port", 8080)
    want_s = {"http": (http_port, "http")} | ({"metrics": (svc_values.get("metricsPort", 9091), "metrics")} if metrics else {}) \
        | ({"backend": (svc_values.get("backendPort", 8081), "backend")} if backend else {})
    assert sports == want_s, f"service ports {sports}"
    conf = broker_config(docs)
    assert ("admin_listen" in conf["server"]) == metrics, "admin_listen present iff metrics.enabled"
    host = "[::]" if wants_ipv6(values) else "0.0.0.0"
    if backend:
        # On the pod's interfaces (other pods call it), on its own port, never the public one.
        assert conf["backend"].get("listen") == f"{host}:8081", f"[backend] listen {conf['backend']}"
    else:
        assert "backend" not in conf, "no [backend] without backendRoute.enabled"
    for ing in [d for d in docs if d["kind"] == "Ingress"]:
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["backend"]["service"]["port"] == {"name": "http"}, "Ingress must target the http port only"
    for route in [d for d in docs if d["kind"] == "HTTPRoute"]:
        for rule in route["spec"]["rules"]:
            assert rule["backendRefs"] == [{"name": svc["metadata"]["name"], "port": http_port}], \
                f"HTTPRoute must target the Service's http port only: {rule['backendRefs']}"
    assert not ([d for d in docs if d["kind"] == "Ingress"] and [d for d in docs if d["kind"] == "HTTPRoute"]), \
        "an Ingress and an HTTPRoute both"


def assert_checksums(chart: helm.Chart, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    ann = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    for k in ("checksum/config", "checksum/secret"):
        assert re.fullmatch(r"[0-9a-f]{64}", str(ann.get(k, ""))), f"pod annotation {k} missing"
    # a config change and a secret change each roll the pods
    changed = json.loads(json.dumps(values))
    changed.setdefault("config", {}).setdefault("server", {})["max_body_bytes"] = 8191
    ann2 = one(render(chart, changed), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann2["checksum/config"] != ann["checksum/config"], "a config change must change checksum/config"
    changed = json.loads(json.dumps(values))
    sec = changed.setdefault("secret", {})
    if sec.get("existingSecret"):
        sec["existingSecret"] = sec["existingSecret"] + "-v2"
    else:
        sec.setdefault("values", {})["apiKey"] = "rotated-test-key"
    ann3 = one(render(chart, changed), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann3["checksum/secret"] != ann["checksum/secret"], "a secret change must change checksum/secret"


def assert_grace(docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(docs)
    grace = broker_config(docs)["server"]["shutdown_grace_secs"]
    pre = ((spec["containers"][0].get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    tgps = spec["terminationGracePeriodSeconds"]
    assert tgps > pre + grace, f"terminationGracePeriodSeconds {tgps} <= preStop {pre} + shutdown_grace_secs {grace}"


def assert_spread(docs: list[dict[str, Any]]) -> None:
    tsc = pod_spec(docs).get("topologySpreadConstraints") or []
    assert tsc, "topologySpreadConstraints"
    sel = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    for t in tsc:
        assert t["labelSelector"]["matchLabels"] == sel, "spread constraint selects this release's pods"


def assert_production(docs: list[dict[str, Any]]) -> None:
    assert "lifecycle" not in pod_spec(docs)["containers"][0], "preStopSleepSeconds 0: no hook"
    ks = {d["kind"] for d in docs}
    for k in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress", "ServiceMonitor"):
        assert k in ks, f"{k} missing"
    assert "Secret" not in ks, "existingSecret: the chart must not create a Secret"
    assert "replicas" not in one(docs, "Deployment")["spec"], "with the HPA the Deployment leaves replicas alone"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2", "HPA autoscaling/v2"
    env = {e["name"]: e for e in pod_spec(docs)["containers"][0]["env"]}
    ref = env["BROKER__REDIS__URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "intellia-token-broker", "key": "redis-url"}, f"redis url secretKeyRef {ref}"
    conf = broker_config(docs)
    # url from the Secret; replicas defaulted by the chart to the HPA's maxReplicas
    want_redis = {"on_unavailable": "local", "timeout_ms": 50, "key_prefix": "itb:web",
                  "replicas": hpa["spec"]["maxReplicas"]}
    assert conf["redis"] == want_redis, f"[redis] {conf['redis']}, want {want_redis}"
    assert "cache_secret_file" not in conf["redis"], "no cache secret file unless redisCacheSecret.enabled"
    assert {k: conf["intellia"].get(k) for k in ("breaker_failures", "breaker_open_secs")} == \
        {"breaker_failures": 5, "breaker_open_secs": 15}, f"breaker keys {conf['intellia']}"
    np = one(docs, "NetworkPolicy")["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}, "policyTypes"
    ing_ports = [p["port"] for r in np["ingress"] for p in r["ports"]]
    assert ing_ports == ["http", "metrics"], f"ingress ports {ing_ports}"
    metrics_rule = np["ingress"][1]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == \
        {"kubernetes.io/metadata.name": "monitoring"}, "metrics only from the monitoring namespace"
    eg_ports = sorted({p["port"] for r in np["egress"] for p in r["ports"]})
    assert eg_ports == [53, 443, 6379], f"egress ports {eg_ports}: only DNS, Intellia/IdP and Redis"
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2 and pdb["minAvailable"] < hpa["spec"]["minReplicas"], "PDB below HPA floor"


def assert_all_features(docs: list[dict[str, Any]]) -> None:
    conf = broker_config(docs)
    assert conf["backend"] == {"secret_file": "/var/run/secrets/broker/backend-secret", "listen": "0.0.0.0:8081"}, \
        f"[backend] {conf.get('backend')}"
    assert conf["session"]["introspection"]["client_secret_file"] == "/var/run/secrets/broker/introspection-secret"
    assert isinstance(conf["session"]["jwt"], list) and len(conf["session"]["jwt"]) == 2, "[[session.jwt]] x2"
    assert_session_keys(conf["session"])
    assert "per_ip" not in conf["rate_limit"], "per_ip: null leaves the section out"
    want_redis = {"url": "redis://redis.example.test:6379", "on_unavailable": "deny", "timeout_ms": 200,
                  "replicas": 3, "key_prefix": "itb-test",
                  "cache_secret_file": "/var/run/secrets/broker/redis-cache-secret"}
    assert conf["redis"] == want_redis, f"[redis] {conf['redis']}, want {want_redis}"
    assert conf["intellia"]["breaker_failures"] == 3 and conf["intellia"]["breaker_open_secs"] == 30, \
        f"breaker keys {conf['intellia']}"
    spec = pod_spec(docs)
    vols = {v["name"]: v for v in spec["volumes"]}
    items = {i["path"] for i in vols["broker-secrets"]["secret"]["items"]}
    assert items == {"backend-secret", "hs256-secret", "introspection-secret", "redis-cache-secret"}, \
        f"broker secret files {items}"
    assert spec["terminationGracePeriodSeconds"] == 45, "explicit grace period kept"
    assert spec["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}, "preStop sleep hook"
    assert spec["serviceAccountName"] == "web-backend" and \
        not [d for d in docs if d["kind"] == "ServiceAccount"], "serviceAccount.create false"


def assert_session_keys(session: dict[str, Any]) -> None:
    """all-features sets every optional session key: each reaches the config with its JSON type."""

    def exact(got: Any, want: Any, where: str) -> None:
        # type() too: the config must not turn 0 into 0.0, true into "true", or 60 into true
        assert got == want and type(got) is type(want), f"{where} = {got!r}, want {want!r}"

    modern, legacy = session["jwt"]
    exact(modern.get("required_claims"), ["groups=chat-users", "tenant=acme"], "session.jwt[0].required_claims")
    exact(modern.get("userinfo"), True, "session.jwt[0].userinfo")
    assert "userinfo_url" not in modern, "session.jwt[0]: userinfo_url comes from discovery"
    exact(legacy.get("userinfo"), True, "session.jwt[1].userinfo")
    exact(legacy.get("userinfo_url"), "https://legacy.example.test/userinfo", "session.jwt[1].userinfo_url")
    exact(legacy.get("user_id_prefix"), "legacy:", "session.jwt[1].user_id_prefix")
    assert "required_claims" not in legacy, "session.jwt[1]: no required_claims unless set"
    want = {
        "url": "https://auth.example.test/oauth/v2/introspect",
        "client_id": "broker",
        "client_secret_file": "/var/run/secrets/broker/introspection-secret",
        "issuer": "https://auth.example.test",
        "audience": "123456789012345678",
        "user_id_claim": "sub",
        "email_claim": "email",
        "name_claim": "preferred_username",
        "user_id_prefix": "acme:",
        "required_claims": ["urn:zitadel:iam:org:id=987654321"],
        "leeway_secs": 60,
        "cache_ttl_secs": 120,
        "negative_cache_secs": 0,
    }
    intro = session["introspection"]
    assert set(intro) == set(want), f"[session.introspection] keys {sorted(intro)}, want {sorted(want)}"
    for k, v in want.items():
        exact(intro[k], v, f"session.introspection.{k}")
    want = {
        "url": "https://www.example.test/api/me",
        "cookies": ["sessionid"],
        "user_id_pointer": "/id",
        "email_pointer": "/email",
        "name_pointer": "/name",
        "roles_pointer": "/groups",
        "required_roles": ["chat"],
        "user_id_prefix": "www:",
        "cache_secs": 0,
        "timeout_ms": 1500,
    }
    [endpoint] = session["endpoint"]
    assert set(endpoint) == set(want), f"[[session.endpoint]] keys {sorted(endpoint)}, want {sorted(want)}"
    for k, v in want.items():
        exact(endpoint[k], v, f"session.endpoint[0].{k}")


# --- NetworkPolicy, alerts, dashboard -----------------------------------------------------------

# Addresses no "any public address" egress block may reach: cluster-internal and
# private ranges, shared address space (CGNAT, 100.64.0.0/10), link-local and the
# cloud metadata endpoints (AWS/GCP/Azure 169.254.169.254, AWS fd00:ec2::254, GCP
# fd20:ce::254), IPv6 link-local and unique-local.
FORBIDDEN_EGRESS = ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "100.127.255.254",
                    "169.254.169.254", "169.254.20.10", "fd00:ec2::254", "fd20:ce::254", "fe80::1",
                    "fd12:3456::1",
                    # the IPv4 ones written as IPv6: IPv4-mapped, and NAT64 (RFC 6052, RFC 8215)
                    "::ffff:10.1.2.3", "::ffff:169.254.169.254", "64:ff9b::10.1.2.3", "64:ff9b::172.16.0.1",
                    "64:ff9b::192.168.1.1", "64:ff9b::100.64.0.1", "64:ff9b::169.254.169.254",
                    "64:ff9b:1::10.1.2.3"]
PUBLIC_EGRESS = ["203.0.113.7", "8.8.8.8", "2001:db8::1", "2606:4700::1111", "64:ff9b::8.8.8.8"]


def ip_blocks(np: dict[str, Any]) -> list[tuple[dict[str, Any], list[Any]]]:
    return [(p["ipBlock"], r.get("ports", [])) for r in np["egress"] for p in r.get("to", []) if "ipBlock" in p]


def reaches(block: dict[str, Any], addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if a.version != net.version or a not in net:
        return False
    return not any(a in ipaddress.ip_network(e, strict=False) for e in block.get("except", []))


def assert_networkpolicy_egress(docs: list[dict[str, Any]], default: bool) -> None:
    """Every wide ipBlock excludes private, CGNAT, link-local and metadata ranges, IPv4 and IPv6.
    With the default values: the policy is on, DNS goes to kube-dns on UDP+TCP 53, and the only
    other rule is public IPv4 and IPv6 on 443."""
    nps = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if default:
        assert len(nps) == 1, "NetworkPolicy must be on by default"
    for np in (d["spec"] for d in nps):
        for block, _ in ip_blocks(np):
            if ipaddress.ip_network(block["cidr"], strict=False).prefixlen != 0:
                continue  # a narrower block names a peer on purpose (in-cluster Redis, IdP)
            bad = [a for a in FORBIDDEN_EGRESS if reaches(block, a)]
            assert not bad, f"egress ipBlock {block} reaches {bad}"
        for rule in np["egress"]:
            assert rule.get("ports"), f"egress rule without ports (any port): {rule}"
        if default:
            dns = np["egress"][0]
            assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)], \
                f"DNS rule ports {dns['ports']}"
            # The cluster DNS pods by their label, in whatever namespace they run: no namespace name assumed.
            assert dns["to"] == [{"namespaceSelector": {},
                                  "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], f"DNS peers {dns['to']}"
            assert len(np["egress"]) == 2, f"default egress: DNS and public 443 only, got {len(np['egress'])} rules"
            blocks = ip_blocks(np)
            assert {b["cidr"] for b, _ in blocks} == {"0.0.0.0/0", "::/0"}, "public IPv4 and IPv6"
            for b, ports in blocks:
                assert ports == [{"port": 443, "protocol": "TCP"}], f"{b['cidr']}: only TCP 443, got {ports}"
            for a in PUBLIC_EGRESS:
                assert any(reaches(b, a) for b, _ in blocks), f"public address {a} not reachable on 443"


def promtool_check_rules(groups: list[dict[str, Any]], path: Path) -> str:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    promtool = shutil.which("promtool")
    if not promtool and os.environ.get("DEPLOY_NO_PROMTOOL") == "1":
        return "promtool unavailable (run.sh said SKIP): syntax not checked"
    assert promtool, "promtool not found (Debian package prometheus; run.sh installs it)"
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, out[:1200]
    return out.splitlines()[-1] if out else ""


def assert_known_metrics(exprs: dict[str, str], known: set[str]) -> int:
    unknown = {}
    for where, expr in exprs.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        missing = sorted(names - known)
        if missing:
            unknown[where] = missing
    assert not unknown, f"metrics the broker does not expose: {unknown}"
    return len(exprs)


# Every alert the chart renders (TokenBrokerJwksStale with a JWKS issuer, TokenBrokerRedisDown with
# Redis) and the ones over a ratio of requests, which must need a minimum request rate.
ALERTS = {"TokenBrokerDown", "TokenBrokerAbsent", "TokenBrokerErrors", "TokenBrokerUpstreamErrors",
          "TokenBrokerCircuitOpen", "TokenBrokerSecretStale", "TokenBrokerSlow", "TokenBrokerNotReady",
          "TokenBrokerTraceExportFailing", "TokenBrokerJwksStale", "TokenBrokerRedisDown"}
RATIO_ALERTS = {"TokenBrokerErrors", "TokenBrokerUpstreamErrors", "TokenBrokerSlow"}
# What tests/deploy/alerts.test.yaml was written for, over ci/managed-services-values.yaml.
ALERT_TEST_VALUES = {"prometheusRule": {"runbookBaseUrl": "https://runbooks.example.test/itb", "thresholds": {
    "errorRatio": 0.05, "upstreamErrorRatio": 0.1, "minRequestsPerSecond": 0.1, "p99LatencySeconds": 1,
    "jwksStaleSeconds": 3600, "for": "5m"}}}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def assert_alerts_route(docs: list[dict[str, Any]], values: dict[str, Any], troubleshooting: Path) -> str:
    """Every built-in alert keeps `namespace` (and `pod` when its summary names one), carries
    summary, description and a runbook_url whose anchor is a heading of docs/troubleshooting.md,
    and a ratio alert needs a minimum request rate. The operator's `additionalRules` are theirs
    to write (their runbooks are not ours), so they are only counted."""
    anchors = {github_anchor(line.lstrip("#")) for line in troubleshooting.read_text().splitlines()
               if line.startswith("#")}
    own = [r for r in (values.get("prometheusRule") or {}).get("additionalRules") or []]
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"] if r not in own]
    for rule in rules:
        name, expr, ann = rule["alert"], rule["expr"], rule.get("annotations") or {}
        assert name in ALERTS, f"{name}: an alert this check does not know"
        for key in ("summary", "description", "runbook_url"):
            assert str(ann.get(key, "")).strip(), f"{name}: no {key}"
        url, _, anchor = ann["runbook_url"].partition("#")
        assert url.startswith("http") and anchor in anchors, f"{name}: runbook anchor #{anchor} not in {troubleshooting.name}"
        groupings = re.findall(r"\bby \(([^)]*)\)", expr)
        for labels in groupings:
            names = {label.strip() for label in labels.split(",")}
            assert "namespace" in names, f"{name}: `by ({labels})` drops namespace"
            if "$labels.pod" in ann["summary"]:
                assert "pod" in names, f"{name}: the summary names a pod that `by ({labels})` drops"
        if not groupings:
            assert 'namespace="' in expr, f"{name}: no namespace in {expr!r}"
        if name in RATIO_ALERTS:
            assert re.search(r"\n\s*and( on \([^)]*\))?\n\s*sum by \([^)]*\) \(rate\([^\n]*\) > [0-9.]+\s*$", expr), \
                f"{name}: a ratio alert without a minimum request rate: {expr!r}"
    extra = f" (and {len(own)} rule(s) of the operator's)" if own else ""
    return f"{len(rules)} alerts route (namespace, pod), link their runbook, ratios need traffic{extra}"


def promtool_test_rules(chart: helm.Chart, values: dict[str, Any], test_file: Path, out: Path) -> str:
    """`promtool test rules` on tests/deploy/alerts.test.yaml against the rules rendered for it; every
    alert has a case that fires it and one that must not."""
    docs = render(chart, merged(values, ALERT_TEST_VALUES))
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    rendered = {r["alert"] for g in groups for r in g["rules"]}
    assert rendered == ALERTS, f"rendered alerts {sorted(rendered)}"
    tests = yaml.safe_load(test_file.read_text())
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires >= ALERTS and quiet >= ALERTS, \
        f"untested: fires {sorted(ALERTS - fires)}, stays quiet {sorted(ALERTS - quiet)}"
    (out / tests["rule_files"][0]).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(test_file, out / test_file.name)
    promtool = shutil.which("promtool")
    if not promtool and os.environ.get("DEPLOY_NO_PROMTOOL") == "1":
        return "promtool unavailable (run.sh said SKIP): alert unit tests not run"
    assert promtool, "promtool not found (Debian package prometheus; run.sh installs it)"
    proc = subprocess.run([promtool, "test", "rules", test_file.name], cwd=out, capture_output=True, text=True,
                          check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, output[-3000:]
    return f"{len(tests['tests'])} promtool test groups, {len(cases)} cases over {len(ALERTS)} alerts: SUCCESS"


def rule_exprs(docs: list[dict[str, Any]]) -> dict[str, str]:
    pr = one(docs, "PrometheusRule")
    return {f"{'alert' if 'alert' in r else 'record'} {r.get('alert') or r.get('record')}": r["expr"]
            for g in pr["spec"]["groups"] for r in g["rules"]}


GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "${__rate_interval}": "5m", "${__interval}": "1m", "${__range}": "1h"}


def dashboard_exprs(dash: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of a dashboard (panels, rows' panels, query variables), with
    Grafana's interval variables replaced by durations."""
    exprs: dict[str, str] = {}

    def panels(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            panels(p.get("panels", []))
            for t in p.get("targets", []):
                exprs[f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}"] = t["expr"]

    panels(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q)
            assert m, f"variable {v['name']}: only label_values(selector, label) queries are checked: {q!r}"
            exprs[f"variable {v['name']}"] = m.group(1)
    for k, e in exprs.items():
        for var, dur in GRAFANA_VARS.items():
            e = e.replace(var, dur)
        exprs[k] = e
    return exprs


def assert_dashboard_file(path: Path) -> dict[str, Any]:
    dash = json.loads(path.read_text())
    assert dash.get("uid") and dash.get("title"), "uid and title"
    ps = dash["panels"]
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), "panel ids unique"
    for p in ps:
        assert p.get("targets") and p.get("gridPos"), f"panel {p.get('title')}: targets and gridPos"
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']}: the datasource variable"
    text = json.dumps(dash)
    # what the dashboard must show (issue 14)
    for want in ("sum by (code) (rate(broker_requests_total", "histogram_quantile(0.5, sum by (le, route)",
                 "histogram_quantile(0.9, sum by (le, route)", "histogram_quantile(0.99, sum by (le, route)",
                 "broker_cache_requests_total{", "broker_upstream_requests_total{", "broker_rate_limited_total{",
                 "broker_redis_up{"):
        assert want in text, f"dashboard lacks {want!r}"
    return dash


def assert_rules_and_dashboard(docs: list[dict[str, Any]], values: dict[str, Any], chart_dir: Path,
                               known: set[str], out: Path, name: str) -> str:
    notes: list[str] = []
    errors: list[str] = []
    if (values.get("prometheusRule") or {}).get("enabled"):
        exprs = rule_exprs(docs)
        notes.append(promtool_check_rules(one(docs, "PrometheusRule")["spec"]["groups"], out / f"{name}.rules.yaml"))
        try:
            notes.append(f"{assert_known_metrics(exprs, known)} alert expressions")
        except AssertionError as e:
            errors.append(f"alerts: {e}")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    if (values.get("grafanaDashboard") or {}).get("enabled"):
        assert len(cms) == 1, "one dashboard ConfigMap"
        cm = cms[0]
        want_labels = (values["grafanaDashboard"].get("labels") or {"grafana_dashboard": "1"})
        for k, v in want_labels.items():
            assert cm["metadata"]["labels"].get(k) == v, f"dashboard label {k}={v!r}"
        text = cm["data"]["intellia-token-broker.json"]
        shipped = (chart_dir / "dashboards" / "intellia-token-broker.json").read_text()
        assert json.loads(text) == json.loads(shipped), "the ConfigMap carries the chart's dashboard file"
        exprs = dashboard_exprs(json.loads(text))
        groups = [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e}
                                                   for i, e in enumerate(exprs.values())]}]
        notes.append("dashboard " + promtool_check_rules(groups, out / f"{name}.dashboard-exprs.yaml"))
        try:
            notes.append(f"{assert_known_metrics(exprs, known)} dashboard expressions")
        except AssertionError as e:
            errors.append(f"dashboard: {e}")
    else:
        assert not cms, "no dashboard ConfigMap unless grafanaDashboard.enabled"
    assert not errors, " | ".join(errors)
    return "; ".join(notes)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def assert_managed_services(chart: helm.Chart, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    conf = broker_config(docs)
    intro = conf["session"]["introspection"]
    assert intro["client_auth"] == "private_key_jwt", intro
    assert intro["client_key_file"] == "/var/run/secrets/broker/introspection-client-key.json", intro
    assert "client_secret_file" not in intro and "client_id" not in intro, f"private_key_jwt: {intro}"
    assert intro["roles_claim"] == "urn:zitadel:iam:org:project:roles" and intro["required_roles"] == ["chat-user"]
    kc = conf["session"]["jwt"][1]
    assert kc["roles_claim"] == "realm_access.roles" and kc["required_roles"] == ["chat-user", "staff"], kc
    want_redis = {"url": "rediss://broker@redis-cluster.example.test:6380", "cluster": True,
                  "ca_file": "/etc/redis-ca/ca.pem", "password_file": "/var/run/secrets/redis/password",
                  "on_unavailable": "local", "timeout_ms": 100, "replicas": 2}
    assert conf["redis"] == want_redis, f"[redis] {conf['redis']}"
    assert conf["telemetry"] == {"otlp_endpoint": "http://otel-collector.observability.svc:4318",
                                 "service_name": "intellia-token-broker-web", "sample_ratio": 0.25}, conf["telemetry"]
    assert conf["backend"]["max_failures_per_minute"] == 20, conf["backend"]
    assert conf["rate_limit"]["per_ip"]["ipv6_prefix"] == 56, conf["rate_limit"]
    srv = conf["server"]
    assert srv["shutdown_grace_secs"] == 5 and "drain_delay_secs" not in srv, \
        f"grace 5 alone: drain_delay_secs left to the broker (min(5, grace/2)), got {srv}"
    spec = pod_spec(docs)
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["broker-secrets"]["secret"]["items"] == [
        {"key": "backend-secret", "path": "backend-secret"},
        {"key": "introspection-client-key.json", "path": "introspection-client-key.json"}], \
        f"broker secret files {vols['broker-secrets']['secret']['items']}"
    assert vols["redis-ca"] == {"name": "redis-ca", "configMap": {"name": "redis-ca", "defaultMode": 0o444,
                                "items": [{"key": "ca.crt", "path": "ca.pem"}]}}, vols["redis-ca"]
    assert vols["redis-password"] == {"name": "redis-password", "secret": {
        "secretName": "redis-acl", "defaultMode": 0o440, "items": [{"key": "password", "path": "password"}]}}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    for path, vol in (("/etc/redis-ca", "redis-ca"), ("/var/run/secrets/redis", "redis-password")):
        assert mounts[path] == {"name": vol, "mountPath": path, "readOnly": True}, mounts.get(path)
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == "deployment.environment=test", "extraEnv passed through"
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"api-key", "backend-secret", "introspection-client-key.json"}, \
        f"chart Secret keys {sorted(secret['data'])}: no introspection-secret with private_key_jwt"
    pr = one(docs, "PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack", "prometheusRule.labels"
    alerts = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == ALERTS, sorted(alerts)
    for a in alerts.values():
        assert a["labels"]["team"] == "web" and a["labels"]["severity"] in ("critical", "warning"), a["labels"]
        assert 'job="broker-intellia-token-broker",namespace="web"' in a["expr"], f"{a['alert']}: selector"
    assert ") > 0.05\n" in alerts["TokenBrokerUpstreamErrors"]["expr"], "threshold from values"
    assert ") > 1.5\n" in alerts["TokenBrokerSlow"]["expr"], "p99 threshold from values"
    assert alerts["TokenBrokerJwksStale"]["expr"].rstrip().endswith("> 3600"), "JWKS threshold from values"
    # rolled when a referenced Redis object changes
    ann = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    for change in ({"redis": {"ca": {"configMap": "redis-ca-v2"}}},
                   {"redis": {"passwordSecret": {"name": "redis-acl-v2", "key": "password"}}},
                   {"secret": {"values": {"introspectionClientKey": '{"type":"application","keyId":"rotated"}'}}}):
        changed = merged(values, change)
        ann2 = one(render(chart, changed), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert ann2["checksum/secret"] != ann["checksum/secret"], f"checksum/secret unchanged by {change}"


def assert_openshift(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    for spec in [pod_spec(docs)] + [h["spec"] for h in hooks if h["kind"] == "Pod"]:
        text = json.dumps(spec)
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            assert f'"{key}"' not in text, f"{key} rendered: the restricted SCC must choose it"
        assert spec["securityContext"]["runAsNonRoot"] is True, spec["securityContext"]


def assert_extras(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    deploy = one(docs, "Deployment")
    assert deploy["metadata"]["annotations"] == {"reloader.stakater.com/auto": "true"}, \
        f"Deployment annotations {deploy['metadata']['annotations']}"
    pod_ann = deploy["spec"]["template"]["metadata"]["annotations"]
    assert "reloader.stakater.com/auto" not in pod_ann and pod_ann["team"] == "web", f"pod annotations {pod_ann}"
    spec = pod_spec(docs)
    c = spec["containers"][0]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["ca-bundle"] == {"name": "ca-bundle", "configMap": {"name": "corporate-ca", "items": [
        {"key": "ca-certificates.crt", "path": "ca-certificates.crt"}]}}, vols.get("ca-bundle")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/ssl/corporate"] == {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate",
                                            "readOnly": True}, mounts.get("/etc/ssl/corporate")
    assert mounts[API_KEY_DIR]["name"] == "api-key" and mounts[CONFIG_DIR]["name"] == "config", "chart mounts kept"
    env = {e["name"]: e for e in c["env"]}
    assert env["SSL_CERT_FILE"]["value"] == "/etc/ssl/corporate/ca-certificates.crt", "extraEnv"
    assert {"RUST_LOG", "BROKER_CONFIG"} <= set(env), "the chart's env kept beside extraEnv"
    assert c["envFrom"] == [{"configMapRef": {"name": "broker-otel"}},
                            {"prefix": "EXTRA_", "secretRef": {"name": "broker-extra", "optional": True}}], c["envFrom"]
    assert c["startupProbe"] == {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2,
                                 "timeoutSeconds": 2, "failureThreshold": 30}, c.get("startupProbe")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["behavior"] == values["autoscaling"]["behavior"], f"HPA behavior {hpa.get('behavior')}"
    doctor = [h for h in hooks if h["metadata"]["name"].endswith("-test-doctor")][0]["spec"]
    assert {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True} in \
        doctor["containers"][0]["volumeMounts"], "doctor trusts the same CA bundle"


def assert_no_extras(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    deploy = one(docs, "Deployment")
    c = pod_spec(docs)["containers"][0]
    assert not deploy["metadata"]["annotations"], "no Deployment annotations unless asked"
    for key in ("startupProbe", "envFrom"):
        assert key not in c, f"{key} rendered without being asked for"
    assert {v["name"] for v in pod_spec(docs)["volumes"]} == {"config", "api-key"}, "only the chart's volumes"
    svc = one(docs, "Service")["spec"]
    assert "ipFamilyPolicy" not in svc and "ipFamilies" not in svc, "the cluster's default families"


def assert_ipv6(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    svc = one(docs, "Service")["spec"]
    want = values["service"]
    assert svc.get("ipFamilyPolicy") == want.get("ipFamilyPolicy") and svc["ipFamilies"] == want["ipFamilies"], \
        f"Service families {svc.get('ipFamilyPolicy')} {svc.get('ipFamilies')}"
    srv = broker_config(docs)["server"]
    assert srv["listen"] == "[::]:8080" and srv["admin_listen"] == "[::]:9091", f"IPv6 wildcard: {srv}"
    proxies = srv["trusted_proxies"]
    assert {ipaddress.ip_network(p).version for p in proxies} == {4, 6}, f"trusted_proxies of both families {proxies}"


def assert_dual_stack_ingress(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    assert_ipv6(docs, hooks, values)
    ing = one(docs, "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "broker.example.com", ing["spec"]["rules"]
    http = one(docs, "NetworkPolicy")["spec"]["ingress"][0]
    cidrs = {p["ipBlock"]["cidr"] for p in http["from"] if "ipBlock" in p}
    assert {ipaddress.ip_network(c).version for c in cidrs} == {4, 6}, f"http ingress ipBlocks {cidrs}"


def assert_global(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    assert values.get("global"), "the values file sets global"
    assert broker_config(docs)["intellia"]["organization_id"] == "org-456", "the chart's own values still apply"


def pod_specs(docs: list[dict[str, Any]], hooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [pod_spec(docs)] + [h["spec"] for h in hooks if h["kind"] == "Pod"]


def assert_private_registry(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    want_image = ("registry.corp.example:5000/ghcr-mirror/intellia/intellia-token-broker@"
                  "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    for spec in pod_specs(docs, hooks):
        assert [c["image"] for c in spec["containers"]] == [want_image] * len(spec["containers"]), \
            f"global.imageRegistry + repository @ digest: {[c['image'] for c in spec['containers']]}"
        assert spec["imagePullSecrets"] == [{"name": "corp-registry"}, {"name": "shared-pull"}, {"name": "broker-pull"}], \
            f"global then chart pull secrets, names or objects, no duplicate: {spec['imagePullSecrets']}"


def assert_extensions(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    for d in docs + hooks:
        labels, ann = d["metadata"].get("labels") or {}, d["metadata"].get("annotations") or {}
        if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "broker-shipper":
            continue  # an extra object: its own metadata
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-shipper"):
            continue
        assert labels.get("team") == "web" and labels.get("cost-center") == "4711", \
            f"{d['kind']}/{d['metadata']['name']}: commonLabels {labels}"
        assert ann.get("owner.example.com/contact") == "web-platform@example.com", \
            f"{d['kind']}/{d['metadata']['name']}: commonAnnotations {ann}"
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "web", "commonLabels on the pods"
    assert deploy["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "intellia-token-broker",
                                                        "app.kubernetes.io/instance": RELEASE}, "selector unchanged"
    assert deploy["spec"]["strategy"] == {"type": "Recreate"} and deploy["spec"]["revisionHistoryLimit"] == 2, \
        f"strategy/revisionHistoryLimit {deploy['spec'].get('strategy')} {deploy['spec'].get('revisionHistoryLimit')}"
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is True and one(docs, "ServiceAccount")["automountServiceAccountToken"] \
        is True, "serviceAccount.automount"
    assert [c["name"] for c in spec["containers"]] == ["broker", "log-shipper"], spec["containers"]
    assert spec["containers"][1]["env"] == [{"name": "SOURCE", "value": "broker-intellia-token-broker"}], \
        "extraContainers rendered with tpl"
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-vault"] and \
        spec["initContainers"][0]["args"] == ["--for", "broker-vault"], "initContainers rendered with tpl"
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "broker-intellia-token-broker-shipper"]
    assert cm and cm[0]["data"] == {"release": "broker"}, "extraObjects (an object) rendered with tpl"
    assert [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "broker-shipper"], \
        "extraObjects (a string) rendered with tpl"
    sm = one(docs, "ServiceMonitor")
    ep = sm["spec"]["endpoints"][0]
    assert sm["metadata"]["namespace"] == "monitoring-system" and sm["spec"]["namespaceSelector"] == \
        {"matchNames": [NAMESPACE]}, "ServiceMonitor in its own namespace, selecting the release's"
    sm_values = values["metrics"]["serviceMonitor"]
    assert ep["scheme"] == "https" and ep["tlsConfig"] == sm_values["tlsConfig"], ep
    assert ep["relabelings"] == sm_values["relabelings"] and ep["metricRelabelings"] == sm_values["metricRelabelings"], ep
    rules = {r.get("alert") or r.get("record"): r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "TokenBrokerSlow" not in rules and "TokenBrokerNotReady" not in rules, f"disabled rules left out: {sorted(rules)}"
    assert {"TokenBrokerUpstreamErrors", "TokenBrokerCircuitOpen", "TokenBrokerSecretStale"} <= set(rules), sorted(rules)
    assert rules["TokenBrokerTooManyLimited"]["annotations"]["summary"] == "{{ $labels.namespace }}: many requests are " \
        "rate limited", "additional rules as written (Prometheus templates untouched)"
    assert rules["broker:requests:rate5m"]["expr"].startswith("sum by (route)"), "a recording rule"


def assert_httproute(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    route = one(docs, "HTTPRoute")
    assert not [d for d in docs if d["kind"] == "Ingress"], "no Ingress beside the HTTPRoute"
    spec = route["spec"]
    v = values["httpRoute"]
    assert spec["parentRefs"] == v["parentRefs"] and spec["hostnames"] == v["hostnames"], spec
    assert spec["rules"] == [{"matches": v["matches"], "filters": v["filters"], "timeouts": v["timeouts"],
                              "backendRefs": [{"name": "broker-intellia-token-broker", "port": 8080}]}], spec["rules"]
    assert route["metadata"]["labels"]["gateway"] == "public" and \
        route["metadata"]["annotations"] == {"example.com/owner": "web"}, route["metadata"]
    http = one(docs, "NetworkPolicy")["spec"]["ingress"][0]
    assert http["from"][0] == values["networkPolicy"]["httpFrom"][0], "the Gateway's pods admitted"


def assert_openshift_dns(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    for np in [d for d in docs + hooks if d["kind"] == "NetworkPolicy"]:
        dns = np["spec"]["egress"][0]
        assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == \
            [(53, "TCP"), (53, "UDP"), (5353, "TCP"), (5353, "UDP")], f"DNS ports {dns['ports']}"
        assert dns["to"] == values["networkPolicy"]["egress"]["dnsTo"], f"DNS peers {dns['to']}"


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def assert_backend_port(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    svc = one(docs, "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["backend"] == {"name": "backend", "port": 18081, "targetPort": "backend", "protocol": "TCP",
                                "appProtocol": "http"}, ports.get("backend")
    np = one(docs, "NetworkPolicy")["spec"]
    rules = {r["ports"][0]["port"]: r for r in np["ingress"]}
    assert rules["backend"]["from"] == values["backendRoute"]["allowedFrom"], \
        f"backend port admits backendRoute.allowedFrom only: {rules['backend']}"
    assert "from" not in rules["http"], "the public port stays open to any source (httpFrom empty)"
    ing = one(docs, "Ingress")
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["backend"]["service"]["port"] == {"name": "http"}, p
    # A collector reached through extraEnv: the policy lets it through on its gRPC port.
    otlp = [r for r in np["egress"] if any(p["port"] == 4317 for p in r["ports"])]
    assert otlp and otlp[0]["to"] == values["networkPolicy"]["egress"]["otlp"]["to"], np["egress"]


def assert_hs256_per_issuer(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """Each HS256 issuer reads a file of its own, from a Secret key of its own, with a value of its own."""
    files = [j["hs256_secret_file"] for j in broker_config(docs)["session"]["jwt"]]
    assert files == ["/var/run/secrets/broker/hs256-secret", "/var/run/secrets/broker/hs256/shop-hs256"], files
    spec = pod_spec(docs)
    items = {v["name"]: v for v in spec["volumes"]}["broker-secrets"]["secret"]["items"]
    assert {(i["key"], i["path"]) for i in items} == {("hs256-secret", "hs256-secret"),
                                                      ("shop-hs256", "hs256/shop-hs256")}, items
    data = one(docs, "Secret")["data"]
    hs = [base64.b64decode(data[k]).decode() for k in ("hs256-secret", "shop-hs256")]
    assert hs == [values["secret"]["values"]["hs256Secret"], values["secret"]["values"]["hs256Secrets"]["shop-hs256"]] \
        and hs[0] != hs[1], "two values, one per issuer"


SET_CHECKS: dict[str, tuple[str, Callable[..., None]]] = {
    "default": ("no Deployment annotations, startupProbe, envFrom, extra volumes or IP families unless asked",
                assert_no_extras),
    "openshift": ("no runAsUser/runAsGroup/fsGroup anywhere (broker and test pods), still runAsNonRoot",
                  assert_openshift),
    "extras-ca-bundle": ("CA bundle volume and mount from a ConfigMap, SSL_CERT_FILE, envFrom, Deployment "
                         "annotations apart from pod annotations, startupProbe, HPA behavior; doctor mounts it too",
                         assert_extras),
    "global": ("global accepted, the chart's values unaffected", assert_global),
    "hs256-per-issuer": ("one HS256 secret per issuer: own file, own Secret key, own value (chart-made or existing "
                         "Secret)", assert_hs256_per_issuer),
    "ipv6-only": ("Service IPv6 SingleStack, broker listens on [::], trusted proxies of both families",
                  assert_ipv6),
    "dual-stack-ingress": ("Service RequireDualStack [IPv6, IPv4], [::] listeners, Ingress, http ingress "
                           "ipBlocks of both families", assert_dual_stack_ingress),
    "private-registry": ("global.imageRegistry before the repository, by digest, on the broker and the test pods; "
                         "global then chart pull secrets (names or objects) without duplicates", assert_private_registry),
    "extensions": ("commonLabels/commonAnnotations on every object, extra and init containers and extraObjects "
                   "through tpl, strategy, revisionHistoryLimit, SA token, ServiceMonitor relabelings/scheme/TLS/"
                   "namespace, disabled and additional rules", assert_extensions),
    "httproute": ("HTTPRoute to the http port only (parentRefs, hostnames, matches, filters, timeouts), no Ingress, "
                  "the Gateway's pods admitted", assert_httproute),
    "openshift-dns": ("DNS egress to openshift-dns's pods by label on 53 and 5353, UDP and TCP, broker and test "
                      "policies", assert_openshift_dns),
    "backend-port": ("backend Service port of its own, never behind the Ingress, admitted from the selected "
                     "callers only; an extraEnv collector allowed on its port", assert_backend_port),
}


GATEWAY_SCHEMA = Path(__file__).resolve().parent / "schemas" / "gateway-api-httproute-v1.json"


def load_gateway_schema() -> dict[str, Any]:
    schema = json.loads(GATEWAY_SCHEMA.read_text())
    src = schema["x-source"]
    print(f"     HTTPRoute schema: {src['repository']} {src['tag']} ({src['commit'][:12]}) {src['path']}")

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    schema["properties"]["apiVersion"]["const"] = "gateway.networking.k8s.io/v1"
    schema["properties"]["kind"]["const"] = "HTTPRoute"
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def validate_httproutes(routes: list[dict[str, Any]], schema: dict[str, Any] | None) -> None:
    import jsonschema

    assert schema is not None, "no Gateway API schema"
    validator = jsonschema.Draft7Validator(schema)
    for d in routes:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(d)]
        assert not errors, "; ".join(errors)[:800]
        # The CEL rules jsonschema cannot run, for what the chart renders: a PathPrefix/Exact value
        # starts with "/" and at most one route rule carries the chart's one backend.
        for rule in d["spec"]["rules"]:
            for m in rule.get("matches", []):
                path = m.get("path") or {}
                if path.get("type") in ("PathPrefix", "Exact"):
                    assert str(path.get("value", "/")).startswith("/"), f"path {path} must start with /"
        assert d["metadata"]["name"] and d["metadata"]["namespace"] == NAMESPACE, d["metadata"]


def assert_subchart(chart_dir: Path, out: Path) -> None:
    """Helm hands every subchart the parent's `global`; a schema that refuses it breaks the chart
    as a dependency."""
    parent = out / "parent-chart"
    shutil.rmtree(parent, ignore_errors=True)
    (parent / "charts").mkdir(parents=True)
    (parent / "templates").mkdir()
    shutil.copytree(chart_dir, parent / "charts" / chart_dir.name)
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "web-site", "version": "1.0.0",
        "dependencies": [{"name": chart_dir.name, "version": ">=0.0.0-0", "repository": ""}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example.com", "imagePullSecrets": []},
        chart_dir.name: {"config": {"intellia": {"organization_id": "org-parent"}}}}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example.com", "imagePullSecrets": ["corp-pull"], "storageClass": "x"},
        chart_dir.name: {"config": {"intellia": {"organization_id": "org-parent"}}}}))
    parent_chart = helm.Chart.load(str(parent))
    rendered = render(parent_chart, {})
    docs = [d for d in rendered if not is_hook(d)]
    assert broker_config(docs)["intellia"]["organization_id"] == "org-parent", "subchart values reach the config"
    for spec in [pod_spec(docs)] + [h["spec"] for h in rendered if h["kind"] == "Pod"]:
        images = [c["image"] for c in spec["containers"]]
        assert all(i == "registry.example.com/intellia/intellia-token-broker:" + i.rsplit(":", 1)[-1] for i in images), \
            f"the parent's global.imageRegistry reaches every pod: {images}"
        assert spec.get("imagePullSecrets") == [{"name": "corp-pull"}], \
            f"the parent's global.imagePullSecrets reach every pod: {spec.get('imagePullSecrets')}"
    lint(parent, {})


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in doc["metadata"]["annotations"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def assert_helm_tests(docs: list[dict[str, Any]], hooks: list[dict[str, Any]], uid: int | None) -> None:
    """`helm test`: healthcheck through the Service, doctor with the Deployment's config, secrets,
    env and mounts; the broker's hardening; reachable through the NetworkPolicy, never selected by
    the broker's Service, PDB or NetworkPolicy."""
    pods = {d["metadata"]["name"].rsplit("-test-", 1)[-1]: d for d in hooks if d["kind"] == "Pod"}
    assert set(pods) == {"healthcheck", "doctor"}, f"test pods {sorted(pods)}"
    for d in hooks:
        ann = d["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "test", f"{d['metadata']['name']}: hook {ann['helm.sh/hook']}"
        assert "before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""), \
            f"{d['metadata']['name']}: a rerun of helm test must replace it"
    deploy_spec = pod_spec(docs)
    broker = deploy_spec["containers"][0]
    svc = one(docs, "Service")
    port = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "http"][0]
    hc = pods["healthcheck"]["spec"]["containers"][0]
    want = ["healthcheck", "--url", f"http://{svc['metadata']['name']}:{port}/healthz"]
    assert hc["args"] == want, f"healthcheck args {hc['args']}, want {want}"
    doctor_spec = pods["doctor"]["spec"]
    doc = doctor_spec["containers"][0]
    assert doc["args"] == ["doctor", "--config", f"{CONFIG_DIR}/config.json"], f"doctor args {doc['args']}"
    assert doc["volumeMounts"] == broker["volumeMounts"], "doctor mounts differ from the broker's"
    assert doctor_spec["volumes"] == deploy_spec["volumes"], "doctor volumes differ from the Deployment's"
    assert doc["env"] == broker["env"] and doc.get("envFrom") == broker.get("envFrom"), "doctor env differs"
    for pod in pods.values():
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False, pod["metadata"]
        assert spec.get("securityContext") == deploy_spec.get("securityContext"), "test pod securityContext"
        for c in spec["containers"]:
            assert c["securityContext"] == broker["securityContext"], f"{c['name']}: container securityContext"
            assert c["image"] == broker["image"], f"{c['name']}: the broker's image"
        assert_security_containers(spec, uid=uid)
        labels = pod["metadata"]["labels"]
        assert not selects(svc["spec"]["selector"], labels), "the Service would route to a test pod"
        for d in docs:
            sel = (d["spec"].get("selector") or {}).get("matchLabels") if d["kind"] == "PodDisruptionBudget" else \
                d["spec"]["podSelector"]["matchLabels"] if d["kind"] == "NetworkPolicy" else None
            assert sel is None or not selects(sel, labels), f"{d['kind']} selects a test pod"
    nps = [d for d in docs if d["kind"] == "NetworkPolicy"]
    test_nps = [d for d in hooks if d["kind"] == "NetworkPolicy"]
    assert len(test_nps) == len(nps), f"{len(test_nps)} test NetworkPolicies for {len(nps)} of the broker's"
    for np, tnp in zip(nps, test_nps):
        labels = pods["healthcheck"]["metadata"]["labels"]
        assert selects(tnp["spec"]["podSelector"]["matchLabels"], labels), "test NetworkPolicy selects the test pods"
        assert tnp["spec"]["ingress"] == [], "test pods take no ingress"
        egress = tnp["spec"]["egress"]
        assert egress[:-1] == np["spec"]["egress"], "doctor meets the broker's egress rules"
        assert egress[-1] == {"to": [{"podSelector": {"matchLabels": svc["spec"]["selector"]}}],
                              "ports": [{"port": 8080, "protocol": "TCP"}]}, f"to the broker: {egress[-1]}"
        http = np["spec"]["ingress"][0]
        assert http["ports"] == [{"port": "http", "protocol": "TCP"}], http
        assert "from" not in http or any(selects(p.get("podSelector", {}).get("matchLabels", {"": "-"}), labels)
                                         and "namespaceSelector" not in p for p in http["from"]), \
            f"the broker's http ingress shuts the test pods out: {http['from']}"


def expect_rejected(chart: helm.Chart, chart_dir: Path, values: dict[str, Any], want: str, by_schema: bool) -> None:
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except helm.HelmError as e:
        msg = str(e)
        assert re.search(want, msg), f"rejected, but not for the expected reason ({want!r}): {msg[:400]}"
    else:
        raise AssertionError("rendered without error; it must be rejected")
    if by_schema:
        # Helm's lint reports schema violations; a template `fail` it only logs
        # (lint renders leniently), so those cases are checked by rendering.
        report = helm.lint(str(chart_dir), values=values, strict=True, namespace=NAMESPACE)
        assert report.get("errors"), "helm lint accepted it"


def sidecar_checks(path: Path, out: Path) -> int:
    checks = Checks()
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    out.mkdir(parents=True, exist_ok=True)

    def config() -> None:
        text = one(docs, "ConfigMap")["data"]["config.toml"]
        (out / "sidecar.config.toml").write_text(text)
        conf = tomllib.loads(text)
        check_design_keys(conf)
        assert conf["server"]["listen"] == "127.0.0.1:8080", "the sidecar listens on loopback only"
        assert conf["backend"].get("listen") == "127.0.0.1:8081", \
            "the sidecar route on its own loopback listener (backend.listen)"
        assert conf["backend"]["secret_file"].startswith("/var/run/secrets/"), "backend secret from a file"
        app = pod_spec(docs)["containers"][0]
        urls = [e["value"] for e in app.get("env", []) if e["name"] == "TOKEN_BROKER_URL"]
        assert urls == ["http://127.0.0.1:8081/v1/backend/token"], \
            f"the app calls the backend listener, not the public one: {urls}"
        assert conf["intellia"]["api_key_file"] == API_KEY_FILE, "API key from the mounted file"

    def security() -> None:
        assert_security_containers(pod_spec(docs), names={"token-broker"})
        spec = pod_spec(docs)
        broker = [c for c in spec["initContainers"] if c["name"] == "token-broker"][0]
        assert broker.get("restartPolicy") == "Always", "a native sidecar"
        app = spec["containers"][0]
        assert not [m for m in app.get("volumeMounts", []) if m["mountPath"] == API_KEY_DIR], \
            "the app container must not see the Intellia API key"
        for c in spec["containers"] + spec["initContainers"]:
            for e in c.get("env", []):
                assert not re.search(r"API_?KEY", e["name"], re.I), f"env {e['name']}"

    checks.check(f"{path.name}: broker config parses, configuration-reference keys, listen 127.0.0.1:8080, "
                 "[backend] on 127.0.0.1:8081, the app calling it there", config)
    checks.check(f"{path.name}: broker container hardened, native sidecar, API key hidden from the app", security)
    return 1 if checks.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chart", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--venv-bin", type=Path, required=True)
    ap.add_argument("--sidecar", type=Path, help="only check the sidecar manifest's broker config")
    args = ap.parse_args()
    if args.sidecar:
        return sidecar_checks(args.sidecar, args.out)
    chart_dir: Path = args.chart
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    checks = Checks()
    helm.disable_logging()

    chart = helm.Chart.load(str(chart_dir))
    chart_values = chart.values
    sm_schema = checks.check("servicemonitor-schema: build strict schema from prometheus-operator v0.80 models",
                             lambda: strict_crd_schema("ServiceMonitor"))
    pr_schema = checks.check("prometheusrule-schema: build strict schema from prometheus-operator v0.80 models",
                             lambda: strict_crd_schema("PrometheusRule"))
    broker_bin = os.environ.get("BROKER_BIN") or None
    loaded = checks.check(f"metric names: from {'BROKER_BIN ' + broker_bin if broker_bin else 'tests/deploy/metrics.txt'}",
                          lambda: known_metrics(broker_bin, here / "metrics.txt"))
    known: set[str] | None = None
    if loaded is not None:
        known, source = loaded
        print(f"     {len(known)} series names from {source}")
    def checker_bites() -> None:
        # the checkers themselves: an unknown name and a syntax error are caught
        assert known is not None
        try:
            assert_known_metrics({"x": 'sum(rate(broker_requests_totl{code="ok"}[5m])) / on (pod) broker_ready'}, known)
        except AssertionError as e:
            assert "broker_requests_totl" in str(e) and "broker_ready" not in str(e), str(e)
        else:
            raise AssertionError("a misspelt metric name was accepted")
        assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=~"b|c"}[5m]))) '
                            '> bool 1e3 and on (pod) time() - max without (x) (c offset 5m)') == {"a_bucket", "c"}
        if not shutil.which("promtool"):
            return
        try:
            promtool_check_rules([{"name": "t", "rules": [{"record": "t:x", "expr": "sum(rate(broker_ready[5m])"}]}],
                                 out / "checker-bites.rules.yaml")
        except AssertionError:
            pass
        else:
            raise AssertionError("promtool accepted an unbalanced expression")

    checks.check("PromQL checkers: a misspelt metric name and an unbalanced expression are refused", checker_bites)
    checks.check("dashboards/intellia-token-broker.json: valid JSON, unique panel ids, the datasource variable, "
                 "requests by code, p50/p90/p99 by route, cache, upstream, limits, Redis",
                 lambda: assert_dashboard_file(chart_dir / "dashboards" / "intellia-token-broker.json"))

    sets: dict[str, Path | None] = {
        "default": None,
        "production": chart_dir / "ci" / "production-values.yaml",
        "all-features": chart_dir / "ci" / "all-features-values.yaml",
        "managed-services": chart_dir / "ci" / "managed-services-values.yaml",
    }
    # Operators' environments (issue #17): OpenShift's restricted SCC, a private CA bundle and the
    # other pod extras, a parent chart's `global`, IPv6-only and dual-stack with an Ingress.
    for extra in ("openshift", "extras-ca-bundle", "global", "ipv6-only", "dual-stack-ingress", "hs256-per-issuer"):
        sets[extra] = here / "values" / f"{extra}.yaml"
    # How charts are consumed: a private registry for the whole umbrella, the extension points,
    # Gateway API, OpenShift's DNS, the backend route on its own port.
    for extra in ("private-registry", "extensions", "httproute", "openshift-dns", "backend-port"):
        sets[extra] = here / "values" / f"{extra}.yaml"
    gw_schema = checks.check(f"gateway-api schema: {GATEWAY_SCHEMA.name} (vendored, source and version inside)",
                             load_gateway_schema)
    for name, path in sets.items():
        values = load_values(path)
        checks.check(f"{name}: helm lint --strict", lambda: lint(chart_dir, values))
        rendered = checks.check(f"{name}: render (helm template, schema enforced)", lambda: render(chart, values))
        if rendered is None:
            continue
        docs = [d for d in rendered if not is_hook(d)]
        hooks = [d for d in rendered if is_hook(d)]
        print(f"     {name} resources: {', '.join(kinds(docs))}")
        crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
        routes = [d for d in docs if d["apiVersion"].startswith("gateway.networking.k8s.io/")]
        core = [d for d in docs if d not in crds and d not in routes]
        manifest = out / f"{name}.yaml"
        manifest.write_text(dump(core + hooks))
        sms = [d for d in crds if d["kind"] == "ServiceMonitor"]
        prs = [d for d in crds if d["kind"] == "PrometheusRule"]
        (out / f"{name}.servicemonitor.yaml").write_text(dump(sms))
        (out / f"{name}.prometheusrule.yaml").write_text(dump(prs))
        (out / f"{name}.config.json").write_text(config_map(docs)["data"]["config.json"])
        for kv in KUBE_VERSIONS:
            checks.check(f"{name}: kubernetes-validate --strict -k {kv} ({len(core)} objects)",
                         lambda kv=kv: kubernetes_validate(args.venv_bin, manifest, kv))
        assert {d["kind"] for d in crds} <= {"ServiceMonitor", "PrometheusRule"}, kinds(crds)
        if routes:
            (out / f"{name}.httproute.yaml").write_text(dump(routes))
            checks.check(f"{name}: HTTPRoute against the Gateway API v1 schema (strict)",
                         lambda: validate_httproutes(routes, gw_schema))
        if sms and sm_schema is not None:
            checks.check(f"{name}: ServiceMonitor against the CRD schema (strict)",
                         lambda: validate_servicemonitors(sms, sm_schema))
        if prs and pr_schema is not None:
            checks.check(f"{name}: PrometheusRule against the CRD schema (strict)",
                         lambda: validate_crds(prs, pr_schema))
        checks.check(f"{name}: NetworkPolicy egress never reaches private, CGNAT, link-local or metadata "
                     f"addresses (IPv4 and IPv6)" + ("; on by default: kube-dns 53 and public 443 only"
                                                     if name == "default" else ""),
                     lambda: assert_networkpolicy_egress(docs, default=(name == "default")))
        checks.check(f"{name}: helm test NetworkPolicy egress never reaches those addresses either",
                     lambda: assert_networkpolicy_egress(hooks, default=False))
        if prs:
            checks.check(f"{name}: every alert keeps namespace (and pod), has summary, description and a "
                         f"runbook_url anchor in docs/troubleshooting.md; ratio alerts need a minimum rate",
                         lambda: print("     " + assert_alerts_route(docs, values, chart_dir.parent.parent / "docs" /
                                                                   "troubleshooting.md")))
        if name == "managed-services":
            checks.check("alerts: promtool test rules (tests/deploy/alerts.test.yaml), each alert fires and "
                         "stays quiet where it should (down, absent, minimum rates, successful requests only)",
                         lambda: print("     " + promtool_test_rules(chart, values, here / "alerts.test.yaml", out)))
        if known is not None:
            checks.check(f"{name}: PrometheusRule (promtool check rules) and dashboard ConfigMap (promtool on "
                         f"every expression); each names only metrics the broker exposes",
                         lambda: print("     " + (assert_rules_and_dashboard(docs, values, chart_dir, known, out, name)
                                                  or "neither enabled: none rendered")))
        metrics = (values.get("metrics") or {}).get("enabled", True)
        uid = None if name == "openshift" else UID
        checks.check(f"{name}: securityContext (non-root 65532, read-only root, no privilege escalation, "
                     f"caps dropped, seccomp) and resources",
                     lambda: assert_security(docs, uid, bool((values.get("serviceAccount") or {}).get("automount"))))
        checks.check(f"{name}: helm test pods (healthcheck via the Service, doctor with the Deployment's config, "
                     f"secrets, env and mounts), hardened, reachable through the NetworkPolicy, never selected",
                     lambda: assert_helm_tests(docs, hooks, uid))
        checks.check(f"{name}: API key only as a file (no env var, no subPath, no plaintext outside the Secret)",
                     lambda: assert_api_key_is_a_file(docs, values, chart_values))
        checks.check(f"{name}: config mounted from the ConfigMap at {CONFIG_DIR}/config.json (args, BROKER_CONFIG)",
                     lambda: assert_config_mount(docs))
        checks.check(f"{name}: rendered config.json parses and uses only configuration-reference keys",
                     lambda: assert_config_keys(docs, values))
        checks.check(f"{name}: probes /healthz and /readyz on http; ports 8080/9091 (8081 backend); Ingress and "
                     f"HTTPRoute on http only", lambda: assert_probes_and_ports(docs, values))
        checks.check(f"{name}: checksum/config and checksum/secret present and change with their inputs",
                     lambda: assert_checksums(chart, docs, values))
        checks.check(f"{name}: terminationGracePeriodSeconds > preStop sleep + shutdown_grace_secs",
                     lambda: assert_grace(docs))
        checks.check(f"{name}: topologySpreadConstraints select this release", lambda: assert_spread(docs))
        if name == "production":
            checks.check("production: HPA v2, PDB, NetworkPolicy (DNS/443/Redis egress, metrics from monitoring), "
                         "Ingress, ServiceMonitor, no chart Secret, Redis URL from secretKeyRef, "
                         "[redis] replicas = HPA maxReplicas, breaker keys",
                         lambda: assert_production(docs))
        if name == "all-features":
            checks.check("all-features: backend/HS256/introspection/Redis-cache secrets as files, every [redis] "
                         "and breaker key, per_ip null, preStop sleep, "
                         "explicit grace; required_claims, userinfo(_url) and every introspection key in the config",
                         lambda: assert_all_features(docs))
        if name == "managed-services":
            checks.check("managed-services: private_key_jwt key file (no client secret), roles, rediss:// + CA "
                         "ConfigMap + password Secret + cluster, telemetry, backend failure limit, ipv6_prefix, "
                         "grace 5 alone, alerts with thresholds, checksums follow the new references",
                         lambda: assert_managed_services(chart, docs, values))

        if name in SET_CHECKS:
            what, fn = SET_CHECKS[name]
            checks.check(f"{name}: {what}", lambda fn=fn: fn(docs, hooks, values))

    def hs256_from_an_existing_secret() -> None:
        values = load_values(here / "values" / "hs256-per-issuer.yaml")
        values["secret"] = {"existingSecret": "site-secrets"}
        docs = [d for d in render(chart, values) if not is_hook(d)]
        assert "Secret" not in kinds(docs), "no chart-made Secret"
        secret = {v["name"]: v for v in pod_spec(docs)["volumes"]}["broker-secrets"]["secret"]
        assert secret["secretName"] == "site-secrets" and \
            {(i["key"], i["path"]) for i in secret["items"]} == {("hs256-secret", "hs256-secret"),
                                                                 ("shop-hs256", "hs256/shop-hs256")}, secret

    checks.check("hs256-per-issuer with secret.existingSecret: each issuer's key mounted from it", hs256_from_an_existing_secret)

    checks.check("subchart: a parent chart's `global` imageRegistry and imagePullSecrets reach every pod (and "
                 "values under the chart's name reach the config)",
                 lambda: assert_subchart(chart_dir, out))

    def redis_replicas_default() -> None:
        base = {"config": {"redis": {"url": "redis://redis:6379"}}}
        conf = broker_config(render(chart, base))
        assert conf["redis"]["replicas"] == chart_values["replicaCount"], f"no HPA: replicaCount, got {conf['redis']}"
        conf = broker_config(render(chart, base | {"replicaCount": 5000}))
        assert conf["redis"]["replicas"] == 1000, "capped at the broker's maximum 1000"
        conf = broker_config(render(chart, {"config": {"redis": {"url": "redis://redis:6379", "replicas": 7}},
                                          "autoscaling": {"enabled": True, "maxReplicas": 20}}))
        assert conf["redis"]["replicas"] == 7, "an explicit config.redis.replicas wins"
        conf = broker_config(render(chart, {"redisUrlSecret": {"name": "r"}}))
        assert conf["redis"] == {"replicas": chart_values["replicaCount"]}, \
            f"redisUrlSecret alone still renders [redis] replicas: {conf.get('redis')}"
        assert "redis" not in broker_config(render(chart, {})), "no Redis: no [redis]"

    checks.check("redis: replicas defaults to replicaCount (HPA off) / maxReplicas, capped at 1000, explicit wins",
                 redis_replicas_default)

    def otlp_endpoint_allowed_or_named() -> None:
        collector = "http://otel-collector.observability.svc:4318"
        by_config = {"config": {"telemetry": {"otlp_endpoint": collector}}}
        by_env = {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": collector}]}
        peers = {"networkPolicy": {"egress": {"otlp": {"to": [{"namespaceSelector": {}, "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "opentelemetry-collector"}}}]}}}}
        for given, where in ((by_config, "config.telemetry.otlp_endpoint"), (by_env, "extraEnv")):
            text = notes(chart, given)
            assert collector in text and "blocked by the NetworkPolicy" in text, f"{where}: NOTES names it:\n{text}"
            text = notes(chart, merged(given, peers))
            assert "blocked" not in text, f"{where} with otlp.to: allowed, no warning:\n{text}"
            np = one([d for d in render(chart, merged(given, peers)) if not is_hook(d)], "NetworkPolicy")["spec"]
            assert any(r.get("to") == peers["networkPolicy"]["egress"]["otlp"]["to"] and
                       {p["port"] for p in r["ports"]} == {4317, 4318} for r in np["egress"]), np["egress"]
        # the wrong port named too; a public https collector on 443 is covered; envFrom may hide one
        text = notes(chart, merged({"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value":
                                                   "http://otel.observability.svc:55681"}]}, peers))
        assert "http://otel.observability.svc:55681" in text and "blocked" in text, text
        text = notes(chart, {"config": {"telemetry": {"otlp_endpoint": "https://otlp.vendor.example.com/v1/traces"}}})
        assert "blocked" not in text, text
        text = notes(chart, {"envFrom": [{"configMapRef": {"name": "otel"}}]})
        assert "envFrom or a valueFrom" in text, text
        assert "OTLP" not in notes(chart, {}), "nothing said without a collector"

    checks.check("OTLP endpoint from values, extraEnv or envFrom: allowed by networkPolicy.egress.otlp or named in "
                 "NOTES (wrong port too); a public https collector on 443 is covered", otlp_endpoint_allowed_or_named)

    def default_network_policy_assumes_no_namespace() -> None:
        np = one([d for d in render(chart, {}) if not is_hook(d)], "NetworkPolicy")["spec"]
        metrics = [r for r in np["ingress"] if r["ports"][0]["port"] == "metrics"][0]
        assert metrics["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "prometheus"}}}], f"metrics scrapers by label in any namespace: {metrics}"
        for peer in metrics["from"] + np["egress"][0]["to"]:
            assert "kubernetes.io/metadata.name" not in json.dumps(peer), f"a namespace name assumed: {peer}"
        nps = [d for d in render(chart, {"networkPolicy": {"metricsFrom": []}}) if not is_hook(d)]
        metrics = [r for r in one(nps, "NetworkPolicy")["spec"]["ingress"] if r["ports"][0]["port"] == "metrics"][0]
        assert "from" not in metrics, "metricsFrom [] admits any scraper"

    checks.check("NetworkPolicy defaults assume no namespace name: Prometheus pods (any namespace) scrape, DNS to "
                 "k8s-app=kube-dns pods (any namespace); metricsFrom [] opens metrics", default_network_policy_assumes_no_namespace)

    def derived_defaults() -> None:
        # every value accepted alone (drain_delay_secs derived by the broker)
        for grace in (1, 2, 5, 9, 600):
            conf = broker_config(render(chart, {"config": {"server": {"shutdown_grace_secs": grace}}}))
            assert conf["server"]["shutdown_grace_secs"] == grace and "drain_delay_secs" not in conf["server"]
        conf = broker_config(render(chart, {"config": {"server": {"shutdown_grace_secs": 5, "drain_delay_secs": 2}}}))
        assert conf["server"]["drain_delay_secs"] == 2, "an explicit drain_delay_secs is kept"
        conf = broker_config(render(chart, {"config": {"telemetry": {"otlp_endpoint": "http://c:4318", "sample_ratio": 1}}}))
        # JSON writes 1.0 as 1; the broker reads it as the float (src/config/tests.rs, and run.sh's
        # check-config of every rendered config)
        assert conf["telemetry"]["sample_ratio"] == 1, conf["telemetry"]
        conf = broker_config(render(chart, {"config": {"session": {"introspection": {
            "url": "https://idp.example/introspect", "client_id": "b"}}},
            "secret": {"values": {"introspectionClientSecret": "x"}}}))
        intro = conf["session"]["introspection"]
        assert intro["client_secret_file"] == "/var/run/secrets/broker/introspection-secret" and \
            "client_key_file" not in intro, f"client_secret_basic by default: {intro}"
        docs = render(chart, {"secret": {"existingSecret": "s"}, "config": {"session": {"introspection": {
            "url": "https://idp.example/introspect", "client_auth": "private_key_jwt", "key_id": "k1",
            "client_id": "c1"}}}})
        items = {v["name"]: v for v in pod_spec(docs)["volumes"]}["broker-secrets"]["secret"]["items"]
        assert items == [{"key": "introspection-client-key.json", "path": "introspection-client-key.json"}], items
        assert "grafana_dashboard" not in dump(docs) and "PrometheusRule" not in kinds(docs), "both off by default"
        docs = render(chart, {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                                   "labels": {"grafana_dashboard": "intellia", "team": "web"}}})
        cm = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")][0]
        labels = cm["metadata"]["labels"]
        assert labels["grafana_dashboard"] == "intellia" and labels["team"] == "web" \
            and cm["metadata"]["namespace"] == "monitoring", "dashboard labels and namespace configurable"
        both = {"backendRoute": {"enabled": True}, "secret": {"existingSecret": "s"},
                "service": {"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}}
        assert broker_config(render(chart, both))["backend"]["listen"] == "[::]:8081", \
            "the backend listener on the IPv6 wildcard when the Service asks for IPv6"
        docs = render(chart, {"prometheusRule": {"enabled": True, "selector": 'service="b"'}})
        alerts = {r["alert"]: r["expr"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
        assert "TokenBrokerRedisDown" not in alerts and "TokenBrokerJwksStale" not in alerts, \
            "Redis and JWKS alerts only when Redis / a JWKS issuer is configured"
        assert all('{service="b"' in e for e in alerts.values()), "prometheusRule.selector used"

    checks.check("defaults fit together: any shutdown_grace_secs alone renders (no drain_delay_secs), "
                 "sample_ratio float, client_secret_basic default, private_key_jwt from an existingSecret, "
                 "backend listener on [::] with IPv6, "
                 "dashboard labels/namespace, conditional alerts, rule selector", derived_defaults)

    negative = [
        # (values file, expected message, rejected by values.schema.json?)
        ("bad-unknown-key.yaml", r"organisation_id", True),
        ("bad-unknown-top-key.yaml", r"replicas", True),
        ("bad-wrong-type.yaml", r"shutdown_grace_secs.*(got string|want integer)", True),
        ("bad-wrong-type-bool.yaml", r"networkPolicy/enabled.*(got string|want boolean)", True),
        ("bad-managed-key.yaml", r"api_key_file", True),
        ("bad-wildcard-origin.yaml", r"allowed_origins", True),
        ("bad-grace.yaml", r"terminationGracePeriodSeconds \(30\) must be larger", False),
        ("bad-jwt-two-key-sources.yaml", r"session/jwt/0", True),
        ("bad-jwt-hs256-with-jwks.yaml", r"session/jwt/0", True),
        ("bad-backend-without-secret.yaml", r"backendRoute.enabled needs secret.values.backendSecret", False),
        ("bad-drain.yaml", r"drain_delay_secs \(20\) must be shorter", False),
        ("bad-redis-url-twice.yaml", r"set the Redis URL once", False),
        ("bad-required-claim.yaml", r"session/jwt/0/required_claims/1", True),
        ("bad-introspection-cache-ttl.yaml", r"session/introspection/cache_ttl_secs", True),
        ("bad-jwt-userinfo-without-endpoint.yaml", r"session/jwt/0.*missing property 'userinfo_url'", True),
        ("bad-redis-on-unavailable.yaml", r"redis/on_unavailable", True),
        ("bad-redis-timeout.yaml", r"redis/timeout_ms", True),
        ("bad-redis-cache-secret-file.yaml", r"cache_secret_file", True),
        ("bad-redis-cache-secret-without-redis.yaml", r"redisCacheSecret.enabled needs Redis", False),
        ("bad-breaker.yaml", r"intellia/breaker_open_secs", True),
        ("bad-redis-url-password.yaml", r"redis/url", True),
        ("bad-ingress-per-ip-without-proxies.yaml", r"ingress.enabled with a per-IP limit .* needs "
                                                     r"config.server.trusted_proxies", False),
        ("bad-ipv6-prefix.yaml", r"rate_limit/per_ip/ipv6_prefix", True),
        ("bad-jwt-roles-without-claim.yaml", r"session/jwt/0.*missing property 'roles_claim'", True),
        ("bad-introspection-roles-without-claim.yaml", r"session/introspection.*missing property 'roles_claim'", True),
        ("bad-introspection-client-auth.yaml", r"session/introspection/client_auth", True),
        ("bad-introspection-basic-without-client-id.yaml", r"session/introspection.*missing property 'client_id'", True),
        ("bad-introspection-key-id-with-basic.yaml", r"session/introspection", True),
        ("bad-introspection-private-key-without-key.yaml", r"private_key_jwt needs secret.values.introspectionClientKey",
         False),
        ("bad-introspection-client-key-file.yaml", r"client_key_file", True),
        ("bad-user-id-prefix-collision.yaml", r"user_id_prefix", False),
        ("bad-user-id-prefix-nested.yaml", r"neither a prefix of the other", False),
        ("bad-endpoint-shared-id-space.yaml", r"config.session.endpoint\[1\].*user_id_prefix", False),
        ("bad-endpoint-without-cookies.yaml", r"session/endpoint/0", True),
        ("bad-jwt-header-with-cookie.yaml", r"session/jwt/0", True),
        ("bad-redis-ca-file.yaml", r"ca_file", True),
        ("bad-redis-ca-two-sources.yaml", r"/redis/ca", True),
        ("bad-redis-ca-without-tls.yaml", r"config.redis.url must be rediss://", False),
        ("bad-redis-password-without-redis.yaml", r"redis.passwordSecret needs Redis", False),
        ("bad-redis-cluster-type.yaml", r"redis/cluster", True),
        ("bad-telemetry-sample-ratio.yaml", r"telemetry/sample_ratio", True),
        ("bad-backend-max-failures.yaml", r"backendRoute/maxFailuresPerMinute", True),
        ("bad-prometheusrule-threshold.yaml", r"prometheusRule/thresholds/upstreamErrorRatio", True),
        ("bad-base-url-query.yaml", r"intellia/base_url", True),
        ("bad-base-url-plain-http.yaml", r"intellia/base_url", True),
        # issue #17: the operator-facing values
        ("bad-global-not-object.yaml", r"global.*(got string|want object)", True),
        ("bad-pod-security-context-key.yaml", r"podSecurityContext.*runAsUsr", True),
        ("bad-security-context-type.yaml", r"securityContext/runAsUser", True),
        ("bad-ip-families-twice.yaml", r"service/ipFamilies", True),
        ("bad-ip-family-policy.yaml", r"service/ipFamilyPolicy", True),
        ("bad-hpa-behavior.yaml", r"autoscaling/behavior/scaleDown/selectPolicy", True),
        ("bad-startup-probe.yaml", r"probes/startup", True),
        ("bad-extra-volume-name.yaml", r'extraVolumes: the name "config" is the chart', False),
        ("bad-extra-volume-mount-path.yaml", r"extraVolumeMounts: /var/run/secrets would hide", False),
        ("bad-extra-volume-mount-key.yaml", r"extraVolumeMounts/0.*readonly", True),
        ("bad-envfrom-chart-secret.yaml", r"envFrom: Secret broker-intellia-token-broker holds the Intellia API key",
         False),
        ("bad-envfrom-two-sources.yaml", r"envFrom/0", True),
        # how charts are consumed
        ("bad-ingress-and-httproute.yaml", r"an Ingress or a Gateway API HTTPRoute, not both", False),
        ("bad-httproute-without-parent.yaml", r"httpRoute/parentRefs", True),
        ("bad-httproute-to-backend.yaml", r"httpRoute.*backendRefs", True),
        ("bad-backend-port-is-public.yaml", r"service.port, service.metricsPort and service.backendPort must differ",
         False),
        ("bad-backend-open-to-all.yaml", r"backendRoute.allowedFrom is empty", False),
        ("bad-common-label-selector.yaml", r"commonLabels: app.kubernetes.io/name is one of the chart's own labels",
         False),
        ("bad-extra-container-broker.yaml", r'extraContainers: the name \\?"broker\\?" is the chart', False),
        ("bad-strategy-type.yaml", r"strategy/type", True),
        ("bad-additional-rule-without-expr.yaml", r"additionalRules/0.*expr", True),
        ("bad-disabled-rule-name.yaml", r"'Slow' does not match pattern '\^TokenBroker", True),
        ("bad-global-image-registry.yaml", r"global/imageRegistry", True),
        ("bad-pull-secret.yaml", r"imagePullSecrets/0", True),
        ("bad-dns-ports-empty.yaml", r"networkPolicy/egress/dnsPorts", True),
        # one HS256 secret per issuer
        ("bad-hs256-shared-file.yaml", r"session.jwt\[1\].hs256_secret_file is also config.session.jwt\[0\]'s", False),
        ("bad-hs256-same-value.yaml", r"hs256Secrets.shop-hs256 equals another HS256 issuer's secret", False),
        ("bad-hs256-key-of-another-secret.yaml", r'names Secret key "api-key", which holds another secret', False),
        ("bad-hs256-file-elsewhere.yaml", r"session/jwt/0/hs256_secret_file", True),
    ]
    for fname, want, by_schema in negative:
        values = load_values(here / "values" / fname)
        how = "schema: render and lint fail" if by_schema else "template fail: render fails"
        checks.check(f"negative: values/{fname} is rejected ({how})",
                     lambda values=values, want=want, by_schema=by_schema:
                     expect_rejected(chart, chart_dir, values, want, by_schema))

    print(f"chart checks: {checks.count - len(checks.failed)}/{checks.count} passed; rendered files in {out}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
