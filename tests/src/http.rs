//! A deliberately small HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Off-the-shelf clients normalize what ctxgate must be tested against: they
//! decode or re-encode `%2F`, resolve `..`, merge duplicate headers and refuse
//! non-UTF-8 header values. Here the request line and headers go out exactly
//! as written, and the response is parsed just enough to assert on
//! (status, headers in order, body decoded from content-length or chunked).
//!
//! Every socket operation has a timeout (10 s by default), so a request that
//! Envoy never answers fails the test instead of hanging it.
//!
//! The same writer and response parser run over plain TCP ([`Request::send`])
//! and over TLS ([`Request::send_tls`], see [`crate::tls`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::tls::TlsClient;

/// Default connect/read/write timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request, written to the wire byte for byte.
///
/// Unless set explicitly, `Host: localhost` is added, `Content-Length` is
/// added when a body was set, and [`Request::send`] adds `Connection: close`.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl Request {
    /// `raw_path` is the request target exactly as sent: `/a/%2F/../b?x=1`
    /// stays that way.
    pub fn new(method: &str, raw_path: impl AsRef<[u8]>) -> Self {
        Request {
            method: method.to_owned(),
            target: raw_path.as_ref().to_vec(),
            headers: Vec::new(),
            body: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn get(raw_path: impl AsRef<[u8]>) -> Self {
        Request::new("GET", raw_path)
    }

    pub fn post(raw_path: impl AsRef<[u8]>) -> Self {
        Request::new("POST", raw_path)
    }

    /// Appends a header; calling it twice with the same name sends it twice.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// Appends a header whose value is arbitrary bytes (e.g. non-UTF-8).
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_owned(), value.to_vec()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A body sent with `Transfer-Encoding: chunked` in chunks of at most
    /// `chunk` bytes: a body of unknown length to the gateway.
    pub fn chunked(self, body: &[u8], chunk: usize) -> Self {
        let mut framed = Vec::with_capacity(body.len() + 64);
        for part in body.chunks(chunk.max(1)) {
            framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            framed.extend_from_slice(part);
            framed.extend_from_slice(b"\r\n");
        }
        framed.extend_from_slice(b"0\r\n\r\n");
        self.header("transfer-encoding", "chunked").body(framed)
    }

    /// JSON body with `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Overrides the 10 s connect/read/write timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request on a fresh connection (`Connection: close`) and
    /// reads the response. Panics on I/O errors and timeouts.
    #[track_caller]
    pub fn send(&self, addr: SocketAddr) -> Response {
        self.try_send(addr).unwrap_or_else(|e| {
            panic!(
                "{} {} to {addr}: {e}",
                self.method,
                String::from_utf8_lossy(&self.target)
            )
        })
    }

    /// [`Request::send`] returning I/O errors and timeouts instead of
    /// panicking, for probing something that may not be up.
    pub fn try_send(&self, addr: SocketAddr) -> io::Result<Response> {
        Connection::open(addr, self.timeout)?.exchange(&self.to_bytes(true), self.is_head())
    }

    /// Like [`Request::send`], over TLS: `tls` says which CA to trust and
    /// which client certificate (if any) to present. Panics on handshake
    /// failures, I/O errors and timeouts.
    #[track_caller]
    pub fn send_tls(&self, addr: SocketAddr, tls: &TlsClient) -> Response {
        self.try_send_tls(addr, tls).unwrap_or_else(|e| {
            panic!(
                "{} {} to {addr} over TLS: {e}",
                self.method,
                String::from_utf8_lossy(&self.target)
            )
        })
    }

    /// [`Request::send_tls`] returning errors instead of panicking: a
    /// handshake the server rejects (no client certificate, an untrusted
    /// one) is an `Err`, at the latest when the response is read, since in
    /// TLS 1.3 the server checks the client certificate after the client
    /// considers the handshake done.
    pub fn try_send_tls(&self, addr: SocketAddr, tls: &TlsClient) -> io::Result<Response> {
        let stream = tls.connect(addr, self.timeout)?;
        Connection::new(stream).exchange(&self.to_bytes(true), self.is_head())
    }

    fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request as sent. `close` adds `Connection: close` unless the
    /// caller set a `Connection` header.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.has_header("host") {
            out.extend_from_slice(b"host: localhost\r\n");
        }
        if close && !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        match &self.body {
            Some(body) if !framed => {
                out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            }
            _ => {}
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(body) = &self.body {
            out.extend_from_slice(body);
        }
        out
    }
}

/// Sends `bytes` verbatim on a fresh connection and reads one response; for
/// requests too malformed for [`Request`] (bad request lines, smuggling
/// attempts). The caller should include `connection: close`.
#[track_caller]
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    Connection::open(addr, DEFAULT_TIMEOUT)
        .and_then(|mut conn| conn.exchange(bytes, false))
        .unwrap_or_else(|e| panic!("raw request to {addr}: {e}"))
}

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// In received order; names as sent (Envoy sends lowercase), values
    /// decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
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

    /// The body parsed as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Panics with the full response if the status is not `status`; returns
    /// the response for further checks.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; headers {:?} body {:?}",
            self.headers,
            self.text()
        );
        self
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A keep-alive connection for many sequential requests, e.g. one per thread
/// in a concurrency test, so the test measures Envoy rather than TCP setup.
///
/// If the server closes the connection (`Connection: close`, or a body that
/// ends at EOF), the next request transparently reconnects and
/// [`Client::reconnects`] counts it, so tests that care can assert it is 0.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<Connection>,
    reconnects: u64,
}

impl Client {
    /// Connects now, so a refused connection fails here.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Self {
        let conn = Connection::open(addr, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Client {
            addr,
            timeout: DEFAULT_TIMEOUT,
            conn: Some(conn),
            reconnects: 0,
        }
    }

