//! Builder for the Envoy bootstrap a test runs against.
//!
//! The shape is fixed where tests should not have to think (admin and one
//! HTTP listener on 127.0.0.1 port 0, static clusters, the router last) and
//! open where they differ (filters, routes, clusters). Every typed piece has a
//! raw JSON escape hatch, because baselines use native Envoy filters
//! (`jwt_authn`, `local_ratelimit`, ...) whose configs are not worth modelling.
//!
//! The bootstrap is rendered as JSON: Envoy parses `.yaml` files with a YAML
//! parser, and JSON is YAML, so there is no YAML serializer to depend on.
//!
//! The listener's HTTP connection manager normalizes paths the way ctxgate's
//! deployment guide requires (`normalize_path`, `merge_slashes`, and escaped
//! slashes kept as-is so `%2F` reaches the filter undecoded): the filters'
//! path handling is tested against what Envoy really hands them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::tls::TestPki;

/// Name of the single HTTP listener; the harness looks it up by this name in
/// the admin `/listeners` output to learn the port the kernel picked.
pub const LISTENER_NAME: &str = "ctxgate_ingress";

/// A complete Envoy bootstrap, built up by a test.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    http_filters: Vec<Value>,
    routes: Vec<Value>,
    clusters: Vec<Value>,
    extra_listeners: Vec<Value>,
    access_log: Option<String>,
    hcm_fields: Map<String, Value>,
    listener_fields: Map<String, Value>,
    transport_socket: Option<Value>,
    bootstrap_fields: Map<String, Value>,
    bootstrap_extensions: Vec<Value>,
    pub(crate) config_yaml: Option<Value>,
    pub(crate) dynamic_listener: bool,
    pub(crate) concurrency: u32,
    pub(crate) log_level: String,
    pub(crate) component_log_level: Option<String>,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvoyConfig {
    /// No filters (only the router), no routes, no clusters; 2 worker
    /// threads, log level `info`.
    pub fn new() -> Self {
        EnvoyConfig {
            http_filters: Vec::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            extra_listeners: Vec::new(),
            access_log: None,
            hcm_fields: Map::new(),
            listener_fields: Map::new(),
            transport_socket: None,
            bootstrap_fields: Map::new(),
            bootstrap_extensions: Vec::new(),
            config_yaml: None,
            dynamic_listener: false,
            concurrency: 2,
            log_level: "info".to_owned(),
            component_log_level: None,
        }
    }

    /// Appends an HTTP filter; filters run in the order they are added, and
    /// the router is always appended after them.
    pub fn filter(mut self, filter: impl Into<HttpFilter>) -> Self {
        self.http_filters.push(filter.into().render());
        self
    }

    /// Appends a route; Envoy takes the first route that matches, so add the
    /// catch-all last. Without any route every request gets a 404.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route.render());
        self
    }

    /// Adds a static upstream cluster.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.clusters.push(cluster.render());
        self
    }

    /// Adds a cluster given as raw Envoy JSON (`envoy.config.cluster.v3.Cluster`).
    pub fn raw_cluster(mut self, cluster: Value) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// Adds a listener given as raw Envoy JSON
    /// (`envoy.config.listener.v3.Listener`) next to the HTTP listener,
    /// always static (also with [`EnvoyConfig::dynamic_listener`]): a
    /// stand-in upstream served by the same Envoy, say. It needs a name
    /// other than [`LISTENER_NAME`] and a `stat_prefix` other than
    /// `ingress`, so that the harness's lookups and counters keep meaning
    /// the HTTP listener.
    pub fn extra_listener(mut self, listener: Value) -> Self {
        self.extra_listeners.push(listener);
        self
    }

    /// Number of worker threads (`--concurrency`). Each worker runs its own
    /// wasm VM, so tests of cross-worker state want at least 2.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Envoy's log level (`-l`): trace, debug, info, warning, error, critical, off.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// Per-component log levels (`--component-log-level`), e.g. `"wasm:debug"`
    /// to see the filters' `log::debug!` lines without Envoy's own debug noise.
    pub fn component_log_level(mut self, spec: &str) -> Self {
        self.component_log_level = Some(spec.to_owned());
        self
    }

    /// Writes an access log line per request to Envoy's stdout in `format`
    /// (Envoy's format strings, e.g. `%RESPONSE_CODE_DETAILS%`), readable
    /// with [`crate::Envoy::stdout`].
    pub fn access_log(mut self, format: &str) -> Self {
        self.access_log = Some(format.to_owned());
        self
    }

    /// Sets (or overrides) a field of the HTTP connection manager config,
    /// e.g. `("max_request_headers_kb", json!(8))`.
    pub fn hcm_field(mut self, key: &str, value: Value) -> Self {
        self.hcm_fields.insert(key.to_owned(), value);
        self
    }

    /// Sets (or overrides) a field of the listener, e.g.
    /// `("connection_balance_config", json!({"exact_balance": {}}))`, which
    /// hands each new connection to the worker with the fewest: kept-alive
    /// connections opened one after the other land on worker after worker,
    /// so a test can pin requests to workers.
    pub fn listener_field(mut self, key: &str, value: Value) -> Self {
        self.listener_fields.insert(key.to_owned(), value);
        self
    }

    /// Serves the listener over TLS (`envoy.transport_sockets.tls` on its
    /// filter chain): the [`TestPki`]'s server certificate and key, the
    /// test CA as `trusted_ca` for client certificates, and
    /// `require_client_certificate`. With `false` a client without a
    /// certificate is let in, one with a certificate is still verified.
    /// `pki` must outlive the Envoy: Envoy reads the PEM files from its dir.
    pub fn downstream_tls(mut self, pki: &TestPki, require_client_certificate: bool) -> Self {
        let filename = |path: &Path| json!({ "filename": path.display().to_string() });
        self.transport_socket = Some(json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": require_client_certificate,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": filename(&pki.server().cert_path),
                        "private_key": filename(&pki.server().key_path),
                    }],
                    "validation_context": {
                        "trusted_ca": filename(pki.ca_cert_path()),
                    },
                },
            },
        }));
        self
    }

    /// Sets (or overrides) a top-level bootstrap field, e.g. `stats_config`.
    pub fn bootstrap_field(mut self, key: &str, value: Value) -> Self {
        self.bootstrap_fields.insert(key.to_owned(), value);
        self
    }

    /// Adds a bootstrap extension (`bootstrap_extensions`), e.g. a
    /// [`WasmService`] such as the audit singleton (`null`: nothing, what
    /// the audit singleton renders to on the native engine).
    pub fn bootstrap_extension(mut self, extension: impl Into<Value>) -> Self {
        let extension = extension.into();
        if !extension.is_null() {
            self.bootstrap_extensions.push(extension);
        }
        self
    }

    /// A bootstrap fragment Envoy merges over the bootstrap it was given
    /// (`--config-yaml`): singular fields replace, repeated fields are
    /// appended. Istio's pilot-agent passes a pod's bootstrap override
    /// (`sidecar.istio.io/bootstrapOverride`) this way.
    pub fn config_yaml(mut self, fragment: Value) -> Self {
        self.config_yaml = Some(fragment);
        self
    }

    /// Serves the listener through file-based LDS (a file in the Envoy's
    /// temp dir) instead of `static_resources`, so that
    /// [`crate::Envoy::push_listener`] can replace it while Envoy runs, as
    /// a control plane pushing a new configuration would. Clusters and
    /// bootstrap fields stay static.
    pub fn dynamic_listener(mut self) -> Self {
        self.dynamic_listener = true;
        self
    }

    /// The listener (`envoy.config.listener.v3.Listener`) as JSON: the HTTP
    /// connection manager with the filters and routes, and the listener
    /// fields.
    pub fn listener_json(&self) -> Value {
        let mut http_filters = self.http_filters.clone();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }
        }));

        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": self.routes,
                }],
            },
            "http_filters": http_filters,
        });
        if let Some(format) = &self.access_log {
            hcm["access_log"] = json!([{
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": format}},
                }
            }]);
        }
        merge_fields(&mut hcm, &self.hcm_fields);

        let mut listener = json!({
            "name": LISTENER_NAME,
            "address": socket_address("127.0.0.1", 0),
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }],
            }],
        });
        if let Some(transport_socket) = &self.transport_socket {
            listener["filter_chains"][0]["transport_socket"] = transport_socket.clone();
        }
        merge_fields(&mut listener, &self.listener_fields);
        listener
    }

    /// The bootstrap as JSON, with the listener in `static_resources`. (For
    /// a [`EnvoyConfig::dynamic_listener`] config the harness renders
    /// [`EnvoyConfig::to_json_with_lds`] instead.)
    pub fn to_json(&self) -> Value {
        let mut bootstrap = json!({
            "admin": {
                "address": socket_address("127.0.0.1", 0),
            },
            "static_resources": {
                "listeners": std::iter::once(self.listener_json())
                    .chain(self.extra_listeners.iter().cloned())
                    .collect::<Vec<Value>>(),
                "clusters": self.clusters,
            },
        });
        if !self.bootstrap_extensions.is_empty() {
            bootstrap["bootstrap_extensions"] = Value::Array(self.bootstrap_extensions.clone());
        }
        merge_fields(&mut bootstrap, &self.bootstrap_fields);
        bootstrap
    }

    /// The bootstrap as JSON, with the listener served from the LDS file
    /// `lds_path` (see [`EnvoyConfig::lds_document`]).
    pub fn to_json_with_lds(&self, lds_path: &Path) -> Value {
        let mut bootstrap = json!({
            "admin": {
                "address": socket_address("127.0.0.1", 0),
            },
            // File-based xDS wants to know who is asking, like any other.
            "node": {"id": "ctxgate-e2e", "cluster": "ctxgate-e2e"},
            "dynamic_resources": {
                "lds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {"path": lds_path.display().to_string()},
                },
            },
            "static_resources": {
                "listeners": self.extra_listeners,
                "clusters": self.clusters,
            },
        });
        if !self.bootstrap_extensions.is_empty() {
            bootstrap["bootstrap_extensions"] = Value::Array(self.bootstrap_extensions.clone());
        }
        merge_fields(&mut bootstrap, &self.bootstrap_fields);
        bootstrap
    }

    /// The LDS file's content: a discovery response holding the listener
    /// at `version`.
    pub fn lds_document(&self, version: u64) -> Value {
        let mut listener = self.listener_json();
        if let Value::Object(fields) = &mut listener {
            fields.insert(
                "@type".to_owned(),
                json!("type.googleapis.com/envoy.config.listener.v3.Listener"),
            );
        }
        json!({
            "version_info": version.to_string(),
            "resources": [listener],
        })
    }

    /// The bootstrap as the text written to Envoy's config file (JSON, which
    /// Envoy's YAML parser accepts).
    pub fn to_yaml(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).expect("JSON values always serialize")
    }
}

