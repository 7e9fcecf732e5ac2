//! An OTLP/HTTP trace receiver: what Envoy's OpenTelemetry tracer exports
//! to, in tests and in the bench. It decodes each
//! `ExportTraceServiceRequest` (`POST /v1/traces`, protobuf) with the
//! OpenTelemetry protocol's own types, keeps the latest spans and counts
//! them all. A request that is not an OTLP export gets 400 and is counted
//! as invalid.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};

use crate::servers::{ScriptedResponse, ScriptedServer};

/// Spans kept for [`OtlpReceiver::spans`] (older ones are dropped; the
/// count goes on).
const KEEP: usize = 10_000;

/// A span as exported: ids in hex, and its string attributes (tags).
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Default)]
struct Store {
    spans: Mutex<VecDeque<Span>>,
    received: AtomicU64,
    invalid: AtomicU64,
}

pub struct OtlpReceiver {
    server: ScriptedServer,
    store: Arc<Store>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(body: &[u8]) -> Option<Vec<Span>> {
    let export = ExportTraceServiceRequest::decode(body).ok()?;
    let spans = export
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| Span {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: hex(&span.parent_span_id),
            name: span.name.clone(),
            tags: span
                .attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
        })
        .collect();
    Some(spans)
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let server = ScriptedServer::start();
        server.forget_requests();
        let store = Arc::new(Store::default());
        let handler_store = store.clone();
        server.set_handler(move |request| {
            let is_export = request.method == "POST"
                && request.path == "/v1/traces"
                && request.header("content-type") == Some("application/x-protobuf");
            match decode(&request.body).filter(|_| is_export) {
                Some(spans) => {
                    handler_store
                        .received
                        .fetch_add(spans.len() as u64, Ordering::SeqCst);
                    let mut kept = handler_store
                        .spans
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for span in spans {
                        if kept.len() == KEEP {
                            kept.pop_front();
                        }
                        kept.push_back(span);
                    }
                    // An empty ExportTraceServiceResponse: full success.
                    ScriptedResponse::new(200).header("content-type", "application/x-protobuf")
                }
                None => {
                    handler_store.invalid.fetch_add(1, Ordering::SeqCst);
                    ScriptedResponse::new(400)
                }
            }
        });
        OtlpReceiver { server, store }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The latest spans received (up to 10 000), oldest first.
    pub fn spans(&self) -> Vec<Span> {
        let kept = self
            .store
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        kept.iter().cloned().collect()
    }

    /// Spans received since the start.
    pub fn received(&self) -> u64 {
        self.store.received.load(Ordering::SeqCst)
    }

    /// Requests that were not OTLP trace exports.
    pub fn invalid(&self) -> u64 {
        self.store.invalid.load(Ordering::SeqCst)
    }

    /// The span of `trace_id`, once exported (within `timeout`).
    pub fn span_of(&self, trace_id: &str, timeout: Duration) -> Option<Span> {
        let mut found = None;
        crate::eventually(timeout, || {
            found = self.spans().into_iter().find(|s| s.trace_id == trace_id);
            found.is_some()
        });
        found
    }

    /// `tracing`, an HTTP connection manager's tracing block with the
    /// OpenTelemetry tracer exporting over HTTP (the demo's), exporting to
    /// this receiver instead, through the cluster `cluster`.
    pub fn tracing(&self, mut tracing: Value, cluster: &str) -> Value {
        let uri = &mut tracing["provider"]["typed_config"]["http_service"]["http_uri"];
        uri["uri"] = json!(format!("http://{}/v1/traces", self.addr()));
        uri["cluster"] = json!(cluster);
        tracing
    }
}
