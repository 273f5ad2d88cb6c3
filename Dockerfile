# onestep-serve in a container: build with the official Swift toolchain image, run on debian:bookworm-slim.
#
#   docker build -t onestep .
#   docker run --rm -p 8080:8080 onestep
#   curl -o cat.png 'http://localhost:8080/v1/generate?seed=1'
#   docker buildx build --platform linux/amd64,linux/arm64 -t onestep .   # both architectures, one tag
#
# Every flag has an ONESTEP_* environment variable (docs/SERVING.md), e.g. -e ONESTEP_MAX_BATCH=32.
# The models under ./models are baked into the image at /app/models; mount another folder over it to serve
# different ones (-v "$PWD/mymodels:/app/models:ro").
#
# Nothing here names an architecture: both base images are multi-arch, the build runs natively in each platform's
# image (the C kernels pick their instruction set at run time) and the runtime libraries are the same Debian
# packages on amd64 and arm64. Checked statically by Tests/clients/dockerfile_test.py; see docs/SERVING.md#docker
# for what has and has not been run.

# The code is built and tested with Swift 6.3; the image tag follows the toolchain (the test checks they agree).
# For arm64 hosts the C kernels' x86 code sits behind OSK_X86 and the scalar paths are compiled instead;
# scripts/check-aarch64 compiles them for aarch64 in every scripts/test run.
ARG SWIFT_IMAGE=swift:6.3-bookworm

# ---- build ----
FROM ${SWIFT_IMAGE} AS build
WORKDIR /src
# The README's set-up command installs the system libraries (OpenBLAS, libpng, libcurl, pkg-config).
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps && rm -rf /var/lib/apt/lists/*
# The manifest names every target's folder (test and load-test targets included), so all are copied.
COPY Package.swift ./
COPY Sources ./Sources
COPY loadtest ./loadtest
COPY Tests ./Tests
# The README's build of the server, with the Swift runtime linked in so the run image needs no toolchain.
RUN swift build -c release --product onestep-serve --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/onestep-serve" /out/onestep-serve

# ---- run ----
FROM debian:bookworm-slim
# The server links OpenBLAS (pthread variant) and libpng; curl is only for HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas0-pthread libpng16-16 libcurl4 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 onestep \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin onestep
COPY --from=build /out/onestep-serve /usr/local/bin/onestep-serve
COPY --chown=root:root models/ /app/models/
WORKDIR /app
USER onestep

ENV ONESTEP_PORT=8080 \
    ONESTEP_MODELS=/app/models
EXPOSE 8080
# Liveness only: /readyz is for load balancers (it turns 503 while draining, which is not "unhealthy").
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${ONESTEP_PORT}/healthz" || exit 1
# SIGTERM (docker stop) drains: queued work is answered, then exit 0. Give it time: docker stop -t 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["onestep-serve", "--host", "0.0.0.0"]
