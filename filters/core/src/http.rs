//! Plain views of an HTTP request and the replies a filter sends itself.

/// The parts of a request a filter decides on. Header names are lower case
/// (Envoy normalizes them); values are raw bytes because HTTP allows
/// non-UTF-8 octets there and a filter must not choke on them.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path` as received, with the query.
    pub path: &'a str,
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> RequestHead<'a> {
    /// All values of header `name` (lower case), in order.
    pub fn header_values(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name`, if it is UTF-8.
    pub fn header(&self, name: &'a str) -> Option<&'a str> {
        self.header_values(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    /// gRPC requests get their status in `grpc-status`, not the HTTP code.
    pub fn is_grpc(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What is known of the request body's size when the headers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// No body.
    Empty,
    /// `content-length` (Envoy refuses a body that does not match it, so
    /// this is a size the client is held to, not merely one it declares).
    Known(u64),
    /// Chunked, or HTTP/2 without `content-length`: known only as it streams.
    Unknown,
}

impl BodySize {
    /// `end_of_stream`: the headers ended the request.
    pub fn of(head: &RequestHead<'_>, end_of_stream: bool) -> BodySize {
        if end_of_stream {
            return BodySize::Empty;
        }
        match head
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(length) => BodySize::Known(length),
            None => BodySize::Unknown,
        }
    }
}

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set for gRPC requests: Envoy then answers with HTTP 200 and this
    /// `grpc-status`.
    pub grpc_status: Option<u32>,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%` in access
    /// logs): a stable, whitespace-free string such as
    /// `ctxgate_auth_denied{token_expired}`.
    pub details: String,
}

impl LocalReply {
    /// A JSON error reply shaped for the request: no body for HEAD, a
    /// gRPC status for gRPC.
    pub fn json_error(
        request: &RequestHead<'_>,
        status: u16,
        body: &serde_json::Value,
        headers: Vec<(String, String)>,
        details: String,
    ) -> LocalReply {
        let mut headers = headers;
        let body = if request.is_head() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        headers.push(("content-type".into(), "application/json".into()));
        let grpc_status = request.is_grpc().then(|| grpc_status_for(status));
        LocalReply {
            status,
            headers,
            body,
            grpc_status,
            details,
        }
    }
}

/// The gRPC status matching an HTTP status, as Envoy maps them.
pub fn grpc_status_for(http_status: u16) -> u32 {
    match http_status {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED
        429 => 8,        // RESOURCE_EXHAUSTED
        502..=504 => 14, // UNAVAILABLE
        _ => 2,          // UNKNOWN
    }
}
