//! The `log` crate's lines go to Envoy's `dynamic_modules` logger, at the
//! level Envoy runs it (`--component-log-level dynamic_modules:debug`).
//! Each line starts with the name of the filter whose work wrote it
//! (`ctxgate_auth: auth: 1 provider(s): ...`), as Envoy starts a wasm
//! plugin's lines with its root id.

use std::cell::RefCell;
use std::rc::Rc;

use crate::abi::{self, Level};

thread_local! {
    /// The filter this thread works for right now.
    static FILTER: RefCell<Option<Rc<str>>> = const { RefCell::new(None) };
}

/// Runs `f` with the lines it logs attributed to filter `name`.
pub fn for_filter<T>(name: &Rc<str>, f: impl FnOnce() -> T) -> T {
    let outer = FILTER.with_borrow_mut(|current| current.replace(Rc::clone(name)));
    let out = f();
    FILTER.with_borrow_mut(|current| *current = outer);
    out
}

struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug => Level::Debug,
            log::Level::Trace => Level::Trace,
        };
        let line = FILTER.with_borrow(|name| match name {
            Some(name) => format!("{name}: {}", record.args()),
            None => record.args().to_string(),
        });
        abi::log(level, &line);
    }

    fn flush(&self) {}
}

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Installs the logger (once per process).
pub fn install() {
    let _ = log::set_logger(&LOGGER);
    follow_envoy();
}

/// No line Envoy would drop is even formatted.
pub fn follow_envoy() {
    let level = match abi::log_level() {
        Level::Trace => log::LevelFilter::Trace,
        Level::Debug => log::LevelFilter::Debug,
        Level::Info => log::LevelFilter::Info,
        Level::Warn => log::LevelFilter::Warn,
        Level::Error | Level::Critical => log::LevelFilter::Error,
        Level::Off => log::LevelFilter::Off,
    };
    log::set_max_level(level);
}
