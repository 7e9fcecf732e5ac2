//! The benchmark's rows, as data.
//!
//! A [`Scenario`] is a name, the HTTP filters in front of the router, and
//! what the load generator sends. Everything else is the same for every row:
//! one listener, one route answering `200 ok` itself (`direct_response`, no
//! upstream), the same request path, the same Envoy binary and worker count.
//! Adding a row (rate limiting, tagging, breaker, the full chain) means
//! adding an entry to [`all`].
//!
//! The MCP rows ([`Call::McpTool`]) differ in what they send and where it
//! goes: a JSON-RPC `tools/call` POSTed to [`MCP_PATH`] and forwarded to a
//! stand-in MCP server, because both MCP filters decide on the body after
//! the headers went on, which a `direct_response` route would answer first.

use ctxgate_demo::keys::KID_ES256;
use ctxgate_e2e::{FilterEngine, HttpFilter, RawFilter, WasmFilter};
use serde_json::{Value, json};

/// Every request goes to this path: a `read` of the context
/// `projects/bench` in the operation map below.
pub const PATH: &str = "/v1/contexts/projects/bench";
/// The scope every benchmark token carries; it allows [`PATH`].
pub const SCOPE: &str = "read:projects/*";
/// Issuer and audience of the demo tokens ([`ctxgate_demo::MintOptions`]
/// defaults), which every verifying scenario is configured to accept.
pub const ISSUER: &str = ctxgate_demo::mint::DEMO_ISSUER;
pub const AUDIENCE: &str = ctxgate_demo::mint::DEMO_AUDIENCE;

/// The MCP endpoint the MCP rows call.
pub const MCP_PATH: &str = "/mcp";
/// The tool the MCP rows call: a `read` of its argument `context`.
pub const MCP_TOOL: &str = "search_context";
/// The body of every MCP request: a `tools/call` of [`MCP_TOOL`] on the
/// context `projects/bench`, which [`SCOPE`] allows. Protocol revision
/// 2025-11-25 (the `MCP-Protocol-Version` header, nothing in the body), so
/// neither filter has 2026-07-28 headers (`Mcp-Method`, `Mcp-Name`) to
/// compare with the body.
pub const MCP_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_context","arguments":{"context":"projects/bench","query":"quarterly roadmap"}}}"#;
/// The same call of a tool no MCP row allows.
const MCP_OTHER_TOOL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_context","arguments":{"context":"projects/bench","query":"quarterly roadmap"}}}"#;
/// The same call on a context [`SCOPE`] does not cover.
const MCP_OUTSIDE_SCOPE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_context","arguments":{"context":"teams/bench","query":"quarterly roadmap"}}}"#;
/// The protocol revision the MCP rows speak (`MCP-Protocol-Version`).
pub const MCP_PROTOCOL_VERSION: &str = "2025-11-25";
/// What the stand-in MCP server answers to every call (`application/json`).
pub const MCP_RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

/// Rows the report compares with each other (targets of the pipeline).
pub const BARE: &str = "bare";
pub const PIPELINE: &str = "pipeline";
pub const PIPELINE_AUDIT: &str = "pipeline + audit";
pub const PIPELINE_NO_REQUEST_METRICS: &str = "pipeline (request metrics off)";
pub const PIPELINE_TRACING: &str = "pipeline + tracing";
pub const PIPELINE_TRACING_SAMPLED: &str = "pipeline + tracing (10% sampled)";
pub const FOUR_PLUGINS: &str = "four plugins";
pub const JWT_AUTHN_CACHE: &str = "jwt_authn+cache";
pub const AUTH_REPEATED: &str = "auth (repeated token)";
pub const WASM_FLOOR: &str = "wasm floor (no-op filter)";
/// The native engine's rows (`dist/libctxgate.so`), each the twin of a
/// wasm row ([`ENGINE_PAIRS`]).
pub const NATIVE_PIPELINE: &str = "native pipeline";
pub const NATIVE_AUTH_REPEATED: &str = "native auth (repeated token)";
pub const NATIVE_AUTH_FRESH: &str = "native auth (fresh token)";
pub const NATIVE_PIPELINE_AUDIT: &str = "native pipeline + audit";
pub const AUTH_FRESH: &str = "auth (fresh token)";
pub const JWT_AUTHN_CACHE_FRESH: &str = "jwt_authn+cache (fresh token)";
/// Native `jwt_authn` with its cache and native `local_ratelimit` in one
/// chain: the native-engine target's baseline.
pub const JWT_AUTHN_LOCAL_RATELIMIT: &str = "jwt_authn+cache + local_ratelimit";
/// Rows that run the same work on both engines: (wasm, native).
pub const ENGINE_PAIRS: [(&str, &str); 4] = [
    (PIPELINE, NATIVE_PIPELINE),
    (PIPELINE_AUDIT, NATIVE_PIPELINE_AUDIT),
    (AUTH_REPEATED, NATIVE_AUTH_REPEATED),
    (AUTH_FRESH, NATIVE_AUTH_FRESH),
];
pub const PIPELINE_HOST_CALLS: &str = "wasm floor + the pipeline's host calls";
pub const AUTH_HOST_CALLS: &str = "wasm floor + auth's host calls";
/// The MCP rows, compared with each other in the report's MCP section.
pub const MCP_BARE: &str = "mcp bare";
pub const MCP_NATIVE: &str = "mcp native (jwt_authn + mcp + rbac)";
pub const MCP_PIPELINE: &str = "mcp pipeline";
pub const MCP_PIPELINE_LOCAL: &str = "mcp pipeline (local limits)";
pub const MCP_AUTH_ONLY: &str = "mcp auth + mcp stages";

