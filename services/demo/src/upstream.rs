//! An echo upstream for the demo and the e2e tests.
//!
//! It speaks HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on the same port
//! and answers every request with `200`, `content-type: application/json`,
//! `x-upstream: <name>` and a description of what it received, so a test can
//! see exactly what Envoy forwarded:
//!
//! ```json
//! {
//!   "upstream": "standard",
//!   "method": "GET",
//!   "path": "/v1/projects?limit=5",
//!   "version": "HTTP/1.1",
//!   "authority": "127.0.0.1:8081",
//!   "headers": { "accept": "*/*", "x-dup": ["a", "b"] },
//!   "body_bytes": 0
//! }
//! ```
//!
//! `path` is the raw request target (path and query, as sent). A header sent
//! more than once is an array of its values in order, otherwise a string.
//! Values that are not UTF-8 are converted lossily. `authority` is the
//! `:authority` (HTTP/2) or the `host` header, or `null`. The request body is
//! read to the end and only its length is reported.
//!
//! Test controls, read from request headers:
//!
//! * `x-demo-status: NNN` answers with that status (200-599) instead of 200,
//!   with the same JSON body. Other values are ignored.
//! * `x-demo-delay-ms: N` waits N milliseconds (at most 60000) before
//!   answering, after the body has been read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Request header selecting the response status.
pub const STATUS_HEADER: &str = "x-demo-status";
/// Request header delaying the response, in milliseconds.
pub const DELAY_HEADER: &str = "x-demo-delay-ms";
/// Response header naming the upstream that answered.
pub const UPSTREAM_HEADER: &str = "x-upstream";
/// Longest delay honoured, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Serves connections from `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, name: String) {
    let upstream = Arc::new(Upstream::new(name));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                eprintln!("upstream {}: accept failed: {e}", upstream.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let upstream = Arc::clone(&upstream);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let upstream = Arc::clone(&upstream);
                async move { Ok::<_, Infallible>(upstream.handle(req).await) }
            });
            // Connection errors (resets, malformed requests) end only this
            // connection; hyper has already answered what it could.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Stops an upstream started by [`spawn_in_thread`] when dropped (or when
/// [`ShutdownHandle::shutdown`] is called), waiting for its thread to end.
/// Open connections are closed.
#[derive(Debug)]
pub struct ShutdownHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShutdownHandle {
    /// The address the upstream listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the upstream now.
    pub fn shutdown(self) {}
}

