//! ctxgate tagging: the proxy-wasm glue around `ctxgate_core::tagging`.
//!
//! Reads the identity and operation the auth filter left in filter state,
//! computes the tags, removes every owned header the client sent and sets
//! the tags. Envoy re-selects the route after a filter changes request
//! headers, so the route table (or an Istio VirtualService) sees the tags.

use std::rc::Rc;

use ctxgate_core::tagging::{TagInput, Tagger};
use ctxgate_glue::{self as glue, Counter};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TaggingRoot::default()) });
}}

/// Metric: `ctxgate_tagging.tagged` (requests tagged).
struct Shared {
    tagger: Tagger,
    tagged: Counter,
}

#[derive(Default)]
struct TaggingRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for TaggingRoot {}

impl RootContext for TaggingRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Tagger::from_json(&config) {
            Ok(tagger) => {
                self.shared = Some(Rc::new(Shared {
                    tagger,
                    tagged: Counter::new("ctxgate_tagging.tagged"),
                }));
                log::info!("configured");
                true
            }
            Err(e) => {
                log::error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TaggingRequest {
            shared: self.shared.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TaggingRequest {
    shared: Rc<Shared>,
}

impl Context for TaggingRequest {}

impl HttpContext for TaggingRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let snapshot = glue::RequestSnapshot::capture();
        let ctxgate_core::auth::SharedRequest {
            identity,
            operation,
        } = glue::shared_request();
        let input = TagInput {
            head: snapshot.head(),
            identity,
            operation,
            end_of_stream,
        };
        let tags = self.shared.tagger.tag(&input);
        for name in &tags.remove_headers {
            glue::remove_request_header(name);
        }
        for (name, value) in &tags.set_headers {
            glue::set_request_header(name, value);
        }
        self.shared.tagged.inc();
        Action::Continue
    }
}
