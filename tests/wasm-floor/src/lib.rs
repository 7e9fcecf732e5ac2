//! The benchmark's floor: a proxy-wasm HTTP filter (same SDK, same build
//! profile as the ctxgate filters) that by default lets every request
//! through without a single host call. Its row in `make bench` is what
//! Envoy spends on any Rust wasm filter under V8 (creating the context,
//! calling into the VM for every stream callback) before the filter does
//! any work.
//!
//! Its plugin configuration names host calls to make on every request, so
//! the benchmark can also show what each kind of call costs:
//! `read_headers` (all request headers), `set_headers` (seven headers),
//! `filter_state` (one value), `clock` (current time), `metrics` (two
//! counter increments).

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Floor::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Calls {
    read_headers: bool,
    set_headers: bool,
    filter_state: bool,
    clock: bool,
    metrics: Option<(u32, u32)>,
}

#[derive(Default)]
struct Floor {
    calls: Rc<Calls>,
}

impl Context for Floor {}

impl RootContext for Floor {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        // A JSON string ("read_headers,clock") or the bare list.
        let config = config.trim().trim_matches('"');
        let has = |name: &str| config.split(',').any(|c| c.trim() == name);
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let metrics = if has("metrics") {
            counter("floor.a").zip(counter("floor.b"))
        } else {
            None
        };
        self.calls = Rc::new(Calls {
            read_headers: has("read_headers"),
            set_headers: has("set_headers"),
            filter_state: has("filter_state"),
            clock: has("clock"),
            metrics,
        });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorRequest { calls: *self.calls }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorRequest {
    calls: Calls,
}

impl Context for FloorRequest {}

impl HttpContext for FloorRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let calls = self.calls;
        if calls.read_headers {
            std::hint::black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        }
        if calls.set_headers {
            for name in ["x-f1", "x-f2", "x-f3", "x-f4", "x-f5", "x-f6", "x-f7"] {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some("value"));
            }
        }
        if calls.filter_state {
            let _ = hostcalls::set_property(vec!["floor.state"], Some(b"{\"tenant\":\"acme\"}"));
        }
        if calls.clock {
            std::hint::black_box(hostcalls::get_current_time().ok());
        }
        if let Some((a, b)) = calls.metrics {
            let _ = hostcalls::increment_metric(a, 1);
            let _ = hostcalls::increment_metric(b, 1);
        }
        Action::Continue
    }
}
