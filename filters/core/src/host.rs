//! What the pipeline needs from a proxy, and nothing more.
//!
//! The logic in this crate is written once against [`Host`]. The wasm
//! engine (`filters/ctxgate`) implements it on proxy-wasm host calls; the
//! tests implement it in memory (`mock.rs`, feature `mock`). Nothing here names a
//! proxy-wasm type, so a second engine (a native Envoy module) can
//! implement it too.
//!
//! A host serves many streams (requests) of one worker. Every stream
//! operation names its stream: an engine that must switch to the stream
//! first (proxy-wasm's effective context) does so itself.

use crate::headers::Headers;
use crate::reply::LocalReply;
use crate::shared::SharedStore;

/// One request/response exchange, as the engine numbers it.
pub type StreamId = u32;

/// An outgoing call, as the engine numbers it.
pub type CallId = u32;

/// A metric as the host defined it.
pub type MetricId = u32;

/// Facts the proxy knows about a stream beyond its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// The downstream address as Envoy computed it (`ip:port`), after
    /// `use_remote_address` and `xff_num_trusted_hops`.
    ClientAddress,
    /// The name of the route the request matched.
    RouteName,
    /// The upstream cluster of that route.
    ClusterName,
    /// Whether the downstream connection presented a client certificate
    /// that the listener verified: `"true"` or `"false"` (Envoy's
    /// `connection.mtls`, one byte, is translated by the engine).
    PeerMtls,
    /// The peer certificate's first URI SAN (a SPIFFE ID), raw. Envoy
    /// exposes only the first one.
    PeerUriSan,
    /// The peer certificate's first DNS SAN.
    PeerDnsSan,
    /// The peer certificate's subject, RFC 2253 (`CN=ingest,O=ctx`).
    PeerSubject,
}

impl Attribute {
    /// Route and cluster depend on the request headers: header changes
    /// reach the proxy before either is read. Measured on Envoy 1.40: a
    /// header change clears the route cache, but a filter still reads the
    /// route matched before it; only the router matches again, when it
    /// forwards. A stage that must know where a request goes names the
    /// cluster itself (see the residency stage).
    pub fn depends_on_headers(self) -> bool {
        matches!(self, Attribute::RouteName | Attribute::ClusterName)
    }
}

/// One change to the request headers. Values are never empty (see
/// [`crate::pipeline::request::Request::set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    Remove(&'a str),
    /// Replaces every value of the header with this one.
    Set(&'a str, &'a [u8]),
    /// Adds a header the proxy's map does not hold: the same result as
    /// `Set`, without the proxy first looking for values to replace (in
    /// Envoy 1.40 a set costs about twice an add).
    Add(&'a str, &'a [u8]),
}

/// A gRPC call to make (unary).
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub metadata: &'a [(&'a str, &'a [u8])],
    pub message: &'a [u8],
    pub timeout_ms: u64,
}

/// An HTTP call to make.
#[derive(Debug, Clone, Copy)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers included (`:method`, `:path`, `:authority`).
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body (a POST's), if any.
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

/// Why the audit queue took or gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No audit queue here: the singleton that owns it is not running
    /// (or not yet), or this host has none.
    Unavailable,
}

/// How an outgoing call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResponse {
    /// gRPC status (0 is OK) and the response message.
    Grpc { status: u32, message: Vec<u8> },
    /// HTTP status (none: reset, timeout, no healthy host) and body.
    Http { status: Option<u16>, body: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// An Envoy histogram: each recorded value is one sample.
    Histogram,
}

/// A named set of nonces and its capacity, as a stage declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceSpace {
    /// Unique per plugin and stage (`ctxgate/<plugin>.signature`).
    pub name: String,
    pub buckets: u32,
    /// Live nonces per bucket.
    pub per_bucket: u8,
}

/// Why a nonce was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    /// The nonce is live: this is a replay.
    Replayed,
    /// Its bucket is full of live nonces. The store never forgets a live
    /// nonce to make room, so the request must be refused.
    Full,
    /// The store could not be read or written (contention, a record that
    /// does not decode, a host error).
    Unavailable,
}

/// Remembers nonces until they expire, for every worker of the proxy: a
/// host service (on proxy-wasm over shared data, [`crate::nonce`]), so
/// that an engine with threads can keep them in its own memory.
pub trait NonceStore {
    /// Creates what `space` keeps. Called when a worker is configured,
    /// before it serves traffic.
    fn prepare(&self, space: &NonceSpace);

