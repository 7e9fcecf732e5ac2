//! `config`: the four plugin configurations from arbitrary JSON.

use ctxgate_core::auth::{Auth, Outcome, RequestEnv};
use ctxgate_core::breaker::{Breakers, Selection};
use ctxgate_core::http::RequestHead;
use ctxgate_core::ratelimit::RateLimiter;
use ctxgate_core::shared::MemoryStore;
use ctxgate_core::tagging::Tagger;

use crate::fixtures::{NOW, SECRET};

/// Input: a configuration document, given to every plugin. Errors are
/// fine; a panic or a hang is not. A configuration that compiles must also
/// survive a first request (without shared data set up: `init_shared` is
/// not called, since it is sized by the configuration).
pub fn config(data: &[u8]) {
    let head = RequestHead {
        method: "GET",
        path: "/",
        headers: &ctxgate_core::headers::NO_HEADERS,
    };
    if let Ok(auth) = Auth::from_json(data, "fuzz", SECRET) {
        let mut state = auth.new_state();
        let no_address = || None;
        let env = RequestEnv {
            end_of_stream: true,
            client_address: &no_address,
            authorised_later: false,
            peer: &|_| None,
        };
        let decision = auth.check(&mut state, &MemoryStore::default(), &head, &env, NOW);
        // A tokenless request to `/` passes only as a public path or with
        // an operation map that lets it through unauthenticated, which
        // none can.
        if let Outcome::Allow(allowed) = &decision.outcome {
            assert!(
                allowed.identity.is_none(),
                "a tokenless request was given a tenant: {allowed:?}"
            );
        }
    }
    let _ = RateLimiter::from_json(data, "fuzz", SECRET);
    let _ = Tagger::from_json(data);
    if let Ok(breakers) = Breakers::from_json(data, "fuzz") {
        let _ = breakers.select(&Selection {
            route: Some("route"),
            cluster: Some("cluster"),
            head,
        });
        let _ = breakers.owned_headers();
    }
}