/// What the load generator puts on each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// `GET` [`PATH`] without credentials.
    Anonymous,
    /// The same bearer token on every request.
    RepeatedToken,
    /// A bearer token no earlier request carried, from a pre-minted pool.
    FreshToken,
}

impl Load {
    pub fn describe(self) -> &'static str {
        match self {
            Load::Anonymous => "no token",
            Load::RepeatedToken => "one token, reused",
            Load::FreshToken => "a new token per request",
        }
    }
}

/// What a request is and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `GET` [`PATH`], answered by Envoy itself (`direct_response`).
    Rest,
    /// `POST` [`MCP_PATH`] with the body [`MCP_CALL`] and the headers of an
    /// MCP client (`content-type: application/json`, `accept:
    /// application/json, text/event-stream`, `MCP-Protocol-Version`),
    /// routed to the stand-in MCP server: a second listener of the same
    /// Envoy, on a Unix socket, answering [`MCP_RESULT`] itself.
    McpTool,
}

/// A call the scenario's filters must refuse with 403, checked before
/// each run next to the probe with a token.
#[derive(Clone, Copy, Debug)]
pub struct Forbidden {
    /// What is wrong with it, for the error message.
    pub what: &'static str,
    /// The body sent instead of [`MCP_CALL`], with the same token and
    /// headers.
    pub body: &'static str,
}

const OTHER_TOOL: Forbidden = Forbidden {
    what: "a tool the policy does not allow",
    body: MCP_OTHER_TOOL,
};
const OUTSIDE_SCOPE: Forbidden = Forbidden {
    what: "a context outside the token's scope",
    body: MCP_OUTSIDE_SCOPE,
};

/// One row of the report.
pub struct Scenario {
    pub name: &'static str,
    /// One sentence for the report's "how to read this" list.
    pub about: &'static str,
    /// HTTP filters in order; the router is appended by the harness.
    pub filters: Vec<HttpFilter>,
    pub load: Load,
    /// Status a request without a token must get. Checked before each
    /// run, so a scenario whose filter silently lets everything through
    /// fails instead of reporting a flattering number.
    pub unauthenticated_status: Option<u16>,
    /// Start `ctxgate-rls` (in memory, [`RLS_LIMITS`]) and give Envoy a
    /// cluster `ctxgate_rls` pointing at it.
    pub needs_rls: bool,
    /// Override wrk's connection count: one connection measures the
    /// latency of a request on an idle gateway rather than under queueing.
    pub connections: Option<u32>,
    pub call: Call,
    /// Calls that must be refused with 403 (MCP rows only).
    pub forbidden: &'static [Forbidden],
    /// Run the audit singleton (a bootstrap service in the filter's vm,
    /// configured with [`audit_section`]) and the demo collector behind
    /// the cluster `audit_collector`; the filters' `audit` section must
    /// name them.
    pub audit: bool,
    /// Trace this percentage of requests with the demo's `tracing` block
    /// (the OpenTelemetry tracer, its custom tags) and `layered_runtime`
    /// (its export batches), exporting to an OTLP receiver in this
    /// process ([`ctxgate_e2e::OtlpReceiver`]) through the cluster
    /// `otel_collector`.
    pub tracing: Option<f64>,
}

/// Limits of the RLS in benchmark runs: far above anything a run sends, so
/// every request is admitted and every row measures the admitting path.
pub const RLS_LIMITS: &str = "domain: ctxgate
descriptors:
  - key: tenant
    rate_limit: {unit: day, requests_per_unit: 4000000000}
  - key: client
    rate_limit: {unit: day, requests_per_unit: 4000000000}
