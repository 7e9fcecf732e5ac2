//! The pipeline: every stage over one request in one pass.
//!
//! One [`Worker`] per proxy worker holds the compiled stages, their
//! per-worker state, the metrics and the streams in flight. The engine
//! forwards the proxy's callbacks (request headers and body, response
//! headers, stream end, timer, call answers) and the worker drives the
//! stages through the [`Host`]:
//!
//! * the request headers are read once, and each stage sees the changes
//!   the stages before it made, in memory;
//! * the changes reach the proxy in one batch: before the request is
//!   forwarded or refused, or before a stage reads the route (the router
//!   matches the route again with them; a stage reading the route still
//!   sees the one matched before: see [`Attribute::depends_on_headers`]);
//! * a stage may ask a question (the RLS) and wait: the driver pauses the
//!   request, enforces the stage's deadline on the worker's timer, charges
//!   body bytes that arrive meanwhile once it is answered, and carries on
//!   with the next stage, resuming the request if it is let through;
//! * a refusal at any stage stops the pipeline there.
//!
//! Stages run in a fixed order: auth, signature, mcp, ratelimit, tagging,
//! residency, breaker. A stage runs only if its section is in the
//! configuration. When a stage's decision needs the body (a POST to an MCP
//! endpoint, a request on a signed route) the header stages run first,
//! then the driver holds the whole body (bounded: the smallest limit of
//! the stages that asked) and runs the body stages (`BODY_STAGES`) over it.

mod auth;
mod breaker;
pub mod config;
mod mcp;
pub mod outcome;
mod ratelimit;
pub mod request;
mod residency;
mod signature;
#[cfg(test)]
mod signature_tests;
mod tagging;
#[cfg(test)]
mod test_gateway;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::event::{Decision, RequestFacts};
use crate::audit::recorder::Recorder;
use crate::auth::Auth;
use crate::breaker::Breakers;
use crate::config::{ConfigError, in_section};
#[cfg(doc)]
use crate::host::Attribute;
use crate::host::{CallId, CallResponse, Host, StreamId};
use crate::metrics::{Counter, Metrics};
use crate::ratelimit::RateLimiter;
use crate::reply::LocalReply;
use crate::residency::Residency;
use crate::shared::load_secret;
use crate::tagging::Tagger;
use crate::telemetry::requests::{Decision as RequestDecision, RequestMetrics};
use crate::telemetry::tenants::TenantLabels;
use crate::telemetry::timing::{Direction, Timing, micros};
use crate::telemetry::utilisation::Utilisation;
use auth::AuthStage;
use breaker::{BreakerStage, BreakerStream};
use config::PipelineConfig;
use mcp::{McpStage, McpStream};
use outcome::Outcome;
use ratelimit::{RateLimitStage, RateLimitStream};
use request::Request;
use residency::{ResidencyStage, ResidencyStream};
use signature::{SignatureStage, SignatureStream};
use tagging::TaggingStage;

/// What a stage decided about a request.
#[derive(Debug)]
pub enum Step {
    /// On to the next stage.
    Next,
    /// Answer the request with this reply; later stages do not run.
    Reply(LocalReply),
    /// The stage started `call` and decides when it is answered, or at
    /// `deadline_ms` if it is not.
    Wait { call: CallId, deadline_ms: u64 },
}

/// What the engine tells the proxy to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Hold the stream: it waits for a call, or a reply was sent.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageId {
    /// The driver itself, refusing a request head it cannot decide on
    /// ([`Worker::incomplete`]) before any stage runs.
    Request,
    Auth,
    Signature,
    Mcp,
    RateLimit,
    Tagging,
    Residency,
    Breaker,
}

impl StageId {
    /// The stage's name in audit events.
    fn name(self) -> &'static str {
        match self {
            StageId::Request => "request",
            StageId::Auth => "auth",
            StageId::Signature => "signature",
            StageId::Mcp => "mcp",
            StageId::RateLimit => "ratelimit",
            StageId::Tagging => "tagging",
            StageId::Residency => "residency",
            StageId::Breaker => "breaker",
        }
    }

    /// Whether the stage decides access (and is audited). Tagging only
    /// labels what others let through.
    fn decides(self) -> bool {
        !matches!(self, StageId::Tagging)
    }
}

/// The stages that run again when the body is in, for a request whose
/// body decides (an MCP POST, a signed request), in this order: the
/// signature stage checks the body before anything reads it; the rate
/// limiter is skipped at the headers and prices the request here.
const BODY_STAGES: [StageId; 3] = [StageId::Signature, StageId::Mcp, StageId::RateLimit];

