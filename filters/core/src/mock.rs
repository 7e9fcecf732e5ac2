//! An in-memory [`Host`] for tests: it records what the pipeline asked of
//! the proxy, and tests play the proxy's part (headers, call answers, the
//! clock).

use std::collections::{BTreeMap, HashMap};

use crate::headers::Headers;
use crate::host::{
    Attribute, CallId, GrpcCall, HeaderOp, Host, HttpCall, MetricId, MetricKind, NonceStore,
    QueueError, StreamId,
};
use crate::nonce::SharedNonces;
use crate::reply::LocalReply;
use crate::shared::{MemoryStore, SharedStore};

/// A request header change the mock host received (an owned
/// [`HeaderOp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedOp {
    Remove(String),
    Set(String, String),
    Add(String, String),
}

impl From<&HeaderOp<'_>> for AppliedOp {
    fn from(op: &HeaderOp<'_>) -> AppliedOp {
        match *op {
            HeaderOp::Remove(name) => AppliedOp::Remove(name.to_owned()),
            HeaderOp::Set(name, value) => {
                AppliedOp::Set(name.to_owned(), String::from_utf8_lossy(value).into_owned())
            }
            HeaderOp::Add(name, value) => {
                AppliedOp::Add(name.to_owned(), String::from_utf8_lossy(value).into_owned())
            }
        }
    }
}

/// What the proxy holds for one stream.
#[derive(Debug, Default, Clone)]
pub struct MockStream {
    pub request_headers: Vec<(String, Vec<u8>)>,
    /// Every batch of changes, as applied.
    pub change_batches: Vec<Vec<AppliedOp>>,
    pub response_headers: Vec<(String, String)>,
    pub attributes: HashMap<&'static str, String>,
    pub reply: Option<LocalReply>,
    pub resumed: u32,
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// Header reads (one per request is the contract).
    pub header_reads: u32,
    /// The request body the proxy buffered so far.
    pub request_body: Vec<u8>,
    /// The response body the proxy holds (the current chunk).
    pub response_body: Vec<u8>,
}

/// A call the pipeline made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockCall {
    pub id: CallId,
    pub owner: Option<StreamId>,
    pub cluster: String,
    /// gRPC `service/method`, or the HTTP `:path`.
    pub target: String,
    pub metadata: Vec<(String, Vec<u8>)>,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
    pub cancelled: bool,
}

#[derive(Default)]
pub struct MockHost {
    pub now_ms: u64,
    /// The nanosecond clock: each reading advances it by `clock_step_ns`,
    /// so that timed work takes a known time.
    pub clock_ns: std::cell::Cell<u64>,
    pub clock_step_ns: u64,
    pub store: MemoryStore,
    /// The nonce store, over its own shared data.
    pub nonces: SharedNonces<MemoryStore>,
    pub streams: HashMap<StreamId, MockStream>,
    pub calls: Vec<MockCall>,
    /// Calls fail to start while set (no such cluster).
    pub refuse_calls: bool,
    pub metric_names: Vec<(String, MetricKind)>,
    pub metric_values: HashMap<MetricId, i64>,
    /// Histogram samples, in the order recorded.
    pub metric_samples: HashMap<MetricId, Vec<u64>>,
    /// Host calls made for metrics (define, add, set).
    pub metric_calls: u32,
    /// The audit queue: `None` while no singleton owns it.
    pub audit_queue: Option<std::collections::VecDeque<Vec<u8>>>,
    /// Messages enqueued (audit queue host calls).
    pub audit_enqueues: u32,
    /// The route table: the cluster for the request headers as they are
    /// now (after the changes applied so far), as the proxy matches the
    /// route again after a change. Without it, the stream's
    /// `cluster_name` attribute is used.
    pub router: Option<Router>,
    next_call: CallId,
}

/// A route table for [`MockHost::router`]: request headers to cluster.
pub type Router = fn(&[(String, Vec<u8>)]) -> Option<String>;

impl MockHost {
    pub fn new(now_ms: u64) -> MockHost {
        MockHost {
            now_ms,
            clock_ns: std::cell::Cell::new(0),
            clock_step_ns: 0,
            next_call: 1,
            ..MockHost::default()
        }
    }

    /// A stream with these request headers (pseudo-headers included).
    pub fn open(&mut self, stream: StreamId, headers: &[(&str, &str)]) {
        self.streams.insert(
            stream,
            MockStream {
                request_headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                ..MockStream::default()
            },
        );
    }