";

/// Key material the scenarios are configured with.
pub struct Fixtures {
    /// JWK Set holding only the ES256 demo public key.
    pub jwks: Value,
}

impl Fixtures {
    /// Keeps only the ES256 key of the demo JWK Set, so every verifier
    /// sees the same single key.
    pub fn from_demo_jwks(jwks: &Value) -> anyhow::Result<Fixtures> {
        let es256: Vec<Value> = jwks
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|key| key.get("kid").and_then(Value::as_str) == Some(KID_ES256))
            .cloned()
            .collect();
        anyhow::ensure!(
            es256.len() == 1,
            "the demo JWK Set has no single key with kid {KID_ES256}"
        );
        Ok(Fixtures {
            jwks: json!({ "keys": es256 }),
        })
    }
}

/// Every scenario, in report order. `bare` comes first: ratios are taken
/// against it.
pub fn all(fx: &Fixtures) -> Vec<Scenario> {
    vec![
        Scenario {
            name: BARE,
            about: "Envoy with only the router: the ceiling every other row is compared with.",
            filters: vec![],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "jwt_authn",
            about: "Envoy's native `jwt_authn`, same ES256 key inline (`local_jwks`), issuer \
                    and audience checked, required on `/`; no cache, so every request pays \
                    one ES256 signature verification (BoringSSL).",
            filters: vec![jwt_authn(fx, false)],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: JWT_AUTHN_CACHE,
            about: "The same with `jwt_cache_config: {jwt_cache_size: 1000}`: the repeated \
                    token is verified once per worker, then served from the cache.",
            filters: vec![jwt_authn(fx, true)],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: AUTH_REPEATED,
            about: "The auth stage alone (`dist/ctxgate.wasm` with an `auth` section, V8): an \
                    inline ES256 provider and an operation map; the path is the operation `read` on \
                    `projects/bench`, which the token's `read:projects/*` allows. Default \
                    cache settings: after the first request per worker the token is a \
                    worker-local cache hit; the filter still matches the operation, checks \
                    scopes and sets the identity headers on every request.",
            filters: vec![ctxgate_auth(fx, json!({}))],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: AUTH_FRESH,
            about: "The same stage, a token no earlier request carried on every request: \
                    every request misses both caches (worker-local and shared data), is \
                    verified (ES256 in wasm) and is written to both caches.",
            filters: vec![ctxgate_auth(fx, json!({}))],
            load: Load::FreshToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: JWT_AUTHN_CACHE_FRESH,
            about: "Native `jwt_authn` with its cache, fresh tokens: the native counterpart \
                    of the row above (every request a cache miss plus an insert).",
            filters: vec![jwt_authn(fx, true)],
            load: Load::FreshToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "auth (public path)",
            about: "The auth stage with the benchmarked path declared public, requests without \
                    a token: what the filter costs before any token work (wasm call, reading \
                    the request headers, path canonicalization, the public-path match).",
            filters: vec![ctxgate_auth(
                fx,
                json!({ "public_paths": [{ "prefix": "/v1/contexts/projects/bench" }] }),
            )],
            load: Load::Anonymous,
            unauthenticated_status: Some(200),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: WASM_FLOOR,
            about: "A Rust proxy-wasm filter that does nothing (`tests/wasm-floor`, same SDK \
                    and build profile): what Envoy spends on any wasm filter under V8 before \
                    it does any work. Every wasm row pays this.",
            filters: vec![floor("")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "wasm floor + read headers",
            about: "The no-op filter reading all request headers once (one host call).",
            filters: vec![floor("read_headers")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "wasm floor + set 7 headers",
            about: "The no-op filter setting seven request headers (seven host calls), as \
                    the auth stage does for the identity headers.",
            filters: vec![floor("set_headers")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "wasm floor + filter state + clock + 2 metrics",
            about: "The no-op filter writing one filter-state value, reading the clock and \
                    incrementing two counters (four host calls).",
            filters: vec![floor("filter_state,clock,metrics")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: PIPELINE_HOST_CALLS,
            about: "The no-op filter making the host calls `pipeline` makes on a request \
                    (read the headers, the clock, one filter-state value, a bucket read and \
                    compare-and-swap, a breaker read, the header changes in one call; on \
                    the response the clock, `:status`, a breaker compare-and-swap and three \
                    headers) and nothing else: `pipeline` minus this row is the pipeline's \
                    own logic.",
            filters: vec![floor(
                "read_headers,clock,filter_state,shared_rw,shared_read,set_map,\
                 response_clock,response_status,response_shared_rw,response_set3",
            )],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: AUTH_HOST_CALLS,
            about: "The no-op filter making the host calls the auth stage makes on a \
                    request with a cached token (read the headers, the clock, one \
                    filter-state value, seven header changes) and nothing else: \
                    `auth (repeated token)` minus this row is the stage's own logic.",
            filters: vec![floor("read_headers,clock,filter_state,set_headers")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "wasm floor + SHA-256",
            about: "The no-op filter hashing 720 bytes (a token's size) with SHA-256 on every \
                    request, no host call: what pure computation costs in Envoy's V8 (compare \
                    with the same hash elsewhere).",
            filters: vec![floor("sha256")],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "local_ratelimit",
            about: "Envoy's native `local_ratelimit` filter, one token bucket far above the \
                    load (never refuses): the native baseline for the rate-limit rows.",
            filters: vec![local_ratelimit()],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: JWT_AUTHN_LOCAL_RATELIMIT,
            about: "Native `jwt_authn` with its cache, then native `local_ratelimit`: the \
                    two filters Envoy has for part of what the pipeline does (no scopes, \
                    no operations, no tenants, no tags, no breaker). The native engine's \
                    overhead is held to 1.5 times this row's.",
            filters: vec![jwt_authn(fx, true), local_ratelimit()],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        pipeline_row(
            NATIVE_PIPELINE,
            "The `pipeline` row's configuration on the native engine: \
                    `dist/libctxgate.so` loaded as an Envoy dynamic module \
                    (`DynamicModuleFilter`), no VM; shared state in process memory, the \
                    RLS called through the same cluster.",
            vec![native(pipeline(fx))],
        ),
        Scenario {
            name: NATIVE_AUTH_REPEATED,
            about: "The `auth (repeated token)` row on the native engine.",
            filters: vec![native(ctxgate_auth(fx, json!({})))],
            ..auth_row(Load::RepeatedToken)
        },
        Scenario {
            name: NATIVE_AUTH_FRESH,
            about: "The `auth (fresh token)` row on the native engine: ES256 verified in \
                    native code (ring's constant-time P-256, `filters/core/src/ecdsa.rs`) on \
                    every request.",
            filters: vec![native(ctxgate_auth(fx, json!({})))],
            ..auth_row(Load::FreshToken)
        },
        Scenario {
            name: "ratelimit (local)",
            about: "The rate-limit stage alone, local buckets only: every request prices its \
                    operation and takes tokens from a bucket in shared data by \
                    compare-and-swap (anonymous key: the client address).",
            filters: vec![ctxgate_ratelimit(json!({}))],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "ratelimit (hierarchical RLS)",
            about: "The same in `hierarchical` mode against `ctxgate-rls` on loopback: local \
                    buckets decide while the key is far from its global limit, local \
                    consumption is reported every 200 ms.",
            filters: vec![ctxgate_ratelimit(global("hierarchical"))],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: true,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "ratelimit (always RLS)",
            about: "Every request asks `ctxgate-rls` (mode `always`): the cost of the RLS \
                    round trip itself (compare p50/p99 with the local row).",
            filters: vec![ctxgate_ratelimit(global("always"))],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: true,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "auth + ratelimit (local)",
            about: "One plugin with the auth and rate-limit stages, repeated token: the \
                    bucket key is the token's tenant.",
            filters: vec![stages(vec![
                ("auth", auth_section(fx, json!({}))),
                ("ratelimit", ratelimit_section(json!({}))),
            ])],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        pipeline_row(
            "auth + ratelimit (hierarchical RLS)",
            "The same two stages, hierarchical mode against `ctxgate-rls`.",
            vec![stages(vec![
                ("auth", auth_section(fx, json!({}))),
                ("ratelimit", ratelimit_section(global("hierarchical"))),
            ])],
        ),
        Scenario {
            name: "tagging",
            about: "The tagging stage alone with three rules (size, operation, claim), a \
                    tenant table, defaults and a variant split: strips the six owned headers \
                    and sets the tags.",
            filters: vec![ctxgate_tagging()],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "breaker",
            about: "The breaker stage alone, one closed breaker guarding every request: \
                    reads its state on the request, records the outcome on the response \
                    (a compare-and-swap in shared data per request).",
            filters: vec![ctxgate_breaker()],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        pipeline_row(
            FOUR_PLUGINS,
            "The four stages as four plugins, each `dist/ctxgate.wasm` with one \
                    section, as the gateway ran before the pipeline: four wasm floors, four \
                    header reads, the identity handed on through filter state. Repeated \
                    token, rate limiting hierarchical against `ctxgate-rls`. Kept to \
                    compare with `pipeline`.",
            vec![
                ctxgate_auth(fx, json!({})),
                ctxgate_ratelimit(global("hierarchical")),
                ctxgate_tagging(),
                ctxgate_breaker(),
            ],
        ),
        pipeline_row(
            PIPELINE,
            "The same work in one plugin: `dist/ctxgate.wasm` with all four \
                    sections (the demo gateway's shape), one header read, one batch of \
                    header changes, metrics flushed once a second.",
            vec![pipeline(fx)],
        ),
        pipeline_row(
            PIPELINE_NO_REQUEST_METRICS,
            "The `pipeline` row with `metrics.requests: false`: no `ctxgate_requests`, \
                    no upstream latency histogram, no rate-limit utilisation gauges. The \
                    `pipeline` row against this one is what the per-request metrics cost.",
            vec![pipeline_without_request_metrics(fx)],
        ),
        Scenario {
            tracing: Some(100.0),
            ..pipeline_row(
                PIPELINE_TRACING,
                "The `pipeline` row traced: every request sampled (the demo's \
                    `tracing` block: the OpenTelemetry tracer with the decision tags), \
                    the plugin writing each decision to filter state (`filter_state`), \
                    spans exported over OTLP/HTTP in batches of 100 (the demo's runtime) \
                    to a receiver in the bench process. Against `pipeline`, what tracing \
                    costs.",
                vec![pipeline_tracing(fx)],
            )
        },
        Scenario {
            tracing: Some(10.0),
            ..pipeline_row(
                PIPELINE_TRACING_SAMPLED,
                "The `pipeline + tracing` row with one request in ten traced (the Istio \
                    manifests' rate): every request still writes its decision to filter \
                    state.",
                vec![pipeline_tracing(fx)],
            )
        },
        Scenario {
            audit: true,
            ..pipeline_row(
                PIPELINE_AUDIT,
                "The `pipeline` row with the audit trail on: a record per request \
                    (its stage decisions), written into the worker's next queue message \
                    (at most every 50 ms or 1024 records), the audit singleton batching, \
                    chaining (SHA-256) and POSTing them to the demo collector (in the \
                    bench process). Envoy's CPU includes the singleton's.",
                vec![pipeline_audit(fx)],
            )
        },
        Scenario {
            audit: true,
            ..pipeline_row(
                NATIVE_PIPELINE_AUDIT,
                "The `pipeline + audit` row on the native engine: the records go to a \
                    bounded in-process queue, drained on Envoy's main thread by the \
                    filter configuration (no singleton VM).",
                vec![native(pipeline_audit(fx))],
            )
        },
        Scenario {
            name: "ratelimit (local, 1 connection)",
            about: "The local row with a single connection: no queueing, so p50/p99 are \
                    the latency of one request through the filter.",
            filters: vec![ctxgate_ratelimit(json!({}))],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: Some(1),
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: "ratelimit (always RLS, 1 connection)",
            about: "Every request asks `ctxgate-rls` on loopback, single connection: the \
                    difference to the row above is what the RLS path adds to a request.",
            filters: vec![ctxgate_ratelimit(global("always"))],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: true,
            connections: Some(1),
            call: Call::Rest,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: MCP_BARE,
            about: "Envoy with only the router, an MCP `tools/call` (`POST /mcp`, JSON-RPC \
                    body, `MCP-Protocol-Version: 2025-11-25`) forwarded to a stand-in MCP \
                    server: a second listener of the same Envoy on a Unix socket (abstract \
                    namespace, HTTP/1.1, kept-alive upstream connections) answering a small \
                    JSON-RPC result (`application/json`) with `direct_response` once the \
                    whole request is in (a buffer filter). The same upstream for every MCP \
                    row, so its cost (the second hop, counted in \
                    Envoy CPU/req) is in each of them: the ceiling the MCP rows are compared \
                    with.",
            filters: vec![],
            load: Load::Anonymous,
            unauthenticated_status: None,
            needs_rls: false,
            connections: None,
            call: Call::McpTool,
            forbidden: &[],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: MCP_NATIVE,
            about: "Envoy's native filters authorising the same call: `jwt_authn` (the \
                    `jwt_authn+cache` provider, with `payload_in_metadata`), Envoy 1.40's \
                    `mcp` filter (defaults: parses the body into dynamic metadata under \
                    `envoy.filters.http.mcp`) and `rbac` allowing only method `tools/call` of \
                    tool `search_context` for a verified token whose `context_scopes` \
                    include `read:projects/*`. Probed: 401 without a token, 403 for another \
                    tool.",
            filters: mcp_native(fx),
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::McpTool,
            forbidden: &[OTHER_TOOL],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: MCP_PIPELINE,
            about: "`dist/ctxgate.wasm` with every stage, as the `pipeline` row plus an `mcp` \
                    section: auth authenticates the MCP POST, the mcp stage reads the whole \
                    body strictly, maps `search_context` to a `read` of the context its \
                    argument `/context` names and checks it against the token's scopes \
                    (hierarchically), then rate limiting (hierarchical against \
                    `ctxgate-rls`, priced by the mcp stage, the call also counted against \
                    its per-tool key), tagging and the breaker. \
                    Probed: 401 without a token, 403 for another tool and for a context \
                    outside the scope.",
            filters: vec![mcp_pipeline(fx, global("hierarchical"))],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: true,
            connections: None,
            call: Call::McpTool,
            forbidden: &[OTHER_TOOL, OUTSIDE_SCOPE],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: MCP_AUTH_ONLY,
            about: "`dist/ctxgate.wasm` with only the auth and mcp sections: the same work \
                    as the native row (a verified token, the call authorised), the \
                    authorisation by the context path the call names.",
            filters: vec![
                WasmFilter::ctxgate("ctxgate")
                    .stage("auth", auth_section(fx, json!({})))
                    .stage("mcp", mcp_section())
                    .stage("metrics", production_metrics())
                    .into(),
            ],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::McpTool,
            forbidden: &[OTHER_TOOL, OUTSIDE_SCOPE],
            audit: false,
            tracing: None,
        },
        Scenario {
            name: MCP_PIPELINE_LOCAL,
            about: "The `mcp pipeline` row with local rate limits only (no `global`): the \
                    closest to the native row's work, which has no rate limiting.",
            filters: vec![mcp_pipeline(fx, json!({}))],
            load: Load::RepeatedToken,
            unauthenticated_status: Some(401),
            needs_rls: false,
            connections: None,
            call: Call::McpTool,
            forbidden: &[OTHER_TOOL, OUTSIDE_SCOPE],
            audit: false,
            tracing: None,
        },
    ]
}

/// A row for the no-op module making the host calls `calls` names
/// (`ctxgate-bench --floor`).
pub fn floor_row(calls: &str) -> Scenario {
    Scenario {
        name: Box::leak(format!("wasm floor + {calls}").into_boxed_str()),
        about: "The no-op filter making the host calls named, and nothing else.",
        filters: vec![floor(calls)],
        load: Load::Anonymous,
        unauthenticated_status: None,
        needs_rls: false,
        connections: None,
        call: Call::Rest,
        forbidden: &[],
        audit: false,
        tracing: None,
    }
}

/// The no-op module built by `make bench` (`tests/wasm-floor`), making the
/// host calls `calls` names on every request.
fn floor(calls: &str) -> HttpFilter {
    let module = ctxgate_e2e::repo_root()
        .join("target/wasm32-wasip1/wasm/ctxgate_wasm_floor.wasm")
        .display()
        .to_string();
    WasmFilter::new(&module).config(json!(calls)).into()
}

/// Envoy's native local rate limit, never refusing at benchmark rates.
fn local_ratelimit() -> HttpFilter {
    RawFilter(json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"},
        },
    }))
    .into()
}

/// Limits no benchmark run reaches, for every key.
fn huge_tiers() -> Value {
    let per_day =
        json!([{ "name": "per_day", "limit": 1_000_000_000u64, "window_seconds": 86_400 }]);
    json!({ "anonymous": per_day, "standard": per_day })
}

fn global(mode: &str) -> Value {
    json!({ "global": { "mode": mode, "cluster": "ctxgate_rls", "timeout_ms": 100 } })
}

/// The rate-limit stage alone (`dist/ctxgate.wasm` with one section).
fn ctxgate_ratelimit(extra: Value) -> HttpFilter {
    single("ratelimit", ratelimit_section(extra))
}

/// The rate-limit stage with the demo operation map and huge limits;
/// `extra` is merged over the section.
fn ratelimit_section(extra: Value) -> Value {
    let mut config = json!({
        "tiers": huge_tiers(),
        "operations": [
            { "name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read" },
        ],
    });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

fn ctxgate_tagging() -> HttpFilter {
    single("tagging", tagging_section())
}

fn tagging_section() -> Value {
    json!({
            "operations": [
                { "name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read" },
            ],
            "rules": [
                {"when": {"size": {"above": 1048576}}, "set": {"type": "large-context"}},
                {"when": {"operation": ["graph_traversal", "complex_query"]}, "set": {"type": "compute"}},
                {"when": {"claim": {"name": "tier", "one_of": ["premium"]}}, "set": {"priority": "high"}},
            ],
            "tenants": {"globex": {"region": "eu-west"}},
            "defaults": {"type": "standard", "priority": "normal", "region": "us-east"},
            "variant": {"salt": "bench", "variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}]},
    })
}

fn ctxgate_breaker() -> HttpFilter {
    single("breaker", breaker_section())
}

fn breaker_section() -> Value {
    json!({ "breakers": [{ "name": "context_repository" }] })
}

/// Metrics as shipped: counted in the module, flushed every second (the
/// e2e harness flushes faster so that tests read them sooner).
fn production_metrics() -> Value {
    json!({ "flush_interval_ms": 1000 })
}

/// `dist/ctxgate.wasm` running one stage: a plugin of its own, named
/// `ctxgate_<stage>`.
fn single(stage: &str, section: Value) -> HttpFilter {
    WasmFilter::single(stage, section)
        .stage("metrics", production_metrics())
        .into()
}

/// `dist/ctxgate.wasm` running these stages in one plugin.
fn stages(sections: Vec<(&str, Value)>) -> HttpFilter {
    sections
        .into_iter()
        .fold(WasmFilter::ctxgate("ctxgate"), |f, (stage, section)| {
            f.stage(stage, section)
        })
        .stage("metrics", production_metrics())
        .into()
}

/// `filter` on the native engine, whatever `CTXGATE_ENGINE` says.
fn native(filter: HttpFilter) -> HttpFilter {
    match filter {
        HttpFilter::Wasm(filter) => filter.engine(FilterEngine::Native).into(),
        other => other,
    }
}

/// A row of the auth stage alone under `load` (fill in name, about and
/// filters).
fn auth_row(load: Load) -> Scenario {
    Scenario {
        name: "",
        about: "",
        filters: vec![],
        load,
        unauthenticated_status: Some(401),
        needs_rls: false,
        connections: None,
        call: Call::Rest,
        forbidden: &[],
        audit: false,
        tracing: None,
    }
}

/// An authenticating row: `filters` under the repeated-token load, the RLS
/// running, refusing a request without a token (401).
fn pipeline_row(name: &'static str, about: &'static str, filters: Vec<HttpFilter>) -> Scenario {
    Scenario {
        name,
        about,
        filters,
        load: Load::RepeatedToken,
        unauthenticated_status: Some(401),
        needs_rls: true,
        connections: None,
        call: Call::Rest,
        forbidden: &[],
        audit: false,
        tracing: None,
    }
}

/// `dist/ctxgate.wasm` running every stage in one plugin: the demo
/// gateway's pipeline, hierarchical rate limiting against `ctxgate-rls`.
fn pipeline(fx: &Fixtures) -> HttpFilter {
    WasmFilter::ctxgate("ctxgate")
        .stage("auth", auth_section(fx, json!({})))
        .stage("ratelimit", ratelimit_section(global("hierarchical")))
        .stage("tagging", tagging_section())
        .stage("breaker", breaker_section())
        .stage("metrics", production_metrics())
        .into()
}

/// [`pipeline`] with `metrics.requests: false`.
fn pipeline_without_request_metrics(fx: &Fixtures) -> HttpFilter {
    match pipeline(fx) {
        HttpFilter::Wasm(filter) => filter
            .stage(
                "metrics",
                json!({ "flush_interval_ms": 1000, "requests": false }),
            )
            .into(),
        other => other,
    }
}

/// [`pipeline`] writing each decision to filter state, for the tracer's
/// custom tags.
fn pipeline_tracing(fx: &Fixtures) -> HttpFilter {
    match pipeline(fx) {
        HttpFilter::Wasm(filter) => filter.stage("filter_state", json!(true)).into(),
        other => other,
    }
}

/// [`pipeline`] with the `audit` section ([`audit_section`]).
fn pipeline_audit(fx: &Fixtures) -> HttpFilter {
    match pipeline(fx) {
        HttpFilter::Wasm(filter) => filter.stage("audit", audit_section()).into(),
        other => other,
    }
}

/// The audit section of the audited rows, for the filter and the
/// singleton alike: the singleton lives in the `ctxgate` vm (the
/// filter's), subjects pseudonymised, the client the element Envoy
/// appended to `X-Forwarded-For` (the bench's listener has
/// `use_remote_address`), the defaults otherwise.
pub fn audit_section() -> Value {
    json!({
        "singleton_vm_id": "ctxgate",
        "client": {"source": "forwarded_for", "trusted_hops": 1},
        "pseudonymize_subjects": true,
        "pseudonym_key": "bench-pseudonym-key-0123",
        "collector": {"cluster": "audit_collector"},
    })
}

/// The `mcp` section of the MCP rows: [`MCP_TOOL`] is a `read` of the
/// context its argument `context` names.
fn mcp_section() -> Value {
    json!({
        "paths": [{ "exact": MCP_PATH }],
        "tools": [
            { "name": MCP_TOOL, "action": "read", "context": { "pointer": "/context" } },
        ],
    })
}

/// `dist/ctxgate.wasm` running every stage, as [`pipeline`], with an `mcp`
/// section mapping [`MCP_TOOL`] to a `read` of the context its argument
/// `context` names; `limits` is merged over the rate-limit section.
fn mcp_pipeline(fx: &Fixtures, limits: Value) -> HttpFilter {
    WasmFilter::ctxgate("ctxgate")
        .stage("auth", auth_section(fx, json!({})))
        .stage("mcp", mcp_section())
        .stage("ratelimit", ratelimit_section(limits))
        .stage("tagging", tagging_section())
        .stage("breaker", breaker_section())
        .stage("metrics", production_metrics())
        .into()
}

/// The jwt_authn metadata key of the verified token's payload.
const JWT_PAYLOAD: &str = "jwt_payload";

/// Envoy's native MCP authorisation: `jwt_authn` (cached, payload in
/// dynamic metadata), the `mcp` filter, and `rbac` allowing [`MCP_TOOL`]
/// only, for a verified token carrying [`SCOPE`].
fn mcp_native(fx: &Fixtures) -> Vec<HttpFilter> {
    let mcp_metadata = |path: &[&str], exact: &str| {
        let path: Vec<Value> = path.iter().map(|key| json!({ "key": key })).collect();
        json!({ "sourced_metadata": { "metadata_matcher": {
            "filter": "envoy.filters.http.mcp",
            "path": path,
            "value": { "string_match": { "exact": exact } },
        } } })
    };
    let rbac = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "call-search-context": {
                        "permissions": [{ "and_rules": { "rules": [
                            mcp_metadata(&["method"], "tools/call"),
                            mcp_metadata(&["params", "name"], MCP_TOOL),
                        ] } }],
                        "principals": [{ "sourced_metadata": { "metadata_matcher": {
                            "filter": "envoy.filters.http.jwt_authn",
                            "path": [{ "key": JWT_PAYLOAD }, { "key": "context_scopes" }],
                            "value": { "list_match": { "one_of": { "string_match": { "exact": SCOPE } } } },
                        } } }],
                    },
                },
            },
        },
    });
    vec![
        jwt_authn_filter(fx, true, Some(JWT_PAYLOAD)),
        RawFilter(json!({
            "name": "envoy.filters.http.mcp",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
            },
        }))
        .into(),
        RawFilter(rbac).into(),
    ]
}

/// `envoy.filters.http.jwt_authn` with one provider for the demo issuer and
/// the ES256 key inline, required for every path.
fn jwt_authn(fx: &Fixtures, cache: bool) -> HttpFilter {
    jwt_authn_filter(fx, cache, None)
}

/// [`jwt_authn`], writing the verified payload to dynamic metadata under
/// `payload_in_metadata` if given.
fn jwt_authn_filter(fx: &Fixtures, cache: bool, payload_in_metadata: Option<&str>) -> HttpFilter {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": { "inline_string": fx.jwks.to_string() },
    });
    if let Some(provider) = provider.as_object_mut() {
        if cache {
            provider.insert("jwt_cache_config".into(), json!({ "jwt_cache_size": 1000 }));
        }
        if let Some(key) = payload_in_metadata {
            provider.insert("payload_in_metadata".into(), json!(key));
        }
    }
    RawFilter(json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": { "demo": provider },
            "rules": [{ "match": { "prefix": "/" }, "requires": { "provider_name": "demo" } }],
        },
    }))
    .into()
}

/// The auth stage alone (`dist/ctxgate.wasm` with one section).
fn ctxgate_auth(fx: &Fixtures, extra: Value) -> HttpFilter {
    single("auth", auth_section(fx, extra))
}

/// The auth stage with an inline ES256 provider and the demo gateway's
/// `read` operation; `extra` is merged over the section.
fn auth_section(fx: &Fixtures, extra: Value) -> Value {
    let mut config = json!({
        "providers": [{
            "name": "demo",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": { "inline": fx.jwks },
        }],
        "operations": [
            { "name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read" },
        ],
    });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}