impl Drop for ShutdownHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` (e.g. `127.0.0.1:0` for a free port) and serves on a
/// background thread with its own single-threaded tokio runtime. Returns the
/// bound address and a handle that stops the server when dropped. Binding
/// errors are returned here, not on the thread.
pub fn spawn_in_thread(addr: &str, name: &str) -> Result<(SocketAddr, ShutdownHandle)> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    std_listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let local = std_listener
        .local_addr()
        .context("cannot read the listener address")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(std_listener).context("cannot register the listener")?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let name = name.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("upstream-{name}"))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = serve(listener, name) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels the connection tasks.
            drop(runtime);
        })
        .context("cannot spawn the upstream thread")?;
    Ok((
        local,
        ShutdownHandle {
            addr: local,
            stop: Some(stop),
            thread: Some(thread),
        },
    ))
}

struct Upstream {
    name: String,
    name_header: Option<HeaderValue>,
}

impl Upstream {
    fn new(name: String) -> Upstream {
        let name_header = HeaderValue::from_str(&name).ok();
        Upstream { name, name_header }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, mut body) = req.into_parts();

        let mut body_bytes: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body_bytes = body_bytes.saturating_add(data.len() as u64);
                    }
                }
                // The client went away or sent a broken body: report what
                // arrived; the response may not be deliverable anyway.
                Err(_) => break,
            }
        }

        let status = header_str(&parts.headers, STATUS_HEADER)
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|code| (200..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::OK);
        let delay_ms = header_str(&parts.headers, DELAY_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|ms| ms.min(MAX_DELAY_MS));
        if let Some(ms) = delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }

        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header_str(&parts.headers, HOST.as_str()));
        let echo = json!({
            "upstream": self.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            "version": format!("{:?}", parts.version),
            "authority": authority,
            "headers": headers_json(&parts.headers),
            "body_bytes": body_bytes,
        });
        let mut body = echo.to_string();
        body.push('\n');

        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(name) = &self.name_header {
            headers.insert(HeaderName::from_static(UPSTREAM_HEADER), name.clone());
        }
        response
    }
}

/// First value of `name`, lossily decoded.
fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_string(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Sends raw bytes, reads until the server closes, splits head and body.
    fn raw_request(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no end of headers");
        let head = String::from_utf8(response[..split].to_vec()).unwrap();
        (head, response[split + 4..].to_vec())
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn echoes_http1_request() {
        let (addr, _handle) = spawn_in_thread("127.0.0.1:0", "standard").unwrap();
        let (head, body) = raw_request(
            addr,
            b"POST /v1/projects/p1?x=1&y=%2F HTTP/1.1\r\nHost: example.test\r\n\
              X-Dup: a\r\nX-Dup: b\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(header(&head, "content-type"), Some("application/json"));
        assert_eq!(header(&head, "x-upstream"), Some("standard"));
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["upstream"], "standard");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/v1/projects/p1?x=1&y=%2F");
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["authority"], "example.test");
        assert_eq!(echo["body_bytes"], 5);
        assert_eq!(echo["headers"]["host"], "example.test");
        assert_eq!(echo["headers"]["x-dup"], json!(["a", "b"]));
        assert_eq!(echo["headers"]["content-length"], "5");
    }

    #[test]
    fn status_and_delay_controls() {
        let (addr, _handle) = spawn_in_thread("127.0.0.1:0", "ctl").unwrap();
        let started = std::time::Instant::now();
        let (head, body) = raw_request(
            addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nx-demo-status: 503\r\nx-demo-delay-ms: 150\r\n\
              Connection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["upstream"], "ctl");
        assert_eq!(echo["headers"]["x-demo-status"], "503");

        // Out-of-range and garbage values are ignored.
        for bad in ["99", "600", "abc"] {
            let req = format!(
                "GET / HTTP/1.1\r\nHost: h\r\nx-demo-status: {bad}\r\nx-demo-delay-ms: x\r\n\
                 Connection: close\r\n\r\n"
            );
            let (head, _) = raw_request(addr, req.as_bytes());
            assert!(head.starts_with("HTTP/1.1 200 "), "{bad}: {head}");
        }
    }

    #[test]
    fn non_utf8_header_value_is_lossy() {
        let (addr, _handle) = spawn_in_thread("127.0.0.1:0", "bytes").unwrap();
        let (head, body) = raw_request(
            addr,
            b"GET /x HTTP/1.1\r\nHost: h\r\nx-bin: caf\xe9\xff\r\nConnection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["headers"]["x-bin"], "caf\u{fffd}\u{fffd}");
        // Still serving afterwards.
        let (head, _) = raw_request(
            addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    }

    #[test]
    fn h2c_prior_knowledge_is_detected() {
        let (addr, _handle) = spawn_in_thread("127.0.0.1:0", "h2").unwrap();
        // The HTTP/2 preface followed by an empty SETTINGS frame: the server
        // must answer with its own SETTINGS frame (type 0x4), not HTTP/1.1.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        let mut frame_header = [0u8; 9];
        stream.read_exact(&mut frame_header).unwrap();
        assert_eq!(frame_header[3], 0x4, "expected a SETTINGS frame");
    }

    #[test]
    fn shutdown_stops_listening() {
        let (addr, handle) = spawn_in_thread("127.0.0.1:0", "gone").unwrap();
        assert_eq!(handle.addr(), addr);
        handle.shutdown();
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn bind_error_is_reported() {
        let (addr, _handle) = spawn_in_thread("127.0.0.1:0", "first").unwrap();
        let err = spawn_in_thread(&addr.to_string(), "second").unwrap_err();
        assert!(format!("{err:#}").contains("cannot listen"), "{err:#}");
    }
}