    pub fn stream(&self, stream: StreamId) -> &MockStream {
        static EMPTY: std::sync::OnceLock<MockStream> = std::sync::OnceLock::new();
        self.streams
            .get(&stream)
            .unwrap_or_else(|| EMPTY.get_or_init(MockStream::default))
    }

    /// A request header of the stream as the upstream would see it.
    pub fn header(&self, stream: StreamId, name: &str) -> Option<String> {
        self.stream(stream)
            .request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The value of a metric as the proxy holds it (flushed values only).
    pub fn metric(&self, name: &str) -> i64 {
        self.metric_names
            .iter()
            .position(|(n, _)| n == name)
            .and_then(|i| self.metric_values.get(&(i as MetricId)))
            .copied()
            .unwrap_or(0)
    }

    /// The samples recorded in a histogram.
    pub fn samples(&self, name: &str) -> Vec<u64> {
        self.metric_names
            .iter()
            .position(|(n, _)| n == name)
            .and_then(|i| self.metric_samples.get(&(i as MetricId)))
            .cloned()
            .unwrap_or_default()
    }

    pub fn last_call(&self) -> Option<&MockCall> {
        self.calls.last()
    }
}

impl Host for MockHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn clock_ns(&self) -> u64 {
        let now = self.clock_ns.get().saturating_add(self.clock_step_ns);
        self.clock_ns.set(now);
        now
    }

    fn shared(&self) -> &dyn SharedStore {
        &self.store
    }

    fn nonces(&self) -> &dyn NonceStore {
        &self.nonces
    }

    fn request_headers(&mut self, stream: StreamId) -> Headers {
        let s = self.streams.entry(stream).or_default();
        s.header_reads += 1;
        s.request_headers.iter().cloned().collect()
    }

    fn change_request_headers(
        &mut self,
        stream: StreamId,
        changes: &[HeaderOp<'_>],
        result: &Headers,
    ) {
        let s = self.streams.entry(stream).or_default();
        s.change_batches
            .push(changes.iter().map(AppliedOp::from).collect());
        if s.header_reads > 0 {
            // Play the proxy: the changes applied to what it holds must
            // give what the pipeline says it forwards. The strictest proxy
            // is played, Envoy's dynamic-module ABI: a set with an empty
            // value removes the header and an add with one does nothing.
            let mut held = s.request_headers.clone();
            for change in changes {
                match *change {
                    HeaderOp::Remove(name) => held.retain(|(n, _)| n != name),
                    HeaderOp::Set(name, value) => {
                        held.retain(|(n, _)| n != name);
                        if !value.is_empty() {
                            held.push((name.to_owned(), value.to_vec()));
                        }
                    }
                    HeaderOp::Add(name, value) => {
                        if !value.is_empty() {
                            held.push((name.to_owned(), value.to_vec()));
                        }
                    }
                }
            }
            let mut expected = result.to_pairs();
            held.sort();
            expected.sort();
            assert_eq!(
                held, expected,
                "the header changes do not give the forwarded headers"
            );
        }
        s.request_headers = result.to_pairs();
    }

    fn response_header(&mut self, stream: StreamId, name: &str) -> Option<String> {
        self.streams
            .get(&stream)?
            .response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn set_response_headers(&mut self, stream: StreamId, headers: &[(String, String)]) {
        let s = self.streams.entry(stream).or_default();
        for (name, value) in headers {
            s.response_headers.retain(|(n, _)| n != name);
            s.response_headers.push((name.clone(), value.clone()));
        }
    }

    fn attribute(&self, stream: StreamId, attribute: Attribute) -> Option<String> {
        if let (Attribute::ClusterName, Some(router)) = (attribute, self.router) {
            return router(&self.streams.get(&stream)?.request_headers);
        }
        let key = match attribute {
            Attribute::ClientAddress => "client_address",
            Attribute::RouteName => "route_name",
            Attribute::ClusterName => "cluster_name",
            Attribute::PeerMtls => "peer_mtls",
            Attribute::PeerUriSan => "peer_uri_san",
            Attribute::PeerDnsSan => "peer_dns_san",
            Attribute::PeerSubject => "peer_subject",
        };
        self.streams.get(&stream)?.attributes.get(key).cloned()
    }

    fn send_reply(&mut self, stream: StreamId, reply: &LocalReply) {
        self.streams.entry(stream).or_default().reply = Some(reply.clone());
    }

    fn resume(&mut self, stream: StreamId) {
        self.streams.entry(stream).or_default().resumed += 1;
    }

    fn set_filter_state(&mut self, stream: StreamId, key: &str, value: &[u8]) {
        self.streams
            .entry(stream)
            .or_default()
            .filter_state
            .insert(key.to_owned(), value.to_vec());
    }

    fn filter_state(&mut self, stream: StreamId, key: &str) -> Option<Vec<u8>> {
        self.streams.get(&stream)?.filter_state.get(key).cloned()
    }

    fn remove_response_header(&mut self, stream: StreamId, name: &str) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.response_headers.retain(|(n, _)| n != name);
        }
    }

