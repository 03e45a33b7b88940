#!/usr/bin/env bash
# Installs the real web sites the [[session.endpoint]] tests ask (tests/api/sites.rs), then, without
# --install-only, starts each once against a throw-away redis-server and checks sign-in, /api/me and
# sign-out. Usage: tests/sites/run.sh [--install-only]
#
# express/: express + express-session with connect-redis, from package-lock.json (npm ci).
# flask/:   Flask + Flask-Login + Flask-Session (Redis), from the pinned requirements.txt, in the
#           venv .venv-sites at the repository root (rebuilt when requirements.txt changes).
# Environment: PYTHON = interpreter that makes the venv (default python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.venv-sites"
PY="${PYTHON:-python3}"

(
  cd "$HERE/express"
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --silent >&2
  fi
)

REQ_HASH=$(sha256sum "$HERE/flask/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_HASH" ]; then
  echo "sites: creating $VENV from tests/sites/flask/requirements.txt" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check --no-input -q -r "$HERE/flask/requirements.txt" >&2
  echo "$REQ_HASH" > "$VENV/.requirements.sha256"
fi

if [ "${1:-}" = "--install-only" ]; then exit 0; fi

# A smoke test of both sites, for running this script by hand.
port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --save "" --appendonly no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true' EXIT
sleep 0.3
check() {
  local name=$1 me=$2; shift 2
  local fifo out url jar
  fifo=$(mktemp -u) && mkfifo "$fifo"
  out=$(mktemp)
  "$@" --port 0 --redis "redis://127.0.0.1:$port" <"$fifo" >"$out" 2>/dev/null &
  local pid=$!
  exec 9>"$fifo"
  for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
  url=$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$out")
  jar=$(mktemp)
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url$me")" = 401 ]
  curl -s -c "$jar" -H 'content-type: application/json' -d '{"user":"smoke"}' "$url/login" >/dev/null
  curl -s -b "$jar" "$url$me" | grep -q smoke
  curl -s -b "$jar" -X POST "$url/logout" >/dev/null
  [ "$(curl -s -b "$jar" -o /dev/null -w '%{http_code}' "$url$me")" = 401 ]
  exec 9>&-
  wait "$pid" 2>/dev/null || true
  rm -f "$fifo" "$out" "$jar"
  echo "sites: $name ok"
}
check express /api/me node "$HERE/express/server.mjs"
check flask /api/me "$VENV/bin/python" "$HERE/flask/app.py"