fn merge_fields(target: &mut Value, fields: &Map<String, Value>) {
    if let Value::Object(map) = target {
        for (key, value) in fields {
            map.insert(key.clone(), value.clone());
        }
    }
}

fn socket_address(ip: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": ip, "port_value": port } })
}

/// Protobuf JSON duration, e.g. `"1.500000000s"`.
fn duration(d: Duration) -> String {
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// One entry of the HCM's `http_filters` list.
#[derive(Clone, Debug)]
pub enum HttpFilter {
    Wasm(WasmFilter),
    Raw(RawFilter),
}

impl HttpFilter {
    /// Whether this filter runs ctxgate on the native engine (which needs
    /// no audit singleton: the filter ships its own trail).
    pub fn is_native(&self) -> bool {
        match self {
            HttpFilter::Wasm(filter) => {
                filter.engine.unwrap_or_else(crate::FilterEngine::current)
                    == crate::FilterEngine::Native
            }
            HttpFilter::Raw(_) => false,
        }
    }

    fn render(self) -> Value {
        match self {
            HttpFilter::Wasm(filter) => filter.render(),
            HttpFilter::Raw(RawFilter(value)) => value,
        }
    }
}

impl From<WasmFilter> for HttpFilter {
    fn from(filter: WasmFilter) -> Self {
        HttpFilter::Wasm(filter)
    }
}

impl From<RawFilter> for HttpFilter {
    fn from(filter: RawFilter) -> Self {
        HttpFilter::Raw(filter)
    }
}

/// A native Envoy HTTP filter given as raw JSON (`{"name": ..., "typed_config": {...}}`),
/// for baselines such as `envoy.filters.http.jwt_authn`.
#[derive(Clone, Debug)]
pub struct RawFilter(pub Value);

/// How often the e2e gateways flush metrics to Envoy.
pub const FLUSH_INTERVAL_MS: u64 = 20;

/// A proxy-wasm filter run on the V8 runtime, fail-closed (`fail_open: false`,
/// as in production).
///
/// Envoy 1.40 deprecates `fail_open` (setting it to `true` logs a deprecation
/// warning) and it only governs VMs that fail at runtime: a plugin whose
/// `on_configure` returns false at startup makes Envoy exit either way.
/// Tests of other failure policies can pass a [`RawFilter`].
#[derive(Clone, Debug)]
pub struct WasmFilter {
    /// Filter and plugin name, as in Envoy's `Plugin <name> failed to load`
    /// and `wasm.<name>.*` stats.
    pub name: String,
    /// File stem of a module in `dist/` (`"ctxgate_auth"`), or a path to a
    /// `.wasm` file (anything containing `/`), e.g. a module a test built.
    pub module: String,
    /// The plugin's own log lines read `wasm log <root_id> <vm_id>: <message>`
    /// (empty ids are left out).
    pub root_id: String,
    /// VMs with the same `vm_id` (and code) share shared-data and queues.
    pub vm_id: String,
    /// Plugin configuration, handed to `on_configure` as a JSON string.
    pub config: Value,
    /// The engine that runs it; `None`: the test process's
    /// ([`crate::FilterEngine::current`]).
    pub engine: Option<crate::FilterEngine>,
}

impl WasmFilter {
    /// Module `module` with name, root id and vm id all set to it and an
    /// empty JSON object as configuration.
    pub fn new(module: &str) -> Self {
        let id = module
            .rsplit('/')
            .next()
            .unwrap_or(module)
            .trim_end_matches(".wasm")
            .to_owned();
        WasmFilter {
            name: id.clone(),
            module: module.to_owned(),
            root_id: id.clone(),
            vm_id: id,
            config: json!({}),
            engine: None,
        }
    }

    /// `dist/ctxgate.wasm` named `name` (filter, plugin, root id and vm
    /// id), with no stage yet: add them with [`WasmFilter::stage`].
    ///
    /// Metrics are flushed every 20 ms (`metrics.flush_interval_ms`)
    /// unless the test sets `metrics` itself, and [`crate::Envoy::wasm_metric`]
    /// waits for a flush.
    pub fn ctxgate(name: &str) -> Self {
        WasmFilter {
            config: json!({"metrics": {"flush_interval_ms": FLUSH_INTERVAL_MS}}),
            ..WasmFilter::new("ctxgate")
                .name(name)
                .root_id(name)
                .vm_id(name)
        }
    }

    /// `dist/ctxgate.wasm` running one stage, named `ctxgate_<stage>` (as
    /// the stage's metrics are).
    pub fn single(stage: &str, config: Value) -> Self {
        WasmFilter::ctxgate(&format!("ctxgate_{stage}")).stage(stage, config)
    }

    /// Adds (or replaces) a section of the plugin configuration: a stage
    /// (`auth`, `ratelimit`, `tagging`, `breaker`) or `metrics`.
    pub fn stage(mut self, section: &str, config: Value) -> Self {
        if let Some(sections) = self.config.as_object_mut() {
            sections.insert(section.to_owned(), config);
        }
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_owned();
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_owned();
        self
    }

    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Runs on `engine` whatever `CTXGATE_ENGINE` says (the bench compares
    /// both engines in one run).
    pub fn engine(mut self, engine: crate::FilterEngine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Resolved module path; panics with a hint if the module was not built.
    pub fn module_path(&self) -> PathBuf {
        if self.module.contains('/') {
            let path = PathBuf::from(&self.module);
            assert!(path.is_file(), "wasm module {} not found", path.display());
            path
        } else {
            crate::wasm_module(&self.module)
        }
    }

    /// The filter as Envoy loads it on the current engine
    /// ([`crate::FilterEngine`]): `dist/ctxgate.wasm` on V8, or
    /// `dist/libctxgate.so` as a dynamic module with the same name and
    /// configuration. A module a test built itself is always wasm.
    fn render(self) -> Value {
        let engine = self.engine.unwrap_or_else(crate::FilterEngine::current);
        if self.module == "ctxgate" && engine == crate::FilterEngine::Native {
            return self.render_native();
        }
        let filename = self.module_path().display().to_string();
        json!({
            "name": self.name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.name,
                    "root_id": self.root_id,
                    "fail_open": false,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.config.to_string(),
                    },
                    "vm_config": {
                        "vm_id": self.vm_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": filename } },
                    },
                },
            },
        })
    }
}

