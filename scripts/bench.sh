#!/usr/bin/env bash
# Runs the benchmarks (release build) and prints a Markdown table; see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench broker 2>/dev/null | sed -n '/^| measurement/,$p'
