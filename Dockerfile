# syntax=docker/dockerfile:1
# The Tollgate image: `docker build -t tollgate .` (docs/deploying.md).
# Build stage: Debian 12 with the Rust toolchain. Runtime: distroless cc-debian12 (glibc,
# libgcc_s, ca-certificates and a /tmp; no shell, no package manager) as user 65532.
# Keep the two on the same Debian release: the binary needs the build stage's glibc or newer.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# cmake builds libz-ng-sys; pkg-config and libssl-dev as scripts/setup.sh installs them.
# OpenSSL itself is compiled from source and linked statically (pingora-openssl enables
# openssl's "vendored" feature), which takes the perl and make this image already has.
# bolt-19 (llvm-bolt), nghttp2-client (h2load), gettext-base (envsubst) and python3 are what
# scripts/build-dist.sh's BOLT step needs, as `scripts/setup.sh --dist` installs them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
      bolt-19 nghttp2-client gettext-base python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The production build (docs/performance.md "BOLT"): the dist profile linked with its
# relocations, laid out again by llvm-bolt from a profile of a training run on loopback.
# BuildKit caches keep the crates and the target directory between builds, so the binary is
# copied out of the cache in the same step. --strip-debug drops the dist profile's line
# tables (debug = 1) and keeps the symbols, so backtraces still name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    BOLT=1 scripts/build-dist.sh \
 && objcopy --strip-debug target/dist/tollgate /tollgate

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="An edge API gateway built on Pingora" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /tollgate /usr/local/bin/tollgate
# For `docker run`; Kubernetes mounts its ConfigMap over /etc/tollgate.
COPY deploy/docker/tollgate.toml /etc/tollgate/tollgate.toml
# Fails the build unless the binary runs on this base (every library it links is here) and
# the default configuration is valid. Exec form: there is no shell.
RUN ["/usr/local/bin/tollgate", "-t", "-c", "/etc/tollgate/tollgate.toml"]
ENV RUST_LOG=info \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["-c", "/etc/tollgate/tollgate.toml"]
