//! A plain view of an HTTP request: what a stage decides on. The replies a
//! stage sends itself are in [`crate::reply`].

use crate::headers::Headers;

/// The parts of a request a filter decides on. Header names are lower case
/// (Envoy normalizes them); values are raw bytes because HTTP allows
/// non-UTF-8 octets there and a filter must not choke on them.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path` as received, with the query.
    pub path: &'a str,
    pub headers: &'a Headers,
}

impl<'a> RequestHead<'a> {
    /// All values of header `name` (lower case), in order.
    pub fn header_values(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.values(name)
    }

    /// The first value of header `name`, if it is UTF-8.
    pub fn header(&self, name: &'a str) -> Option<&'a str> {
        self.header_values(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains(name)
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
