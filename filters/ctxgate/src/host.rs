//! [`Host`] on proxy-wasm host calls: the only code of ctxgate that calls
//! the proxy. Nothing here panics on a host error: a failed call degrades
//! to a logged no-op, because a panic aborts the VM and fails every
//! request on its worker.

use std::cell::{Cell, RefCell};
use std::time::{Duration, UNIX_EPOCH};

use ctxgate_core::headers::Headers;
use ctxgate_core::host::{
    Attribute, CallId, CallResponse, GrpcCall, HeaderOp, Host, HttpCall, MetricId, MetricKind,
    NonceStore, QueueError, StreamId,
};
use ctxgate_core::nonce::SharedNonces;
use ctxgate_core::reply::LocalReply;
use ctxgate_core::shared::{Cas, SetError, SharedStore};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// A reply or a resume, made once the worker has returned: either may
/// make the proxy call back into this VM.
enum Deferred {
    Reply(StreamId, LocalReply),
    Resume(StreamId),
}

/// The host as seen from one callback. `current` is the context the proxy
/// acts on (proxy-wasm's effective context); stream operations switch it
/// when they name another stream, calls owned by the worker switch back
/// to the root context.
pub struct WasmHost {
    root: u32,
    current: Cell<u32>,
    deferred: Vec<Deferred>,
    /// The clock, read once per callback: a callback takes microseconds,
    /// and every decision in it should see the same time.
    now_ms: Cell<Option<u64>>,
}

impl WasmHost {
    /// `current`: the context of the callback being served.
    pub fn new(root: u32, current: u32) -> WasmHost {
        WasmHost {
            root,
            current: Cell::new(current),
            deferred: Vec::new(),
            now_ms: Cell::new(None),
        }
    }

    fn on(&self, context: u32) {
        if self.current.get() != context {
            match hostcalls::set_effective_context(context) {
                Ok(()) => self.current.set(context),
                Err(status) => log::debug!("context {context} is gone: {status:?}"),
            }
        }
    }

    /// Sends the replies and resumes the worker decided on.
    pub fn finish(mut self) {
        for action in std::mem::take(&mut self.deferred) {
            match action {
                Deferred::Reply(stream, reply) => {
                    self.on(stream);
                    send_local_reply(&reply);
                }
                Deferred::Resume(stream) => {
                    self.on(stream);
                    let _ = hostcalls::resume_http_request();
                }
            }
        }
    }
}

/// Proxy-wasm shared data as a [`SharedStore`].
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        match hostcalls::get_shared_data(key) {
            Ok((value, Some(cas))) => Some((value.unwrap_or_default(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Host),
        }
    }
}

