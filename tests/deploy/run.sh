#!/usr/bin/env bash
# Offline checks of the deployment files: Dockerfile, .dockerignore, the Helm
# chart and the sidecar manifest, then a real image build of the Dockerfile's
# runtime stage around a static broker binary, run with buildah.
#
#   bash tests/deploy/run.sh                      # from any directory
#   STATIC_BROKER_BIN=/path/to/static/binary bash tests/deploy/run.sh
#   bash tests/deploy/run.sh --chart-only        # Helm chart, its alerts and
#                                                # dashboard, sidecar manifest;
#                                                # no Dockerfile, build or image
#
# Needs no cluster and no Docker engine (see shared STYLE.md, "Checking
# deployment files"). Tools live in .venv-deploy at the repository root
# (gitignored), created on first use from tests/deploy/requirements.txt.
#
# Environment:
#   STATIC_BROKER_BIN  a static intellia-token-broker to package (built with
#                      `cargo auditable`); unset: build one (RUSTFLAGS=+crt-static
#                      cargo auditable build --release --locked --target
#                      x86_64-unknown-linux-gnu, CARGO_TARGET_DIR honoured;
#                      cargo-auditable installed at the Dockerfile's pinned
#                      version when missing)
#   DEPLOY_SKIP_IMAGE=1  skip the image part (chart and Dockerfile checks only)
#   BROKER_BIN         a broker binary (any build) whose live /metrics names the
#                      metrics the chart's alerts and dashboard may use; unset:
#                      tests/deploy/metrics.txt (the names in the plan). Without
#                      the image part it also runs check-config on the rendered
#                      configs.
#   DEPLOY_OUT         where rendered manifests go (default: a temp dir, removed)
#   PYTHON             interpreter for the venv (default python3)
#
# Prints PASS/FAIL/SKIP per check; exits 1 when any check failed.
set -euo pipefail

CHART_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --chart-only) CHART_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg (known: --chart-only)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/deploy"
CHART="$REPO/helm/intellia-token-broker"
VENV="$REPO/.venv-deploy"
TARGET_TRIPLE=x86_64-unknown-linux-gnu
IMAGE=intellia-token-broker:test
START=$(date +%s)

WORK="$(mktemp -d /tmp/itb-deploy.XXXXXX)"
OUT="${DEPLOY_OUT:-$WORK/rendered}"
mkdir -p "$OUT"
# buildah keeps its own storage for this test, so nothing else is touched and
# it can be wiped at will.
BUILDAH_STORE="${BUILDAH_STORE:-/var/tmp/intellia-token-broker-deploy-buildah}"

FAILED=()
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILED+=("$*"); }
skip() { echo "SKIP $*"; }
step() { echo; echo "== $*"; }

