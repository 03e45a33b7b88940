# syntax=docker/dockerfile:1.7
#
# intellia-token-broker: one static binary on a distroless, non-root base.
#
#   docker build -t intellia-token-broker .
#   docker run --rm --read-only -p 8080:8080 -p 9091:9091 \
#     -v "$PWD/secrets/api-key:/var/run/secrets/intellia/api-key:ro" \
#     -v "$PWD/my-config.toml:/etc/intellia-token-broker/config.toml:ro" \
#     intellia-token-broker
#
# Base images are pinned through build arguments so that a build is reproducible
# and so CI can swap them (tests/deploy/run.sh builds the runtime stage with
# RUNTIME_IMAGE=scratch around a binary built on the host, via
# `--build-context builder=DIR` where DIR/out/intellia-token-broker exists).
# The runtime base must carry a CA bundle at /etc/ssl/certs/ca-certificates.crt
# (distroless/static does; bare scratch does not): the broker loads it at start.
#
# Multi-arch (linux/amd64, linux/arm64) from this one file, no emulation:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO:TAG --push .
# The builder runs on the build machine's own platform and cross-compiles for
# TARGETARCH; the runtime stage only copies files, so it has no RUN to emulate.
#
# Each default is `tag@digest`: the tag says what it is, the digest is what is
# pulled. A digest must be the multi-arch *index* digest (what
# `docker buildx imagetools inspect IMAGE:TAG` prints first), not one
# platform's manifest, or the other platform's build gets the wrong image.
# Renovate (renovate.json, pinDigests) keeps tag and digest current together.
# rust:1.95.0-slim-bookworm, index digest as published in 2026 (see docs/deploy.md).
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
# gcr.io/distroless/static-debian12:nonroot, index digest as of 2026-08-26.
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab

# ---------------------------------------------------------------------------
# builder: a fully static release binary (glibc, +crt-static) for TARGETARCH,
# built on BUILDPLATFORM. `--target` is always given so that proc-macros and
# build scripts (built for the build machine) are not linked statically, which
# would fail.
# ---------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder
ARG TARGETARCH
ARG BUILDARCH
# cargo-auditable embeds the dependency list in the binary (section .dep-v0),
# so scanners (cargo audit bin, trivy, grype) can check the shipped binary.
# renovate: datasource=crate depName=cargo-auditable
ARG CARGO_AUDITABLE_VERSION=0.7.7
WORKDIR /src
# The target triple and, when TARGETARCH is not the build machine's, the cross
# C toolchain (ring and jemalloc have C parts; the linker must be the
# target's). The choices go to /tmp/target.env for the build step below.
# jemalloc's page size is fixed when it is built: arm64 kernels run with 4K,
# 16K or 64K pages, and a jemalloc built for 4K aborts on a 64K kernel, so arm64
# is built for 64K (lg 16), which works on all three.
# Cross packages track the base image's Debian release (pinned by digest above);
# ${cross} is a list of package names, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN case "${TARGETARCH}" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; env_triple=X86_64_UNKNOWN_LINUX_GNU; cc_triple=x86_64_unknown_linux_gnu; \
             cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; env_triple=AARCH64_UNKNOWN_LINUX_GNU; cc_triple=aarch64_unknown_linux_gnu; \
             cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH '${TARGETARCH}': this Dockerfile builds linux/amd64 and linux/arm64 only" >&2; exit 1 ;; \
    esac \
 && echo "RUST_TARGET=${triple}" > /tmp/target.env \
 && if [ "${TARGETARCH}" = arm64 ]; then \
      echo "export JEMALLOC_SYS_WITH_LG_PAGE=16" >> /tmp/target.env; \
    fi \
 && if [ "${TARGETARCH}" != "${BUILDARCH}" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ${cross} \
      && rm -rf /var/lib/apt/lists/* \
      && { echo "export CARGO_TARGET_${env_triple}_LINKER=${gnu}-gcc"; \
           echo "export CC_${cc_triple}=${gnu}-gcc"; \
           echo "export AR_${cc_triple}=${gnu}-ar"; \
           echo "CROSS=1"; } >> /tmp/target.env; \
    fi \
 && rustup target add "${triple}" \
 && cat /tmp/target.env
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install --locked "cargo-auditable@${CARGO_AUDITABLE_VERSION}"
# The dependency layer: every crate of Cargo.lock built from the manifests alone, around stub
# sources (an empty lib, `fn main` for the binary and each bench the manifest declares), so an edit
# to the sources, README or tests reuses it even on a cold builder that imports the layer cache
# (what cargo-chef does, without the extra tool). It is built into the layer, not a cache mount,
# so `--cache-to` exports it. The builder image pins the toolchain; rust-toolchain.toml is left
# out by .dockerignore so rustup does not try to download clippy/rustfmt here.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches testkit/src \
 && printf 'fn main() {}\n' > src/main.rs \
 && : > src/lib.rs \
 && : > testkit/src/lib.rs \
 && awk '/^\[\[bench\]\]/ { b = 1 } b && /^name = / { gsub(/"/, "", $3); print $3; b = 0 }' Cargo.toml > /tmp/benches \
 && while read -r bench; do printf 'fn main() {}\n' > "benches/${bench}.rs"; done < /tmp/benches \
 && . /tmp/target.env \
 && RUSTFLAGS='-C target-feature=+crt-static' \
      cargo auditable build --release --locked --target "${RUST_TARGET}" \
 && rm -rf src benches testkit/src
COPY . .
# The real sources are older than the stub build: touch the crate roots, or cargo would take the
# stub binary for up to date. `--version` runs only for a native build: a cross-built binary
# cannot run here without emulation.
RUN . /tmp/target.env \
 && touch src/lib.rs src/main.rs \
 && RUSTFLAGS='-C target-feature=+crt-static' \
      cargo auditable build --release --locked --target "${RUST_TARGET}" \
 && mkdir -p /out \
 && cp "target/${RUST_TARGET}/release/intellia-token-broker" /out/intellia-token-broker \
 && if [ -z "${CROSS:-}" ]; then /out/intellia-token-broker --version; fi

# ---------------------------------------------------------------------------
# runtime: nothing but the binary and its default config. No shell, no
# package manager, no HEALTHCHECK (the orchestrator probes /healthz; for
# plain Docker use `intellia-token-broker healthcheck`). Nothing is written
# at runtime, so the container runs with a read-only root filesystem.
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.2.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/intellia/intellia-token-broker
LABEL org.opencontainers.image.title="intellia-token-broker" \
      org.opencontainers.image.description="Mints short-lived Intellia chat tokens for a site's signed-in users without exposing the organization's API key" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=builder --chown=0:0 --chmod=0555 /out/intellia-token-broker /usr/local/bin/intellia-token-broker
COPY --chown=0:0 --chmod=0444 config/default.toml /etc/intellia-token-broker/config.toml
ENV BROKER_CONFIG=/etc/intellia-token-broker/config.toml \
    RUST_LOG=info
USER 65532:65532
# 8080: public routes (/v1/token, /healthz, /readyz, ...); 9091: /metrics only.
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/intellia-token-broker"]
CMD ["serve"]
