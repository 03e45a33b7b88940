#!/usr/bin/env bash
# Runs the benchmarks on the release build and prints their tables; see BENCHMARKS.md.
#
#   ./scripts/bench.sh                 # floor, allocs, micro, memory, load, redis (~10 min + build)
#   ./scripts/bench.sh floor allocs    # only these
#   ./scripts/bench.sh soak            # the 5-minute soak (SOAK_SECS=... to change)
#   ./scripts/bench.sh profile         # perf profile of the cache-hit path under wrk: top symbols
#   ./scripts/bench.sh check           # fails when the floor ratio regressed by more than 10 %
#                                      # or a cache hit allocates more than benches/baseline.txt
#
# floor: `POST /v1/token` (cache hit) ÷ `GET /healthz` of the same server, driven by wrk (the load
# generator must cost less than the route it measures); BROKER_BIN=path measures another build.
# Everything runs on 127.0.0.1. wrk, redis-server and perf (Debian packages) are installed when
# missing and this runs as root; without redis-server the Redis rows are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(floor allocs micro memory load redis)

install() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
  else
    echo "missing: ${missing[*]} (install the Debian packages)" >&2
  fi
}
for b in "${benches[@]}"; do
  case "$b" in
    floor | check) install wrk=wrk redis-server=redis-server ;;
    redis) install redis-server=redis-server ;;
    profile) install wrk=wrk perf=linux-perf ;;
  esac
done

floor() { cargo bench --locked --bench http_floor -- "$@" 2>/dev/null; }
allocs() { cargo bench --locked --bench allocs 2>/dev/null; }

# The cache-hit path under wrk, sampled by perf: a release build with symbols (profile
# `profiling`), one HS256 session, limits set high, RUST_LOG=warn, as the floor bench runs it.
profile() {
  cargo build --locked --profile profiling --bin intellia-token-broker >/dev/null
  local bin=$PWD/target/profiling/intellia-token-broker dir
  dir=$(mktemp -d)
  python3 - "$dir" <<'EOF'
import base64, hashlib, hmac, json, sys, time
d = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = b"profile-hs256-secret-that-is-long-enough-0123456789"
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"iss": "https://hs.profile.example", "aud": "chat-widget", "sub": "profile-user",
                       "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
open(f"{d}/hs256", "wb").write(secret)
open(f"{d}/api-key", "w").write("sk_profile_0123456789")
open(f"{d}/post.lua", "w").write(f'wrk.method = "POST"\nwrk.headers["Authorization"] = "Bearer {head}.{body}.{sig}"\n')
limits = "\n".join(f"[rate_limit.{n}]\n{k} = {v}\nburst = {v}" for n, k, v in
                   [("per_user", "per_minute", 10**9), ("per_ip", "per_minute", 10**9), ("upstream", "per_second", 1000)])
open(f"{d}/config.toml", "w").write(f'''[server]
listen = "127.0.0.1:18180"
[intellia]
base_url = "http://127.0.0.1:18181"
organization_id = "org"
api_key_file = "{d}/api-key"
[[session.jwt]]
issuer = "https://hs.profile.example"
audience = "chat-widget"
hs256_secret_file = "{d}/hs256"
algorithms = ["HS256"]
{limits}
''')
EOF
  "$bin" simulate-intellia --listen 127.0.0.1:18181 --organization-id org --api-key-file "$dir/api-key" >/dev/null 2>&1 &
  local sim=$!
  RUST_LOG=warn "$bin" serve --config "$dir/config.toml" >/dev/null 2>&1 &
  local broker=$!
  sleep 1
  wrk -t2 -c32 -d2s -s "$dir/post.lua" http://127.0.0.1:18180/v1/token >/dev/null # warm-up
  perf record -F 999 -g -o "$dir/perf.data" -p "$broker" -- sleep 6 >/dev/null 2>&1 &
  local perf=$!
  wrk -t2 -c32 -d7s -s "$dir/post.lua" http://127.0.0.1:18180/v1/token | grep Requests/sec
  wait "$perf" || true
  kill "$broker" "$sim" 2>/dev/null || true
  echo "| self % | symbol |"
  echo "|---|---|"
  perf report -i "$dir/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
    awk '/%/ && $1+0 >= 0.5 { pct = $1; $1 = ""; sub(/^ +\[[.k]\] /, ""); printf "| %s | %s |\n", pct, substr($0, 1, 110) }' |
    head -30
  rm -rf "$dir"
}

# Compares a run with benches/baseline.txt (`floor-ratio local 0.80`, `allocs token 16.4`).
check() {
  local out ratio base allocs base_allocs failed=0
  out=$(floor local)
  echo "$out"
  ratio=$(awk '$1 == "floor-ratio" && $2 == "local" { print $3 }' <<<"$out")
  base=$(awk '$1 == "floor-ratio" && $2 == "local" { print $3 }' benches/baseline.txt)
  if awk -v r="$ratio" -v b="$base" 'BEGIN { exit !(r < 0.9 * b) }'; then
    echo "FAIL: cache-hit ratio $ratio is more than 10 % below the baseline $base"
    failed=1
  else
    echo "ok: cache-hit ratio $ratio (baseline $base)"
  fi
  allocs=$(allocs | awk -F'|' '/POST \/v1\/token/ { gsub(/ /, "", $3); print $3 }')
  base_allocs=$(awk '$1 == "allocs" && $2 == "token" { print $3 }' benches/baseline.txt)
  if awk -v a="$allocs" -v b="$base_allocs" 'BEGIN { exit !(a > b + 0.5) }'; then
    echo "FAIL: a cache hit allocates $allocs times, the baseline $base_allocs"
    failed=1
  else
    echo "ok: $allocs allocations per cache hit (baseline $base_allocs)"
  fi
  return $failed
}

echo "# $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(rustc --version)"
for b in "${benches[@]}"; do
  echo
  echo "## $b"
  case "$b" in
    floor) floor ;;
    allocs) allocs ;;
    profile) profile ;;
    check) check ;;
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
    *) echo "unknown benchmark '$b' (floor, allocs, profile, check, micro, memory, load, redis, soak)" >&2; exit 2 ;;
  esac
done
