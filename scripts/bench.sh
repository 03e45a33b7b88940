#!/usr/bin/env bash
# Runs the benchmarks on the release build and prints their tables; see BENCHMARKS.md.
#
#   ./scripts/bench.sh                 # micro, memory, load, redis (about 6 minutes plus the build)
#   ./scripts/bench.sh load memory     # only these
#   ./scripts/bench.sh soak            # the 5-minute soak (SOAK_SECS=... to change)
#
# Everything runs on 127.0.0.1. redis-server (Debian package) is installed when missing and this
# runs as root; without it the Redis rows are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(micro memory load redis)

need_redis=0
for b in "${benches[@]}"; do [ "$b" = redis ] && need_redis=1; done
if [ "$need_redis" = 1 ] && ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
fi

echo "# $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(rustc --version)"
for b in "${benches[@]}"; do
  echo
  echo "## $b"
  case "$b" in
    micro)
      # Criterion's summary lines: the benchmark name, then its time as [low estimate high].
      cargo bench --locked --bench micro 2>/dev/null \
        | awk '/time:/ { line = $0; n = name
                         if (line ~ /^[A-Za-z]/) { n = line; sub(/ +time:.*/, "", n) }
                         sub(/^.*time: +/, "", line); printf "| %s | %s |\n", n, line; next }
               /^[A-Za-z]/ && !/^(Benchmarking|Found|Gnuplot|Running)/ { name = $0 }'
      ;;
    memory) cargo bench --locked --bench memory 2>/dev/null | sed -n '/^|/p' ;;
    load) cargo bench --locked --bench load 2>/dev/null | sed -n '/^|/p' ;;
    redis) cargo bench --locked --bench redis_limiter 2>/dev/null | sed -n '/^|/p' ;;
    soak) cargo bench --locked --bench soak 2>/dev/null ;;
    *) echo "unknown benchmark '$b' (micro, memory, load, redis, soak)" >&2; exit 2 ;;
  esac
done