PIDS=()
CONTAINERS=()
cleanup() {
  local pid c
  # Children first (the background static build's cargo, a `buildah run`'s broker), then the pid.
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    for c in $(descendants "$pid"); do kill "$c" 2>/dev/null || true; done
    kill "$pid" 2>/dev/null || true
  done
  for c in "${CONTAINERS[@]:-}"; do
    [ -n "$c" ] && bah rm "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
bah() { buildah --root "$BUILDAH_STORE/root" --runroot "$BUILDAH_STORE/runroot" --storage-driver vfs "$@"; }

# Pids of all descendants of $1 (children first).
descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until `$1 healthcheck --url $2` (run on the host) succeeds, up to $3 s.
wait_healthy() {
  local bin=$1 url=$2 secs=$3 i
  for ((i = 0; i < secs * 5; i++)); do
    "$bin" healthcheck --url "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# ---------------------------------------------------------------------------
step "tools (.venv-deploy)"
PY="${PYTHON:-python3}"
REQ_HASH="$(cat "$HERE/requirements.txt" "$HERE/requirements-actionlint.txt" | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$REQ_HASH" ]; then
  pass "venv: reused $VENV"
else
  rm -rf "$VENV"
  if "$PY" -m venv "$VENV" \
     && "$VENV/bin/pip" install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt" \
     && "$VENV/bin/pip" install --disable-pip-version-check --no-input -q --require-hashes --no-deps \
          -r "$HERE/requirements-actionlint.txt"; then
    echo "$REQ_HASH" > "$VENV/.requirements.sha256"
    pass "venv: created $VENV from tests/deploy/requirements.txt and requirements-actionlint.txt"
  else
    fail "venv: could not install tests/deploy/requirements.txt"
    exit 1
  fi
fi

# The static release binary for the image part (cargo-auditable at the Dockerfile's pinned version,
# then `cargo auditable build --release --target x86_64…` with +crt-static) takes most of this
# script's time; it runs in the background from here, while the Dockerfile, workflow and chart
# checks (single-threaded Python and Helm) run beside it. Its PASS/FAIL lines are replayed in order
# by image_checks.
static_build() {
  local auditable t0
  auditable="$(sed -n 's/^ARG CARGO_AUDITABLE_VERSION=//p' "$REPO/Dockerfile")"
  if [ "$(cargo auditable --version 2>/dev/null)" = "cargo-auditable $auditable" ]; then
    echo "PASS cargo-auditable $auditable present"
  else
    t0=$(date +%s)
    if cargo install --locked --quiet "cargo-auditable@$auditable"; then
      echo "PASS cargo-auditable $auditable installed ($(( $(date +%s) - t0 )) s)"
    else
      echo "FAIL cargo install --locked cargo-auditable@$auditable"
      return 1
    fi
  fi
  t0=$(date +%s)
  if (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo auditable build --release --locked --target "$TARGET_TRIPLE"); then
    echo "PASS static release build (cargo auditable build --release --locked --target $TARGET_TRIPLE, +crt-static) in $(( $(date +%s) - t0 )) s"
  else
    echo "FAIL static release build"
    return 1
  fi
}
STATIC_BUILD_PID=""
if [ "$CHART_ONLY" = 0 ] && [ "${DEPLOY_SKIP_IMAGE:-}" != 1 ] && [ -z "${STATIC_BROKER_BIN:-}" ] \
   && { command -v buildah >/dev/null 2>&1 || [ "$(id -u)" = 0 ]; }; then
  static_build > "$WORK/static-build.log" 2>&1 &
  STATIC_BUILD_PID=$!
  PIDS+=("$STATIC_BUILD_PID")
  echo "static release build started in the background (pid $STATIC_BUILD_PID, log in image part)"
fi

dockerfile_checks() {
step "Dockerfile"
if "$VENV/bin/hadolint" --failure-threshold info "$REPO/Dockerfile"; then
  pass "hadolint: Dockerfile clean (failure threshold: info)"
else
  fail "hadolint: Dockerfile has findings"
fi

dockerfile_contract() {
  local f="$REPO/Dockerfile" want
  for want in \
    '^ARG RUST_IMAGE=rust:[0-9]+\.[0-9]+\.[0-9]+-' \
    '^ARG RUNTIME_IMAGE=gcr\.io/distroless/static-debian12:nonroot' \
    '^FROM --platform=\$BUILDPLATFORM \$\{RUST_IMAGE\} AS builder$' \
    "RUSTFLAGS='-C target-feature=\+crt-static'" \
    'cargo auditable build --release --locked --target' \
    '^FROM \$\{RUNTIME_IMAGE\} AS runtime$' \
    '^COPY --from=builder .*/out/intellia-token-broker /usr/local/bin/intellia-token-broker$' \
    '^COPY .*config/default\.toml /etc/intellia-token-broker/config\.toml$' \
    '^ENV BROKER_CONFIG=/etc/intellia-token-broker/config\.toml' \
    '^USER 65532:65532$' \
    '^EXPOSE 8080 9091$' \
    '^ENTRYPOINT \["/usr/local/bin/intellia-token-broker"\]$' \
    '^CMD \["serve"\]$'; do
    grep -Eq -- "$want" "$f" || { echo "  missing: $want"; return 1; }
  done
  if grep -Eq '^(HEALTHCHECK|VOLUME)' "$f"; then echo "  HEALTHCHECK/VOLUME present"; return 1; fi
}
if dockerfile_contract; then
  pass "Dockerfile contract: pinned bases via ARG, static build, fixed paths, USER 65532, ports, no HEALTHCHECK"
else
  fail "Dockerfile contract"
fi

# Multi-arch and supply chain: digests, $BUILDPLATFORM, TARGETARCH mapping (its RUN steps executed with
# stubbed apt-get/rustup/cargo), jemalloc pages, cargo auditable, a RUN-free non-root runtime; the
# self-test makes sure mutated Dockerfiles fail. Prints why the arm64 build itself cannot run here.
if "$VENV/bin/python" "$HERE/dockerfile_checks.py" --self-test "$REPO/Dockerfile"; then
  pass "Dockerfile multi-arch/supply-chain checks (and their self-test on mutated copies)"
else
  fail "Dockerfile multi-arch/supply-chain checks"
fi

# renovate.json keeps the digests and pins above current; Renovate's own validator needs Node 24 and
# ~120 npm packages, so a strict offline check of what would make Renovate skip a file (see the script).
if "$VENV/bin/python" "$HERE/renovate_check.py" --self-test "$REPO"; then
  pass "renovate.json: well-formed, covers every dependency file (and its self-test)"
else
  fail "renovate.json"
fi

dockerignore_contract() {
  local want
  for want in '**/target' '.git' '.venv*' 'helm' '**/node_modules' '**/.env'; do
    grep -qxF -- "$want" "$REPO/.dockerignore" || { echo "  .dockerignore lacks $want"; return 1; }
  done
  for want in 'src' 'Cargo.toml' 'Cargo.lock' 'config'; do
    if grep -qxF -- "$want" "$REPO/.dockerignore"; then echo "  .dockerignore excludes $want"; return 1; fi
  done
}
if dockerignore_contract; then
  pass ".dockerignore: keeps sources/lock/config, drops target, .git, venvs, helm, env files"
else
  fail ".dockerignore"
fi
}
if [ "$CHART_ONLY" = 1 ]; then
  step "Dockerfile"
  skip "Dockerfile and .dockerignore: --chart-only"
else
  dockerfile_checks
fi

# ---------------------------------------------------------------------------
step "release automation (.github/workflows) and release metadata"
if command -v shellcheck >/dev/null 2>&1 \
   || { [ "$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 shellcheck >/dev/null 2>&1 \
        || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 shellcheck >/dev/null 2>&1; }; }; }; then
  SHELLCHECK_NOTE="with shellcheck $(shellcheck --version | sed -n 's/^version: //p') on every run: step"
else
  SHELLCHECK_NOTE="without shellcheck (not installed and cannot be installed here): run: steps not checked"
fi
if out=$("$VENV/bin/actionlint" -no-color "$REPO"/.github/workflows/*.yml 2>&1); then
  pass "actionlint $("$VENV/bin/actionlint" -version | head -n1 | cut -d' ' -f2): $(ls "$REPO"/.github/workflows/*.yml | wc -l) workflows clean, $SHELLCHECK_NOTE"
else
  echo "$out" | head -n 40 | sed 's/^/  /'
  fail "actionlint: .github/workflows has findings"
fi
if "$VENV/bin/python" "$HERE/release_checks.py" --self-test "$REPO"; then
  pass "release metadata: actions pinned by commit SHA, one version everywhere, one license everywhere (and the checks' self-test)"
else
  fail "release metadata"
fi
if "$VENV/bin/python" "$REPO/scripts/chart_readme.py" --check; then
  pass "helm/intellia-token-broker/README.md matches its values' comments (scripts/chart_readme.py)"
else
  fail "chart README drifted from values.yaml: run \`python3 scripts/chart_readme.py\`"
fi

# ---------------------------------------------------------------------------
step "promtool (Debian package prometheus) for the chart's alerts and dashboard"
if command -v promtool >/dev/null 2>&1; then
  pass "promtool: $(promtool --version 2>&1 | head -n1)"
elif [ "$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus >/dev/null 2>&1 \
       || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus >/dev/null 2>&1; }; } \
     && command -v promtool >/dev/null 2>&1; then
  pass "promtool: installed ($(promtool --version 2>&1 | head -n1))"
else
  skip "promtool: not installed and cannot be installed here; PromQL syntax is not checked, metric names still are"
  export DEPLOY_NO_PROMTOOL=1
fi
if [ -n "${BROKER_BIN:-}" ]; then
  echo "metric names for alerts and dashboard: live /metrics of BROKER_BIN=$BROKER_BIN"
else
  echo "metric names for alerts and dashboard: tests/deploy/metrics.txt (set BROKER_BIN to read a live broker's)"
fi

step "Helm chart"
if "$VENV/bin/python" "$HERE/chart_checks.py" --chart "$CHART" --out "$OUT" --venv-bin "$VENV/bin"; then
  pass "helm chart: every chart check"
else
  fail "helm chart: see the FAIL lines above"
fi

step "sidecar manifest (docs/sidecar.yaml)"
for kv in 1.30.0 1.37.0; do
  if out=$("$VENV/bin/kubernetes-validate" --strict -k "$kv" "$REPO/docs/sidecar.yaml" 2>&1) \
     && ! grep -Eq 'WARN|ERROR' <<<"$out"; then
    pass "docs/sidecar.yaml: kubernetes-validate --strict -k $kv"
  else
    echo "$out"
    fail "docs/sidecar.yaml: kubernetes-validate --strict -k $kv"
  fi
done
if "$VENV/bin/python" "$HERE/chart_checks.py" --sidecar "$REPO/docs/sidecar.yaml" --chart "$CHART" \
     --out "$OUT" --venv-bin "$VENV/bin"; then
  pass "docs/sidecar.yaml: every sidecar check"
else
  fail "docs/sidecar.yaml: see the FAIL lines above"
fi

# ---------------------------------------------------------------------------
# Stand-ins for every secret file a rendered config names (made-up values), at
# $WORK/secrets/<path under /var/run/secrets>; the Redis CA under redis-ca/.
STAND_INS_MADE=0
stand_in_secrets() {
  local secrets="$WORK/secrets" f
  [ "$STAND_INS_MADE" = 1 ] && return 0
  mkdir -p "$secrets/intellia" "$secrets/broker"
  printf 'test-api-key-not-real\n' > "$secrets/intellia/api-key"
  for f in backend-secret hs256-secret introspection-secret redis-cache-secret; do
    printf 'test-%s-not-real-0123456789abcdef0123456789\n' "$f" > "$secrets/broker/$f"
  done
  # One HS256 secret per issuer: files under hs256/<key>, each its own value.
  mkdir -p "$secrets/broker/hs256"
  for f in $(grep -ho '/var/run/secrets/broker/hs256/[-._a-zA-Z0-9]*' "$OUT"/*.config.json 2>/dev/null | sort -u); do
    printf 'test-%s-not-real-0123456789abcdef0123456789\n' "$(basename "$f")" > "$secrets/broker/hs256/$(basename "$f")"
  done
  # managed-services: a Zitadel key JSON (a real RSA key, a made-up id), a
  # Redis CA and an ACL password, at the paths the chart mounts them.
  mkdir -p "$secrets/redis" "$secrets/redis-ca"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/zitadel.pem" 2>/dev/null
  "$VENV/bin/python" - "$WORK/zitadel.pem" > "$secrets/broker/introspection-client-key.json" <<'PY'
import json, sys
print(json.dumps({"type": "application", "keyId": "100000000000000001", "key": open(sys.argv[1]).read(),
                  "appId": "100000000000000002", "clientId": "100000000000000003@broker-test"}))
PY
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/redis-ca.key" -subj /CN=itb-test-redis-ca -days 2 \
    -out "$secrets/redis-ca/ca.pem" 2>/dev/null
  printf 'test-redis-password-not-real\n' > "$secrets/redis/password"
  STAND_INS_MADE=1
}

# The broker must accept what the chart renders: every <set>.config.json that
# chart_checks.py wrote (one per values set) and the sidecar recipe's TOML go
# through `$1 check-config`, with the secret paths pointed at stand-ins.
RENDERED_CONFIGS_CHECKED=0
# The chart renders [backend] listen (the sidecar route on its own port). A broker built before that
# key existed refuses it as unknown; then it is left out of the copies checked here, said once, so
# the rest of each config is still checked. A broker that knows the key checks it like any other.
backend_listen_known() {
  local bin=$1 probe="$WORK/probe-backend-listen.toml"
  stand_in_secrets
  printf '[intellia]\norganization_id = "org"\napi_key_file = "%s"\n[backend]\nsecret_file = "%s"\nlisten = "127.0.0.1:8081"\n' \
    "$WORK/secrets/intellia/api-key" "$WORK/secrets/broker/backend-secret" > "$probe"
  local said
  said="$("$bin" check-config --config "$probe" 2>&1 || true)"
  ! grep -q 'unknown config key `listen`' <<<"$said"
}

rendered_configs_check() {
  local bin=$1 src cfg set out rc secrets="$WORK/secrets" strip_listen=0
  local -a env_over
  stand_in_secrets
  if ! backend_listen_known "$bin"; then
    strip_listen=1
    echo "NOTE this broker does not know [backend] listen yet: left out of the rendered configs checked below"
  fi
  for src in "$OUT"/*.config.json "$OUT/sidecar.config.toml"; do
    set="$(basename "$src")"
    set="${set%%.config.*}"
    cfg="$WORK/$(basename "$src")"
    sed -e "s#/var/run/secrets/#$secrets/#g" -e "s#/etc/redis-ca/#$secrets/redis-ca/#g" "$src" > "$cfg"
    if [ "$strip_listen" = 1 ] && [ "${src##*.}" = json ]; then
      "$VENV/bin/python" -c 'import json, sys; p = sys.argv[1]; c = json.load(open(p)); c.get("backend", {}).pop("listen", None); json.dump(c, open(p, "w"))' "$cfg"
    elif [ "$strip_listen" = 1 ]; then
      sed -i '/^listen = "127\.0\.0\.1:8081"/d' "$cfg"
    fi
    # A [redis] table without a url: the chart passes it from a Secret as
    # BROKER__REDIS__URL (redisUrlSecret), so give one the same way.
    env_over=()
    # The default values leave organization_id empty (NOTES.txt says to set
    # it); set it the way an operator may, to check the rest of that config.
    [ "$set" = default ] && env_over=(BROKER__INTELLIA__ORGANIZATION_ID=org-456)
    if [ "${src##*.}" = json ] && "$VENV/bin/python" -c \
         'import json, sys; r = json.load(open(sys.argv[1])).get("redis"); sys.exit(0 if r is not None and "url" not in r else 1)' \
         "$cfg"; then
      env_over+=(BROKER__REDIS__URL=redis://127.0.0.1:6379)
    fi
    set +e
    out="$(env "${env_over[@]}" "$bin" check-config --config "$cfg" 2>&1)"
    rc=$?
    set -e
    if [ "$rc" -eq 0 ] && ! grep -q 'not-real' <<<"$out"; then
      pass "check-config accepts the rendered $(basename "$src") ($set) and prints no secret"
    else
      echo "$out" | head -n 20 | sed 's/^/  /'
      fail "check-config on the rendered $(basename "$src") ($set): exit $rc"
    fi
  done
  RENDERED_CONFIGS_CHECKED=1
}

# ---------------------------------------------------------------------------
step "image (buildah, runtime stage on scratch around a host-built static binary)"
image_checks() {
  if [ "$CHART_ONLY" = 1 ]; then
    skip "image: --chart-only"
    return
  fi
  if [ "${DEPLOY_SKIP_IMAGE:-}" = 1 ]; then
    skip "image: DEPLOY_SKIP_IMAGE=1"
    return
  fi
  if ! command -v buildah >/dev/null 2>&1; then
    echo "buildah missing: installing the Debian package"
    if [ "$(id -u)" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 buildah >/dev/null 2>&1 \
         || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 buildah >/dev/null 2>&1; }; }; then
      pass "buildah: installed ($(buildah --version))"
    else
      skip "image: buildah is not installed and cannot be installed here (not root, or no package)"
      return
    fi
  fi

  local bin="${STATIC_BROKER_BIN:-}"
  if [ -z "$bin" ]; then
    # Started in the background at the top (static_build), while the other checks ran.
    local rc=0
    echo "STATIC_BROKER_BIN unset: waiting for the static release build started at the top"
    wait "$STATIC_BUILD_PID" || rc=$?
    if [ "$rc" -ne 0 ]; then
      sed 's/^/  /' "$WORK/static-build.log" | grep -v '^  \(PASS\|FAIL\) ' | tail -n 30 || true
    fi
    while IFS= read -r line; do
      case "$line" in
        "PASS "*) pass "${line#PASS }" ;;
        "FAIL "*) fail "${line#FAIL }" ;;
      esac
    done < "$WORK/static-build.log"
    [ "$rc" -eq 0 ] || return
    bin="${CARGO_TARGET_DIR:-$REPO/target}/$TARGET_TRIPLE/release/intellia-token-broker"
  fi
  if [ ! -x "$bin" ]; then
    fail "static binary: $bin is not an executable file"
    return
  fi
  if readelf -lW "$bin" 2>/dev/null | grep -q 'Requesting program interpreter' \
     || readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    fail "static binary: $bin is dynamically linked (it would not run on distroless/static or scratch)"
    return
  fi
  pass "static binary: $bin ($(du -h "$bin" | cut -f1), no interpreter, no shared libraries)"
  local deps
  if deps="$("$VENV/bin/python" "$HERE/dep_section.py" "$bin" intellia-token-broker actix-web rustls tikv-jemalloc-sys)"; then
    pass "auditable binary: $deps; lists intellia-token-broker, actix-web, rustls, tikv-jemalloc-sys"
  else
    echo "$deps"
    fail "auditable binary: dependency list (.dep-v0) missing or incomplete"
  fi

  # Build context for the `builder` stage: what the real builder leaves in /out (the same path for
  # every TARGETARCH). The host binary is x86_64, hence TARGETARCH=amd64; buildah does not set it (or
  # BUILDARCH) for the skipped builder stage and would warn.
  local bctx="$WORK/builder-context"
  mkdir -p "$bctx/out"
  cp "$bin" "$bctx/out/intellia-token-broker"
  local version revision
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
  revision="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  bah rmi -f "$IMAGE" >/dev/null 2>&1 || true
  if bah bud -q --isolation chroot \
       --build-context "builder=$bctx" \
       --build-arg RUNTIME_IMAGE=scratch \
       --build-arg TARGETARCH=amd64 --build-arg BUILDARCH=amd64 \
       --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
       --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
       --target runtime -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >/dev/null; then
    pass "buildah bud --target runtime (RUNTIME_IMAGE=scratch, builder=host binary) -> $IMAGE"
  else
    fail "buildah bud of the Dockerfile's runtime stage"
    return
  fi

  bah inspect --type image "$IMAGE" > "$WORK/image.json"
  if "$VENV/bin/python" - "$version" "$WORK/image.json" <<'PY'
import json, sys
version = sys.argv[1]
c = json.load(open(sys.argv[2]))["OCIv1"]["config"]
want = {
    "User": "65532:65532",
    "Entrypoint": ["/usr/local/bin/intellia-token-broker"],
    "Cmd": ["serve"],
    "ExposedPorts": {"8080/tcp": {}, "9091/tcp": {}},
}
errors = [f"{k}={c.get(k)!r}, want {v!r}" for k, v in want.items() if c.get(k) != v]
if "BROKER_CONFIG=/etc/intellia-token-broker/config.toml" not in c.get("Env", []):
    errors.append("BROKER_CONFIG not set")
if c.get("Healthcheck"):
    errors.append("image has a HEALTHCHECK")
if c.get("Volumes"):
    errors.append(f"image declares volumes {c['Volumes']}")
labels = c.get("Labels") or {}
for k in ("title", "description", "licenses", "version", "revision", "created", "source"):
    if not labels.get(f"org.opencontainers.image.{k}"):
        errors.append(f"label org.opencontainers.image.{k} missing")
if labels.get("org.opencontainers.image.version") != version:
    errors.append(f"version label {labels.get('org.opencontainers.image.version')!r} != Cargo.toml {version!r}")
if errors:
    print("\n".join("  " + e for e in errors))
sys.exit(1 if errors else 0)
PY
  then
    pass "image config: USER 65532:65532, ENTRYPOINT/CMD serve, BROKER_CONFIG, EXPOSE 8080 9091, no HEALTHCHECK, OCI labels"
  else
    fail "image config"
  fi

  local ctr mnt
  ctr="$(bah from -q "$IMAGE")"
  CONTAINERS+=("$ctr")
  mnt="$(bah mount "$ctr")"
  local files
  files="$(cd "$mnt" && find . -xdev \( -type f -o -type l \) -printf '%p %m %U:%G\n' | sort)"
  bah umount "$ctr" >/dev/null
  if [ "$files" = "./etc/intellia-token-broker/config.toml 444 0:0
./usr/local/bin/intellia-token-broker 555 0:0" ]; then
    pass "image content: only the binary (0555 root) and the default config (0444 root); nothing writable by 65532"
  else
    echo "$files" | sed 's/^/  /'
    fail "image content"
  fi

  local out rc
  if out="$(bah run --isolation chroot "$ctr" -- /usr/local/bin/intellia-token-broker --version 2>&1)" \
     && grep -qF "$version" <<<"$out"; then
    pass "in image: intellia-token-broker --version -> $(head -n1 <<<"$out")"
  else
    echo "$out" | sed 's/^/  /'
    fail "in image: --version (want $version)"
  fi

  # distroless/static ships Debian's CA bundle at /etc/ssl/certs/ca-certificates.crt
  # and the broker's HTTP clients (rustls with the platform verifier) need it
  # at start-up; the test image is built on scratch, so the host's (Debian's)
  # bundle stands in for distroless's, mounted read-only for each run.
  local ca=/etc/ssl/certs/ca-certificates.crt
  local -a with_ca=()
  if [ -r "$ca" ]; then
    with_ca=(-v "$ca:$ca:ro")
  else
    echo "note: no $ca on this host; runs inside the image get no CA bundle"
  fi

  # A broker on the host (dev mode: no config needed), probed from inside the image.
  local port log
  port="$(free_port)"
  log="$WORK/dev-host.log"
  "$bin" dev --listen "127.0.0.1:$port" >"$log" 2>&1 &
  PIDS+=("$!")
  if wait_healthy "$bin" "http://127.0.0.1:$port/healthz" 30 \
     && bah run --isolation chroot "${with_ca[@]}" "$ctr" -- /usr/local/bin/intellia-token-broker healthcheck \
          --url "http://127.0.0.1:$port/healthz" >"$WORK/hc.log" 2>&1; then
    pass "in image: healthcheck --url http://127.0.0.1:$port/healthz against a running broker exits 0"
  else
    cat "$WORK/hc.log" 2>/dev/null | sed 's/^/  /'
    tail -n 5 "$log" | sed 's/^/  /'
    fail "in image: healthcheck against a running broker"
  fi
  # Without any CA bundle (a bare scratch base) the plain-http healthcheck
  # should still work; today it cannot build its HTTP client. A broker-side
  # gap, reported but not failed: the shipped base (distroless) has the bundle.
  if bah run --isolation chroot "$ctr" -- /usr/local/bin/intellia-token-broker healthcheck \
       --url "http://127.0.0.1:$port/healthz" >"$WORK/hc-noca.log" 2>&1; then
    pass "in image: healthcheck works even without a CA bundle"
  else
    echo "KNOWN-GAP in image: without /etc/ssl/certs the healthcheck fails ($(grep -m1 error "$WORK/hc-noca.log" | cut -c1-120)); fine on distroless, not on scratch"
  fi
  kill "${PIDS[-1]}" 2>/dev/null || true

  local dead
  dead="$(free_port)"
  set +e
  bah run --isolation chroot "${with_ca[@]}" "$ctr" -- /usr/local/bin/intellia-token-broker healthcheck \
    --url "http://127.0.0.1:$dead/healthz" >/dev/null 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    pass "in image: healthcheck against a closed port exits non-zero ($rc)"
  else
    fail "in image: healthcheck against a closed port exited 0"
  fi

  # The broker serving from inside the image, as uid 65532, probed from the host.
  port="$(free_port)"
  log="$WORK/dev-image.log"
  bah run --isolation chroot "${with_ca[@]}" "$ctr" -- /usr/local/bin/intellia-token-broker dev --listen "127.0.0.1:$port" >"$log" 2>&1 &
  local runpid=$!
  PIDS+=("$runpid")
  local procs="" p uids=""
  if wait_healthy "$bin" "http://127.0.0.1:$port/healthz" 30; then
    pass "in image: broker (dev --listen 127.0.0.1:$port) serves /healthz to the host"
    procs="$(descendants "$runpid")"
    for p in $procs; do
      case "$(ps -o comm= -p "$p" 2>/dev/null)" in
        intellia-token*) uids="$uids $(ps -o uid= -p "$p" | tr -d ' ')" ;;
      esac
    done
    if [ -n "$uids" ] && [ -z "$(tr ' ' '\n' <<<"$uids" | grep -v '^$' | grep -vx 65532)" ]; then
      pass "in image: the broker process runs as uid 65532 (the image's USER)"
    else
      fail "in image: broker process uid(s) '${uids# }', want 65532"
    fi
  else
    tail -n 20 "$log" | sed 's/^/  /'
    fail "in image: broker serving from the image"
  fi
  # End what we started: the processes under our own `buildah run`, by pid.
  procs="$(descendants "$runpid")"
  for p in $procs; do kill -TERM "$p" 2>/dev/null || true; done
  kill -TERM "$runpid" 2>/dev/null || true
  wait "$runpid" 2>/dev/null || true

  # The chart's rendered configs (and the sidecar recipe's) must be accepted by
  # this broker's check-config.
  rendered_configs_check "$bin"
  local secrets="$WORK/secrets"

  # The image's own default config, with an API key mounted where it expects one.
  set +e
  out="$(bah run --isolation chroot "${with_ca[@]}" -v "$secrets/intellia:/var/run/secrets/intellia:ro" "$ctr" -- \
          /usr/local/bin/intellia-token-broker check-config --config /etc/intellia-token-broker/config.toml 2>&1)"
  rc=$?
  set -e
  if [ "$rc" -eq 0 ] && ! grep -q 'not-real' <<<"$out"; then
    pass "in image: check-config accepts the default config (/etc/intellia-token-broker/config.toml)"
  else
    echo "$out" | head -n 20 | sed 's/^/  /'
    fail "in image: check-config of the default config: exit $rc"
  fi

  local size
  size="$(bah images --format '{{.Size}}' "$IMAGE" | head -n1)"
  pass "image size: $size (binary $(du -h "$bin" | cut -f1); on distroless/static add about 2 MB)"
}
image_checks

step "rendered configs through check-config"
if [ "$RENDERED_CONFIGS_CHECKED" = 1 ]; then
  pass "rendered configs: checked with the image's binary above"
elif [ -n "${BROKER_BIN:-}" ]; then
  rendered_configs_check "$BROKER_BIN"
else
  skip "rendered configs: no broker binary (the image part builds one; or set BROKER_BIN)"
fi

# ---------------------------------------------------------------------------
echo
ELAPSED=$(( $(date +%s) - START ))
if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "deploy checks: all passed in ${ELAPSED}s"
  exit 0
fi
echo "deploy checks: ${#FAILED[@]} failed in ${ELAPSED}s:"
printf '  - %s\n' "${FAILED[@]}"
exit 1