impl Host for WasmHost {
    fn clock_ns(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn now_ms(&self) -> u64 {
        if let Some(now) = self.now_ms.get() {
            return now;
        }
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.now_ms.set(Some(now));
        now
    }

    fn shared(&self) -> &dyn SharedStore {
        &SharedData
    }

    fn nonces(&self) -> &dyn NonceStore {
        &SharedNonces(SharedData)
    }

    fn request_headers(&mut self, stream: StreamId) -> Headers {
        self.on(stream);
        request_header_map()
    }

    fn change_request_headers(
        &mut self,
        stream: StreamId,
        changes: &[HeaderOp<'_>],
        _result: &Headers,
    ) {
        // One call per change: `proxy_set_header_map_pairs` (replace the
        // map in one call) costs more than seven single changes in Envoy
        // 1.40 (`make bench`, `wasm floor + set_map` against `set_headers`).
        self.on(stream);
        for change in changes {
            let _ = match change {
                HeaderOp::Remove(name) => {
                    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                }
                HeaderOp::Set(name, value) => {
                    hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value))
                }
                HeaderOp::Add(name, value) => {
                    hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value)
                }
            };
        }
    }

    fn response_header(&mut self, stream: StreamId, name: &str) -> Option<String> {
        self.on(stream);
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_response_headers(&mut self, stream: StreamId, headers: &[(String, String)]) {
        self.on(stream);
        for (name, value) in headers {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
    }

    fn attribute(&self, stream: StreamId, attribute: Attribute) -> Option<String> {
        self.on(stream);
        let path = match attribute {
            Attribute::ClientAddress => vec!["source", "address"],
            Attribute::RouteName => vec!["xds", "route_name"],
            Attribute::ClusterName => vec!["xds", "cluster_name"],
            Attribute::PeerMtls => vec!["connection", "mtls"],
            Attribute::PeerUriSan => vec!["connection", "uri_san_peer_certificate"],
            Attribute::PeerDnsSan => vec!["connection", "dns_san_peer_certificate"],
            Attribute::PeerSubject => vec!["connection", "subject_peer_certificate"],
        };
        let bytes = hostcalls::get_property(path).ok().flatten()?;
        if attribute == Attribute::PeerMtls {
            // A bool, serialised as one byte (0x00 even on plaintext).
            let verified = bytes.first().is_some_and(|b| *b != 0);
            return Some(verified.to_string());
        }
        String::from_utf8(bytes).ok()
    }

    fn send_reply(&mut self, stream: StreamId, reply: &LocalReply) {
        self.deferred.push(Deferred::Reply(stream, reply.clone()));
    }

    fn resume(&mut self, stream: StreamId) {
        self.deferred.push(Deferred::Resume(stream));
    }

    fn set_filter_state(&mut self, stream: StreamId, key: &str, value: &[u8]) {
        self.on(stream);
        let _ = hostcalls::set_property(vec![key], Some(value));
    }

    fn filter_state(&mut self, stream: StreamId, key: &str) -> Option<Vec<u8>> {
        self.on(stream);
        hostcalls::get_property(vec![key]).ok().flatten()
    }

    fn remove_response_header(&mut self, stream: StreamId, name: &str) {
        self.on(stream);
        let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
    }

    fn response_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        self.on(stream);
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn set_response_body(&mut self, stream: StreamId, size: usize, body: &[u8]) {
        self.on(stream);
        let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body);
    }

    fn request_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        self.on(stream);
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn grpc_call(
        &mut self,
        owner: Option<StreamId>,
        call: &GrpcCall<'_>,
    ) -> Result<CallId, String> {
        self.on(owner.unwrap_or(self.root));
        hostcalls::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            call.metadata.to_vec(),
            Some(call.message),
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn cancel_grpc_call(&mut self, owner: Option<StreamId>, call: CallId) {
        self.on(owner.unwrap_or(self.root));
        let _ = hostcalls::cancel_grpc_call(call);
    }

    fn http_call(&mut self, call: &HttpCall<'_>) -> Result<CallId, String> {
        self.on(self.root);
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<MetricId> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).ok()
    }

    fn add_metric(&mut self, metric: MetricId, delta: i64) {
        let _ = hostcalls::increment_metric(metric, delta);
    }

    fn set_metric(&mut self, metric: MetricId, value: u64) {
        let _ = hostcalls::record_metric(metric, value);
    }

    fn record_metric(&mut self, metric: MetricId, value: u64) {
        let _ = hostcalls::record_metric(metric, value);
    }

    fn audit_enqueue(&mut self, message: &[u8]) -> Result<(), QueueError> {
        let id = AUDIT_QUEUE.with_borrow_mut(AuditQueue::id)?;
        hostcalls::enqueue_shared_queue(id, Some(message)).map_err(|_| {
            // The owner went away: resolve again next time.
            AUDIT_QUEUE.with_borrow_mut(|q| q.id = None);
            QueueError::Unavailable
        })
    }

    fn audit_dequeue(&mut self) -> Result<Option<Vec<u8>>, QueueError> {
        let id = AUDIT_QUEUE.with_borrow_mut(AuditQueue::id)?;
        hostcalls::dequeue_shared_queue(id).map_err(|_| QueueError::Unavailable)
    }
}

/// This VM's audit queue: the singleton registers it, a filter resolves
/// it by the singleton's vm_id (lazily: the singleton may start later).
#[derive(Default)]
struct AuditQueue {
    /// `(vm_id, name)` to resolve; `None` for the owner, or no audit.
    target: Option<(String, String)>,
    id: Option<u32>,
}

impl AuditQueue {
    fn id(&mut self) -> Result<u32, QueueError> {
        if let Some(id) = self.id {
            return Ok(id);
        }
        let (vm_id, name) = self.target.as_ref().ok_or(QueueError::Unavailable)?;
        let id = hostcalls::resolve_shared_queue(vm_id, name)
            .ok()
            .flatten()
            .ok_or(QueueError::Unavailable)?;
        self.id = Some(id);
        Ok(id)
    }
}

thread_local! {
    static AUDIT_QUEUE: RefCell<AuditQueue> = RefCell::new(AuditQueue::default());
}

/// A filter's audit queue: the one `vm_id`'s singleton registered as `name`.
pub fn use_audit_queue(vm_id: &str, name: &str) {
    AUDIT_QUEUE.with_borrow_mut(|q| {
        q.target = Some((vm_id.to_owned(), name.to_owned()));
        q.id = None;
    });
}

