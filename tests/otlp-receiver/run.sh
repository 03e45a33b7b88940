#!/usr/bin/env bash
# Create/refresh the receiver's venv if needed, then run its self-test.
# Usage: tests/otlp-receiver/run.sh [--install-only | extra unittest args]
#
# The venv is .venv-otlp at the repository root (gitignored), built from requirements.txt and
# rebuilt when that file changes. Tests that spawn the receiver run
#   <repo>/.venv-otlp/bin/python <repo>/tests/otlp-receiver/receiver.py --port 0
# Environment: PYTHON = interpreter that makes the venv (default python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.venv-otlp"
PY="${PYTHON:-python3}"

REQ_HASH=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_HASH" ]; then
  echo "otlp-receiver: creating $VENV from tests/otlp-receiver/requirements.txt" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt" >&2
  echo "$REQ_HASH" > "$VENV/.requirements.sha256"
fi

if [ "${1:-}" = "--install-only" ]; then exit 0; fi

cd "$HERE"
exec "$VENV/bin/python" -m unittest -v "$@" test_receiver
