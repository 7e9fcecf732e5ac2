//! [`Host`] on the dynamic-module ABI, as seen from one hook of one
//! thread.
//!
//! Replies, resumes and call cancellations are applied once the pipeline
//! has returned ([`NativeHost::finish`]): Envoy may run this module's hooks
//! again inside any of them (a reply runs the response path, a reset runs
//! the call's reset hook).

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ctxgate_core::headers::Headers;
use ctxgate_core::host::{
    Attribute, CallId, GrpcCall, HeaderOp, Host, HttpCall, MetricId, MetricKind, NonceStore,
    QueueError, StreamId,
};
use ctxgate_core::nonce::SharedNonces;
use ctxgate_core::reply::LocalReply;
use ctxgate_core::shared::SharedStore;

use crate::abi::{AttributeId, Body, Filter, HeaderMap};
use crate::audit::QUEUES;
use crate::calls::{self, Kind, Request};
use crate::engine::{STORE, Tables};
use crate::store::ProcessStore;

/// Replay protection over the process store.
static NONCES: LazyLock<SharedNonces<&'static ProcessStore>> =
    LazyLock::new(|| SharedNonces(&*STORE));

/// Envoy's filter state keys are the ones the wasm engine writes
/// (proxy-wasm puts `wasm.` before a plugin's keys), so that access logs
/// and filters after ctxgate read the same keys on either engine.
const FILTER_STATE_PREFIX: &str = "wasm.";

enum Deferred {
    Reply(StreamId, LocalReply),
    Resume(StreamId),
    Reset(StreamId, u64),
}

pub struct NativeHost<'a> {
    tables: &'a Tables,
    deferred: Vec<Deferred>,
    /// The clock, read once per hook, as on the wasm engine.
    now_ms: Cell<Option<u64>>,
}

