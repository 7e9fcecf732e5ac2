//! ctxgate on proxy-wasm: the engine glue around
//! [`ctxgate_core::pipeline::Worker`].
//!
//! One root context per worker VM compiles the configuration into a
//! worker; every HTTP context forwards its callbacks to it with its
//! context id. The logic, the pause/resume around outgoing calls and the
//! metrics all live in the worker; [`host::WasmHost`] is the only code
//! that makes proxy-wasm host calls.
//!
//! The same module runs the audit singleton: a root context whose root id
//! is [`SINGLETON_ROOT_ID`] (a bootstrap `envoy.bootstrap.wasm` service
//! with `singleton: true`) owns the audit queue and runs a
//! [`Shipper`] instead of a worker.

mod host;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ctxgate_core::audit::SINGLETON_ROOT_ID;
use ctxgate_core::audit::config::SingletonConfig;
use ctxgate_core::audit::event::hex;
use ctxgate_core::audit::shipper::Shipper;
use ctxgate_core::host::CallResponse;
use ctxgate_core::pipeline::{Flow, Seeds, Worker};
use host::WasmHost;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    // Installs the logger; Envoy's level is applied at configure time and
    // followed on every metrics flush (see `host::follow_log_level`).
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, worker: None, audit: None })
    });
}}

/// The worker, owned by the root context and lent to its streams.
type WorkerCell = Rc<RefCell<Worker>>;

struct Root {
    id: u32,
    worker: Option<WorkerCell>,
    /// The audit singleton's shipper (root id [`SINGLETON_ROOT_ID`]).
    audit: Option<Shipper>,
}

impl Root {
    fn call_response(&mut self, call: u32, response: CallResponse) {
        if let Some(shipper) = &mut self.audit {
            let mut host = WasmHost::new(self.id, self.id);
            shipper.on_call_response(&mut host, call, &response);
            host.finish();
        }
        if let Some(worker) = &self.worker {
            let mut host = WasmHost::new(self.id, self.id);
            worker
                .borrow_mut()
                .on_call_response(&mut host, call, response);
            host.finish();
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.call_response(token_id, host::grpc_response(status_code, response_size));
    }

    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        self.call_response(token_id, host::http_response(body_size));
    }
}

impl Root {
    /// The audit singleton: owns the queue, ships batches on its tick.
    fn configure_audit(&mut self, config: &[u8]) -> bool {
        let config: SingletonConfig = match ctxgate_core::config::parse_json(config) {
            Ok(c) => c,
            Err(e) => {
                log::error!("invalid audit singleton configuration: {e}");
                return false;
            }
        };
        let Some(chain) = host::random::<16>() else {
            log::error!("cannot start: the host gave no random bytes");
            return false;
        };
        let mut host = WasmHost::new(self.id, self.id);
        let shipper = Shipper::new(config.audit, hex(&chain), &mut host);
        host.finish();
        match shipper {
            Ok(shipper) => {
                if !host::own_audit_queue(shipper.queue()) {
                    log::error!("cannot register the audit queue {}", shipper.queue());
                    return false;
                }
                log::info!("audit singleton: chain {}", shipper.chain());
                host::set_tick_period(Duration::from_millis(shipper.tick_ms()));
                self.audit = Some(shipper);
                true
            }
            Err(e) => {
                log::error!("invalid audit singleton configuration: audit.{e}");
                false
            }
        }
    }
}

impl RootContext for Root {
    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(shipper) = &mut self.audit {
            let mut host = WasmHost::new(self.id, self.id);
            shipper.on_queue_ready(&mut host);
            host.finish();
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        host::follow_log_level();
        let config = self.get_plugin_configuration().unwrap_or_default();
        if host::root_id() == SINGLETON_ROOT_ID {
            return self.configure_audit(&config);
        }
        let plugin_name = host::plugin_name();
        let (Some(secret), Some(reporter)) = (host::random::<16>(), host::random::<8>()) else {
            log::error!("cannot start: the host gave no random bytes");
            return false;
        };
        let seeds = Seeds {
            secret,
            reporter: u64::from_le_bytes(reporter),
        };
        let mut host = WasmHost::new(self.id, self.id);
        let worker = Worker::new(&config, &plugin_name, seeds, &mut host);
        host.finish();
        match worker {
            Ok(worker) => {
                let tick = Duration::from_millis(worker.tick_ms());
                if let Some((vm_id, queue)) = worker.audit_queue() {
                    host::use_audit_queue(vm_id, queue);
                }
                self.worker = Some(Rc::new(RefCell::new(worker)));
                host::set_tick_period(tick);
                true
            }
            Err(e) => {
                log::error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(shipper) = &mut self.audit {
            let mut host = WasmHost::new(self.id, self.id);
            shipper.on_tick(&mut host);
            host.finish();
        }
        if let Some(worker) = &self.worker {
            let mut host = WasmHost::new(self.id, self.id);
            let flushed = worker.borrow_mut().on_tick(&mut host);
            host.finish();
            if flushed {
                host::follow_log_level();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            root: self.id,
            worker: self.worker.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    root: u32,
    worker: WorkerCell,
}

impl Stream {
    fn host(&self) -> WasmHost {
        WasmHost::new(self.root, self.id)
    }

    fn call_response(&self, call: u32, response: CallResponse) {
        let mut host = self.host();
        self.worker
            .borrow_mut()
            .on_call_response(&mut host, call, response);
        host.finish();
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.call_response(token_id, host::grpc_response(status_code, response_size));
    }

    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        self.call_response(token_id, host::http_response(body_size));
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut host = self.host();
        let flow = self
            .worker
            .borrow_mut()
            .on_request_headers(&mut host, self.id, end_of_stream);
        host.finish();
        action(flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut host = self.host();
        let size = u64::try_from(body_size).unwrap_or(u64::MAX);
        let flow =
            self.worker
                .borrow_mut()
                .on_request_body(&mut host, self.id, size, end_of_stream);
        host.finish();
        action(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = self.host();
        let flow = self
            .worker
            .borrow_mut()
            .on_response_headers(&mut host, self.id);
        host.finish();
        action(flow)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut host = self.host();
        let size = u64::try_from(body_size).unwrap_or(u64::MAX);
        let flow =
            self.worker
                .borrow_mut()
                .on_response_body(&mut host, self.id, size, end_of_stream);
        host.finish();
        action(flow)
    }

    fn on_log(&mut self) {
        let mut host = self.host();
        self.worker.borrow_mut().on_done(&mut host, self.id);
        host.finish();
    }
}