const ORDER: [StageId; 7] = [
    StageId::Auth,
    StageId::Signature,
    StageId::Mcp,
    StageId::RateLimit,
    StageId::Tagging,
    StageId::Residency,
    StageId::Breaker,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Paused until the whole body is buffered (at most `limit` bytes):
    /// then the stages run.
    Buffering {
        limit: u64,
    },
    /// The request headers are being decided.
    Deciding,
    /// Paused until `call` is answered or `deadline_ms` passes; then the
    /// stage after `stage` runs.
    Waiting {
        stage: StageId,
        call: CallId,
        deadline_ms: u64,
        /// Body bytes that arrived meanwhile (the proxy buffers them).
        body_bytes: u64,
        /// Paused in the body stages: the headers are gone already.
        on_body: bool,
    },
    Forwarded,
    Refused,
}

struct Stream {
    request: Request,
    phase: Phase,
    ratelimit: RateLimitStream,
    breaker: BreakerStream,
    residency: ResidencyStream,
    mcp: McpStream,
    signature: SignatureStream,
    /// The body size the proxy reported at the last body callback, if that
    /// callback paused (the proxy then buffers, and its next callback
    /// reports everything buffered, not just the new bytes).
    buffered: Option<u64>,
    /// The stages' decisions, for the audit trail (audit on).
    decisions: Vec<Decision>,
    /// The bearer token's digest, read before auth strips the header
    /// (audit on).
    token: Option<Arc<str>>,
    /// The status of the gateway's own reply, if it answered.
    replied: Option<u16>,
    /// The upstream response's status, once its headers came.
    status: Option<u16>,
    /// When the request was forwarded (ms).
    forwarded_ms: u64,
    /// When its headers arrived (ns), if the request is timed and not yet
    /// decided.
    started_ns: Option<u64>,
}

/// Random values the engine draws from the proxy at configure time.
#[derive(Debug, Clone, Copy)]
pub struct Seeds {
    /// A candidate for the slot-hashing secret (the first worker's wins,
    /// see [`load_secret`]).
    pub secret: [u8; 16],
    /// This worker's id in report ids.
    pub reporter: u64,
}

/// The pipeline of one proxy worker.
pub struct Worker {
    auth: Option<AuthStage>,
    signature: Option<SignatureStage>,
    mcp: Option<McpStage>,
    ratelimit: Option<RateLimitStage>,
    tagging: Option<TaggingStage>,
    residency: Option<ResidencyStage>,
    breaker: Option<BreakerStage>,
    audit: Option<Recorder>,
    requests: Option<RequestMetrics>,
    /// Rate-limit use of labelled tenants (with `requests` on).
    utilisation: Utilisation,
    /// The header whose value is the latency histogram's `route`.
    route_header: String,
    /// Each request's decision goes to filter state ([`outcome`]).
    filter_state: bool,
    timing: Timing,
    metrics: Metrics,
    streams: HashMap<StreamId, Stream>,
    flush_interval_ms: u64,
    next_flush_ms: u64,
    /// `ctxgate_request.refused.incomplete_head`.
    incomplete_head: Counter,
}

/// The reason code of [`Worker::incomplete`]'s refusal.
const INCOMPLETE_HEAD: &str = "incomplete_head";