impl WasmFilter {
    /// `DynamicModuleFilter`: Envoy finds `libctxgate.so` on
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (the harness points it at
    /// [`crate::dist_dir`]); the filter name plays the plugin name's part.
    fn render_native(self) -> Value {
        let module = crate::dist_dir().join("libctxgate.so");
        assert!(
            module.is_file(),
            "{} not found: run `make build` first",
            module.display()
        );
        json!({
            "name": self.name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {
                    "name": "ctxgate",
                    "metrics_namespace": crate::engine::NATIVE_METRICS_NAMESPACE,
                },
                "filter_name": self.name,
                "filter_config": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": self.config.to_string(),
                },
            },
        })
    }
}

/// A wasm service (`envoy.bootstrap.wasm` bootstrap extension) on the
/// V8 runtime: with `singleton`, one root context on the main thread, for
/// work no worker should do (the audit singleton drains the audit queue).
#[derive(Clone, Debug)]
pub struct WasmService {
    pub name: String,
    /// A module in `dist/` or a path, as [`WasmFilter::module`].
    pub module: String,
    pub root_id: String,
    /// Shared data and queues are per `vm_id`.
    pub vm_id: String,
    pub singleton: bool,
    /// Plugin configuration, handed to `on_configure` as a JSON string.
    pub config: Value,
}

