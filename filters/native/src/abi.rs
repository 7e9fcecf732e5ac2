//! Envoy 1.40's dynamic-module ABI: every `unsafe` block of ctxgate's
//! native engine is in this file.
//!
//! The declarations cover exactly the hooks Envoy looks up and the
//! callbacks the engine calls, written from Envoy 1.40's ABI (ABI version
//! `v0.2.0`); the e2e suites prove each one against the real binary. Above
//! them sits a safe layer: [`Filter`] and [`FilterConfig`] wrap the
//! pointers Envoy hands out, copy whatever Envoy owns before the hook that
//! lent it returns, and never keep a pointer past the lifetime the ABI
//! grants:
//!
//! - a filter pointer (`http_filter_envoy_ptr`) is valid from
//!   `on_http_filter_new` until `on_http_filter_destroy`, and only on the
//!   worker thread that created it ([`Filter`] is neither `Send` nor
//!   `Sync`);
//! - a filter config pointer is valid until `on_http_filter_config_destroy`;
//!   its callouts and schedulers are used on the main thread only, except
//!   metric updates and scheduler commits, which Envoy allows from any
//!   thread;
//! - buffers Envoy passes to a hook, or returns from a getter, are copied
//!   at once.
//!
//! Every hook runs its body under [`guard`]: a panic never unwinds into
//! Envoy. It is logged, and the hook returns what fails closed.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::engine;
use ctxgate_core::headers::Headers;

/// The ABI version Envoy 1.40.0 was built with: it logs
/// `Dynamic module ABI version v0.2.0 matched.`
const ABI_VERSION: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------------
// Types, as the ABI lays them out.

/// Bytes the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    len: usize,
}

/// Bytes Envoy owns, lent to the module until the hook returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    len: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
}

/// Label names or values, as the metric callbacks take them.
struct Labels(Vec<ModuleBuffer>);

impl Labels {
    fn of(labels: &[&str]) -> Labels {
        Labels(
            labels
                .iter()
                .map(|l| ModuleBuffer::of(l.as_bytes()))
                .collect(),
        )
    }

    fn ptr(&self) -> *const ModuleBuffer {
        if self.0.is_empty() {
            std::ptr::null()
        } else {
            self.0.as_ptr()
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A copy of the bytes.
    ///
    /// # Safety
    /// `ptr` is null or points to `len` readable bytes (Envoy's promise for
    /// the duration of the current hook).
    unsafe fn copy(self) -> Vec<u8> {
        // SAFETY: the caller's contract; the slice is copied at once.
        unsafe { self.as_slice() }.to_vec()
    }

    /// The bytes, borrowed.
    ///
    /// # Safety
    /// As for [`EnvoyBuffer::copy`], and the slice is dropped before the
    /// current hook returns or the buffer's map changes.
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

fn module_headers(headers: &[(&str, &[u8])]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key: k.as_ptr(),
            key_len: k.len(),
            value: v.as_ptr(),
            value_len: v.len(),
        })
        .collect()
}

/// Copies a header array Envoy lent into one buffer.
///
/// # Safety
/// `headers` is null or points to `count` headers whose buffers are valid.
unsafe fn copy_headers(headers: *const EnvoyHeader, count: usize) -> Headers {
    if headers.is_null() || count == 0 {
        return Headers::new();
    }
    // SAFETY: the caller's contract.
    let headers = unsafe { std::slice::from_raw_parts(headers, count) };
    let size = headers.iter().fold(0usize, |n, h| {
        n.saturating_add(h.key_len).saturating_add(h.value_len)
    });
    // Room for what the stages add (a dozen headers, a few hundred bytes).
    let mut copied = Headers::with_capacity(count.saturating_add(16), size.saturating_add(512));
    for h in headers {
        // SAFETY: each header's buffers are valid (the caller's contract)
        // and read only within this iteration.
        let (key, value) = unsafe {
            (
                EnvoyBuffer {
                    ptr: h.key,
                    len: h.key_len,
                }
                .as_slice(),
                EnvoyBuffer {
                    ptr: h.value,
                    len: h.value_len,
                }
                .as_slice(),
            )
        };
        // Borrowed unless the name is not UTF-8 (Envoy never sends one).
        copied.push(&String::from_utf8_lossy(key), value);
    }
    copied
}

/// Concatenates body chunks Envoy lent.
///
/// # Safety
/// `chunks` is null or points to `count` valid buffers.
unsafe fn copy_chunks(chunks: *const EnvoyBuffer, count: usize) -> Vec<u8> {
    if chunks.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let chunks = unsafe { std::slice::from_raw_parts(chunks, count) };
    let mut body = Vec::with_capacity(chunks.iter().map(|c| c.len).sum());
    for chunk in chunks {
        // SAFETY: each chunk is valid (the caller's contract).
        body.extend_from_slice(&unsafe { chunk.copy() });
    }
    body
}

/// Which header map (`envoy_dynamic_module_type_http_header_type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// Which body (`envoy_dynamic_module_type_http_body_type`): what earlier
/// `StopIterationAndBuffer` answers accumulated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Body {
    ReceivedRequest = 0,
    BufferedRequest = 1,
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

/// Stream facts (`envoy_dynamic_module_type_attribute_id`), those the
/// pipeline reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum AttributeId {
    SourceAddress = 24,
    ConnectionMtls = 29,
    SubjectPeerCertificate = 33,
    DnsSanPeerCertificate = 35,
    UriSanPeerCertificate = 37,
    ClusterName = 57,
    RouteName = 61,
}