impl Worker {
    /// Compiles the configuration (JSON) and creates what the stages keep
    /// in shared data. `plugin_name` names the shared-data namespace
    /// (`ctxgate/<plugin_name>`): stable across configuration pushes and
    /// unique per plugin.
    pub fn new(
        config: &[u8],
        plugin_name: &str,
        seeds: Seeds,
        host: &mut dyn Host,
    ) -> Result<Worker, ConfigError> {
        let config: PipelineConfig = crate::config::parse_json(config)?;
        config.validate()?;
        let namespace = format!("ctxgate/{plugin_name}");
        let secret = || {
            load_secret(host.shared(), &format!("{namespace}.secret"), seeds.secret).map_err(|e| {
                ConfigError::new("", format!("shared-data secret {namespace}.secret: {e}"))
            })
        };
        let mut metrics = Metrics::default();
        let auth = match config.auth {
            Some(c) => {
                let auth = Auth::new(c, &namespace, secret()?).map_err(in_section("auth"))?;
                Some(AuthStage::new(auth, &*host, &mut metrics))
            }
            None => None,
        };
        let signature = match config.signature {
            Some(c) => Some(
                SignatureStage::new(c, &namespace, secret()?, &*host, &mut metrics)
                    .map_err(in_section("signature"))?,
            ),
            None => None,
        };
        let mcp = match config.mcp {
            Some(c) => Some(
                McpStage::new(c, &namespace, secret()?, &*host, &mut metrics)
                    .map_err(in_section("mcp"))?,
            ),
            None => None,
        };
        let ratelimit = match config.ratelimit {
            Some(c) => {
                let limiter =
                    RateLimiter::new(c, &namespace, secret()?).map_err(in_section("ratelimit"))?;
                Some(RateLimitStage::new(
                    limiter,
                    seeds.reporter,
                    &*host,
                    &mut metrics,
                ))
            }
            None => None,
        };
        let residency = match config.residency {
            Some(c) => {
                let header = c.region_header.clone();
                let tagging_owns = config
                    .tagging
                    .as_ref()
                    .is_some_and(|t| t.headers.0.values().any(|h| *h == header));
                let residency = Residency::new(c).map_err(in_section("residency"))?;
                Some(ResidencyStage::new(residency, tagging_owns, &mut metrics))
            }
            None => None,
        };
        let tagging = match config.tagging {
            Some(c) => {
                let tagger = Tagger::new(c).map_err(in_section("tagging"))?;
                Some(TaggingStage::new(tagger, &mut metrics))
            }
            None => None,
        };
        let breaker = match config.breaker {
            Some(c) => {
                let breakers = Breakers::new(c, &namespace).map_err(in_section("breaker"))?;
                Some(BreakerStage::new(breakers, &*host, &mut metrics))
            }
            None => None,
        };
        let audit = config
            .audit
            .as_ref()
            .map(|c| Recorder::new(c, seeds.reporter, &mut metrics));
        let m = &config.metrics;
        let requests = m.requests.unwrap_or(auth.is_some()).then(|| {
            RequestMetrics::new(TenantLabels::new(
                &m.tenants,
                m.top_tenants,
                m.top_tenant_share,
                format!("{namespace}.tenant_labels"),
                host.shared(),
            ))
        });
        let stage_names: Vec<&'static str> = ORDER
            .iter()
            .filter(|s| match s {
                StageId::Request => false,
                StageId::Auth => auth.is_some(),
                StageId::Signature => signature.is_some(),
                StageId::Mcp => mcp.is_some(),
                StageId::RateLimit => ratelimit.is_some(),
                StageId::Tagging => tagging.is_some(),
                StageId::Residency => residency.is_some(),
                StageId::Breaker => breaker.is_some(),
            })
            .map(|s| s.name())
            .collect();
        let timing = Timing::new(config.metrics.timing_every, &stage_names, &mut metrics);
        let incomplete_head =
            metrics.counter(&format!("ctxgate_request.refused.{INCOMPLETE_HEAD}"));
        let mut worker = Worker {
            auth,
            signature,
            mcp,
            ratelimit,
            tagging,
            residency,
            breaker,
            audit,
            requests,
            utilisation: Utilisation::default(),
            route_header: config.metrics.route_header.to_ascii_lowercase(),
            filter_state: config.filter_state,
            timing,
            metrics,
            streams: HashMap::new(),
            flush_interval_ms: config.metrics.flush_interval_ms,
            next_flush_ms: 0,
            incomplete_head,
        };
        // Defines every metric now: dashboards see zeros, not gaps.
        worker.flush_metrics(host);
        Ok(worker)
    }

    /// How often the engine must call [`Worker::on_tick`].
    pub fn tick_ms(&self) -> u64 {
        [
            self.auth.as_ref().and_then(AuthStage::tick_ms),
            self.ratelimit.as_ref().and_then(RateLimitStage::tick_ms),
            self.breaker.as_ref().and_then(BreakerStage::tick_ms),
            self.audit.as_ref().map(Recorder::hold_ms),
            Some(self.flush_interval_ms),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.flush_interval_ms)
        .max(1)
    }

    /// The audit queue the engine must resolve: the singleton's vm_id and
    /// the queue's name (audit on).
    pub fn audit_queue(&self) -> Option<(&str, &str)> {
        self.audit.as_ref().map(Recorder::queue)
    }

