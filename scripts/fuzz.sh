#!/usr/bin/env bash
# Coverage-guided fuzzing smoke run: every cargo-fuzz target in fuzz/ (libFuzzer) for a bounded time,
# starting from the committed seeds and regression inputs. Installs cargo-fuzz when it is missing.
# Needs the nightly toolchain (`cargo +nightly`); the broker itself stays on its pinned stable.
#
# Usage: ./scripts/fuzz.sh [seconds-per-target, default 60] [target ...]
# Ends with one line per target and exits non-zero when any target found a crash, a timeout or an
# out-of-memory; the input that did it is in fuzz/artifacts/<target>/ (see fuzz/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(session_token token_request backend_request config intellia_response client_key)
# Sanitizer: AddressSanitizer (cargo-fuzz's default) also watches the unsafe code in dependencies;
# `FUZZ_SANITIZER=none` fuzzes faster (the broker forbids unsafe code; its bugs are panics).
SANITIZER=${FUZZ_SANITIZER:-address}

seconds=60
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  if [[ ! " ${ALL_TARGETS[*]} " =~ " ${t} " ]]; then
    echo "unknown target '${t}'; targets: ${ALL_TARGETS[*]}" >&2
    exit 2
  fi
done

# Inputs longer than any real one only slow the search: a token may be 16 KiB (the verifier's
# limit), a body 4 KiB (max_body_bytes in the harness), Intellia's answer is a few hundred bytes.
max_len() {
  case $1 in
    session_token) echo 17408 ;;
    token_request | backend_request) echo 6144 ;;
    config) echo 8192 ;;
    intellia_response) echo 4096 ;;
    client_key) echo 8192 ;;
  esac
}

# The targets that drive the whole application keep state by design (caches, the simulator's users),
# so nearly every input allocates more than it frees and libFuzzer would scan the heap for leaks
# after each one, a quarter of the speed. Leaks are still looked for in the stateless targets.
extra_flags() {
  case $1 in
    session_token | token_request | backend_request) echo -detect_leaks=0 ;;
  esac
}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing: cargo fuzz needs 'cargo +nightly' (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
  echo "==> installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo install --locked cargo-fuzz --version "${CARGO_FUZZ_VERSION}" || exit 2
fi

# Debug assertions are on, so an arithmetic overflow is a crash here as it would be in a debug build
# (release builds wrap silently, which is a bug all the same).
build_flags=(--release --debug-assertions --sanitizer "${SANITIZER}")
# actix-router leaks route names on purpose; see the file.
export LSAN_OPTIONS="suppressions=${ROOT}/fuzz/lsan.supp${LSAN_OPTIONS:+:${LSAN_OPTIONS}}"
echo "==> building the fuzz targets (nightly, sanitizer ${SANITIZER})"
(cd fuzz && cargo +nightly fuzz build "${build_flags[@]}") || exit 2

summary=()
failed=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/${t}"
  artifacts="fuzz/artifacts/${t}"
  log="${artifacts}/fuzz.log"
  mkdir -p "${corpus}" "${artifacts}"
  # The first directory receives what the fuzzer finds; seeds and regressions are only read.
  dirs=("${ROOT}/${corpus}" "${ROOT}/fuzz/seeds/${t}")
  [ -d "fuzz/regressions/${t}" ] && dirs+=("${ROOT}/fuzz/regressions/${t}")
  dict=()
  [ -f "fuzz/dicts/${t}.dict" ] && dict=(-dict="${ROOT}/fuzz/dicts/${t}.dict")
  echo
  echo "==> ${t}: ${seconds} s"
  (cd fuzz && cargo +nightly fuzz run "${build_flags[@]}" "${t}" "${dirs[@]}" -- \
    -max_total_time="${seconds}" -max_len="$(max_len "${t}")" -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="${ROOT}/${artifacts}/" "${dict[@]}" $(extra_flags "${t}")) 2>&1 | tee "${log}" |
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE|pulse)|==[0-9]+==|SUMMARY|Test unit written|thread .* panicked)'
  status=${PIPESTATUS[0]}
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "${log}" | grep -oE '[0-9]+$' | tail -1)
  cov=$(grep -oE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)[[:space:]]+cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "${log}" |
    tail -1 | sed -E 's/^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+//; s/corp: ([0-9]+)/corpus \1 inputs/')
  if [ "${status}" -eq 0 ]; then
    summary+=("${t}: ok, ${execs:-?} execs in ${seconds} s, ${cov:-no coverage line}")
  else
    failed=$((failed + 1))
    artifact=$(grep -oE 'Test unit written to .*' "${log}" | tail -1 | sed 's/Test unit written to //')
    summary+=("${t}: FAILED (exit ${status}) after ${execs:-?} execs; input: ${artifact:-see ${log}}")
  fi
done

echo
echo "==> fuzz summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
[ "${failed}" -eq 0 ]