/// What a header or body hook tells Envoy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flow {
    Continue,
    /// Headers: `StopIteration`; bodies: `StopIterationAndBuffer`.
    Stop,
}

const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const BODY_CONTINUE: u32 = 0;
const BODY_STOP_AND_BUFFER: u32 = 1;
const TRAILERS_CONTINUE: u32 = 0;

const CALLOUT_SUCCESS: u32 = 0;

/// How an outgoing call ended (`envoy_dynamic_module_type_http_callout_result`
/// and the stream events).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallEnd {
    /// A response arrived (Envoy reports a timeout as a synthesized 504).
    Answered,
    /// Reset, or the response exceeded the buffer limit.
    Failed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
    Off = 6,
}

// ---------------------------------------------------------------------
// Callbacks Envoy exports.

type Ptr = *mut c_void;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_get_log_level() -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: Ptr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: Ptr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: Ptr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: Ptr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        config: Ptr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        config: Ptr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: Ptr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: Ptr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: Ptr) -> Ptr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: Ptr,
        event: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: Ptr);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: Ptr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: Ptr,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_get_headers_size(filter: Ptr, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: Ptr,
        map: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_header(
        filter: Ptr,
        map: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: Ptr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: Ptr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: Ptr, body: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: Ptr,
        body: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: Ptr, body: u32) -> usize;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: Ptr,
        body: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(filter: Ptr, body: u32, size: usize) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: Ptr,
        status: u32,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: Ptr);
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: Ptr);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: Ptr,
        id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter: Ptr,
        id: u32,
        result: *mut bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: Ptr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: Ptr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_start_http_stream(
        filter: Ptr,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_reset_http_stream(filter: Ptr, stream_id: u64);
}

// ---------------------------------------------------------------------
// The safe layer.

