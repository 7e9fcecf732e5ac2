# syntax=docker/dockerfile:1
#
# ctxgate-rls, the Rate Limit Service of 12-rls.yaml
# (image ghcr.io/ctxgate/ctxgate-rls:0.1.0).
#
# Build context: the repository root (rls.Dockerfile.dockerignore beside
# this file keeps target/, .venv/ and the like out of it):
#
#   docker build -f istio/images/rls.Dockerfile \
#     -t ghcr.io/ctxgate/ctxgate-rls:0.1.0 .
#   docker push ghcr.io/ctxgate/ctxgate-rls:0.1.0
#
# Pure Rust: the binary needs only glibc, which debian:bookworm-slim has.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ctxgate-rls

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ctxgate-rls /usr/local/bin/ctxgate-rls
# The non-root user 12-rls.yaml runs it as (runAsUser: 65532).
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/ctxgate-rls"]