impl WasmService {
    /// `dist/ctxgate.wasm` as the audit singleton (root id
    /// `ctxgate_audit`) in `vm_id`, configured with `{"audit": audit}`.
    pub fn audit_singleton(vm_id: &str, audit: Value) -> Self {
        WasmService {
            name: "ctxgate_audit".to_owned(),
            module: "ctxgate".to_owned(),
            root_id: "ctxgate_audit".to_owned(),
            vm_id: vm_id.to_owned(),
            singleton: true,
            config: json!({ "audit": audit }),
        }
    }
}

impl From<WasmService> for Value {
    /// The service as a bootstrap extension. On the native engine the
    /// audit singleton is `null`: the filter configuration whose `audit`
    /// section names a collector ships the trail itself, on Envoy's main
    /// thread (see `filters/native/src/audit.rs`).
    fn from(service: WasmService) -> Value {
        if service.module == "ctxgate"
            && crate::FilterEngine::current() == crate::FilterEngine::Native
        {
            return Value::Null;
        }
        let filename = WasmFilter::new(&service.module)
            .module_path()
            .display()
            .to_string();
        json!({
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": service.singleton,
                "config": {
                    "name": service.name,
                    "root_id": service.root_id,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": service.config.to_string(),
                    },
                    "vm_config": {
                        "vm_id": service.vm_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": filename } },
                    },
                },
            },
        })
    }
}

