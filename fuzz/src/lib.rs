//! Fuzz targets for ctxgate-core's parsers and decoders.
//!
//! Each target is a plain function from bytes to nothing that panics when
//! it finds a crash or a broken property. `fuzz_targets/<name>.rs` hands it
//! to libFuzzer; `tests/corpus.rs` replays every file of `corpus/<name>/`
//! through it without libFuzzer, so the corpora double as regression tests
//! on stable Rust. Properties are checked with `assert!`/`panic!`: a
//! panic is what libFuzzer reports as a crash.
//!
//! | target | feeds | checks |
//! | --- | --- | --- |
//! | `token_inspect` | `jwt::inspect` | accepted headers are screened, the algorithm set is honoured |
//! | `token_verify` | `KeySet::verify` on a fixed JWK Set | verified tokens carry the required issuer, audience and times, and were signed by a key of the token's algorithm |
//! | `path` | `canonical_segments_with`, `canonical_path`, `ContextPath` | canonical paths are fixed points; no dot, empty, `;`, `/`, `\`, `%` or control character survives |
//! | `query` | `Query::parse`, `serialize`, `unique`, `set` | serialization round-trips; `unique` agrees with an independent key count |
//! | `operation` | the demo operation map | matched operations forward a canonical path and a canonical context |
//! | `config` | the four plugin configurations | no panic or hang on any JSON |
//! | `records` | every shared-data record decoder | records that do not decode are left alone (or replaced where documented); written records decode |
//! | `auth_request` | `Auth::check` | no unauthenticated allow; forwarded paths are canonical; identity headers always stripped; cached and shared verdicts agree |
//! | `mcp_request` | MCP headers and body: `parse_body`, `ToolMap::decide` on a fixed tool map and scopes | deterministic; refusals reply JSON-RPC 2.0 errors with the request's id or `null`; allowed contexts canonical and granted; allowed requests' `Mcp-Method`/`Mcp-Name` (and `declared()`) agree with the body |
//! | `mcp_listing` | `filter_json`, `SseListingFilter` on listing responses | only the entries the scopes allow survive (an independent oracle); JSON in, JSON out; every chunking of an SSE stream gives the same output; events that are no listing pass byte for byte |

pub mod fixtures;

mod auth_request;
mod config;
mod mcp_listing;
mod mcp_request;
mod operation;
mod path;
mod query;
mod records;
mod token;

pub use auth_request::auth_request;
pub use config::config;
pub use mcp_listing::mcp_listing;
pub use mcp_request::mcp_request;
pub use operation::operation;
pub use path::path;
pub use query::query;
pub use records::records;
pub use token::{token_inspect, token_verify};

/// A fuzz target: panics on a crash or a broken property.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz_targets/` and `corpus/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("token_inspect", token_inspect),
    ("token_verify", token_verify),
    ("path", path),
    ("query", query),
    ("operation", operation),
    ("config", config),
    ("records", records),
    ("auth_request", auth_request),
    ("mcp_request", mcp_request),
    ("mcp_listing", mcp_listing),
];