    /// Streams in flight (tests).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    pub fn on_request_headers(
        &mut self,
        host: &mut dyn Host,
        id: StreamId,
        end_of_stream: bool,
    ) -> Flow {
        let headers = host.request_headers(id);
        let mut stream = Stream {
            request: Request::new(id, headers, end_of_stream),
            phase: Phase::Deciding,
            ratelimit: RateLimitStream::default(),
            breaker: BreakerStream::default(),
            residency: ResidencyStream::default(),
            mcp: McpStream::default(),
            signature: SignatureStream::default(),
            buffered: None,
            decisions: Vec::new(),
            token: None,
            replied: None,
            status: None,
            forwarded_ms: 0,
            started_ns: None,
        };
        if self.timing.sample() {
            stream.started_ns = Some(host.clock_ns());
            stream.request.timed = true;
        }
        if let Some(recorder) = self.audit.as_mut() {
            stream.token = bearer(&stream.request).map(|t| recorder.token_digest(t));
            stream.decisions.reserve(ORDER.len());
        }
        let flow = if let Some(reply) = self.incomplete(&stream.request) {
            self.note(host, &mut stream, StageId::Request, Some(&reply));
            self.reply_before_stages(host, &mut stream, &reply)
        } else {
            match self.before_stages(host, &mut stream, end_of_stream) {
                Some(flow) => flow,
                None => self.run(host, &mut stream, 0),
            }
        };
        self.streams.insert(id, stream);
        flow
    }

    /// The refusal of a request without `:method` or `:path`, before any
    /// stage runs: every decision is made on the method and the path, so a
    /// request that lacks one (a CONNECT tunnel, which has no `:path`; a
    /// header map the engine could not read) is refused (400
    /// `incomplete_head`), never decided on a guess such as `/`.
    fn incomplete(&mut self, request: &Request) -> Option<LocalReply> {
        let head = request.head();
        if !head.method.is_empty() && !head.path.is_empty() {
            return None;
        }
        self.metrics.inc(self.incomplete_head);
        log::debug!(
            "request: refused: no {}",
            if head.method.is_empty() {
                ":method"
            } else {
                ":path"
            }
        );
        let body = serde_json::json!({
            "error": "invalid_request",
            "reason": INCOMPLETE_HEAD,
            "message": "the gateway serves requests with a :method and a :path only (no CONNECT tunnels)",
        });
        Some(LocalReply::json_error(
            &head,
            400,
            &body,
            Vec::new(),
            format!("ctxgate_request_refused{{{INCOMPLETE_HEAD}}}"),
        ))
    }

    /// What happens before the stages run: the MCP resource metadata is
    /// served, and the body of an MCP POST or a signed request is awaited.
    /// `None`: run them.
    fn before_stages(
        &mut self,
        host: &mut dyn Host,
        stream: &mut Stream,
        end_of_stream: bool,
    ) -> Option<Flow> {
        if let Some(signature) = self.signature.as_ref() {
            signature.keep_received(&stream.request, &mut stream.signature);
        }
        if let Some(mcp) = self.mcp.as_ref() {
            stream.request.authorised_later = mcp.is_endpoint(&stream.request);
            if let Some(reply) = mcp.metadata_reply(&stream.request, &mut self.metrics) {
                return Some(self.reply_before_stages(host, stream, &reply));
            }
        }
        let limit = self.body_limit(&stream.request)?;
        let declared = stream
            .request
            .head()
            .header("content-length")
            .and_then(content_length);
        if declared.is_some_and(|length| length > limit) {
            let (stage, reply) = self.too_large(&stream.request);
            self.note(host, stream, stage, Some(&reply));
            return Some(self.reply_before_stages(host, stream, &reply));
        }
        // The body decides. Proxy-Wasm delivers no body while the headers
        // are held, so the headers go on after the header stages, and the
        // body is held (the proxy buffers it) until it is decided.
        stream.request.body_limit = Some(if end_of_stream { 0 } else { limit });
        None
    }

    /// The longest body read for `request`, if a stage decides on it: the
    /// smallest limit of the stages that ask.
    fn body_limit(&self, request: &Request) -> Option<u64> {
        let mcp = self.mcp.as_ref().and_then(|s| s.body_limit(request));
        let signature = self.signature.as_ref().and_then(|s| s.body_limit(request));
        match (mcp, signature) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The refusal of a body over [`Worker::body_limit`], by the stage
    /// whose limit it passed (MCP's on a tie: its reply is JSON-RPC).
    fn too_large(&mut self, request: &Request) -> (StageId, LocalReply) {
        let mcp = self.mcp.as_ref().and_then(|s| s.body_limit(request));
        let signature = self.signature.as_ref().and_then(|s| s.body_limit(request));
        match (self.mcp.as_ref(), self.signature.as_ref()) {
            (Some(stage), _) if mcp.is_some_and(|m| signature.is_none_or(|s| m <= s)) => {
                (StageId::Mcp, stage.too_large(&mut self.metrics))
            }
            (_, Some(stage)) if signature.is_some() => (
                StageId::Signature,
                stage.too_large(request, &mut self.metrics),
            ),
            _ => (
                StageId::Mcp,
                LocalReply {
                    status: 413,
                    headers: Vec::new(),
                    body: Vec::new(),
                    grpc_status: None,
                    details: "ctxgate_body_too_large".to_owned(),
                },
            ),
        }
    }

    /// `body_size`: what the proxy reports as buffered for this callback.
    pub fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        id: StreamId,
        body_size: u64,
        end_of_stream: bool,
    ) -> Flow {
        let Some(mut stream) = self.streams.remove(&id) else {
            return Flow::Continue;
        };
        let new_bytes = body_size.saturating_sub(stream.buffered.take().unwrap_or(0));
        let flow = match &mut stream.phase {
            Phase::Buffering { limit } => {
                let limit = *limit;
                self.on_buffered_body(host, &mut stream, body_size, limit, end_of_stream)
            }
            Phase::Refused => {
                stream.buffered = Some(body_size);
                Flow::Pause
            }
            Phase::Waiting { body_bytes, .. } => {
                // The headers wait for a call: the proxy must buffer the
                // body, not resume the request with it. What arrives is
                // charged once the call is answered.
                *body_bytes = body_bytes.saturating_add(new_bytes);
                stream.buffered = Some(body_size);
                Flow::Pause
            }
            Phase::Deciding | Phase::Forwarded => {
                let step = match self.ratelimit.as_mut() {
                    Some(stage) => {
                        stage.on_body(host, &mut stream.ratelimit, new_bytes, &mut self.metrics)
                    }
                    None => Step::Next,
                };
                match step {
                    Step::Reply(reply) => {
                        stream.buffered = Some(body_size);
                        self.note(host, &mut stream, StageId::RateLimit, Some(&reply));
                        self.refuse(host, &mut stream, &reply)
                    }
                    Step::Next | Step::Wait { .. } => Flow::Continue,
                }
            }
        };
        self.streams.insert(id, stream);
        flow
    }

    /// A body the stages wait for: refused if too long, buffered until it
    /// is complete, then the stages run with it.
    fn on_buffered_body(
        &mut self,
        host: &mut dyn Host,
        stream: &mut Stream,
        body_size: u64,
        limit: u64,
        end_of_stream: bool,
    ) -> Flow {
        if body_size > limit {
            let (stage, reply) = self.too_large(&stream.request);
            stream.buffered = Some(body_size);
            self.note(host, stream, stage, Some(&reply));
            return self.refuse(host, stream, &reply);
        }
        if !end_of_stream {
            stream.buffered = Some(body_size);
            return Flow::Pause;
        }
        let size = usize::try_from(body_size).unwrap_or(usize::MAX);
        stream.request.body = Some(host.request_body(stream.request.stream, size));
        stream.phase = Phase::Deciding;
        let flow = self.run_body_stages(host, stream, 0);
        match &mut stream.phase {
            // The rate limiter waits for the RLS: the body it held is
            // charged with the answer.
            Phase::Waiting { .. } => stream.buffered = Some(body_size),
            Phase::Refused => stream.buffered = Some(body_size),
            // Let through: the proxy passes the buffered body on.
            _ => stream.buffered = None,
        }
        flow
    }

    pub fn on_response_headers(&mut self, host: &mut dyn Host, id: StreamId) -> Flow {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Flow::Continue;
        };
        if stream.phase != Phase::Forwarded {
            // Our own refusal, or a stream the proxy answered while it
            // waited: nothing to add or to record.
            return Flow::Continue;
        }
        if self.requests.is_some() || self.breaker.is_some() {
            stream.status = host
                .response_header(id, ":status")
                .and_then(|s| s.parse::<u16>().ok());
        }
        if stream.request.timed
            && let Some(bytes) = host
                .response_header(id, "content-length")
                .as_deref()
                .and_then(content_length)
        {
            let established = stream.request.established_ref();
            let metrics = &mut self.metrics;
            self.timing
                .size(host, established, Direction::Response, bytes, metrics);
        }
        if let Some(requests) = self.requests.as_mut() {
            let ms = host.now_ms().saturating_sub(stream.forwarded_ms);
            let request = &stream.request;
            requests.upstream_latency(
                host,
                request.established_ref(),
                request.head().header(&self.route_header),
                ms,
                &mut self.metrics,
            );
        }
        let mut headers = Vec::new();
        if let Some(stage) = self.ratelimit.as_mut() {
            stage.on_response(host, &mut stream.ratelimit, &mut headers);
        }
        if let Some(stage) = self.breaker.as_ref() {
            stage.on_response(
                host,
                stream.status,
                &mut stream.breaker,
                &mut headers,
                &mut self.metrics,
            );
        }
        if !headers.is_empty() {
            host.set_response_headers(id, &headers);
        }
        if let Some(stage) = self.residency.as_ref() {
            stage.on_response(host, id, &mut stream.residency, &mut self.metrics);
        }
        if let Some(stage) = self.mcp.as_ref() {
            stage.on_response_headers(host, id, &mut stream.mcp);
        }
        Flow::Continue
    }

    /// A chunk of the response body: a listing is narrowed to what the
    /// caller may use; anything else passes untouched.
    pub fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        id: StreamId,
        body_size: u64,
        end_of_stream: bool,
    ) -> Flow {
        let (Some(stage), Some(stream)) = (self.mcp.as_ref(), self.streams.get_mut(&id)) else {
            return Flow::Continue;
        };
        if stream.phase != Phase::Forwarded {
            return Flow::Continue;
        }
        let size = usize::try_from(body_size).unwrap_or(usize::MAX);
        stage.on_response_body(
            host,
            id,
            &mut stream.mcp,
            size,
            end_of_stream,
            &mut self.metrics,
        )
    }

    /// The stream is gone (answered, reset or timed out).
    pub fn on_done(&mut self, host: &mut dyn Host, id: StreamId) {
        let Some(mut stream) = self.streams.remove(&id) else {
            return;
        };
        if let Some(stage) = self.ratelimit.as_mut() {
            stage.on_done(&mut stream.ratelimit);
        }
        if let Some(stage) = self.breaker.as_ref() {
            stage.on_done(host, &mut stream.breaker);
        }
        if let Some(requests) = self.requests.as_mut() {
            let outcome = match stream.phase {
                Phase::Refused => Some((outcome::decision(stream.replied), stream.replied)),
                Phase::Forwarded => Some((RequestDecision::Allow, stream.status)),
                // Gone before it was decided: not a request the gateway
                // answered.
                _ => None,
            };
            if let Some((decision, status)) = outcome {
                let established = stream.request.established(host);
                let labelled = requests.count(
                    Some(established),
                    decision,
                    status,
                    host.shared(),
                    &mut self.metrics,
                );
                if let (Some(tenant), Some(stage), Some(cost)) = (
                    labelled,
                    self.ratelimit.as_ref(),
                    stream.ratelimit.admitted_cost(),
                ) {
                    let limits = stage.limits_of(established.identity.as_deref());
                    self.utilisation.admitted(
                        tenant,
                        &limits,
                        cost,
                        stream.ratelimit.burst_permille(),
                        stream.forwarded_ms,
                        &mut self.metrics,
                    );
                }
            }
        }
        if let Some(recorder) = self.audit.as_mut()
            && !stream.decisions.is_empty()
        {
            let request = &mut stream.request;
            request.established(host);
            if recorder.client().reads_address() {
                request.client_address(host);
            }
            let head = request.head();
            let client = recorder
                .client()
                .key_of(&head, request.client_address_read());
            let facts = RequestFacts {
                request_id: head.header("x-request-id"),
                method: head.method,
                path: head.path.split('?').next().unwrap_or_default(),
                client: Some(&client),
                established: request.established_ref(),
                token: stream.token.as_deref(),
            };
            recorder.record(host, &stream.decisions, &facts, &mut self.metrics);
        }
    }

    /// Notes a stage's decision for the audit trail: `refusal` is the
    /// reply if it refused, `None` if it let the request through.
    fn note(
        &self,
        host: &dyn Host,
        stream: &mut Stream,
        stage: StageId,
        refusal: Option<&LocalReply>,
    ) {
        if self.audit.is_none() || !stage.decides() {
            return;
        }
        stream.decisions.push(Decision {
            stage: stage.name(),
            time_ms: host.now_ms(),
            refusal: refusal.map(|r| (r.status, r.details.clone())),
        });
    }

    /// Deadlines of waiting streams, background work of the stages, and
    /// the metrics flush. Returns whether metrics were flushed (the engine
    /// may do its own periodic work then).
    pub fn on_tick(&mut self, host: &mut dyn Host) -> bool {
        let now = host.now_ms();
        let late: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Waiting { deadline_ms, .. } if now >= deadline_ms))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(Phase::Waiting { call, .. }) = self.streams.get(&id).map(|s| s.phase) {
                host.cancel_grpc_call(Some(id), call);
            }
            self.resolve(host, id, None);
        }
        if let Some(stage) = self.auth.as_mut() {
            stage.on_tick(host, &mut self.metrics);
        }
        if let Some(stage) = self.ratelimit.as_mut() {
            stage.on_tick(host, &mut self.metrics);
        }
        if let Some(stage) = self.breaker.as_mut() {
            stage.on_tick(host, &mut self.metrics);
        }
        if let Some(recorder) = self.audit.as_mut() {
            recorder.on_tick(host, now, &mut self.metrics);
        }
        let flush = now >= self.next_flush_ms;
        if flush {
            self.flush_metrics(host);
        }
        flush
    }

    /// The answer to a call a stage made.
    pub fn on_call_response(&mut self, host: &mut dyn Host, call: CallId, response: CallResponse) {
        if let Some(stage) = self.auth.as_mut()
            && stage.on_call_response(host, call, &response, &mut self.metrics)
        {
            return;
        }
        if let Some(stage) = self.ratelimit.as_mut()
            && stage.on_call_response(host, call, &response, &mut self.metrics)
        {
            return;
        }
        let waiting = self.streams.iter().find_map(|(id, s)| match s.phase {
            Phase::Waiting { call: c, .. } if c == call => Some(*id),
            _ => None,
        });
        if let Some(id) = waiting {
            self.resolve(host, id, Some(&response));
        }
    }

    /// Hands what was counted since the last flush to the host, without
    /// the periodic work of a full flush. The native engine calls it on
    /// every tick, so counts wait a tick (`tick_ms`), not a full flush
    /// interval.
    pub fn flush_counts(&mut self, host: &mut dyn Host) {
        self.metrics.flush(host);
    }

    fn flush_metrics(&mut self, host: &mut dyn Host) {
        self.next_flush_ms = host.now_ms().saturating_add(self.flush_interval_ms);
        if let Some(requests) = self.requests.as_mut() {
            requests.refresh(host.shared());
            self.utilisation.publish(host.now_ms(), &mut self.metrics);
        }
        self.metrics.flush(host);
    }

    /// Runs the stages from `from` on. Forwards the request (applying its
    /// header changes) when every stage let it through.
    fn run(&mut self, host: &mut dyn Host, stream: &mut Stream, from: usize) -> Flow {
        for stage in ORDER.iter().skip(from) {
            // The rate limiter prices a request whose body decides once
            // the body is in (the mcp stage runs at both).
            if stream.request.body_limit.is_some() && *stage == StageId::RateLimit {
                continue;
            }
            let started = stream.request.timed.then(|| host.clock_ns());
            let metrics = &mut self.metrics;
            let request = &mut stream.request;
            let step = match stage {
                StageId::Request => None,
                StageId::Auth => self
                    .auth
                    .as_mut()
                    .map(|s| s.on_request(host, request, metrics)),
                StageId::Signature => self
                    .signature
                    .as_ref()
                    .map(|s| s.on_request(host, request, &mut stream.signature, metrics)),
                StageId::Mcp => self
                    .mcp
                    .as_mut()
                    .map(|s| s.on_request(host, request, &mut stream.mcp, metrics)),
                StageId::RateLimit => self
                    .ratelimit
                    .as_mut()
                    .map(|s| s.on_request(host, request, &mut stream.ratelimit, metrics)),
                StageId::Tagging => self
                    .tagging
                    .as_ref()
                    .map(|s| s.on_request(host, request, metrics)),
                StageId::Residency => self
                    .residency
                    .as_ref()
                    .map(|s| s.on_request(host, request, &mut stream.residency, metrics)),
                StageId::Breaker => self
                    .breaker
                    .as_ref()
                    .map(|s| s.on_request(host, request, &mut stream.breaker, metrics)),
            };
            if let (Some(started), Some(_)) = (started, &step) {
                let us = micros(started, host.clock_ns());
                self.timing.stage(host, stage.name(), us, &mut self.metrics);
            }
            match step {
                None => {}
                // A body stage decides once the body is in.
                Some(Step::Next)
                    if stream.request.body_limit.is_some() && BODY_STAGES.contains(stage) => {}
                Some(Step::Next) => self.note(host, stream, *stage, None),
                Some(Step::Reply(mut reply)) => {
                    if *stage == StageId::Auth
                        && let Some(mcp) = self.mcp.as_ref()
                    {
                        mcp.amend_refusal(&stream.request, &mut reply);
                    }
                    self.note(host, stream, *stage, Some(&reply));
                    return self.refuse(host, stream, &reply);
                }
                Some(Step::Wait { call, deadline_ms }) => {
                    return wait(stream, *stage, call, deadline_ms, false);
                }
            }
        }
        stream.request.apply_changes(host);
        stream.phase = Phase::Forwarded;
        stream.forwarded_ms = host.now_ms();
        match stream.request.body_limit {
            // No body at all: decided at once, on an empty one.
            Some(_) if stream.request.end_of_stream => {
                stream.request.body = Some(Vec::new());
                return self.run_body_stages(host, stream, 0);
            }
            Some(limit) => stream.phase = Phase::Buffering { limit },
            None => self.decided(host, stream),
        }
        Flow::Continue
    }

    /// The stages that decide on the body (`BODY_STAGES`), from the
    /// `from`th: the headers are forwarded, the body is held until they
    /// let it through.
    fn run_body_stages(&mut self, host: &mut dyn Host, stream: &mut Stream, from: usize) -> Flow {
        for stage in BODY_STAGES.iter().skip(from) {
            let started = stream.request.timed.then(|| host.clock_ns());
            let metrics = &mut self.metrics;
            let request = &mut stream.request;
            let step = match stage {
                StageId::Signature => self
                    .signature
                    .as_ref()
                    .map(|s| s.on_body(request, &mut stream.signature, metrics)),
                // The body is an MCP message only on an MCP endpoint (a
                // signed route holds bodies too).
                StageId::Mcp => self
                    .mcp
                    .as_mut()
                    .filter(|s| s.body_limit(request).is_some())
                    .map(|s| s.on_body(host, request, &mut stream.mcp, metrics)),
                StageId::RateLimit => self
                    .ratelimit
                    .as_mut()
                    .map(|s| s.on_request(host, request, &mut stream.ratelimit, metrics)),
                _ => None,
            };
            if let (Some(started), Some(_)) = (started, &step) {
                let us = micros(started, host.clock_ns());
                self.timing.stage(host, stage.name(), us, &mut self.metrics);
            }
            match step {
                None => {}
                Some(Step::Next) => self.note(host, stream, *stage, None),
                Some(Step::Reply(mut reply)) => {
                    if let Some(mcp) = self.mcp.as_ref() {
                        mcp.amend_body_refusal(&stream.mcp, &mut reply);
                    }
                    self.note(host, stream, *stage, Some(&reply));
                    return self.refuse(host, stream, &reply);
                }
                Some(Step::Wait { call, deadline_ms }) => {
                    return wait(stream, *stage, call, deadline_ms, true);
                }
            }
        }
        stream.phase = Phase::Forwarded;
        stream.forwarded_ms = host.now_ms();
        self.decided(host, stream);
        Flow::Continue
    }

    /// Replies before any stage ran (an incomplete head, a body declared
    /// too long, the MCP metadata): auth removes client-sent identity
    /// headers whatever it decides, so they are removed here, as it would
    /// (the access log must not show a forged tenant either).
    fn reply_before_stages(
        &mut self,
        host: &mut dyn Host,
        stream: &mut Stream,
        reply: &LocalReply,
    ) -> Flow {
        if let Some(auth) = self.auth.as_ref() {
            auth.strip_identity(&mut stream.request);
        }
        self.refuse(host, stream, reply)
    }

    /// Sends a refusal, after the header changes made so far (a refused
    /// request's access log must not show client-sent identity headers).
    fn refuse(&mut self, host: &mut dyn Host, stream: &mut Stream, reply: &LocalReply) -> Flow {
        stream.request.apply_changes(host);
        host.send_reply(stream.request.stream, reply);
        stream.replied = Some(reply.status);
        stream.phase = Phase::Refused;
        self.decided(host, stream);
        Flow::Pause
    }

    /// The request is decided (forwarded with its body decided, or
    /// refused): its outcome goes to filter state (`filter_state` on), and
    /// a timed request's decision time and size to their histograms.
    fn decided(&mut self, host: &mut dyn Host, stream: &mut Stream) {
        if self.filter_state {
            let outcome = Outcome {
                decision: outcome::decision(stream.replied),
                cost: stream.ratelimit.admitted_cost(),
                breaker: stream.breaker.met(),
            };
            outcome.export(host, stream.request.stream);
        }
        // Once: a body the rate limiter refuses after the request was
        // forwarded decides it a second time.
        if let Some(started) = stream.started_ns.take() {
            let us = micros(started, host.clock_ns());
            self.timing.decision(host, us, &mut self.metrics);
            let request = &stream.request;
            if let Some(bytes) = request
                .head()
                .header("content-length")
                .and_then(content_length)
            {
                let established = request.established_ref();
                let metrics = &mut self.metrics;
                self.timing
                    .size(host, established, Direction::Request, bytes, metrics);
            }
        }
    }

    /// A waiting stream's call was answered (`response`) or its deadline
    /// passed (`None`): the waiting stage decides, then the rest of the
    /// pipeline runs and the stream resumes if it is let through.
    fn resolve(&mut self, host: &mut dyn Host, id: StreamId, response: Option<&CallResponse>) {
        let Some(mut stream) = self.streams.remove(&id) else {
            return;
        };
        let Phase::Waiting {
            stage,
            body_bytes,
            on_body,
            ..
        } = stream.phase
        else {
            self.streams.insert(id, stream);
            return;
        };
        stream.phase = Phase::Deciding;
        let step = match (stage, self.ratelimit.as_mut()) {
            (StageId::RateLimit, Some(s)) => match response {
                Some(r) => s.on_answer(
                    host,
                    &mut stream.ratelimit,
                    r,
                    body_bytes,
                    &mut self.metrics,
                ),
                None => s.on_deadline(host, &mut stream.ratelimit, body_bytes, &mut self.metrics),
            },
            _ => Step::Next,
        };
        match step {
            Step::Reply(mut reply) => {
                if let (true, Some(mcp)) = (on_body, self.mcp.as_ref()) {
                    mcp.amend_body_refusal(&stream.mcp, &mut reply);
                }
                self.note(host, &mut stream, stage, Some(&reply));
                self.refuse(host, &mut stream, &reply);
            }
            Step::Next | Step::Wait { .. } => {
                self.note(host, &mut stream, stage, None);
                let flow = if on_body {
                    let next = BODY_STAGES
                        .iter()
                        .position(|s| *s == stage)
                        .map_or(BODY_STAGES.len(), |i| i + 1);
                    self.run_body_stages(host, &mut stream, next)
                } else {
                    let next = ORDER
                        .iter()
                        .position(|s| *s == stage)
                        .map_or(ORDER.len(), |i| i + 1);
                    self.run(host, &mut stream, next)
                };
                if flow == Flow::Continue {
                    // The proxy passes the buffered body on with the
                    // request, and counts from zero again.
                    stream.buffered = None;
                    host.resume(id);
                }
            }
        }
        self.streams.insert(id, stream);
    }
}

/// A `content-length` value, if it is a number.
fn content_length(value: &str) -> Option<u64> {
    value.trim().parse().ok()
}

/// The request's bearer token, if it has one (for its digest: the token
/// itself is never recorded).
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.head().header_values("authorization").next()?;
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

/// Pauses the stream while `stage`'s call is out (`on_body`: a body
/// stage's, so the body stages go on after it).
fn wait(
    stream: &mut Stream,
    stage: StageId,
    call: CallId,
    deadline_ms: u64,
    on_body: bool,
) -> Flow {
    stream.phase = Phase::Waiting {
        stage,
        call,
        deadline_ms,
        body_bytes: 0,
        on_body,
    };
    Flow::Pause
}
