#!/usr/bin/env bash
# Property-based API test of the live broker with schemathesis: every operation
# of the OpenAPI document the broker serves (GET /openapi.json) is called with
# generated valid and invalid requests, authenticated and not, and every
# response must pass schemathesis' checks (no 5xx, documented status codes,
# content types, headers and bodies).
#
#   bash tests/api-fuzz/run.sh                    # from any directory
#   BROKER_BIN=/path/to/intellia-token-broker bash tests/api-fuzz/run.sh
#
# The broker runs with `serve` against the built-in Intellia simulator
# (`simulate-intellia`), with an HS256 session issuer, a backend secret and no
# rate limits, all in a temp dir. Tools live in .venv-fuzz at the repository
# root (gitignored), created/refreshed from tests/api-fuzz/requirements.txt.
#
# Environment:
#   BROKER_BIN          broker binary (default <repo>/target/debug/intellia-token-broker;
#                       this script never builds it)
#   FUZZ_MAX_EXAMPLES   test cases per operation and phase (default 100)
#   FUZZ_SEED           schemathesis seed (default 20261128: runs are reproducible)
#   FUZZ_TIME_LIMIT     hard bound in seconds on the schemathesis run (default 150);
#                       hitting it is a failure
#   FUZZ_REPORT_DIR     keep junit/ndjson reports and server logs here (default: a
#                       temp dir, removed at the end unless the run failed)
#   FUZZ_SCHEMA         an OpenAPI file to test instead of the document the broker
#                       serves (to try a fix of openapi.json before the broker serves it)
#   PYTHON              interpreter for the venv (default python3)
#
# Prints PASS/FAIL per step and a summary; exits 1 when anything failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/api-fuzz"
VENV="$REPO/.venv-fuzz"
BROKER_BIN="${BROKER_BIN:-$REPO/target/debug/intellia-token-broker}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-100}"
SEED="${FUZZ_SEED:-20261128}"
TIME_LIMIT="${FUZZ_TIME_LIMIT:-150}"
START=$(date +%s)

WORK="$(mktemp -d /tmp/itb-api-fuzz.XXXXXX)"
REPORTS="${FUZZ_REPORT_DIR:-$WORK/reports}"
mkdir -p "$REPORTS"

FAILED=()
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILED+=("$*"); }
step() { echo; echo "== $*"; }