/// The singleton registers (owns) the audit queue `name`: its
/// `on_queue_ready` fires per message. Only the singleton may: the last
/// VM to register a name takes every message.
pub fn own_audit_queue(name: &str) -> bool {
    match hostcalls::register_shared_queue(name) {
        Ok(id) => {
            AUDIT_QUEUE.with_borrow_mut(|q| {
                q.target = None;
                q.id = Some(id);
            });
            true
        }
        Err(_) => false,
    }
}

/// The plugin's root id (`PluginConfig.root_id`).
pub fn root_id() -> String {
    hostcalls::get_property(vec!["plugin_root_id"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// The answer to a gRPC call, read in its callback.
pub fn grpc_response(status: u32, size: usize) -> CallResponse {
    let message = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default();
    CallResponse::Grpc { status, message }
}

/// The answer to an HTTP call, read in its callback.
pub fn http_response(body_size: usize) -> CallResponse {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok());
    let body = match status {
        Some(_) => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default(),
        None => Vec::new(),
    };
    CallResponse::Http { status, body }
}

/// The plugin's name (`PluginConfig.name`; Istio sets the WasmPlugin's
/// `<namespace>.<name>`): stable across configuration pushes and unique
/// per plugin, it names the shared-data namespace.
pub fn plugin_name() -> String {
    hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Random bytes from the host (WASI `random_get`, which Envoy serves from
/// its own CSPRNG).
pub fn random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes)
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// Lets Envoy decide the log level: the `log` crate's maximum follows the
/// level Envoy runs the wasm logger at (`--component-log-level wasm:debug`,
/// or the admin `/logging` endpoint), so no line Envoy would drop is even
/// formatted, and `debug!` prints when Envoy asks for it.
pub fn follow_log_level() {
    let level = match hostcalls::get_log_level() {
        Ok(LogLevel::Trace) => log::LevelFilter::Trace,
        Ok(LogLevel::Debug) => log::LevelFilter::Debug,
        Ok(LogLevel::Info) | Err(_) => log::LevelFilter::Info,
        Ok(LogLevel::Warn) => log::LevelFilter::Warn,
        Ok(LogLevel::Error) | Ok(LogLevel::Critical) => log::LevelFilter::Error,
    };
    log::set_max_level(level);
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

/// The request headers of the current stream, in the buffer the host
/// filled: the SDK's `get_map_bytes` would copy every name and value into
/// its own allocation. A map that cannot be read is empty: without
/// `:method` and `:path` the pipeline refuses the request (400
/// `incomplete_head`) before any stage runs.
fn request_header_map() -> Headers {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: both out pointers are valid for the call.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    if status != Status::Ok || data.is_null() {
        return Headers::new();
    }
    // SAFETY: the host allocated `size` bytes through the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes
    // from this module's allocator) and handed them over: this takes
    // ownership once, as the SDK's own `get_map_bytes` does.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    Headers::from_proxy_wasm(bytes).unwrap_or_else(|| {
        log::warn!("ctxgate: the host's request header map is malformed");
        Headers::new()
    })
}

/// Sends a local reply with response-code details and, for gRPC, a gRPC
/// status. The SDK's `send_http_response` can set neither, so this calls
/// the host function directly.
fn send_local_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let serialized = serialize_map(&headers);
    let grpc_status = reply
        .grpc_status
        .and_then(|s| i32::try_from(s).ok())
        .unwrap_or(-1);
    // SAFETY: every pointer/length pair comes from a live slice that outlives
    // the call; the host copies the data before returning.
    let status = unsafe {
        proxy_send_local_response(
            u32::from(reply.status),
            reply.details.as_ptr(),
            reply.details.len(),
            reply.body.as_ptr(),
            reply.body.len(),
            serialized.as_ptr(),
            serialized.len(),
            grpc_status,
        )
    };
    if status != Status::Ok {
        log::warn!("ctxgate: sending a local reply failed: {status:?}");
    }
}

/// proxy-wasm's header map encoding: count, then (key length, value
/// length) pairs, then NUL-terminated keys and values.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>()
        + 4;
    let mut bytes = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    bytes.extend_from_slice(&len(map.len()));
    for (k, v) in map {
        bytes.extend_from_slice(&len(k.len()));
        bytes.extend_from_slice(&len(v.len()));
    }
    for (k, v) in map {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_serialization_matches_the_abi() {
        let bytes = serialize_map(&[("a", "bc")]);
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
        assert_eq!(serialize_map(&[]), [0, 0, 0, 0]);
    }
}
