//! The invariant, tested on thousands of generated hostile paths through a
//! real Envoy and the demo echo upstream: every request is either refused
//! (4xx), or reaches the upstream with a canonical target that every
//! upstream reading ([`crate::readers`]) takes for something the caller may
//! do, and with `x-context-path` naming the context in that target.
//!
//! The cases come from a seed, printed at the start; `CTXGATE_PATH_SEED`
//! (decimal or `0x` hex) replays a run, `CTXGATE_PATH_CASES` changes how
//! many cases it has (at least [`MIN_CASES`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ctxgate_core::path::{canonical_path, canonical_segments};
use ctxgate_core::query::Query;
use ctxgate_e2e::{Client, Request, Response};

use crate::hostile::{Case, generate};
use crate::readers::{READERS, permitted};
use crate::setup::*;
use crate::support::*;

const MIN_CASES: usize = 2_000;
const DEFAULT_CASES: usize = 10_000;
/// Keep-alive connections the cases are spread over.
const CONNECTIONS: usize = 8;

#[test]
fn no_generated_hostile_path_reaches_the_upstream_as_anything_but_what_was_authorised() {
    let seed = seed();
    let count = std::env::var("CTXGATE_PATH_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
        .max(MIN_CASES);
    eprintln!("hostile paths: seed {seed:#x} (CTXGATE_PATH_SEED={seed:#x} replays), {count} cases");
    let cases = generate(seed, count);

    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);
    let began = Instant::now();
    let responses = send_all(&gate, &cases, &token);
    let elapsed = began.elapsed();

    let mut statuses = BTreeMap::new();
    let mut answered = BTreeMap::new();
    let mut forwarded_methods = BTreeMap::new();
    let mut violations = Vec::new();
    for (case, response) in cases.iter().zip(&responses) {
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                violations.push(("no response", format!("{case:?}: {error}")));
                continue;
            }
        };
        *statuses.entry(response.status).or_insert(0usize) += 1;
        *answered.entry(answered_by(response)).or_insert(0usize) += 1;
        let problems = check(case, response);
        if problems.is_empty() && response.status == 200 {
            *forwarded_methods.entry(case.method).or_insert(0usize) += 1;
        }
        for (kind, problem) in problems {
            violations.push((
                kind,
                format!(
                    "{} {} (token: {}) -> {}: {problem}",
                    case.method, case.target, case.token, response.status
                ),
            ));
        }
    }
    let distinct: BTreeSet<_> = cases
        .iter()
        .map(|c| (c.method, &c.target, c.token))
        .collect();
    let forwarded = answered.get("upstream").copied().unwrap_or(0);
    eprintln!(
        "hostile paths: {} cases ({} distinct) in {elapsed:.1?} over {CONNECTIONS} connections\n  \
         statuses {statuses:?}\n  answered by {answered:?}\n  forwarded {forwarded} ({forwarded_methods:?})",
        cases.len(),
        distinct.len(),
    );
    assert!(
        violations.is_empty(),
        "{} violations with seed {seed:#x}:\n{}",
        violations.len(),
        summarize(&violations)
    );
    // The generator reaches both sides of the decision: enough forwarded
    // requests to test what upstreams receive, and refusals of many kinds.
    assert!(forwarded >= count / 20, "only {forwarded} forwarded");
    assert!(
        answered.len() >= 8,
        "too few kinds of answers: {answered:?}"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    gate.assert_vm_healthy();
}

/// Violations counted by kind, with the first few of each.
fn summarize(violations: &[Violation]) -> String {
    let mut kinds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (kind, message) in violations {
        kinds.entry(kind).or_default().push(message);
    }
    let mut out = String::new();
    for (kind, messages) in kinds {
        out.push_str(&format!("{kind}: {}\n", messages.len()));
        for message in messages.iter().take(6) {
            out.push_str(&format!("  {message}\n"));
        }
    }
    out
}

/// `CTXGATE_PATH_SEED` if set, else a fresh one.
fn seed() -> u64 {
    if let Ok(text) = std::env::var("CTXGATE_PATH_SEED")
        && !text.trim().is_empty()
    {
        let text = text.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        return parsed.unwrap_or_else(|e| panic!("CTXGATE_PATH_SEED={text:?}: {e}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let entropy =
        now.as_secs() ^ u64::from(now.subsec_nanos()) << 32 ^ u64::from(std::process::id());
    crate::hostile::Rng::new(entropy).next_u64()
}

/// Sends every case, spread over keep-alive connections; the responses in
/// case order.
fn send_all(gate: &Gate, cases: &[Case], token: &str) -> Vec<Result<Response, String>> {
    let next = AtomicUsize::new(0);
    let responses: Mutex<Vec<Option<Result<Response, String>>>> =
        Mutex::new(vec![None; cases.len()]);
    std::thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(|| {
                let mut client = Client::connect(gate.addr());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let mut request = Request::new(case.method, &case.target);
                    if case.token {
                        request = request.header("authorization", &bearer(token));
                    }
                    if case.method != "GET" && case.method != "DELETE" {
                        request = request.body("{}");
                    }
                    // Envoy closes the connection after a request its
                    // codec refuses; one retry on a fresh one.
                    let response = client
                        .try_send(&request)
                        .or_else(|_| {
                            client = Client::connect(gate.addr());
                            client.try_send(&request)
                        })
                        .map_err(|e| e.to_string());
                    responses.lock().unwrap()[i] = Some(response);
                }
            });
        }
    });
    responses
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not sent".to_owned())))
        .collect()
}

