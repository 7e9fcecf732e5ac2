//! Demo support for ctxgate: everything the local demo and the end-to-end
//! tests need besides Envoy itself.
//!
//! * [`keys`]: a persistent demo key set (RS256, ES256, EdDSA, HS256) and the
//!   public `jwks.json` Envoy is configured with.
//! * [`mint`](mod@mint): tokens signed with those keys, including deliberately broken
//!   ones (expired, odd headers, mismatched `alg`) for negative tests.
//! * [`upstream`]: an HTTP/1.1 + h2c echo server that reports what Envoy
//!   forwarded.
//!
//! The binaries `ctxgate-mint-token` and `ctxgate-demo-upstream` are thin
//! command-line wrappers over this library. Native only; nothing here is
//! built for wasm.

pub mod keys;
pub mod mint;
pub mod upstream;

pub use keys::DemoKeys;
pub use mint::{MintAlg, MintOptions, mint, mint_raw};
pub use upstream::{ShutdownHandle, serve, spawn_in_thread};