    /// Sends `request` on the kept-alive connection (no `Connection: close`
    /// is added) and reads the response. Panics on I/O errors and timeouts.
    #[track_caller]
    pub fn send(&mut self, request: &Request) -> Response {
        let addr = self.addr;
        self.try_send(request).unwrap_or_else(|e| {
            panic!(
                "{} {} to {addr} (keep-alive): {e}",
                request.method,
                String::from_utf8_lossy(&request.target)
            )
        })
    }

    /// [`Client::send`] returning errors instead of panicking. After an
    /// error the connection is dropped and the next request reconnects.
    pub fn try_send(&mut self, request: &Request) -> io::Result<Response> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                self.reconnects += 1;
                Connection::open(self.addr, self.timeout)?
            }
        };
        let response = conn.exchange(&request.to_bytes(false), request.is_head())?;
        if !response.wants_close() && !conn.eof {
            self.conn = Some(conn);
        }
        Ok(response)
    }

    /// How many times the connection had to be re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }
}

/// One connection, plain ([`TcpStream`]) or TLS, with the response parser.
struct Connection<S = TcpStream> {
    reader: BufReader<S>,
    /// The last body was delimited by EOF, so the connection is finished.
    eof: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A TCP connection to `addr` with `timeout` on connect, reads and writes,
/// and no Nagle delay (plain or under TLS).
pub(crate) fn tcp_connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        Ok(Connection::new(tcp_connect(addr, timeout)?))
    }
}

impl<S: Read + Write> Connection<S> {
    /// `stream` must already have its read and write timeouts set.
    fn new(stream: S) -> Self {
        Connection {
            reader: BufReader::new(stream),
            eof: false,
        }
    }

    fn exchange(&mut self, request: &[u8], head_request: bool) -> io::Result<Response> {
        let stream = self.reader.get_mut();
        stream.write_all(request)?;
        stream.flush()?;
        let response = self.read_response(head_request);
        exchanged();
        response
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed mid-response after {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(line)
    }

    fn read_exact(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let response = self.read_one(head_request)?;
            // Interim responses (100 Continue, 103 Early Hints) precede the
            // real one; 101 Switching Protocols is final.
            if (100..200).contains(&response.status) && response.status != 101 {
                continue;
            }
            return Ok(response);
        }
    }

    fn read_one(&mut self, head_request: bool) -> io::Result<Response> {
        let status_line = String::from_utf8_lossy(&self.read_line()?).into_owned();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
            response.body = self.read_exact(len)?;
        } else {
            self.reader.read_to_end(&mut response.body)?;
            self.eof = true;
        }
        Ok(response)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = String::from_utf8_lossy(&self.read_line()?).into_owned();
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, then the final empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact(size)?);
            let crlf = self.read_line()?;
            if !crlf.is_empty() {
                return Err(invalid(format!("chunk not followed by CRLF: {crlf:?}")));
            }
        }
    }
}

/// When this process last finished an exchange with anything (see
/// [`last_exchange`]).
static LAST_EXCHANGE: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

fn exchanged() {
    if let Ok(mut last) = LAST_EXCHANGE.lock() {
        *last = Some(std::time::Instant::now());
    }
}

/// When this process last got a response (or gave up on one): metrics a
/// gateway counted for it reach Envoy on the pipeline's next flush.
pub fn last_exchange() -> Option<std::time::Instant> {
    LAST_EXCHANGE.lock().ok().and_then(|last| *last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves `replies` in order on one connection, returning what it read.
    fn canned(replies: Vec<&'static [u8]>) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                seen.extend_from_slice(&buf[..n]);
                stream.write_all(reply).unwrap();
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn sends_raw_bytes_and_duplicate_headers() {
        let (addr, server) = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]);
        let resp = Request::get("/a/%2F/../b")
            .header("x-dup", "1")
            .header("x-dup", "2")
            .header_bytes("x-bin", b"\xff\xfe")
            .send(addr);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "ok");
        let seen = server.join().unwrap();
        assert!(seen.starts_with(b"GET /a/%2F/../b HTTP/1.1\r\n"));
        assert!(seen.windows(9).any(|w| w == b"x-dup: 1\r"));
        assert!(seen.windows(9).any(|w| w == b"x-dup: 2\r"));
        assert!(seen.windows(10).any(|w| w == b"x-bin: \xff\xfe\r"));
    }

    #[test]
    fn decodes_chunked_and_skips_interim_responses() {
        let (addr, _server) = canned(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\nX-A: 2\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\ntrailer: x\r\n\r\n",
        ]);
        let resp = Request::post("/").body("x").send(addr);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"abcde");
        assert_eq!(resp.headers_all("x-a"), vec!["1", "2"]);
    }

    #[test]
    fn keep_alive_client_reuses_connection() {
        let (addr, server) = canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        ]);
        let mut client = Client::connect(addr);
        assert_eq!(client.send(&Request::get("/1")).text(), "a");
        assert_eq!(client.send(&Request::get("/2")).status, 204);
        let head = client.send(&Request::new("HEAD", "/3"));
        assert_eq!(head.header("content-length"), Some("5"));
        assert!(head.body.is_empty());
        assert_eq!(client.reconnects(), 0);
        let seen = String::from_utf8(server.join().unwrap()).unwrap();
        assert_eq!(seen.matches("HTTP/1.1\r\n").count(), 3);
        assert!(!seen.contains("connection: close"));
    }

    #[test]
    fn body_until_eof_without_length() {
        let (addr, _server) = canned(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it"]);
        let resp = Request::get("/").send(addr);
        assert_eq!(resp.text(), "all of it");
    }
}
