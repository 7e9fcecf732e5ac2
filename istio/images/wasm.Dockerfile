# syntax=docker/dockerfile:1
#
# The ctxgate Wasm module (dist/ctxgate.wasm, the whole pipeline) as the OCI
# image Istio pulls for the WasmPlugin of 30-wasmplugin-ctxgate.yaml
# (`url: oci://ghcr.io/ctxgate/ctxgate:0.1.0`).
#
# Istio's Wasm image format, "compat" variant: a single layer holding the
# module as /plugin.wasm. Nothing else is in the image: no shell, no OS, no
# entrypoint; it is never run as a container.
#
# Build context: dist/ (where `make build` writes the module), and
# wasm.Dockerfile.dockerignore beside this file sends only ctxgate.wasm to
# the builder. From the repository root:
#
#   make build
#   docker build -f istio/images/wasm.Dockerfile \
#     -t ghcr.io/ctxgate/ctxgate:0.1.0 dist/
#   docker push ghcr.io/ctxgate/ctxgate:0.1.0
FROM scratch
COPY ctxgate.wasm /plugin.wasm
