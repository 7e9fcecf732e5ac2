//! How upstreams read a forwarded request, and what the caller may do.
//!
//! The gateway's promise is not only "the path I forward is canonical" but
//! "no upstream reads it as something I did not authorise". Upstreams
//! disagree on paths, so the property test reads every forwarded request
//! the way several of them would:
//!
//! * `plain`: percent-decode once (`%2F` is a separator), resolve dot
//!   segments: a lenient router;
//! * `servlet`: drop `;...` from every segment, before decoding (as Tomcat
//!   and Jetty do) and after (as Spring's path helper does), then resolve;
//! * `decode-twice`: decode, parse again (cutting at a decoded `?` or
//!   `#`), decode again, `\` is a separator: a proxy chain or framework
//!   that decodes and re-parses;
//! * `nfkc`: decode once, read overlong UTF-8 (`%c0%ae`) as legacy decoders
//!   did, map compatibility characters to what NFKC makes of them, `\` is
//!   a separator: frameworks that normalize Unicode, Windows servers.
//!
//! Every reader folds case (upstreams that route case-insensitively) and
//! reads the query leniently: pairs split on `&` and `;`, keys decoded and
//! case-folded, every `context` value a context it may act on, every
//! `_method` value a method it may apply.

/// One way an upstream reads a request target.
pub struct Reader {
    pub name: &'static str,
    /// The path's segments as this upstream resolves them (case-folded).
    path: fn(&str) -> Vec<String>,
}

pub const READERS: [Reader; 4] = [
    Reader {
        name: "plain",
        path: plain,
    },
    Reader {
        name: "servlet",
        path: servlet,
    },
    Reader {
        name: "decode-twice",
        path: decode_twice,
    },
    Reader {
        name: "nfkc",
        path: nfkc,
    },
];

/// What one upstream takes a request for.
#[derive(Debug)]
pub struct Reading {
    pub segments: Vec<String>,
    /// Every `context` query parameter, as a context path.
    pub contexts: Vec<Vec<String>>,
    /// The request's method and every method override in the query.
    pub methods: Vec<String>,
}

impl Reader {
    /// Reads `method` on `target` (path and query).
    pub fn read(&self, method: &str, target: &str) -> Reading {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut contexts = Vec::new();
        let mut methods = vec![method.to_owned()];
        for pair in query.split(['&', ';']).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_text(&key.replace('+', " ")).to_lowercase();
            let value = value.replace('+', "%20");
            match key.as_str() {
                "context" => contexts.push((self.path)(&value)),
                "_method" => methods.push(decode_text(&value).trim().to_ascii_uppercase()),
                _ => {}
            }
        }
        Reading {
            segments: (self.path)(path),
            contexts,
            methods,
        }
    }
}

fn plain(path: &str) -> Vec<String> {
    resolve(&decode_text(path))
}

fn servlet(path: &str) -> Vec<String> {
    let decoded = decode_text(&strip_parameters(path));
    resolve(&strip_parameters(&decoded))
}

/// Drops `;...` from every `/`-separated segment.
fn strip_parameters(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect();
    segments.join("/")
}

fn decode_twice(path: &str) -> Vec<String> {
    let once = decode_text(path);
    let reparsed = once.split(['?', '#']).next().unwrap_or(&once);
    resolve(&decode_text(reparsed).replace('\\', "/"))
}