    /// Records `nonce` (a keyed hash the stage computed, unique to its
    /// key id and nonce) until `expires_ms`, unless it is live already.
    fn claim(
        &self,
        space: &NonceSpace,
        nonce: u64,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<(), NonceRefusal>;
}

/// The proxy, as the pipeline sees it.
pub trait Host {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;

    /// The proxy's clock in nanoseconds, read anew on every call (one host
    /// call): for measuring how long work takes.
    fn clock_ns(&self) -> u64;

    /// State shared by every worker of this proxy (compare-and-swap).
    fn shared(&self) -> &dyn SharedStore;

    /// Nonces seen by every worker of this proxy, for replay protection.
    fn nonces(&self) -> &dyn NonceStore;

    /// The request headers of `stream`, read once, values as raw bytes.
    fn request_headers(&mut self, stream: StreamId) -> Headers;

    /// Applies request header changes, in order. `result` is the header
    /// list with the changes applied: a host may replace the whole map
    /// with it in one call instead of applying each change.
    fn change_request_headers(
        &mut self,
        stream: StreamId,
        changes: &[HeaderOp<'_>],
        result: &Headers,
    );

    /// The first `size` bytes of the request body the proxy buffered for
    /// `stream` (in its request-body callback, after the pipeline paused
    /// it so that the proxy buffers).
    fn request_body(&mut self, stream: StreamId, size: usize) -> Vec<u8>;

    /// A response header of `stream` (in its response-headers callback).
    fn response_header(&mut self, stream: StreamId, name: &str) -> Option<String>;

    /// Sets response headers of `stream` (in its response-headers callback).
    fn set_response_headers(&mut self, stream: StreamId, headers: &[(String, String)]);

    /// Removes a response header of `stream` (in its response-headers
    /// callback).
    fn remove_response_header(&mut self, stream: StreamId, name: &str);

    /// The first `size` bytes of the response body the proxy holds for
    /// `stream` (in its response-body callback: the chunk just arrived, or
    /// everything buffered since the pipeline paused it).
    fn response_body(&mut self, stream: StreamId, size: usize) -> Vec<u8>;

    /// Replaces the first `size` bytes of that response body with `body`.
    fn set_response_body(&mut self, stream: StreamId, size: usize, body: &[u8]);

    /// Read-only, so a decision can look it up lazily while it holds the
    /// shared store. Read route-dependent attributes only after applying
    /// header changes ([`Attribute::depends_on_headers`]).
    fn attribute(&self, stream: StreamId, attribute: Attribute) -> Option<String>;

    /// Answers `stream` locally instead of forwarding it.
    fn send_reply(&mut self, stream: StreamId, reply: &LocalReply);

    /// Lets a paused `stream` continue.
    fn resume(&mut self, stream: StreamId);

    /// Writes filter state of `stream` (for access logs and later filters).
    fn set_filter_state(&mut self, stream: StreamId, key: &str, value: &[u8]);

    /// Reads filter state an earlier filter wrote.
    fn filter_state(&mut self, stream: StreamId, key: &str) -> Option<Vec<u8>>;

    /// Starts a gRPC call. With `owner`, the call belongs to that stream
    /// (the proxy cancels it when the stream ends); without, to the worker.
    fn grpc_call(&mut self, owner: Option<StreamId>, call: &GrpcCall<'_>)
    -> Result<CallId, String>;

    fn cancel_grpc_call(&mut self, owner: Option<StreamId>, call: CallId);

    /// Starts an HTTP call owned by the worker.
    fn http_call(&mut self, call: &HttpCall<'_>) -> Result<CallId, String>;

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<MetricId>;

    /// Adds `delta` to a counter or gauge.
    fn add_metric(&mut self, metric: MetricId, delta: i64);

    /// Sets a gauge.
    fn set_metric(&mut self, metric: MetricId, value: u64);

    /// Records one sample of a histogram.
    fn record_metric(&mut self, metric: MetricId, value: u64);

    /// Hands one message to the audit singleton (a worker's side of the
    /// audit queue). The queue is unbounded in the proxy: the caller
    /// bounds what it puts in.
    fn audit_enqueue(&mut self, _message: &[u8]) -> Result<(), QueueError> {
        Err(QueueError::Unavailable)
    }

    /// The oldest message in the audit queue, `None` when it is empty (the
    /// singleton's side).
    fn audit_dequeue(&mut self) -> Result<Option<Vec<u8>>, QueueError> {
        Err(QueueError::Unavailable)
    }
}