/// Writes a log line through Envoy's `dynamic_modules` logger.
pub fn log(level: Level, message: &str) {
    // SAFETY: the message is lent for the call only; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// The level Envoy runs the `dynamic_modules` logger at.
pub fn log_level() -> Level {
    // SAFETY: no arguments; callable from any thread.
    match unsafe { envoy_dynamic_module_callback_get_log_level() } {
        0 => Level::Trace,
        1 => Level::Debug,
        2 => Level::Info,
        3 => Level::Warn,
        4 => Level::Error,
        5 => Level::Critical,
        _ => Level::Off,
    }
}

/// Envoy's side of a filter configuration
/// (`http_filter_config_envoy_ptr`), valid until the configuration is
/// destroyed: the engine's configuration holds it and is destroyed first.
#[derive(Clone, Copy, Debug)]
pub struct FilterConfig(Ptr);

// SAFETY: Envoy's stats are thread-safe, and metric ids index a table that
// is frozen once the configuration is created; every other use of the
// pointer (callouts, schedulers) happens on the main thread, which the
// engine guarantees (see `engine`).
unsafe impl Send for FilterConfig {}
// SAFETY: as above.
unsafe impl Sync for FilterConfig {}

/// The kind of a metric, as defined with Envoy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl FilterConfig {
    /// Defines a metric (only while the configuration is being created).
    pub fn define(self, kind: MetricKind, name: &str, labels: &[&str]) -> Option<usize> {
        let mut id = 0usize;
        let name = ModuleBuffer::of(name.as_bytes());
        let labels = Labels::of(labels);
        let define = match kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricKind::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
        };
        // SAFETY: the pointer is live (type invariant); the name and the
        // label names are lent for the call (Envoy copies them); `id` is a
        // valid out pointer.
        let result = unsafe { define(self.0, name, labels.ptr(), labels.len(), &mut id) };
        (result == 0).then_some(id)
    }

    /// Adds to a counter, or to a gauge (`delta` may be negative), of
    /// the series `labels` names (none for a metric without labels).
    pub fn add(self, kind: MetricKind, id: usize, labels: &[&str], delta: i64) {
        let change = match kind {
            MetricKind::Counter => {
                envoy_dynamic_module_callback_http_filter_config_increment_counter
            }
            MetricKind::Gauge if delta >= 0 => {
                envoy_dynamic_module_callback_http_filter_config_increment_gauge
            }
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_decrement_gauge,
            MetricKind::Histogram => return,
        };
        let labels = Labels::of(labels);
        // SAFETY: the pointer is live (type invariant); the label values
        // are lent for the call; an unknown id or a wrong label count is
        // refused by Envoy, not undefined.
        unsafe {
            change(self.0, id, labels.ptr(), labels.len(), delta.unsigned_abs());
        }
    }

    /// Sets a gauge, or records a histogram sample, of the series
    /// `labels` names.
    pub fn set(self, kind: MetricKind, id: usize, labels: &[&str], value: u64) {
        let set = match kind {
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_set_gauge,
            MetricKind::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_record_histogram_value
            }
            MetricKind::Counter => return,
        };
        let labels = Labels::of(labels);
        // SAFETY: as in `add`.
        unsafe {
            set(self.0, id, labels.ptr(), labels.len(), value);
        }
    }

    /// A scheduler whose events arrive on the main thread
    /// (`on_http_filter_config_scheduled`).
    pub fn scheduler(self) -> Option<ConfigScheduler> {
        // SAFETY: the pointer is live; called on the main thread (from
        // config creation).
        let scheduler =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(ConfigScheduler(scheduler))
    }

    /// A one-shot HTTP call on the main thread; the answer arrives in
    /// `on_http_filter_config_http_callout_done`.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let headers = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: every buffer is lent for the call (Envoy copies them);
        // main thread only (the engine's contract for config calls).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        started(result, id)
    }

    /// A whole request on a stream (a gRPC call: its status is in the
    /// trailers, which only a stream delivers), main thread only.
    pub fn start_stream(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let headers = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: as in `http_callout`.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                true,
                timeout_ms,
            )
        };
        started(result, id)
    }
}

/// A scheduler that wakes the main thread; committed from any thread.
#[derive(Debug)]
pub struct ConfigScheduler(Ptr);

