//! `auth_request`: the auth decision on a request built from the input.

use std::cell::OnceCell;
use std::collections::HashSet;

use ctxgate_core::auth::{Auth, Decision, Outcome, RequestEnv};
use ctxgate_core::http::RequestHead;
use ctxgate_core::jwt::{Algorithm, KeySet, inspect};
use ctxgate_core::path::{
    canonical_path, canonical_segments, percent_decode_bytes, split_path_query,
};
use ctxgate_core::query::Query;
use ctxgate_core::shared::MemoryStore;

use crate::fixtures;

struct Fixture {
    auth: Auth,
    /// The provider's keys, for the oracle that tells whether a request
    /// carried a valid token at all.
    keys: KeySet,
}

thread_local! {
    static FIXTURE: OnceCell<Fixture> = const { OnceCell::new() };
}

fn client_address() -> Option<String> {
    Some("10.0.0.1:40000".into())
}

/// Input: `METHOD\n:path\nname: value\n...` (method and path lossy UTF-8;
/// header names lowercased, values raw bytes). The request is decided by a
/// fresh worker, again by the same worker (its token cache), and by a second
/// worker sharing the first one's shared data (the shared token cache): all
/// three must agree.
pub fn auth_request(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let method = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers: ctxgate_core::headers::Headers = lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = line.split_at(colon);
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            let value = value.get(1..).unwrap_or_default().trim_ascii().to_vec();
            Some((name, value))
        })
        .collect();
    let request = RequestHead {
        method: &method,
        path: &path,
        headers: &headers,
    };
    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(|| {
            let (auth, _) = fixtures::auth();
            let keys = KeySet::parse(&fixtures::jwks().to_string())
                .expect("the fixture keys parse")
                .keys;
            Fixture { auth, keys }
        });
        let auth = &fixture.auth;
        let store = MemoryStore::default();
        auth.init_shared(&store);
        let env = RequestEnv {
            end_of_stream: true,
            client_address: &client_address,
            authorised_later: false,
            peer: &|_| None,
        };
        let mut worker = auth.new_state();
        let first = auth.check(&mut worker, &store, &request, &env, fixtures::NOW);
        check(fixture, &request, &first);
        let again = auth.check(&mut worker, &store, &request, &env, fixtures::NOW);
        assert_eq!(
            again.outcome, first.outcome,
            "{method} {path:?}: the same worker decided otherwise the second time ({:?})",
            again.cache
        );
        let mut other = auth.new_state();
        let elsewhere = auth.check(&mut other, &store, &request, &env, fixtures::NOW);
        assert_eq!(
            elsewhere.outcome, first.outcome,
            "{method} {path:?}: another worker decided otherwise ({:?})",
            elsewhere.cache
        );
    });
}

fn check(fixture: &Fixture, request: &RequestHead<'_>, decision: &Decision) {
    let what = format!("{} {:?}", request.method, request.path);
    // Identity headers sent by the client are stripped whatever the outcome.
    for name in fixture.auth.headers.all() {
        if request.has_header(name) {
            assert!(
                decision.strip.iter().any(|s| s == name),
                "{what}: client-sent {name} is not stripped"
            );
        }
    }
    let Outcome::Allow(allowed) = &decision.outcome else {
        return;
    };
    // The upstream receives a canonical target.
    let forwarded = allowed
        .set_headers
        .iter()
        .find(|(name, _)| name == ":path")
        .map(|(_, value)| value.as_str());
    let target = forwarded.unwrap_or(request.path);
    let (path, query) = split_path_query(target);
    match canonical_segments(path) {
        Ok(segments) => assert_eq!(
            canonical_path(&segments),
            path,
            "{what}: allowed with non-canonical upstream path {target:?}"
        ),
        Err(e) => panic!("{what}: allowed with upstream path {target:?}, which is refused: {e:?}"),
    }
    if target.contains('?') {
        match Query::parse(query) {
            Ok(q) => assert!(
                !q.is_empty() && q.serialize() == query,
                "{what}: allowed with non-canonical upstream query {target:?}"
            ),
            Err(e) => panic!("{what}: allowed with upstream query {target:?}: {e:?}"),
        }
    }
    // No allow without a token, except public paths and preflights.
    let segments = canonical_segments(split_path_query(request.path).0).unwrap_or_default();
    let public = (request.method == "GET" && segments == ["health", "context"])
        || segments.first().is_some_and(|s| s == ".well-known");
    let preflight = request.method == "OPTIONS"
        && request.has_header("origin")
        && request.has_header("access-control-request-method");
    if public || preflight {
        return;
    }
    assert!(
        allowed.identity.is_some(),
        "{what}: allowed without an identity: {allowed:?}"
    );
    assert!(
        carries_valid_token(fixture, request),
        "{what}: allowed, but no token in the request verifies: {allowed:?}"
    );
}

/// Does any token-shaped string in the request (raw or percent-decoded)
/// verify with the provider's keys and options?
fn carries_valid_token(fixture: &Fixture, request: &RequestHead<'_>) -> bool {
    let mut texts: Vec<String> = vec![request.path.to_owned()];
    if let Ok(decoded) = percent_decode_bytes(request.path.as_bytes(), true) {
        texts.push(String::from_utf8_lossy(&decoded).into_owned());
    }
    for (_, value) in request.headers.iter() {
        texts.push(String::from_utf8_lossy(value).into_owned());
    }
    let all: HashSet<Algorithm> = Algorithm::ALL.into_iter().collect();
    let options = fixtures::verification_options();
    texts.iter().any(|text| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .filter(|candidate| candidate.matches('.').count() == 2)
            .any(|candidate| {
                inspect(candidate, &all).is_ok_and(|(header, _)| {
                    fixture.keys.verify(candidate, &header, &options).is_ok()
                })
            })
    })
}