PIDS=()
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  # Both shut down within shutdown_grace_secs (3); give them 10 s, then SIGKILL.
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  # Keep the evidence of a failed run (reports, server logs); remove a clean one.
  if [ "$rc" -ne 0 ] || [ "${#FAILED[@]}" -ne 0 ]; then
    if [ -z "${FUZZ_REPORT_DIR:-}" ]; then
      cp "$WORK"/*.log "$REPORTS"/ 2>/dev/null || true
      echo "evidence kept in $WORK (reports/, *.log)"
    else
      cp "$WORK"/*.log "$REPORTS"/ 2>/dev/null || true
      rm -rf "$WORK"
    fi
  else
    [ -n "${FUZZ_REPORT_DIR:-}" ] && cp "$WORK"/*.log "$REPORTS"/ 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

summary() {
  echo
  local elapsed=$(( $(date +%s) - START ))
  if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "api-fuzz: PASS in ${elapsed}s (schemathesis $SCHEMATHESIS_VERSION, $MAX_EXAMPLES examples/operation, seed $SEED)"
    exit 0
  fi
  echo "api-fuzz: FAIL in ${elapsed}s, ${#FAILED[@]} failed:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
}
SCHEMATHESIS_VERSION="?"

# ---------------------------------------------------------------------------
step "tools (.venv-fuzz)"
PY="${PYTHON:-python3}"
REQ_HASH="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/schemathesis" ] \
   && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$REQ_HASH" ]; then
  pass "venv: reused $VENV"
else
  rm -rf "$VENV"
  if "$PY" -m venv "$VENV" \
     && "$VENV/bin/pip" install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt"; then
    echo "$REQ_HASH" > "$VENV/.requirements.sha256"
    pass "venv: created $VENV from tests/api-fuzz/requirements.txt"
  else
    fail "venv: could not install tests/api-fuzz/requirements.txt"
    summary
  fi
fi
VPY="$VENV/bin/python"
SCHEMATHESIS_VERSION="$("$VPY" -c 'import importlib.metadata as m; print(m.version("schemathesis"))')"

free_port() {
  "$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to $2 seconds until GET $1 answers 200.
wait_200() {
  "$VPY" - "$1" "$2" <<'PY'
import sys, time, urllib.request
url, secs = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + secs
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

# Waits up to $2 seconds until 127.0.0.1:$1 accepts TCP connections.
wait_port() {
  "$VPY" - "$1" "$2" <<'PY'
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + secs
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

# ---------------------------------------------------------------------------
step "broker under test"
if [ ! -x "$BROKER_BIN" ]; then
  fail "broker binary: $BROKER_BIN is not an executable file (build it first, or set BROKER_BIN)"
  summary
fi
pass "broker binary: $BROKER_BIN ($("$BROKER_BIN" --version 2>/dev/null || echo 'version unknown'))"

SIM_PORT="$(free_port)"
"$BROKER_BIN" simulate-intellia --listen "127.0.0.1:$SIM_PORT" >"$WORK/simulator.log" 2>&1 &
PIDS+=("$!")
if wait_port "$SIM_PORT" 30; then
  pass "simulator: listening on 127.0.0.1:$SIM_PORT"
else
  tail -n 20 "$WORK/simulator.log" | sed 's/^/  /'
  fail "simulator did not start"
  summary
fi

ISSUER="https://auth.test"
AUDIENCE="chat-widget"
"$VPY" -c 'import secrets; print("fuzz-intellia-key-" + secrets.token_hex(16))' > "$WORK/api-key"
"$VPY" -c 'import secrets; print(secrets.token_hex(32))' > "$WORK/hs256-secret"      # 64 bytes
"$VPY" -c 'import secrets; print(secrets.token_hex(32))' > "$WORK/backend-secret"
chmod 600 "$WORK/api-key" "$WORK/hs256-secret" "$WORK/backend-secret"

PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
# The sidecar route is served on its own listener only (backend.listen).
BACKEND_PORT="$(free_port)"
BACKEND_BASE="http://127.0.0.1:$BACKEND_PORT"
# No [rate_limit.*] sections: fuzzing must not be throttled (429 stays a
# documented answer all the same).
cat > "$WORK/broker.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
workers = 1
shutdown_grace_secs = 3
drain_delay_secs = 0

[intellia]
base_url = "http://127.0.0.1:$SIM_PORT"
organization_id = "org-456"
api_key_file = "$WORK/api-key"
timeout_ms = 2000
max_retries = 0

[cors]
allowed_origins = ["https://www.example.com"]

[[session.jwt]]
issuer = "$ISSUER"
audience = "$AUDIENCE"
hs256_secret_file = "$WORK/hs256-secret"
algorithms = ["HS256"]
cookie = "site_session"

[backend]
listen = "127.0.0.1:$BACKEND_PORT"
secret_file = "$WORK/backend-secret"
EOF

"$BROKER_BIN" serve --config "$WORK/broker.toml" >"$WORK/broker.log" 2>&1 &
PIDS+=("$!")
if wait_200 "$BASE/readyz" 30; then
  pass "broker: serve on $BASE, /readyz 200"
else
  tail -n 30 "$WORK/broker.log" | sed 's/^/  /'
  fail "broker did not become ready"
  summary
fi

# ---------------------------------------------------------------------------
step "credentials"
FUZZ_SESSION_TOKEN="$("$VPY" "$HERE/mint_session_jwt.py" "$WORK/hs256-secret" "$ISSUER" "$AUDIENCE")"
FUZZ_BACKEND_SECRET="$(tr -d '[:space:]' < "$WORK/backend-secret")"
export FUZZ_SESSION_TOKEN FUZZ_BACKEND_SECRET   # read by schemathesis.toml

# Sanity: both credentials work on their own route, so the fuzz run really
# reaches the authenticated code paths (and a broken setup fails here, clearly).
if "$VPY" - "$BASE" "$BACKEND_BASE" <<'PY'
import json, os, sys, urllib.request
base, backend = sys.argv[1], sys.argv[2]
cases = [
    (base, "/v1/token", os.environ["FUZZ_SESSION_TOKEN"], b""),
    (backend, "/v1/backend/token", os.environ["FUZZ_BACKEND_SECRET"], json.dumps({"userId": "fuzz-backend-user"}).encode()),
]
ok = True
for base, path, token, body in cases:
    req = urllib.request.Request(base + path, data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            doc = json.load(r)
            print(f"  POST {path}: {r.status}, userId={doc.get('userId')!r}")
    except urllib.error.HTTPError as e:
        print(f"  POST {path}: {e.code} {e.read()[:300]!r}")
        ok = False
sys.exit(0 if ok else 1)
PY
then
  pass "session JWT (HS256) and backend secret each mint a token"
else
  fail "credentials rejected: the fuzz run would test only the 401 path"
  summary
fi

# ---------------------------------------------------------------------------
if [ -n "${FUZZ_SCHEMA:-}" ]; then
  SCHEMA="$(cd "$(dirname "$FUZZ_SCHEMA")" && pwd)/$(basename "$FUZZ_SCHEMA")"
  SCHEMA_NAME="$FUZZ_SCHEMA (FUZZ_SCHEMA)"
else
  SCHEMA="$BASE/openapi.json"
  SCHEMA_NAME="$BASE/openapi.json"
fi
# --checks all: every check schemathesis has. The stateful ones
# (use_after_free, ensure_resource_availability, object_level_authorization)
# find no links in this document and do nothing; none is excluded.
# Auth per operation (session JWT for /v1/token, backend secret for
# /v1/backend/token) comes from [auth.openapi.*] in schemathesis.toml; the
# missing_required_header / ignored_auth checks and the coverage phase still
# send requests without or with wrong credentials.
# Two runs, one per listener: the sidecar route against the backend listener,
# every other operation against the public one. Each has half the time limit.
LOG_MARK="$(wc -l < "$WORK/broker.log")"
for run in public backend; do
  if [ "$run" = public ]; then
    URL="$BASE"; FILTER=(--exclude-path /v1/backend/token)
  else
    URL="$BACKEND_BASE"; FILTER=(--include-path /v1/backend/token)
  fi
  step "schemathesis $SCHEMATHESIS_VERSION with $SCHEMA_NAME against the $run listener $URL"
  ST_CMD=(
    "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" run "$SCHEMA" --url "$URL"
    "${FILTER[@]}"
    --checks all
    --phases examples,coverage,fuzzing,stateful
    --mode all
    --max-examples "$MAX_EXAMPLES"
    --seed "$SEED"
    --workers 1
    --continue-on-failure
    --request-timeout 10
    # hypothesis' too_slow health check times data generation, not the API; a
    # debug build on a 2-core runner must not turn it into a flaky failure.
    --suppress-health-check too_slow
    --report junit,ndjson --report-dir "$REPORTS/$run"
    --no-color
  )
  echo "+ ${ST_CMD[*]}"
  # cwd is the temp dir so schemathesis' own cache/files never land in the
  # repository. Run in the background and `wait`, so an INT/TERM to this script
  # is handled at once (the EXIT trap then stops schemathesis, broker and simulator).
  (cd "$WORK" && exec timeout --signal=INT --kill-after=10 "$((TIME_LIMIT / 2))" "${ST_CMD[@]}") &
  ST_PID=$!
  PIDS=("$ST_PID" "${PIDS[@]}")
  set +e
  wait "$ST_PID"
  ST_RC=$?
  set -e
  PIDS=("${PIDS[@]:1}")
  if [ "$ST_RC" -eq 0 ]; then
    pass "schemathesis ($run listener): no failures (checks: all; $MAX_EXAMPLES examples/operation; seed $SEED)"
  elif [ "$ST_RC" -eq 124 ] || [ "$ST_RC" -eq 137 ]; then
    fail "schemathesis ($run listener): did not finish within FUZZ_TIME_LIMIT/2=$((TIME_LIMIT / 2))s"
  else
    fail "schemathesis ($run listener): failures found (exit $ST_RC; see the report above, and tests/api-fuzz/FINDINGS.md for known ones)"
  fi
done

# The broker must have survived the run and still be ready.
if wait_200 "$BASE/readyz" 5; then
  pass "broker still ready after the run"
else
  fail "broker not ready after the run (crashed or wedged); see broker.log"
fi
# The run must have reached both token routes with good AND with missing/wrong
# credentials; otherwise a broken auth setup would pass by testing only 401s
# (or only 200s). Counted from the broker's own request log lines.
if tail -n "+$((LOG_MARK + 1))" "$WORK/broker.log" | "$VPY" -c '
import collections, json, sys
seen = collections.Counter()
for line in sys.stdin:
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d.get("message") == "request":
        seen[(d.get("span", {}).get("route"), d.get("status"))] += 1
ok = True
for route in ("/v1/token", "/v1/backend/token"):
    n200, n401 = seen[(route, 200)], seen[(route, 401)]
    print(f"  POST {route}: {n200} x 200, {n401} x 401, {sum(v for (r, _), v in seen.items() if r == route)} requests in all")
    ok = ok and n200 > 0 and n401 > 0
sys.exit(0 if ok else 1)
'; then
  pass "fuzz run reached both token routes authenticated (200) and unauthenticated (401)"
else
  fail "fuzz run did not reach a token route both with and without valid credentials"
fi

# actix-http logs a request it cannot parse at ERROR before the broker sees
# it; schemathesis' probe with a NUL byte in a header triggers exactly one such
# line. Those are noted, not failed (see FINDINGS.md); any other ERROR line or
# a panic is a failure.
PARSE_ERR='"target":"actix_http::h1::dispatcher"'
n_parse="$(grep -F '"level":"ERROR"' "$WORK/broker.log" | grep -cF "$PARSE_ERR" || true)"
[ "$n_parse" -gt 0 ] && echo "NOTE broker log: $n_parse ERROR line(s) from actix_http for unparsable requests (schemathesis' NUL-byte header probe)"
if grep -F '"level":"ERROR"' "$WORK/broker.log" | grep -vF "$PARSE_ERR" | grep -q . \
   || grep -qi 'panicked' "$WORK/broker.log"; then
  { grep -F '"level":"ERROR"' "$WORK/broker.log" | grep -vF "$PARSE_ERR"; grep -i 'panicked' "$WORK/broker.log"; } \
    | head -n 5 | cut -c1-300 | sed 's/^/  /'
  fail "broker logged errors or panics during the run (see broker.log)"
else
  pass "broker log: no panics, no ERROR lines of the broker's own"
fi

summary