// SAFETY: Envoy allows `scheduler_commit` from any thread; the pointer is
// deleted once, in `Drop`, after every user is gone.
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: the scheduler is live until dropped.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted exactly once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// One stream's filter as Envoy sees it (`http_filter_envoy_ptr`). Only
/// the engine's stream table hands one out, from `on_http_filter_new` until
/// `on_http_filter_destroy`, on the stream's worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter(Ptr);

impl Filter {
    pub fn headers(self, map: HeaderMap) -> Headers {
        // SAFETY: the filter is live on this thread (type invariant).
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map as u32) };
        let mut headers = vec![
            EnvoyHeader {
                key: std::ptr::null(),
                key_len: 0,
                value: std::ptr::null(),
                value_len: 0,
            };
            count
        ];
        // SAFETY: `headers` has room for `count` entries, as the ABI asks.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, map as u32, headers.as_mut_ptr())
        };
        if !ok {
            return Headers::new();
        }
        // SAFETY: Envoy filled the entries with buffers valid until the
        // map changes; they are copied now.
        unsafe { copy_headers(headers.as_ptr(), count) }
    }

    pub fn header(self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: the filter is live; `value` is a valid out pointer and
        // the count pointer may be null.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                map as u32,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: Envoy's buffer, copied before anything changes the map.
        found.then(|| unsafe { value.copy() })
    }

    /// Replaces every value of `name`; `None` removes it.
    pub fn set_header(self, map: HeaderMap, name: &str, value: Option<&[u8]>) {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: the filter is live; buffers are lent for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map as u32,
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
        }
    }

    /// Adds a value of `name`, keeping any it has. Envoy adds nothing for
    /// an empty value (nor can it set one: an empty value removes).
    pub fn add_header(self, map: HeaderMap, name: &str, value: &[u8]) {
        // SAFETY: the filter is live; buffers are lent for the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                map as u32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    /// The first `limit` bytes of a body.
    pub fn body(self, body: Body, limit: usize) -> Vec<u8> {
        // SAFETY: the filter is live.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body as u32) };
        let mut chunks = vec![EnvoyBuffer::EMPTY; count];
        // SAFETY: room for `count` chunks, as the ABI asks.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body as u32,
                chunks.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy filled `count` valid chunks; copied now.
        let mut bytes = unsafe { copy_chunks(chunks.as_ptr(), count) };
        bytes.truncate(limit);
        bytes
    }

    pub fn body_size(self, body: Body) -> usize {
        // SAFETY: the filter is live.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, body as u32) }
    }

    /// Replaces the first `size` bytes of a body with `with`.
    pub fn replace_body_prefix(self, body: Body, size: usize, with: &[u8]) {
        let rest = {
            let all = self.body(body, usize::MAX);
            all.get(size..).map(<[u8]>::to_vec).unwrap_or_default()
        };
        // SAFETY: the filter is live; the buffers are lent for the calls.
        unsafe {
            let total = envoy_dynamic_module_callback_http_get_body_size(self.0, body as u32);
            envoy_dynamic_module_callback_http_drain_body(self.0, body as u32, total);
            envoy_dynamic_module_callback_http_append_body(
                self.0,
                body as u32,
                ModuleBuffer::of(with),
            );
            envoy_dynamic_module_callback_http_append_body(
                self.0,
                body as u32,
                ModuleBuffer::of(&rest),
            );
        }
    }

    pub fn send_response(self, status: u16, headers: &[(&str, &[u8])], body: &[u8], details: &str) {
        let headers = module_headers(headers);
        // SAFETY: the filter is live; every buffer is lent for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// Makes Envoy match the route again (the request headers changed),
    /// as it does after a wasm plugin changes request headers.
    pub fn clear_route_cache(self) {
        // SAFETY: the filter is live on this thread; Envoy ignores the
        // call outside the request path.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    pub fn continue_decoding(self) {
        // SAFETY: the filter is live on this thread.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn attribute_string(self, id: AttributeId) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: the filter is live; `value` is a valid out pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0, id as u32, &mut value,
            )
        };
        // SAFETY: Envoy's buffer, valid for this hook; copied now.
        found.then(|| unsafe { value.copy() })
    }

    pub fn attribute_bool(self, id: AttributeId) -> Option<bool> {
        let mut value = false;
        // SAFETY: the filter is live; `value` is a valid out pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_bool(
                self.0, id as u32, &mut value,
            )
        };
        found.then_some(value)
    }

    pub fn set_filter_state(self, key: &str, value: &[u8]) {
        // SAFETY: the filter is live; buffers lent for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    pub fn filter_state(self, key: &str) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::EMPTY;
        // SAFETY: the filter is live; `value` is a valid out pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                &mut value,
            )
        };
        // SAFETY: Envoy's buffer, copied now.
        found.then(|| unsafe { value.copy() })
    }

    /// A whole request on a stream owned by this filter (see
    /// [`FilterConfig::start_stream`]).
    pub fn start_stream(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let headers = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: the filter is live; buffers lent for the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_start_http_stream(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                true,
                timeout_ms,
            )
        };
        started(result, id)
    }

    /// Resets a stream this filter started (its reset hook runs at once,
    /// inside this call).
    pub fn reset_stream(self, stream: u64) {
        // SAFETY: the filter is live; an unknown id is ignored by Envoy.
        unsafe { envoy_dynamic_module_callback_http_filter_reset_http_stream(self.0, stream) }
    }
}

