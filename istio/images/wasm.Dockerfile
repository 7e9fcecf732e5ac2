# syntax=docker/dockerfile:1
#
# One ctxgate Wasm module as an OCI image that Istio pulls for a WasmPlugin
# (`url: oci://ghcr.io/ctxgate/ctxgate-auth:0.1.0`).
#
# Istio's Wasm image format, "compat" variant: a single layer holding the
# module as /plugin.wasm. Nothing else is in the image: no shell, no OS, no
# entrypoint; it is never run as a container.
#
# Build context: dist/ (the modules `make build` writes), so only the module
# is sent to the builder. From the repository root, for each filter:
#
#   make build
#   docker build -f istio/images/wasm.Dockerfile \
#     --build-arg MODULE=ctxgate_auth \
#     -t ghcr.io/ctxgate/ctxgate-auth:0.1.0 dist/
#   docker push ghcr.io/ctxgate/ctxgate-auth:0.1.0
#
# MODULE is ctxgate_auth, ctxgate_ratelimit, ctxgate_tagging or
# ctxgate_breaker; the image name uses a dash (ctxgate-auth, ...).
FROM scratch
ARG MODULE
COPY ${MODULE}.wasm /plugin.wasm
