# The task API as a container image: `podman build .` or `docker build .` on any machine that
# reaches the registries. Two stages: Rust builds the server (its dependencies cached between
# builds), and a distroless runtime (glibc and libgcc, no shell, no package manager) runs it as a
# non-root user on a read-only root filesystem. TLS to Neon needs no CA files: the server
# carries webpki-roots (the Mozilla roots) in the binary. See "Deploying" in the README.
#
# `cargo xtask image` builds this same file on a machine without a registry: it makes both base
# images from Debian's packages and passes them as these two build arguments
# (tests/src/bin/evidence/image.rs says what that proves and what it does not).

ARG BUILD_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# A binary already at /prebuilt/server (xtask's stand-in build image) is taken as it is.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ -x /prebuilt/server ]; then cp /prebuilt/server /server; \
    else cargo build --release --locked -p server && cp target/release/server /server; fi \
    && mkdir -p /data

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /server /usr/local/bin/server
# The only writable place: the SQLite file's directory, for a volume (PostgreSQL needs none).
COPY --from=build --chown=65532:65532 /data /data
WORKDIR /data
USER 65532:65532
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:///data/tasks.db \
    SQLITE_TMPDIR=/data \
    LOG_FORMAT=json
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/server", "health"]
# SIGTERM: /health/ready turns 503, requests are served for SHUTDOWN_DRAIN_SECS, then the
# process exits 0 (give it SHUTDOWN_DRAIN_SECS + 10 s before a SIGKILL).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/server"]
CMD ["serve"]
