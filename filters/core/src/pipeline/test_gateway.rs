//! The pipeline on the in-memory host, as the pipeline's tests drive it:
//! one worker, streams opened one after another.

use serde_json::Value;

use super::{Flow, Seeds, Worker};
use crate::host::StreamId;
use crate::mock::MockHost;

/// The clock when a test starts.
pub const NOW_MS: u64 = 1_800_000_000_000;

pub const SEEDS: Seeds = Seeds {
    secret: [9; 16],
    reporter: 42,
};

/// The client address every request comes from.
pub const CLIENT_ADDRESS: &str = "10.0.0.1:4000";

pub struct Gateway {
    pub host: MockHost,
    pub worker: Worker,
    pub next_stream: StreamId,
}

impl Gateway {
    pub fn new(config: Value) -> Gateway {
        let mut host = MockHost::new(NOW_MS);
        let worker = Worker::new(config.to_string().as_bytes(), "test", SEEDS, &mut host)
            .unwrap_or_else(|e| panic!("config: {e}"));
        Gateway {
            host,
            worker,
            next_stream: 1,
        }
    }

    /// A new stream with these request headers, from [`CLIENT_ADDRESS`];
    /// the pipeline has not seen it yet.
    pub fn open(&mut self, headers: &[(&str, &str)]) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.host.open(id, headers);
        self.host
            .streams
            .get_mut(&id)
            .unwrap()
            .attributes
            .insert("client_address", CLIENT_ADDRESS.into());
        id
    }

    /// Sends `method path` with `headers`, then `body` in one piece (none:
    /// the headers end the stream). Returns the stream and both flows.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (StreamId, Flow, Option<Flow>) {
        let length = body.map(|b| b.len().to_string());
        let mut all = vec![(":method", method), (":path", path), (":authority", "api")];
        if let Some(length) = &length {
            all.push(("content-length", length));
        }
        all.extend_from_slice(headers);
        let id = self.open(&all);
        let on_headers = self
            .worker
            .on_request_headers(&mut self.host, id, body.is_none());
        let on_body = body.map(|body| {
            self.host.streams.get_mut(&id).unwrap().request_body = body.to_vec();
            self.worker
                .on_request_body(&mut self.host, id, body.len() as u64, true)
        });
        (id, on_headers, on_body)
    }

    /// Sends a request without a body through the pipeline.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StreamId, Flow) {
        let (id, flow, _) = self.send(method, path, headers, None);
        (id, flow)
    }

    /// The upstream answers `status`, and the stream ends.
    pub fn respond(&mut self, id: StreamId, status: u16) {
        self.respond_with(id, status, &[]);
    }

    /// The upstream answers `status` with `headers`, and the stream ends.
    pub fn respond_with(&mut self, id: StreamId, status: u16, headers: &[(&str, &str)]) {
        let response = &mut self.host.streams.get_mut(&id).unwrap().response_headers;
        response.push((":status".into(), status.to_string()));
        response.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        assert_eq!(
            self.worker.on_response_headers(&mut self.host, id),
            Flow::Continue
        );
        self.worker.on_done(&mut self.host, id);
    }

    pub fn tick_at(&mut self, now_ms: u64) {
        self.host.now_ms = now_ms;
        self.worker.on_tick(&mut self.host);
    }

    pub fn reply_status(&self, id: StreamId) -> Option<u16> {
        self.host.stream(id).reply.as_ref().map(|r| r.status)
    }

    /// The local reply's status and response code details.
    pub fn details(&self, id: StreamId) -> Option<(u16, String)> {
        let reply = self.host.stream(id).reply.as_ref()?;
        Some((reply.status, reply.details.clone()))
    }
}