/// How a route matches the request path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// RE2 syntax, matched against the whole path.
    Regex(String),
}

/// A header condition of a route.
#[derive(Clone, Debug)]
pub enum HeaderMatch {
    Exact { name: String, value: String },
    Present(String),
    Absent(String),
}

/// What a matched route does.
#[derive(Clone, Debug)]
pub enum RouteAction {
    /// Envoy answers itself; handy as a stand-in upstream.
    Direct {
        status: u16,
        body: String,
    },
    Cluster {
        name: String,
        timeout: Duration,
    },
}

/// One route of the listener's single virtual host (domains `*`).
#[derive(Clone, Debug)]
pub enum Route {
    Typed {
        path: PathMatch,
        headers: Vec<HeaderMatch>,
        action: RouteAction,
    },
    /// Raw `envoy.config.route.v3.Route` JSON.
    Raw(Value),
}

impl Route {
    /// Routes requests whose path starts with `prefix`.
    pub fn prefix(prefix: &str) -> RouteBuilder {
        RouteBuilder::new(PathMatch::Prefix(prefix.to_owned()))
    }

    /// Routes requests whose path (without query) is exactly `path`.
    pub fn path(path: &str) -> RouteBuilder {
        RouteBuilder::new(PathMatch::Exact(path.to_owned()))
    }

    /// Routes requests whose path matches the RE2 `regex`.
    pub fn regex(regex: &str) -> RouteBuilder {
        RouteBuilder::new(PathMatch::Regex(regex.to_owned()))
    }

    /// A route given as raw Envoy JSON.
    pub fn raw(route: Value) -> Route {
        Route::Raw(route)
    }