fn nfkc(path: &str) -> Vec<String> {
    let mut bytes = decode(path.as_bytes());
    // Overlong two-byte forms of '.' and '/'.
    for (overlong, ascii) in [([0xC0, 0xAE], b'.'), ([0xC0, 0xAF], b'/')] {
        bytes = replace_pair(&bytes, overlong, ascii);
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(compatibility)
        .collect();
    resolve(&text.replace('\\', "/"))
}

/// What NFKC (or Windows best-fit) makes of the characters the generator
/// uses; everything else is left alone.
fn compatibility(c: char) -> String {
    match c {
        '\u{FF0E}' | '\u{FE52}' | '\u{2024}' => ".".into(),
        '\u{2025}' => "..".into(),
        '\u{2026}' => "...".into(),
        '\u{FF0F}' | '\u{2215}' | '\u{2044}' => "/".into(),
        '\u{FF3C}' => "\\".into(),
        '\u{FF1B}' => ";".into(),
        '\u{FF1F}' => "?".into(),
        '\u{FF03}' => "#".into(),
        '\u{FF05}' => "%".into(),
        '\u{212A}' => "K".into(),
        '\u{017F}' => "s".into(),
        '\u{0130}' => "I".into(),
        c => c.into(),
    }
}

fn replace_pair(bytes: &[u8], pair: [u8; 2], with: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(&pair) {
            out.push(with);
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Decodes `%XX` once, leniently: a malformed escape stays as it is.
fn decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escape {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn decode_text(text: &str) -> String {
    String::from_utf8_lossy(&decode(text.as_bytes())).into_owned()
}

/// Splits on `/`, drops empty and `.` segments, lets `..` remove the one
/// before (never above the root), folds case.
fn resolve(text: &str) -> Vec<String> {
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other.to_lowercase()),
        }
    }
    segments
}

/// The caller's rights ([`crate::setup::SCOPES`]) and the public paths:
/// may `method` be applied to `segments` (with `contexts` from the query)?
pub fn permitted(method: &str, segments: &[String], contexts: &[Vec<String>], token: bool) -> bool {
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let reading = method == "GET" || method == "HEAD";
    if reading && path.first() == Some(&".well-known") {
        return true;
    }
    if method == "GET" && path == ["health", "context"] {
        return true;
    }
    if !token {
        return false;
    }
    const READ: [&str; 2] = ["projects", "public"];
    const WRITE: [&str; 3] = ["projects", "public", "drafts"];
    let under = |root: &[&str], context: &[&str]| context.starts_with(root);
    match path.as_slice() {
        ["v1", "contexts", context @ ..] if !context.is_empty() => match method {
            "GET" | "HEAD" => under(&READ, context),
            "PUT" | "POST" | "PATCH" => under(&WRITE, context),
            _ => false,
        },
        ["v1", "query"] | ["v1", "graph", "traverse"] if method == "POST" => {
            !contexts.is_empty()
                && contexts.iter().all(|context| {
                    let context: Vec<&str> = context.iter().map(String::as_str).collect();
                    under(&READ, &context)
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(reader: usize, target: &str) -> (Vec<String>, Vec<Vec<String>>, Vec<String>) {
        let reading = READERS[reader].read("GET", target);
        (reading.segments, reading.contexts, reading.methods)
    }

    #[test]
    fn the_readers_disagree_where_upstreams_do() {
        let path = "/.well-known/..;/v1/Admin";
        assert_eq!(read(0, path).0, [".well-known", "..;", "v1", "admin"]);
        assert_eq!(read(1, path).0, ["v1", "admin"]);
        assert_eq!(read(1, "/.well-known/..%3Bx/v1/Admin").0, ["v1", "admin"]);
        let path = "/a/%252e%252e/b%255Cx/c";
        assert_eq!(read(0, path).0, ["a", "%2e%2e", "b%5cx", "c"]);
        assert_eq!(read(2, path).0, ["b", "x", "c"]);
        let path = "/a/\u{FF0E}\u{FF0E}/%c0%ae%c0%ae/s\u{212A}%C5%BF";
        assert_eq!(read(3, path).0, ["sks"]);
        let (_, contexts, methods) = read(0, "/q?x=1;%63ontext=projects/public+x&_METHOD=delete");
        assert_eq!(contexts, [["projects", "public x"]]);
        assert_eq!(methods, ["GET", "DELETE"]);
    }

    #[test]
    fn the_caller_reads_its_project_and_writes_its_drafts() {
        let s = |path: &str| plain(path);
        assert!(permitted(
            "GET",
            &s("/v1/contexts/projects/public/x"),
            &[],
            true
        ));
        assert!(!permitted(
            "GET",
            &s("/v1/contexts/projects/public/x"),
            &[],
            false
        ));
        assert!(!permitted(
            "GET",
            &s("/v1/contexts/projects/publicity"),
            &[],
            true
        ));
        assert!(permitted(
            "PUT",
            &s("/v1/contexts/projects/public/drafts/a"),
            &[],
            true
        ));
        assert!(!permitted(
            "PUT",
            &s("/v1/contexts/projects/public/a"),
            &[],
            true
        ));
        assert!(!permitted(
            "DELETE",
            &s("/v1/contexts/projects/public/drafts"),
            &[],
            true
        ));
        assert!(permitted("HEAD", &s("/.well-known/x"), &[], false));
        assert!(!permitted("POST", &s("/.well-known/x"), &[], true));
        assert!(!permitted("HEAD", &s("/health/context"), &[], true));
        let public = [s("projects/public")];
        let both = [s("projects/public"), s("projects/secret")];
        assert!(permitted("POST", &s("/v1/query"), &public, true));
        assert!(!permitted("POST", &s("/v1/query"), &both, true));
        assert!(!permitted("POST", &s("/v1/query"), &[], true));
    }
}