    fn response_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        self.streams.get(&stream).map_or_else(Vec::new, |s| {
            s.response_body.iter().take(size).copied().collect()
        })
    }

    fn set_response_body(&mut self, stream: StreamId, size: usize, body: &[u8]) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let keep = s.response_body.split_off(size.min(s.response_body.len()));
            s.response_body = body.to_vec();
            s.response_body.extend(keep);
        }
    }

    fn request_body(&mut self, stream: StreamId, size: usize) -> Vec<u8> {
        self.streams.get(&stream).map_or_else(Vec::new, |s| {
            s.request_body.iter().take(size).copied().collect()
        })
    }

    fn grpc_call(
        &mut self,
        owner: Option<StreamId>,
        call: &GrpcCall<'_>,
    ) -> Result<CallId, String> {
        if self.refuse_calls {
            return Err(format!("no cluster {}", call.cluster));
        }
        let id = self.next_call;
        self.next_call += 1;
        self.calls.push(MockCall {
            id,
            owner,
            cluster: call.cluster.to_owned(),
            target: format!("{}/{}", call.service, call.method),
            metadata: call
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect(),
            message: call.message.to_vec(),
            timeout_ms: call.timeout_ms,
            cancelled: false,
        });
        Ok(id)
    }

    fn cancel_grpc_call(&mut self, _owner: Option<StreamId>, call: CallId) {
        if let Some(c) = self.calls.iter_mut().find(|c| c.id == call) {
            c.cancelled = true;
        }
    }

    fn http_call(&mut self, call: &HttpCall<'_>) -> Result<CallId, String> {
        if self.refuse_calls {
            return Err(format!("no cluster {}", call.cluster));
        }
        let id = self.next_call;
        self.next_call += 1;
        let path = call
            .headers
            .iter()
            .find(|(k, _)| *k == ":path")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_default();
        self.calls.push(MockCall {
            id,
            owner: None,
            cluster: call.cluster.to_owned(),
            target: path,
            metadata: Vec::new(),
            message: call.body.map(<[u8]>::to_vec).unwrap_or_default(),
            timeout_ms: call.timeout_ms,
            cancelled: false,
        });
        Ok(id)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<MetricId> {
        self.metric_calls += 1;
        if let Some(i) = self.metric_names.iter().position(|(n, _)| n == name) {
            return MetricId::try_from(i).ok();
        }
        self.metric_names.push((name.to_owned(), kind));
        MetricId::try_from(self.metric_names.len() - 1).ok()
    }

    fn add_metric(&mut self, metric: MetricId, delta: i64) {
        self.metric_calls += 1;
        *self.metric_values.entry(metric).or_default() += delta;
    }

    fn set_metric(&mut self, metric: MetricId, value: u64) {
        self.metric_calls += 1;
        self.metric_values
            .insert(metric, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_metric(&mut self, metric: MetricId, value: u64) {
        self.metric_calls += 1;
        self.metric_samples.entry(metric).or_default().push(value);
    }

    fn audit_enqueue(&mut self, message: &[u8]) -> Result<(), QueueError> {
        self.audit_enqueues += 1;
        let queue = self.audit_queue.as_mut().ok_or(QueueError::Unavailable)?;
        queue.push_back(message.to_vec());
        Ok(())
    }

    fn audit_dequeue(&mut self) -> Result<Option<Vec<u8>>, QueueError> {
        let queue = self.audit_queue.as_mut().ok_or(QueueError::Unavailable)?;
        Ok(queue.pop_front())
    }
}
