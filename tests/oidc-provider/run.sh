#!/usr/bin/env bash
# Install the fixture's pinned dependencies if needed, then run its self-test.
# Usage: tests/oidc-provider/run.sh [--install-only | extra node --test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# (Re)install when node_modules is missing or older than package-lock.json.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --silent >&2
fi

if [ "${1:-}" = "--install-only" ]; then exit 0; fi

exec node --test "$@" test.mjs
