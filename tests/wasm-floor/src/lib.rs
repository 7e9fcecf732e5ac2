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
//! `set_map` (the request headers read and seven more, written back in one
//! call), `filter_state` (one value), `clock` (current time), `metrics`
//! (two counter increments), `shared_read` (one shared-data read),
//! `shared_rw` (a shared-data read and a compare-and-swap write); on the
//! response: `response_clock`, `response_status` (read `:status`),
//! `response_shared_rw`, `response_set3` (three response headers); and
//! `sha256` (no host call: a SHA-256 of 720 bytes, pure computation). Together
//! they can make exactly the host calls the ctxgate pipeline makes, without
//! its logic.
//!
//! A second mode, for the e2e tests of shared data, writes bytes into
//! shared data: run with the `vm_id` of a ctxgate plugin, it is a
//! neighbour plugin that corrupts or forges ctxgate's records. Its
//! configuration is one line of space-separated words (a JSON string, so
//! nothing in it needs escaping):
//!
//! ```text
//! write_shared_data on=<configure|tick|request> [trigger=<header>] [tick_ms=<n>] <key>=<hex> ...
//! ```
//!
//! Each `<key>=<hex>` sets shared-data key `<key>` to the hex-encoded
//! bytes, unconditionally: once when the plugin is configured, on every
//! tick (every `tick_ms`, default 100), or for every request that carries
//! header `trigger` (default `x-floor-write`), before the filters after
//! this one see the request.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Floor::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Calls {
    read_headers: bool,
    set_headers: bool,
    set_map: bool,
    filter_state: bool,
    clock: bool,
    metrics: Option<(u32, u32)>,
    shared_read: bool,
    shared_rw: bool,
    response_clock: bool,
    response_status: bool,
    response_shared_rw: bool,
    response_set3: bool,
    sha256: bool,
}

/// The shared-data key the `shared_*` calls use.
const FLOOR_KEY: &str = "floor.shared";

/// A read of [`FLOOR_KEY`] and a write of it with the CAS just read.
fn shared_rw() {
    if let Ok((value, cas)) = hostcalls::get_shared_data(FLOOR_KEY) {
        let value = value.unwrap_or_else(|| vec![0; 64]);
        let _ = hostcalls::set_shared_data(FLOOR_KEY, Some(&value), cas);
    }
}

/// When the `write_shared_data` mode writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Configure,
    Tick,
    Request,
}

/// The `write_shared_data` mode's configuration.
struct Writes {
    when: When,
    trigger: String,
    tick: Duration,
    values: Vec<(String, Vec<u8>)>,
}

impl Writes {
    /// Parses `on=... [trigger=...] [tick_ms=...] key=hex ...`.
    fn parse(words: &str) -> Result<Writes, String> {
        let mut writes = Writes {
            when: When::Configure,
            trigger: "x-floor-write".to_owned(),
            tick: Duration::from_millis(100),
            values: Vec::new(),
        };
        for word in words.split_ascii_whitespace() {
            let (name, value) = word
                .split_once('=')
                .ok_or_else(|| format!("'{word}' is not name=value"))?;
            match name {
                "on" => {
                    writes.when = match value {
                        "configure" => When::Configure,
                        "tick" => When::Tick,
                        "request" => When::Request,
                        other => return Err(format!("unknown on={other}")),
                    }
                }
                "trigger" => writes.trigger = value.to_ascii_lowercase(),
                "tick_ms" => {
                    let ms = value.parse().map_err(|_| format!("bad tick_ms={value}"))?;
                    writes.tick = Duration::from_millis(ms);
                }
                key => writes.values.push((key.to_owned(), decode_hex(value)?)),
            }
        }
        Ok(writes)
    }

    fn apply(&self) {
        for (key, value) in &self.values {
            if let Err(status) = hostcalls::set_shared_data(key, Some(value), None) {
                let message = format!("floor: cannot write shared data {key}: {status:?}");
                let _ = hostcalls::log(LogLevel::Warn, &message);
            }
        }
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("'{text}' is not hex")),
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Ok(digit(*high)? << 4 | digit(*low)?),
            _ => Err(format!("'{text}' has an odd number of digits")),
        })
        .collect()
}

#[derive(Default)]
struct Floor {
    calls: Rc<Calls>,
    writes: Option<Rc<Writes>>,
}

impl Context for Floor {}

impl RootContext for Floor {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        // A JSON string ("read_headers,clock") or the bare list.
        let config = config.trim().trim_matches('"');
        if let Some(words) = config.strip_prefix("write_shared_data") {
            let writes = match Writes::parse(words) {
                Ok(writes) => writes,
                Err(e) => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("floor: {e}"));
                    return false;
                }
            };
            match writes.when {
                When::Configure => writes.apply(),
                When::Tick => {
                    let _ = hostcalls::set_tick_period(writes.tick);
                }
                When::Request => {}
            }
            self.writes = Some(Rc::new(writes));
            return true;
        }
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
            set_map: has("set_map"),
            filter_state: has("filter_state"),
            clock: has("clock"),
            metrics,
            shared_read: has("shared_read"),
            shared_rw: has("shared_rw"),
            response_clock: has("response_clock"),
            response_status: has("response_status"),
            response_shared_rw: has("response_shared_rw"),
            response_set3: has("response_set3"),
            sha256: has("sha256"),
        });
        true
    }

    fn on_tick(&mut self) {
        if let Some(writes) = &self.writes {
            writes.apply();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorRequest {
            calls: *self.calls,
            writes: self
                .writes
                .clone()
                .filter(|writes| writes.when == When::Request),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorRequest {
    calls: Calls,
    /// The `write_shared_data` mode with `on=request`.
    writes: Option<Rc<Writes>>,
}

impl Context for FloorRequest {}

impl HttpContext for FloorRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(writes) = &self.writes {
            let triggered = hostcalls::get_map_value(MapType::HttpRequestHeaders, &writes.trigger)
                .ok()
                .flatten()
                .is_some();
            if triggered {
                writes.apply();
            }
            return Action::Continue;
        }
        let calls = self.calls;
        let mut headers = Vec::new();
        if calls.read_headers {
            headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        }
        if calls.shared_rw {
            shared_rw();
        }
        if calls.sha256 {
            // About the size of a bearer token.
            let token = [b'a'; 720];
            std::hint::black_box(hmac_sha256::Hash::hash(std::hint::black_box(&token)));
        }
        if calls.shared_read {
            std::hint::black_box(hostcalls::get_shared_data(FLOOR_KEY).ok());
        }
        if calls.set_map {
            let mut map: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            for name in ["x-f1", "x-f2", "x-f3", "x-f4", "x-f5", "x-f6", "x-f7"] {
                map.push((name, b"value"));
            }
            let _ = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map);
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let calls = self.calls;
        if calls.response_clock {
            std::hint::black_box(hostcalls::get_current_time().ok());
        }
        if calls.response_status {
            std::hint::black_box(
                hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status").ok(),
            );
        }
        if calls.response_shared_rw {
            shared_rw();
        }
        if calls.response_set3 {
            for name in ["x-r1", "x-r2", "x-r3"] {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some("1"));
            }
        }
        Action::Continue
    }
}
