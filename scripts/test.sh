#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need when it is missing
# (Debian packages as root, npm packages from the lockfiles, a Python venv for the deploy checks),
# then runs every stage and prints one summary line. Usage: ./scripts/test.sh [stage ...]
# Stages: lint rust js oidc browser deploy api-fuzz
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(lint rust js oidc browser deploy api-fuzz)

passed=0
failed=0
failed_names=()

run_stage() {
  local name=$1; shift
  local started=$SECONDS
  echo
  echo "==> stage ${name}"
  if "$@"; then
    passed=$((passed + 1))
    echo "==> stage ${name}: PASS ($((SECONDS - started)) s)"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "==> stage ${name}: FAIL ($((SECONDS - started)) s)"
  fi
}

stage_lint() {
  cargo fmt --all -- --check && cargo clippy --locked --workspace --all-targets -- -D warnings
}

# Installs Debian packages whose commands are missing (CI runs as root on a fresh machine).
ensure_commands() {
  local missing=() pkg cmd
  for pair in "$@"; do
    cmd=${pair%%=*}; pkg=${pair#*=}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

stage_rust() {
  # The integration tests start their own redis-server and a Node OpenID provider.
  ensure_commands redis-server=redis-server redis-cli=redis-tools node=nodejs npm=npm &&
    bash tests/oidc-provider/run.sh --install-only &&
    cargo test --locked
}

stage_js() {
  (cd clients/js && node --test test/)
}

stage_oidc() {
  bash tests/oidc-provider/run.sh
}

stage_browser() {
  cargo build --locked --bin intellia-token-broker &&
    BROKER_BIN="$ROOT/target/debug/intellia-token-broker" bash tests/browser/run.sh
}

stage_deploy() {
  bash tests/deploy/run.sh
}

stage_api_fuzz() {
  cargo build --locked --bin intellia-token-broker &&
    BROKER_BIN="$ROOT/target/debug/intellia-token-broker" bash tests/api-fuzz/run.sh
}

for stage in "${stages[@]}"; do
  case "$stage" in
    lint) run_stage lint stage_lint ;;
    rust) run_stage rust stage_rust ;;
    js) run_stage js stage_js ;;
    oidc) run_stage oidc stage_oidc ;;
    browser) run_stage browser stage_browser ;;
    deploy) run_stage deploy stage_deploy ;;
    api-fuzz) run_stage api-fuzz stage_api_fuzz ;;
    *) echo "unknown stage: $stage"; failed=$((failed + 1)); failed_names+=("$stage") ;;
  esac
done

echo
[ ${#failed_names[@]} -gt 0 ] && echo "failed stages: ${failed_names[*]}"
echo "stages: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