    fn render(self) -> Value {
        let (path, headers, action) = match self {
            Route::Raw(value) => return value,
            Route::Typed {
                path,
                headers,
                action,
            } => (path, headers, action),
        };
        let mut matcher = match path {
            PathMatch::Prefix(p) => json!({ "prefix": p }),
            PathMatch::Exact(p) => json!({ "path": p }),
            PathMatch::Regex(r) => json!({ "safe_regex": { "regex": r } }),
        };
        if !headers.is_empty() {
            let headers: Vec<Value> = headers
                .into_iter()
                .map(|h| match h {
                    HeaderMatch::Exact { name, value } => {
                        json!({ "name": name, "string_match": { "exact": value } })
                    }
                    HeaderMatch::Present(name) => json!({ "name": name, "present_match": true }),
                    HeaderMatch::Absent(name) => json!({ "name": name, "present_match": false }),
                })
                .collect();
            matcher["headers"] = Value::Array(headers);
        }
        match action {
            RouteAction::Direct { status, body } => json!({
                "match": matcher,
                "direct_response": { "status": status, "body": { "inline_string": body } },
            }),
            RouteAction::Cluster { name, timeout } => json!({
                "match": matcher,
                "route": { "cluster": name, "timeout": duration(timeout) },
            }),
        }
    }
}

/// A route being built: add header conditions, then finish it with an action.
#[derive(Clone, Debug)]
pub struct RouteBuilder {
    path: PathMatch,
    headers: Vec<HeaderMatch>,
}

impl RouteBuilder {
    fn new(path: PathMatch) -> Self {
        RouteBuilder {
            path,
            headers: Vec::new(),
        }
    }

    /// Also requires header `name` to equal `value`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(HeaderMatch::Exact {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// Also requires header `name` to be present.
    pub fn header_present(mut self, name: &str) -> Self {
        self.headers.push(HeaderMatch::Present(name.to_owned()));
        self
    }

    /// Also requires header `name` to be absent.
    pub fn header_absent(mut self, name: &str) -> Self {
        self.headers.push(HeaderMatch::Absent(name.to_owned()));
        self
    }

    /// Envoy answers with `status` and `body`.
    pub fn direct(self, status: u16, body: &str) -> Route {
        self.action(RouteAction::Direct {
            status,
            body: body.to_owned(),
        })
    }

    /// Forwards to cluster `name` with a 5 s upstream timeout.
    pub fn cluster(self, name: &str) -> Route {
        self.cluster_with_timeout(name, Duration::from_secs(5))
    }

    /// Forwards to cluster `name`; Envoy answers 504 after `timeout`.
    pub fn cluster_with_timeout(self, name: &str, timeout: Duration) -> Route {
        self.action(RouteAction::Cluster {
            name: name.to_owned(),
            timeout,
        })
    }

    pub fn action(self, action: RouteAction) -> Route {
        Route::Typed {
            path: self.path,
            headers: self.headers,
            action,
        }
    }
}

/// A STATIC upstream cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// Speak HTTP/2 (h2c, prior knowledge) to the endpoints; gRPC needs it.
    pub http2: bool,
    /// Envoy `lb_policy`, e.g. `ROUND_ROBIN` (default) or `LEAST_REQUEST`.
    pub lb_policy: String,
    pub connect_timeout: Duration,
}

impl Cluster {
    /// HTTP/1.1, round robin, 1 s connect timeout.
    pub fn new(name: &str, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        Cluster {
            name: name.to_owned(),
            endpoints: endpoints.into_iter().collect(),
            http2: false,
            lb_policy: "ROUND_ROBIN".to_owned(),
            connect_timeout: Duration::from_secs(1),
        }
    }

    pub fn http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    pub fn lb_policy(mut self, policy: &str) -> Self {
        self.lb_policy = policy.to_owned();
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn render(self) -> Value {
        let lb_endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|addr| {
                json!({ "endpoint": { "address": socket_address(&addr.ip().to_string(), addr.port()) } })
            })
            .collect();
        let mut cluster = json!({
            "name": self.name,
            "type": "STATIC",
            "connect_timeout": duration(self.connect_timeout),
            "lb_policy": self.lb_policy,
            "load_assignment": {
                "cluster_name": self.name,
                "endpoints": [{ "lb_endpoints": lb_endpoints }],
            },
        });
        if self.http2 {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} },
                }
            });
        }
        cluster
    }
}