impl<'a> NativeHost<'a> {
    pub fn new(tables: &'a Tables) -> NativeHost<'a> {
        NativeHost {
            tables,
            deferred: Vec::new(),
            now_ms: Cell::new(None),
        }
    }

    fn filter(&self, stream: StreamId) -> Option<Filter> {
        self.tables.streams.borrow().get(&stream).copied()
    }

    /// Applies the replies, resumes and resets the pipeline decided on.
    pub fn finish(mut self) {
        for action in std::mem::take(&mut self.deferred) {
            match action {
                Deferred::Reply(stream, reply) => {
                    if let Some(filter) = self.filter(stream) {
                        send_reply(filter, &reply);
                    }
                }
                Deferred::Resume(stream) => {
                    if let Some(filter) = self.filter(stream) {
                        filter.continue_decoding();
                    }
                }
                Deferred::Reset(stream, envoy_id) => {
                    if let Some(filter) = self.filter(stream) {
                        filter.reset_stream(envoy_id);
                    }
                }
            }
        }
    }

    /// Records a stream-owned call Envoy started, or delivers its answer
    /// if it already ended.
    fn started(&self, stream: StreamId, envoy_id: u64, kind: Kind) -> CallId {
        let call = self.tables.next_call();
        let key = (stream, envoy_id);
        match self.tables.early.borrow_mut().remove(&key) {
            Some(end) => {
                let answer = self
                    .tables
                    .answers
                    .borrow_mut()
                    .remove(&key)
                    .unwrap_or_default();
                self.tables
                    .mailbox
                    .put(call, calls::response(kind, end, answer));
            }
            None => {
                self.tables.calls.borrow_mut().insert(key, (call, kind));
            }
        }
        call
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn send_reply(filter: Filter, reply: &LocalReply) {
    let mut headers: Vec<(&str, &[u8])> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    // The ABI's reply has no gRPC status: Envoy would answer a gRPC
    // request with status 0 (OK). A gRPC refusal carries its own.
    let grpc_status = reply.grpc_status.map(|s| s.to_string());
    if let Some(status) = &grpc_status {
        headers.push(("grpc-status", status.as_bytes()));
        headers.push(("grpc-message", reply.details.as_bytes()));
    }
    filter.send_response(reply.status, &headers, &reply.body, &reply.details);
}

impl Host for NativeHost<'_> {
    fn now_ms(&self) -> u64 {
        if let Some(now) = self.now_ms.get() {
            return now;
        }
        let now = now_ms();
        self.now_ms.set(Some(now));
        now
    }

    fn clock_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn shared(&self) -> &dyn SharedStore {
        &*STORE
    }

    fn nonces(&self) -> &dyn NonceStore {
        &*NONCES
    }

    fn request_headers(&mut self, stream: StreamId) -> Headers {
        self.filter(stream)
            .map(|f| f.headers(HeaderMap::Request))
            .unwrap_or_default()
    }

    fn change_request_headers(
        &mut self,
        stream: StreamId,
        changes: &[HeaderOp<'_>],
        _result: &Headers,
    ) {
        let Some(filter) = self.filter(stream) else {
            return;
        };
        for change in changes {
            match change {
                HeaderOp::Remove(name) => filter.set_header(HeaderMap::Request, name, None),
                HeaderOp::Set(name, value) => {
                    filter.set_header(HeaderMap::Request, name, Some(value));
                }
                HeaderOp::Add(name, value) => filter.add_header(HeaderMap::Request, name, value),
            }
        }
        // The route follows the headers as authorised and tagged (the
        // routing tags select the upstream).
        if !changes.is_empty() {
            filter.clear_route_cache();
        }
    }

    fn request_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        let Some(filter) = self.filter(stream) else {
            return Vec::new();
        };
        let mut body = filter.body(Body::BufferedRequest, size);
        if body.len() < size {
            let rest = filter.body(Body::ReceivedRequest, size - body.len());
            body.extend_from_slice(&rest);
        }
        body
    }

    fn response_header(&mut self, stream: StreamId, name: &str) -> Option<String> {
        let value = self.filter(stream)?.header(HeaderMap::Response, name)?;
        String::from_utf8(value).ok()
    }

    fn set_response_headers(&mut self, stream: StreamId, headers: &[(String, String)]) {
        if let Some(filter) = self.filter(stream) {
            for (name, value) in headers {
                filter.set_header(HeaderMap::Response, name, Some(value.as_bytes()));
            }
        }
    }

    fn remove_response_header(&mut self, stream: StreamId, name: &str) {
        if let Some(filter) = self.filter(stream) {
            filter.set_header(HeaderMap::Response, name, None);
        }
    }

    fn response_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        let Some(filter) = self.filter(stream) else {
            return Vec::new();
        };
        let mut body = filter.body(Body::BufferedResponse, size);
        if body.len() < size {
            let rest = filter.body(Body::ReceivedResponse, size - body.len());
            body.extend_from_slice(&rest);
        }
        body
    }

    fn set_response_body(&mut self, stream: StreamId, size: usize, body: &[u8]) {
        let Some(filter) = self.filter(stream) else {
            return;
        };
        // What the pipeline read: the buffered body when it paused the
        // response, else the chunk that just arrived.
        let which = if filter.body_size(Body::BufferedResponse) > 0 {
            Body::BufferedResponse
        } else {
            Body::ReceivedResponse
        };
        filter.replace_body_prefix(which, size, body);
    }

    fn attribute(&self, stream: StreamId, attribute: Attribute) -> Option<String> {
        let filter = self.filter(stream)?;
        let id = match attribute {
            Attribute::ClientAddress => AttributeId::SourceAddress,
            Attribute::RouteName => AttributeId::RouteName,
            Attribute::ClusterName => AttributeId::ClusterName,
            Attribute::PeerMtls => {
                // Plaintext has no value; the wasm engine reads `false`.
                let verified = filter.attribute_bool(AttributeId::ConnectionMtls);
                return Some(verified.unwrap_or(false).to_string());
            }
            Attribute::PeerUriSan => AttributeId::UriSanPeerCertificate,
            Attribute::PeerDnsSan => AttributeId::DnsSanPeerCertificate,
            Attribute::PeerSubject => AttributeId::SubjectPeerCertificate,
        };
        String::from_utf8(filter.attribute_string(id)?).ok()
    }

    fn send_reply(&mut self, stream: StreamId, reply: &LocalReply) {
        self.deferred.push(Deferred::Reply(stream, reply.clone()));
    }

    fn resume(&mut self, stream: StreamId) {
        self.deferred.push(Deferred::Resume(stream));
    }

    fn set_filter_state(&mut self, stream: StreamId, key: &str, value: &[u8]) {
        if let Some(filter) = self.filter(stream) {
            filter.set_filter_state(&[FILTER_STATE_PREFIX, key].concat(), value);
        }
    }

    fn filter_state(&mut self, stream: StreamId, key: &str) -> Option<Vec<u8>> {
        self.filter(stream)?
            .filter_state(&[FILTER_STATE_PREFIX, key].concat())
    }

    fn grpc_call(
        &mut self,
        owner: Option<StreamId>,
        call: &GrpcCall<'_>,
    ) -> Result<CallId, String> {
        let request = Request::grpc(call);
        let Some(stream) = owner else {
            return Ok(self.tables.worker_call(request));
        };
        let filter = self.filter(stream).ok_or("the stream is gone")?;
        let envoy_id = filter
            .start_stream(
                &request.cluster,
                &request.header_refs(),
                &request.body,
                request.timeout_ms,
            )
            .map_err(|code| format!("Envoy refused the call ({code})"))?;
        Ok(self.started(stream, envoy_id, Kind::Grpc))
    }

    fn cancel_grpc_call(&mut self, owner: Option<StreamId>, call: CallId) {
        let Some(stream) = owner else { return };
        let envoy_id = {
            let mut calls = self.tables.calls.borrow_mut();
            let found = calls
                .iter()
                .find(|((s, _), (c, _))| *s == stream && *c == call)
                .map(|((_, e), _)| *e);
            if let Some(e) = found {
                calls.remove(&(stream, e));
            }
            found
        };
        if let Some(envoy_id) = envoy_id {
            self.deferred.push(Deferred::Reset(stream, envoy_id));
        }
    }

    fn http_call(&mut self, call: &HttpCall<'_>) -> Result<CallId, String> {
        Ok(self.tables.worker_call(Request::http(call)))
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<MetricId> {
        self.tables.shared.metric(kind, name)
    }

    fn add_metric(&mut self, metric: MetricId, delta: i64) {
        self.tables.shared.add_metric(metric, delta);
    }

    fn set_metric(&mut self, metric: MetricId, value: u64) {
        self.tables.shared.set_metric(metric, value);
    }

    fn record_metric(&mut self, metric: MetricId, value: u64) {
        self.tables.shared.set_metric(metric, value);
    }

    fn audit_enqueue(&mut self, message: &[u8]) -> Result<(), QueueError> {
        let queue = self.tables.audit_queue.borrow();
        let key = queue.as_deref().ok_or(QueueError::Unavailable)?;
        QUEUES.push(key, message)
    }

    fn audit_dequeue(&mut self) -> Result<Option<Vec<u8>>, QueueError> {
        let queue = self.tables.audit_queue.borrow();
        let key = queue.as_deref().ok_or(QueueError::Unavailable)?;
        Ok(QUEUES.pop(key))
    }
}