/// The answer to a call, as the hooks deliver it.
#[derive(Debug, Default)]
pub struct CallAnswer {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

// ---------------------------------------------------------------------
// Hooks Envoy calls.

/// Runs a hook body; a panic is caught, logged, and turned into `failed`.
fn guard<T>(hook: &str, failed: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log(
                Level::Error,
                &format!("ctxgate: panicked in {hook}: {what}"),
            );
            failed
        }
    }
}

fn headers_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => HEADERS_CONTINUE,
        Flow::Stop => HEADERS_STOP_ITERATION,
    }
}

fn body_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => BODY_CONTINUE,
        Flow::Stop => BODY_STOP_AND_BUFFER,
    }
}

/// The engine's stream object behind `filter_module_ptr`.
///
/// # Safety
/// `module` is a pointer `on_http_filter_new` returned and
/// `on_http_filter_destroy` has not freed; hooks of one stream run on one
/// thread, one at a time.
unsafe fn stream<'a>(module: *const c_void) -> Option<&'a engine::Stream> {
    // SAFETY: the caller's contract.
    unsafe { module.cast::<engine::Stream>().as_ref() }
}

/// The engine's configuration behind `filter_config_module_ptr`.
///
/// # Safety
/// `module` was returned by `on_http_filter_config_new` and not destroyed.
unsafe fn config<'a>(module: *const c_void) -> Option<&'a engine::Config> {
    // SAFETY: the caller's contract.
    unsafe { module.cast::<engine::Config>().as_ref() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guard("program_init", std::ptr::null(), || {
        engine::program_init();
        ABI_VERSION.as_ptr()
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: Ptr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard("http_filter_config_new", std::ptr::null(), || {
        // SAFETY: both buffers are valid during this call; copied now.
        let (name, config) = unsafe { (name.copy(), config.copy()) };
        match engine::Config::new(FilterConfig(config_envoy), &name, &config) {
            Some(config) => Box::into_raw(config).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(module: *const c_void) {
    guard("http_filter_config_destroy", (), || {
        if !module.is_null() {
            // SAFETY: `module` came from `Box::into_raw` in config_new and
            // Envoy destroys it once, after its last filter.
            drop(unsafe { Box::from_raw(module.cast::<engine::Config>().cast_mut()) });
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: Ptr,
    module: *const c_void,
    event: u64,
) {
    guard("http_filter_config_scheduled", (), || {
        // SAFETY: a live configuration (Envoy's promise for this hook).
        if let Some(config) = unsafe { config(module) } {
            config.on_scheduled(event);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: Ptr,
    module: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    chunks: *const EnvoyBuffer,
    chunks_len: usize,
) {
    guard("http_filter_config_http_callout_done", (), || {
        // SAFETY: a live configuration; the arrays are valid for this hook.
        let (config, answer) = unsafe {
            (
                config(module),
                CallAnswer {
                    headers: copy_headers(headers, headers_len),
                    body: copy_chunks(chunks, chunks_len),
                    trailers: Headers::new(),
                },
            )
        };
        let end = if result == CALLOUT_SUCCESS {
            CallEnd::Answered
        } else {
            CallEnd::Failed
        };
        if let Some(config) = config {
            config.on_call_done(callout, end, answer);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: Ptr,
    module: *const c_void,
    stream: u64,
    headers: *const EnvoyHeader,
    headers_len: usize,
    _end_stream: bool,
) {
    guard("http_filter_config_http_stream_headers", (), || {
        // SAFETY: a live configuration; the array is valid for this hook.
        let (config, headers) = unsafe { (config(module), copy_headers(headers, headers_len)) };
        if let Some(config) = config {
            config.on_stream_event(stream, |a| a.headers = headers);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: Ptr,
    module: *const c_void,
    stream: u64,
    data: *const EnvoyBuffer,
    data_len: usize,
    _end_stream: bool,
) {
    guard("http_filter_config_http_stream_data", (), || {
        // SAFETY: a live configuration; the chunks are valid for this hook.
        let (config, data) = unsafe { (config(module), copy_chunks(data, data_len)) };
        if let Some(config) = config {
            config.on_stream_event(stream, |a| a.body.extend_from_slice(&data));
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: Ptr,
    module: *const c_void,
    stream: u64,
    trailers: *const EnvoyHeader,
    trailers_len: usize,
) {
    guard("http_filter_config_http_stream_trailers", (), || {
        // SAFETY: a live configuration; the array is valid for this hook.
        let (config, trailers) = unsafe { (config(module), copy_headers(trailers, trailers_len)) };
        if let Some(config) = config {
            config.on_stream_event(stream, |a| a.trailers = trailers);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: Ptr,
    module: *const c_void,
    stream: u64,
) {
    guard("http_filter_config_http_stream_complete", (), || {
        // SAFETY: a live configuration.
        if let Some(config) = unsafe { config(module) } {
            config.on_stream_end(stream, CallEnd::Answered);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: Ptr,
    module: *const c_void,
    stream: u64,
    _reason: u32,
) {
    guard("http_filter_config_http_stream_reset", (), || {
        // SAFETY: a live configuration.
        if let Some(config) = unsafe { config(module) } {
            config.on_stream_end(stream, CallEnd::Failed);
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_module: *const c_void,
    filter: Ptr,
) -> *const c_void {
    guard("http_filter_new", std::ptr::null(), || {
        // SAFETY: a live configuration (it outlives its filters).
        let Some(config) = (unsafe { config(config_module) }) else {
            return std::ptr::null();
        };
        match engine::Stream::new(config, Filter(filter)) {
            Some(stream) => Box::into_raw(Box::new(stream)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// Runs a stream hook: the stream's object, or (a panic, a missing object)
/// a refusal of the request.
fn stream_hook<T>(
    hook: &str,
    filter: Ptr,
    module: *const c_void,
    failed: T,
    body: impl FnOnce(&engine::Stream) -> T,
) -> T {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy passes the pointer `on_http_filter_new` returned,
        // on the stream's thread, until `on_http_filter_destroy`.
        unsafe { stream(module) }.map(body)
    }));
    match result {
        Ok(Some(value)) => value,
        Ok(None) => failed,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log(Level::Error, &format!("ctxgate: panic in {hook}: {what}"));
            engine::Stream::fail_closed(Filter(filter));
            failed
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: Ptr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream_hook(
        "request_headers",
        filter,
        module,
        HEADERS_STOP_ITERATION,
        |s| headers_status(s.on_request_headers(end_of_stream)),
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: Ptr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream_hook("request_body", filter, module, BODY_STOP_AND_BUFFER, |s| {
        body_status(s.on_request_body(end_of_stream))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: Ptr,
    _module: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: Ptr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    stream_hook("response_headers", filter, module, HEADERS_CONTINUE, |s| {
        headers_status(s.on_response_headers())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: Ptr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream_hook("response_body", filter, module, BODY_CONTINUE, |s| {
        body_status(s.on_response_body(end_of_stream))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: Ptr,
    _module: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: Ptr,
    module: *const c_void,
) {
    stream_hook("stream_complete", filter, module, (), |s| s.on_complete());
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    guard("http_filter_destroy", (), || {
        if !module.is_null() {
            // SAFETY: `module` came from `Box::into_raw` in filter_new and
            // Envoy destroys it once; no hook of it runs after this one.
            let stream = unsafe { Box::from_raw(module.cast::<engine::Stream>().cast_mut()) };
            stream.destroy();
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: Ptr,
    module: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    chunks: *const EnvoyBuffer,
    chunks_len: usize,
) {
    // SAFETY: the arrays are valid for this hook; copied at once.
    let answer = unsafe {
        CallAnswer {
            headers: copy_headers(headers, headers_len),
            body: copy_chunks(chunks, chunks_len),
            trailers: Headers::new(),
        }
    };
    let end = if result == CALLOUT_SUCCESS {
        CallEnd::Answered
    } else {
        CallEnd::Failed
    };
    stream_hook("http_callout_done", filter, module, (), |s| {
        s.on_call_done(callout, end, answer)
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    filter: Ptr,
    module: *const c_void,
    id: u64,
    headers: *const EnvoyHeader,
    headers_len: usize,
    _end_stream: bool,
) {
    // SAFETY: the array is valid for this hook; copied at once.
    let headers = unsafe { copy_headers(headers, headers_len) };
    stream_hook("http_stream_headers", filter, module, (), |s| {
        s.on_stream_event(id, |a| a.headers = headers)
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    filter: Ptr,
    module: *const c_void,
    id: u64,
    data: *const EnvoyBuffer,
    data_len: usize,
    _end_stream: bool,
) {
    // SAFETY: the chunks are valid for this hook; copied at once.
    let data = unsafe { copy_chunks(data, data_len) };
    stream_hook("http_stream_data", filter, module, (), |s| {
        s.on_stream_event(id, |a| a.body.extend_from_slice(&data))
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    filter: Ptr,
    module: *const c_void,
    id: u64,
    trailers: *const EnvoyHeader,
    trailers_len: usize,
) {
    // SAFETY: the array is valid for this hook; copied at once.
    let trailers = unsafe { copy_headers(trailers, trailers_len) };
    stream_hook("http_stream_trailers", filter, module, (), |s| {
        s.on_stream_event(id, |a| a.trailers = trailers)
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    filter: Ptr,
    module: *const c_void,
    id: u64,
) {
    stream_hook("http_stream_complete", filter, module, (), |s| {
        s.on_stream_end(id, CallEnd::Answered)
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    filter: Ptr,
    module: *const c_void,
    id: u64,
    _reason: u32,
) {
    stream_hook("http_stream_reset", filter, module, (), |s| {
        s.on_stream_end(id, CallEnd::Failed)
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: Ptr,
    module: *const c_void,
    event: u64,
) {
    stream_hook("scheduled", filter, module, (), |s| s.on_scheduled(event));
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: Ptr,
    _module: *const c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: Ptr,
    _module: *const c_void,
) {
}

/// A call's id if Envoy started it, else Envoy's result code.
fn started(result: u32, id: u64) -> Result<u64, u32> {
    if result == CALLOUT_SUCCESS {
        Ok(id)
    } else {
        Err(result)
    }
}
