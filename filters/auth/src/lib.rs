//! ctxgate auth: the proxy-wasm glue around `ctxgate_core::auth`.
//!
//! The root context (one per worker VM) compiles the configuration, keeps
//! the keys and the token cache, and on each tick syncs remote JWK Sets
//! through shared data. Each request's context hands the request head to
//! [`Auth::check`] and applies the decision: strip headers, set identity
//! headers and filter state, or send the refusal.

mod metrics;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use ctxgate_core::auth::jwks_sync::{FetchOutcome, JwksSync};
use ctxgate_core::auth::{Auth, AuthState, Decision, Outcome, REQUEST_FILTER_STATE, RequestEnv};
use ctxgate_glue::{self as glue, SharedData};
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot::default()) });
}}

/// How often each worker checks for new shared keys and due fetches.
const TICK: Duration = Duration::from_millis(250);

struct Shared {
    auth: Auth,
    state: RefCell<AuthState>,
    sync: RefCell<JwksSync>,
    metrics: Metrics,
}

#[derive(Default)]
struct AuthRoot {
    shared: Option<Rc<Shared>>,
    /// In-flight JWKS fetches: call token -> sync slot.
    fetches: HashMap<u32, usize>,
}

impl Context for AuthRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (Some(shared), Some(slot)) = (&self.shared, self.fetches.remove(&token_id)) else {
            return;
        };
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok());
        let response = match status {
            Some(status) => Ok((
                status,
                self.get_http_call_response_body(0, body_size)
                    .unwrap_or_default(),
            )),
            // No status: the call failed (reset, timeout, no healthy host).
            None => Err("no response (connection failure or timeout)".to_owned()),
        };
        let outcome =
            shared
                .sync
                .borrow_mut()
                .fetch_completed(slot, &SharedData, glue::now_ms(), response);
        if let Some(outcome) = outcome {
            shared.apply_fetch(outcome);
        }
    }
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let namespace = glue::shared_namespace();
        let secret = match glue::secret(&namespace) {
            Ok(secret) => secret,
            Err(e) => {
                log::error!("cannot start: {e}");
                return false;
            }
        };
        let auth = match Auth::from_json(&config, &namespace, secret) {
            Ok(auth) => auth,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        auth.init_shared(&SharedData);
        let sync = JwksSync::new(&auth);
        sync.init_shared(&SharedData);
        if !sync.is_empty() {
            glue::set_tick_period(TICK);
        }
        let metrics = Metrics::new(&auth);
        let state = RefCell::new(auth.new_state());
        log::info!(
            "configured {} provider(s): {}",
            auth.providers.len(),
            auth.providers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.shared = Some(Rc::new(Shared {
            auth,
            state,
            sync: RefCell::new(sync),
            metrics,
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let tick = shared.sync.borrow_mut().tick(&SharedData, glue::now_ms());
        for (provider, keys) in tick.install {
            shared.install(provider, keys, "shared data");
        }
        for fetch in tick.fetch {
            let headers = vec![
                (":method", "GET"),
                (":path", fetch.path.as_str()),
                (":authority", fetch.authority.as_str()),
            ];
            let timeout = Duration::from_millis(fetch.timeout_ms);
            match self.dispatch_http_call(&fetch.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.fetches.insert(token, fetch.slot);
                }
                Err(status) => {
                    let reason = format!("cannot call cluster {}: {status:?}", fetch.cluster);
                    let outcome = shared.sync.borrow_mut().fetch_completed(
                        fetch.slot,
                        &SharedData,
                        glue::now_ms(),
                        Err(reason),
                    );
                    if let Some(outcome) = outcome {
                        shared.apply_fetch(outcome);
                    }
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(AuthRequest { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Shared {
    fn install(&self, provider: usize, keys: ctxgate_core::jwt::KeySet, source: &str) {
        let name = self
            .auth
            .providers
            .get(provider)
            .map_or("?", |p| p.name.as_str());
        log::info!(
            "provider {name}: installed {} key(s) from {source}",
            keys.len()
        );
        self.state.borrow_mut().install(provider, keys);
        self.metrics.jwks(provider, |m| m.installed);
    }

    /// Exports the count of shared-data records that did not decode.
    fn count_invalid_records(&self) {
        let total = self.state.borrow().invalid_records + self.sync.borrow().invalid_records;
        self.metrics.invalid_records(total);
    }

    fn apply_fetch(&self, outcome: FetchOutcome) {
        match outcome {
            FetchOutcome::Installed {
                provider,
                keys,
                skipped,
            } => {
                self.metrics.jwks(provider, |m| m.fetch_success);
                for problem in skipped {
                    log::warn!("JWKS key skipped: {problem}");
                }
                self.install(provider, keys, "a fetch");
            }
            FetchOutcome::Failed {
                provider,
                reason,
                retry_in_ms,
            } => {
                self.metrics.jwks(provider, |m| m.fetch_failure);
                let name = self
                    .auth
                    .providers
                    .get(provider)
                    .map_or("?", |p| p.name.as_str());
                log::warn!(
                    "provider {name}: JWKS fetch failed ({reason}); keeping the last good keys, retry in {retry_in_ms} ms"
                );
            }
        }
    }
}

struct AuthRequest {
    shared: Rc<Shared>,
}

impl Context for AuthRequest {}

impl HttpContext for AuthRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let snapshot = glue::RequestSnapshot::capture();
        let request = snapshot.head();
        let shared = &self.shared;
        let client_address = || glue::property_string(&["source", "address"]);
        let env = RequestEnv {
            end_of_stream,
            client_address: &client_address,
        };
        let check = || -> Decision {
            let mut state = shared.state.borrow_mut();
            shared
                .auth
                .check(&mut state, &SharedData, &request, &env, glue::now_secs())
        };
        let mut decision = check();
        if let Some(stale) = decision.stale_keys {
            // Another worker may have fetched newer keys since our last
            // tick: install them and decide again rather than refuse.
            let newer = shared
                .sync
                .borrow_mut()
                .newer_shared_keys(stale.provider, &SharedData);
            if let Some(keys) = newer {
                shared.install(stale.provider, keys, "shared data");
                decision = check();
            }
        }
        shared.metrics.record(&decision);
        shared.count_invalid_records();
        if let Some(stale) = decision.stale_keys.filter(|s| s.unknown_kid)
            && shared.sync.borrow().request_early_refresh(
                stale.provider,
                &SharedData,
                glue::now_ms(),
            )
        {
            shared.metrics.jwks(stale.provider, |m| m.early_refresh);
        }
        // Client-sent identity headers go whatever the outcome, before a
        // refusal is sent: the access log of a refused request must not
        // show a forged tenant either.
        for name in &decision.strip {
            glue::remove_request_header(name);
        }
        match decision.outcome {
            Outcome::Allow(allowed) => {
                for name in &allowed.remove_headers {
                    glue::remove_request_header(name);
                }
                for (name, value) in &allowed.set_headers {
                    glue::set_request_header(name, value);
                }
                if !allowed.filter_state.is_empty() {
                    glue::set_filter_state(REQUEST_FILTER_STATE, &allowed.filter_state);
                }
                Action::Continue
            }
            Outcome::Deny(denial) => {
                glue::send_local_reply(&denial.reply(&shared.auth.realm, &request));
                Action::Pause
            }
        }
    }
}