/// What is wrong with a response, by kind (for the summary) and in detail.
type Violation = (&'static str, String);

/// Everything wrong with one response (empty: the invariant holds).
fn check(case: &Case, response: &Response) -> Vec<Violation> {
    match response.status {
        400..=499 if response.header("x-upstream").is_some() => {
            return vec![("forwarded", "a 4xx from the upstream".to_owned())];
        }
        400..=499 => return Vec::new(),
        200 if response.header("x-upstream").is_some() => {}
        status => {
            return vec![(
                "status",
                format!("status {status}: neither refused nor forwarded"),
            )];
        }
    }
    let seen = forwarded(response);
    let target = seen.path().to_owned();
    let mut problems = Vec::new();
    if seen.0["method"] != case.method {
        problems.push((
            "method",
            format!("the upstream saw method {}", seen.0["method"]),
        ));
    }
    problems.extend(canonical_violations(&target));

    // (b) Every upstream reading names something the caller may do.
    for reader in &READERS {
        let reading = reader.read(case.method, &target);
        for method in &reading.methods {
            if !permitted(method, &reading.segments, &reading.contexts, case.token) {
                problems.push((
                    "unauthorised reading",
                    format!(
                        "a {} upstream reads {method} {:?} with contexts {:?}",
                        reader.name, reading.segments, reading.contexts
                    ),
                ));
            }
        }
    }
    problems.extend(context_header_violations(case, &target, &seen));
    problems
}

/// (a) The target is canonical: the gateway's own canonicalization gives
/// it back unchanged, and nothing in it reads two ways.
fn canonical_violations(target: &str) -> Vec<Violation> {
    let mut problems = Vec::new();
    let mut fail = |message: String| problems.push(("not canonical", message));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match canonical_segments(path) {
        Ok(segments) if canonical_path(&segments) == path => {}
        Ok(segments) => fail(format!(
            "path {path:?} is not canonical (canonical: {:?})",
            canonical_path(&segments)
        )),
        Err(e) => fail(format!("path {path:?} does not canonicalize: {e}")),
    }
    let lower = path.to_ascii_lowercase();
    for needle in [";", "%3b", "%2f", "%25", "\\", "%5c", "#"] {
        if lower.contains(needle) {
            fail(format!("path {path:?} contains {needle:?}"));
        }
    }
    if path != "/"
        && path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        fail(format!("path {path:?} has an empty or dot segment"));
    }
    match Query::parse(query) {
        Ok(parsed) if parsed.serialize() == query => {}
        Ok(parsed) => fail(format!(
            "query {query:?} is not canonical (canonical: {:?})",
            parsed.serialize()
        )),
        Err(e) => fail(format!("query {query:?} does not parse: {e}")),
    }
    problems
}

/// (c) `x-context-path` names the context the target names, exactly (HTTP
/// drops whitespace at both ends of a header value, which is why the
/// gateway refuses segments that start or end with whitespace), and an
/// upstream trusting the header acts on something the caller may do.
fn context_header_violations(case: &Case, target: &str, seen: &Forwarded) -> Vec<Violation> {
    let plain = READERS[0].read(case.method, target);
    let path: Vec<&str> = plain.segments.iter().map(String::as_str).collect();
    let named = match path.as_slice() {
        ["v1", "contexts", context @ ..] => Some(context.join("/")),
        ["v1", "query"] | ["v1", "graph", "traverse"] => {
            plain.contexts.first().map(|context| context.join("/"))
        }
        _ => None,
    };
    let expected = named.as_deref();
    let actual = seen.header("x-context-path");
    if actual.as_deref() != expected {
        return vec![(
            "x-context-path",
            format!("x-context-path {actual:?}, but the target names {named:?}"),
        )];
    }
    let Some(header) = actual else {
        return Vec::new();
    };
    let context: Vec<String> = header
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let trusted = match path.as_slice() {
        ["v1", "contexts", ..] => permitted(
            case.method,
            &[vec!["v1".to_owned(), "contexts".to_owned()], context].concat(),
            &[],
            case.token,
        ),
        _ => permitted(case.method, &plain.segments, &[context], case.token),
    };
    if trusted {
        Vec::new()
    } else {
        vec![(
            "x-context-path",
            format!(
                "an upstream trusting x-context-path {header:?} acts on what was not authorised"
            ),
        )]
    }
}
