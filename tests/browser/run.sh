#!/usr/bin/env bash
# Browser end-to-end tests of clients/js against the real broker, in headless Debian Chromium.
#
#   BROKER_BIN=/path/to/intellia-token-broker bash tests/browser/run.sh
#
# BROKER_BIN defaults to target/debug/intellia-token-broker under the repository root; a relative
# BROKER_BIN is taken from the current directory. Works from any directory. Installs Debian's
# chromium when /usr/bin/chromium is missing and this package's node_modules (npm ci) when they are.
# UPDATE_DOCS_SCREENSHOT=1 also copies the demo page's screenshot to docs/demo.png.
# CLIENT_FROM=repo makes the widget pages load clients/js from the working tree instead of the
# broker's /v1/client.js (compiled into the binary), to try a client change on an older build.
# Every process the tests start is killed when this script ends, however it ends.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [[ -n "${BROKER_BIN:-}" ]]; then
  case "$BROKER_BIN" in
    /*) ;;
    *) BROKER_BIN="$PWD/$BROKER_BIN" ;;
  esac
else
  BROKER_BIN="$repo/target/debug/intellia-token-broker"
fi
export BROKER_BIN
if [[ ! -x "$BROKER_BIN" ]]; then
  echo "run.sh: no broker binary at $BROKER_BIN (build it, or set BROKER_BIN)" >&2
  exit 2
fi

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ ! -x /usr/bin/chromium ]]; then
  echo "run.sh: installing Debian chromium" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

cd "$here"
if [[ ! -d node_modules/playwright-core ]]; then
  echo "run.sh: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

mkdir -p artifacts
# The tests run in a session of their own, so that cleanup can kill its whole process group
# (the broker, the simulator, page servers) even when the test process itself dies.
pgid_file=$(mktemp)
cleanup() {
  local pgid
  pgid=$(cat "$pgid_file" 2>/dev/null || true)
  if [[ -n "$pgid" ]]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$pgid_file"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

set +e
# the outer timeout bounds the whole run; every wait inside has its own, shorter bound
setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$pgid_file" \
  timeout --kill-after=10 900 node --test --test-concurrency=1 widget.e2e.test.mjs &
wait $!
status=$?
set -e
exit "$status"
