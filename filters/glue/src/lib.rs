//! The few proxy-wasm host calls every ctxgate filter needs, wrapped once.
//!
//! Filter crates stay thin: they translate proxy-wasm callbacks into calls
//! to `ctxgate-core` and apply the result with the helpers here. Nothing in
//! this crate panics on a host error: a failed host call degrades to a
//! logged no-op, because a panic would abort the VM and fail every request
//! on that worker.

use std::time::{Duration, UNIX_EPOCH};

use ctxgate_core::http::LocalReply;
use ctxgate_core::record::RecordError;
use ctxgate_core::shared::{Cas, Secret, SetError, SharedStore, load_secret};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType, Status};

/// Unix time in milliseconds, from the host clock.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix time in seconds, from the host clock.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// All request headers, values as raw bytes (they need not be UTF-8).
pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// The current request's headers, read with one host call, with its method
/// and path at hand.
pub struct RequestSnapshot {
    pub headers: Vec<(String, Vec<u8>)>,
    method: String,
    path: String,
}

impl RequestSnapshot {
    pub fn capture() -> RequestSnapshot {
        let headers = request_headers();
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        RequestSnapshot {
            headers,
            method,
            path,
        }
    }

    /// Removes a header from the request and from this snapshot.
    pub fn remove(&mut self, name: &str) {
        if self.headers.iter().any(|(n, _)| n == name) {
            remove_request_header(name);
            self.headers.retain(|(n, _)| n != name);
        }
    }

    pub fn head(&self) -> ctxgate_core::http::RequestHead<'_> {
        ctxgate_core::http::RequestHead {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
        }
    }
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

pub fn set_response_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
}

/// An Envoy attribute (`source.address`, `route_name`, ...) as text.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// The prefix of this plugin's shared-data keys: `ctxgate/<plugin name>`.
/// The plugin's name (`PluginConfig.name`; Istio sets it to the
/// WasmPlugin's `<namespace>.<name>`) is stable across configuration pushes
/// and unique per plugin, so state survives a push, and two plugins that
/// share a `vm_id` (Istio gives every WasmPlugin the empty one) keep their
/// records apart.
pub fn shared_namespace() -> String {
    let name = property_string(&["plugin_name"]).unwrap_or_default();
    format!("ctxgate/{name}")
}

/// Random bytes from the host (WASI `random_get`, which Envoy serves from
/// its own CSPRNG). `None` if the host refused.
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes)
}

/// The plugin's slot-hashing secret: created once per Envoy in shared data
/// (see [`load_secret`]).
pub fn secret(namespace: &str) -> Result<Secret, String> {
    let fresh = random_bytes::<16>().ok_or("the host gave no random bytes")?;
    load_secret(&SharedData, &format!("{namespace}.secret"), fresh)
        .map_err(|e: RecordError| format!("shared-data secret {namespace}.secret: {e}"))
}

/// Writes Envoy filter state (`wasm.<key>`) for the filters that follow.
pub fn set_filter_state(key: &str, value: &[u8]) {
    let _ = hostcalls::set_property(vec![key], Some(value));
}

/// Reads filter state written by an earlier filter.
pub fn filter_state(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_property(vec![key]).ok().flatten()
}

/// What the auth filter established about this request (nothing if it did
/// not run or let the request through unauthenticated).
pub fn shared_request() -> ctxgate_core::auth::SharedRequest {
    ctxgate_core::auth::SharedRequest::parse(
        filter_state(ctxgate_core::auth::REQUEST_FILTER_STATE).as_deref(),
    )
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
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

/// Sends a local reply with response-code details and, for gRPC, a gRPC
/// status. The SDK's `send_http_response` can set neither, so this calls
/// the host function directly.
pub fn send_local_reply(reply: &LocalReply) {
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

/// A counter; a no-op if the host refused to define it.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn new(name: &str) -> Counter {
        Counter(define(MetricType::Counter, name))
    }

    pub fn inc(self) {
        self.add(1);
    }

    pub fn add(self, n: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge; a no-op if the host refused to define it.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn new(name: &str) -> Gauge {
        Gauge(define(MetricType::Gauge, name))
    }

    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// Adds `delta` (may be negative): for a gauge that sums what every
    /// worker contributes.
    pub fn add(self, delta: i64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("ctxgate: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Sets the root context's tick period.
pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
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
