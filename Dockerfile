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
# Pin a digest for production, e.g.
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:...
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# ---------------------------------------------------------------------------
# builder: a fully static release binary (glibc, +crt-static). `--target` is
# given explicitly so that proc-macros and build scripts (built for the host)
# are not linked statically, which would fail.
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
ARG TARGET=x86_64-unknown-linux-gnu
WORKDIR /src
# The builder image pins the toolchain; rust-toolchain.toml is left out by
# .dockerignore so rustup does not try to download clippy/rustfmt here.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --locked --target "${TARGET}" \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/intellia-token-broker" /out/intellia-token-broker \
 && /out/intellia-token-broker --version

# ---------------------------------------------------------------------------
# runtime: nothing but the binary and its default config. No shell, no
# package manager, no HEALTHCHECK (the orchestrator probes /healthz; for
# plain Docker use `intellia-token-broker healthcheck`). Nothing is written
# at runtime, so the container runs with a read-only root filesystem.
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
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
