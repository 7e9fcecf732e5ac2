//! In-process HTTP servers that play Envoy's upstreams in tests.
//!
//! [`ScriptedServer`] answers whatever the test currently tells it to, so one
//! server can be a JWKS endpoint that goes down and comes back, a slow
//! upstream, or a plain upstream that records what Envoy forwarded. Each
//! server runs its own single-threaded tokio runtime on its own thread, bound
//! to 127.0.0.1 port 0, and stops when dropped; nothing is shared between
//! tests running in parallel.
//!
//! It speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the same port, so
//! it works behind clusters with and without `http2`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::oneshot;

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Lowercase names (as hyper delivers them), values decoded lossily.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the server answers.
#[derive(Clone, Debug)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ScriptedResponse {
    pub fn new(status: u16) -> Self {
        ScriptedResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON body with `content-type: application/json`.
    pub fn json(status: u16, body: &Value) -> Self {
        ScriptedResponse::new(status)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

type Handler = Arc<dyn Fn(&RecordedRequest) -> ScriptedResponse + Send + Sync>;

struct Shared {
    handler: Mutex<Handler>,
    delay: Mutex<Duration>,
    hits: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Whether requests are kept for [`ScriptedServer::requests`].
    keep: AtomicBool,
}

/// Locks ignoring poison: a panicking handler must not wedge the server for
/// the rest of the test.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An HTTP server whose behaviour the test changes while it runs.
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Starts a server answering `200 ok` to everything.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            handler: Mutex::new(constant(ScriptedResponse::new(200).body("ok"))),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            keep: AtomicBool::new(true),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("scripted-server-{addr}"))
            .spawn(move || serve(listener, thread_shared, shutdown_rx))
            .unwrap();
        ScriptedServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops keeping requests for [`ScriptedServer::requests`] (a sink
    /// under load whose handler looks at each request itself); `hits`
    /// still counts them.
    pub fn forget_requests(&self) {
        self.shared.keep.store(false, Ordering::SeqCst);
        lock(&self.shared.requests).clear();
    }

    /// `http://127.0.0.1:<port><path>`, e.g. for a JWKS `uri`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers every following request with this response.
    pub fn set_response(&self, status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) {
        let mut response = ScriptedResponse::new(status).body(body);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        *lock(&self.shared.handler) = constant(response);
    }

    /// Answers every following request with `body` as JSON.
    pub fn set_json(&self, status: u16, body: &Value) {
        *lock(&self.shared.handler) = constant(ScriptedResponse::json(status, body));
    }

    /// Computes each following response from the request, e.g. to serve
    /// different documents per path or echo a header back.
    pub fn set_handler(
        &self,
        handler: impl Fn(&RecordedRequest) -> ScriptedResponse + Send + Sync + 'static,
    ) {
        *lock(&self.shared.handler) = Arc::new(handler);
    }

    /// Waits this long before answering (after recording the request); for
    /// upstream-timeout and slow-JWKS tests.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Requests received so far (counted on arrival, before any delay).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Headers of the most recent request; empty if there was none.
    pub fn last_request_headers(&self) -> Vec<(String, String)> {
        self.last_request().map(|r| r.headers).unwrap_or_default()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn constant(response: ScriptedResponse) -> Handler {
    Arc::new(move |_| response.clone())
}

/// Server thread: accepts until shut down; dropping the runtime at the end
/// cancels the connections still open.
fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("register listener");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
}

async fn handle(
    shared: Arc<Shared>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    shared.hits.fetch_add(1, Ordering::SeqCst);
    if shared.keep.load(Ordering::SeqCst) {
        lock(&shared.requests).push(recorded.clone());
    }
    let handler = lock(&shared.handler).clone();
    let delay = *lock(&shared.delay);
    let scripted = handler(&recorded);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut response = hyper::Response::builder().status(scripted.status);
    for (name, value) in &scripted.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    Ok(response
        .body(Full::new(Bytes::from(scripted.body)))
        .unwrap_or_else(|e| {
            let mut fallback = hyper::Response::new(Full::new(Bytes::from(format!(
                "ScriptedServer: invalid scripted response: {e}"
            ))));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;

    #[test]
    fn scripted_server_changes_answers_at_runtime() {
        let server = ScriptedServer::start();
        let resp = Request::get("/a?x=1")
            .header("x-test", "1")
            .send(server.addr());
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
        assert_eq!(server.last_request().unwrap().path, "/a?x=1");
        assert_eq!(server.last_request().unwrap().header("x-test"), Some("1"));

        server.set_response(503, &[("x-down", "yes")], "down");
        let resp = Request::get("/").send(server.addr());
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("x-down"), Some("yes"));

        server.set_handler(|req| ScriptedResponse::new(200).body(req.path.clone()));
        assert_eq!(Request::get("/echo").send(server.addr()).text(), "/echo");
        assert_eq!(server.hits(), 3);
    }
}
