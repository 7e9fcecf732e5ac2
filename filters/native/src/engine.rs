//! Envoy's lifecycle mapped onto the pipeline.
//!
//! - A filter configuration ([`Config`]) is created on Envoy's main
//!   thread. It parses nothing itself: the first [`Worker`] (the main
//!   thread's) compiles the configuration, and with it defines every
//!   metric (Envoy freezes metric definitions once the configuration is
//!   created), so a configuration error fails the load and names the field.
//! - Each thread that serves streams keeps its own [`Worker`] (one per
//!   Envoy worker, as the wasm engine has one per VM), in a thread-local
//!   table: a stream never waits for another thread's lock. What workers
//!   share lives in [`crate::store`].
//! - Background work runs on the main thread: a ticker thread wakes it
//!   through the configuration's scheduler, and the main thread's worker
//!   ticks (key set fetches, breaker and limiter upkeep). A worker thread
//!   ticks on its own whenever one of its streams runs a hook.
//! - Calls a worker owns (no stream: reports, key sets) are made by the
//!   main thread on the worker's behalf (Envoy allows configuration-level
//!   calls there only) and their answers wait in the worker's mailbox until
//!   its next hook. Calls a stream owns are made on the stream's filter,
//!   so Envoy cancels them with it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ctxgate_core::audit::event::hex;
use ctxgate_core::audit::shipper::Shipper;
use ctxgate_core::host::{CallId, CallResponse, MetricId, MetricKind as CoreKind, StreamId};
use ctxgate_core::pipeline::{Seeds, Worker};
use ctxgate_core::telemetry::{LABELLED_FAMILIES, LabelledFamily};

use crate::abi::{self, CallAnswer, CallEnd, ConfigScheduler, FilterConfig, Flow, MetricKind};
use crate::calls::{self, Kind, Request};
use crate::host::NativeHost;
use crate::store::ProcessStore;

/// The state every worker of the process shares.
pub static STORE: LazyLock<ProcessStore> = LazyLock::new(ProcessStore::default);

/// The configuration scheduler's events.
const EVENT_TICK: u64 = 1;
const EVENT_OUTBOX: u64 = 2;
/// A message arrived in the audit queue this configuration ships.
const EVENT_AUDIT: u64 = 3;

/// Configurations alive in this process (their workers in other threads'
/// tables are dropped once the configuration is gone).
static LIVE: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);
/// Bumped whenever a configuration is destroyed.
static DESTROYED: AtomicU64 = AtomicU64::new(0);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic caught while a lock was held leaves whole values behind.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn program_init() {
    crate::logger::install();
}

/// What the threads of one configuration share.
pub struct Shared {
    id: u64,
    pub envoy: FilterConfig,
    /// `DynamicModuleFilter.filter_name`: names the shared-state namespace
    /// as the wasm plugin's name does.
    name: String,
    config: Vec<u8>,
    /// Metrics as defined with Envoy (while the configuration was created).
    metrics: Mutex<HashMap<(MetricKindKey, String), MetricId>>,
    /// Set while the configuration is created: only then may metrics be
    /// defined.
    defining: AtomicBool,
    scheduler: Mutex<Option<ConfigScheduler>>,
    /// Calls worker threads asked the main thread to make.
    outbox: Mutex<Vec<Outgoing>>,
    /// Calls the main thread made, by Envoy's id.
    pending: Mutex<HashMap<u64, Pending>>,
    /// The workers of the worker threads (ticked by the main thread while
    /// idle).
    workers: Mutex<Vec<std::sync::Weak<WorkerCell>>>,
    /// The labelled families, by name: Envoy's ids.
    families: Mutex<HashMap<&'static str, usize>>,
    /// The series of labelled families, by index.
    series: RwLock<Vec<Series>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum MetricKindKey {
    Counter,
    Gauge,
    Histogram,
}

impl From<MetricKind> for MetricKindKey {
    fn from(kind: MetricKind) -> Self {
        match kind {
            MetricKind::Counter => MetricKindKey::Counter,
            MetricKind::Gauge => MetricKindKey::Gauge,
            MetricKind::Histogram => MetricKindKey::Histogram,
        }
    }
}

pub fn abi_kind(kind: CoreKind) -> MetricKind {
    match kind {
        CoreKind::Counter => MetricKind::Counter,
        CoreKind::Gauge => MetricKind::Gauge,
        CoreKind::Histogram => MetricKind::Histogram,
    }
}

impl crate::audit::Wake for Shared {
    /// The audit queue this configuration ships has a message.
    fn wake(&self) {
        if let Some(scheduler) = lock(&self.scheduler).as_ref() {
            scheduler.commit(EVENT_AUDIT);
        }
    }
}

/// The tag of a series of a labelled family in a [`MetricId`] (the low
/// two bits; 0 to 2 are the kinds of metrics without labels).
const LABELLED: u32 = 3;

/// A metric id as the pipeline holds it: Envoy's id and the kind, or the
/// index of a series of a labelled family.
fn metric_id(kind: MetricKind, envoy_id: usize) -> Option<MetricId> {
    let tag = match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    };
    let id = u32::try_from(envoy_id).ok()?.checked_mul(4)?;
    Some(id | tag)
}

/// A series of a labelled family: the family's id and the label values.
struct Series {
    kind: MetricKind,
    family: usize,
    values: Vec<String>,
}

/// Most series of labelled families one configuration keeps (each family
/// is bounded by the pipeline; this bounds them all).
const MAX_SERIES: usize = 100_000;

impl Shared {
    /// Defines every labelled family with its label names (while the
    /// configuration is created: Envoy refuses definitions later).
    fn define_families(&self) {
        let mut families = lock(&self.families);
        for family in &LABELLED_FAMILIES {
            let kind = abi_kind(family.kind);
            match self.envoy.define(kind, family.name, family.labels) {
                Some(id) => {
                    families.insert(family.name, id);
                }
                None => log::warn!("ctxgate: cannot define metric {}", family.name),
            }
        }
    }

    /// The id of metric `name`. A series of a labelled family
    /// ([`LabelledFamily`]) is a set of label values of the family
    /// defined at load, so it may first appear at any time; any other
    /// metric is defined with Envoy while the configuration is created,
    /// and looked up afterwards (Envoy refuses new metrics then).
    pub fn metric(&self, kind: CoreKind, name: &str) -> Option<MetricId> {
        let abi = abi_kind(kind);
        let key = (MetricKindKey::from(abi), name.to_owned());
        let mut metrics = lock(&self.metrics);
        if let Some(id) = metrics.get(&key) {
            return Some(*id);
        }
        let id = if let Some((family, values)) = LabelledFamily::of(kind, name) {
            let family = *lock(&self.families).get(family.name)?;
            let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
            if series.len() >= MAX_SERIES {
                return None;
            }
            let index = u32::try_from(series.len()).ok()?.checked_mul(4)?;
            // A defined counter or gauge is exported from the start, at
            // zero, as on the wasm engine (a histogram from its first
            // sample).
            if abi != MetricKind::Histogram {
                self.envoy.add(abi, family, &values, 0);
            }
            series.push(Series {
                kind: abi,
                family,
                values: values.into_iter().map(str::to_owned).collect(),
            });
            index | LABELLED
        } else {
            if !self.defining.load(Ordering::Relaxed) {
                return None;
            }
            metric_id(abi, self.envoy.define(abi, name, &[])?)?
        };
        metrics.insert(key, id);
        Some(id)
    }

    /// Adds to a counter or gauge.
    pub fn add_metric(&self, id: MetricId, delta: i64) {
        self.with_metric(id, |kind, envoy_id, labels| {
            self.envoy.add(kind, envoy_id, labels, delta);
        });
    }

    /// Sets a gauge or records a histogram sample.
    pub fn set_metric(&self, id: MetricId, value: u64) {
        self.with_metric(id, |kind, envoy_id, labels| {
            self.envoy.set(kind, envoy_id, labels, value);
        });
    }

    fn with_metric(&self, id: MetricId, f: impl FnOnce(MetricKind, usize, &[&str])) {
        let index = usize::try_from(id / 4).unwrap_or(usize::MAX);
        let kind = match id % 4 {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => {
                let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(s) = series.get(index) {
                    let values: Vec<&str> = s.values.iter().map(String::as_str).collect();
                    f(s.kind, s.family, &values);
                }
                return;
            }
        };
        f(kind, index, &[]);
    }

    /// Hands a call to the main thread (from a worker thread).
    fn post(&self, outgoing: Outgoing) {
        lock(&self.outbox).push(outgoing);
        if let Some(scheduler) = lock(&self.scheduler).as_ref() {
            scheduler.commit(EVENT_OUTBOX);
        }
    }

    /// Makes a call on the main thread; its answer goes to `mailbox`.
    fn call(&self, outgoing: Outgoing) {
        let request = &outgoing.request;
        let headers = request.header_refs();
        let started = match request.kind {
            Kind::Http => self.envoy.http_callout(
                &request.cluster,
                &headers,
                &request.body,
                request.timeout_ms,
            ),
            Kind::Grpc => self.envoy.start_stream(
                &request.cluster,
                &headers,
                &request.body,
                request.timeout_ms,
            ),
        };
        match started {
            Ok(envoy_id) => {
                let mut pending = lock(&self.pending);
                // An answer that arrived inside the call itself waits here.
                if let Some(Pending {
                    answer,
                    end: Some(end),
                    ..
                }) = pending.remove(&envoy_id)
                {
                    outgoing
                        .mailbox
                        .put(outgoing.call, calls::response(request.kind, end, answer));
                    return;
                }
                pending.insert(
                    envoy_id,
                    Pending {
                        to: Some((outgoing.mailbox, outgoing.call, request.kind)),
                        answer: CallAnswer::default(),
                        end: None,
                    },
                );
            }
            Err(code) => {
                log::warn!(
                    "ctxgate: cannot call cluster {} (Envoy refused the call: {code})",
                    request.cluster
                );
                outgoing.mailbox.put(
                    outgoing.call,
                    calls::response(request.kind, CallEnd::Failed, CallAnswer::default()),
                );
            }
        }
    }
}

/// A call a worker thread asked for.
struct Outgoing {
    mailbox: Arc<Mailbox>,
    call: CallId,
    request: Request,
}

/// A call the main thread made.
struct Pending {
    /// Where the answer goes (`None` while `call` has not returned).
    to: Option<(Arc<Mailbox>, CallId, Kind)>,
    answer: CallAnswer,
    /// Set once the call ended before `call` returned.
    end: Option<CallEnd>,
}

/// Answers waiting for a worker's next hook.
#[derive(Default)]
pub struct Mailbox {
    waiting: AtomicBool,
    answers: Mutex<Vec<(CallId, CallResponse)>>,
}

impl Mailbox {
    pub fn put(&self, call: CallId, response: CallResponse) {
        lock(&self.answers).push((call, response));
        self.waiting.store(true, Ordering::Release);
    }

    fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    fn take(&self) -> Vec<(CallId, CallResponse)> {
        if !self.waiting.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.answers))
    }
}

/// Wakes the main thread every tick through the configuration's
/// scheduler.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(shared: Arc<Shared>, period: Duration) -> Option<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ctxgate-ticker".to_owned())
            .spawn(move || {
                let (flag, wake) = &*stopped;
                let mut stop = lock(flag);
                loop {
                    stop = wake
                        .wait_timeout(stop, period)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if *stop {
                        return;
                    }
                    if let Some(scheduler) = lock(&shared.scheduler).as_ref() {
                        scheduler.commit(EVENT_TICK);
                    }
                }
            })
            .ok()?;
        Some(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *lock(flag) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A filter configuration, owned by Envoy from `config_new` to
/// `config_destroy` (main thread).
pub struct Config {
    shared: Arc<Shared>,
    ticker: Option<Ticker>,
    /// The audit shipper, when the `audit` section names a collector.
    audit: Option<AuditShipper>,
}

impl Config {
    /// Compiles `config` (a configuration error is logged, naming the
    /// field, and Envoy refuses the configuration).
    pub fn new(envoy: FilterConfig, name: &[u8], config: &[u8]) -> Option<Box<Config>> {
        crate::logger::follow_envoy();
        let name = String::from_utf8_lossy(name).into_owned();
        let shared = Arc::new(Shared {
            id: NEXT_CONFIG.fetch_add(1, Ordering::Relaxed),
            envoy,
            name,
            config: config.to_vec(),
            metrics: Mutex::new(HashMap::new()),
            defining: AtomicBool::new(true),
            scheduler: Mutex::new(envoy.scheduler()),
            outbox: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
            families: Mutex::new(HashMap::new()),
            series: RwLock::new(Vec::new()),
        });
        shared.define_families();
        // The main thread's worker compiles the configuration and defines
        // every metric it registers.
        let main = match ThreadWorker::new(&shared, true) {
            Ok(worker) => worker,
            Err(e) => {
                let name: Rc<str> = Rc::from(shared.name.as_str());
                crate::logger::for_filter(&name, || log::error!("invalid configuration: {e}"));
                return None;
            }
        };
        let audit = match AuditShipper::new(&shared) {
            Ok(audit) => audit,
            Err(e) => {
                let name: Rc<str> = Rc::from(shared.name.as_str());
                crate::logger::for_filter(&name, || log::error!("invalid configuration: {e}"));
                return None;
            }
        };
        shared.defining.store(false, Ordering::Relaxed);
        let tick_ms = audit
            .as_ref()
            .map_or(main.cell.tick_ms, |a| a.tick_ms.min(main.cell.tick_ms));
        let period = Duration::from_millis(tick_ms.max(1));
        WORKERS.with_borrow_mut(|w| w.insert(shared.id, Rc::new(main)));
        lock(&LIVE).insert(shared.id);
        let ticker = Ticker::start(Arc::clone(&shared), period);
        if ticker.is_none() {
            log::warn!("ctxgate: no ticker thread: background work runs with traffic only");
        }
        Some(Box::new(Config {
            shared,
            ticker,
            audit,
        }))
    }

    /// A scheduler event, on the main thread.
    pub fn on_scheduled(&self, event: u64) {
        let outgoing = std::mem::take(&mut *lock(&self.shared.outbox));
        for call in outgoing {
            self.shared.call(call);
        }
        if let Some(audit) = &self.audit {
            audit.run(event == EVENT_AUDIT);
        }
        if let Some(main) = WORKERS.with_borrow(|w| w.get(&self.shared.id).cloned()) {
            main.run(|worker, host| {
                if event == EVENT_TICK {
                    worker.on_tick(host);
                }
            });
        }
        if event == EVENT_TICK {
            let name: Rc<str> = Rc::from(self.shared.name.as_str());
            let cells: Vec<Arc<WorkerCell>> = {
                let mut workers = lock(&self.shared.workers);
                workers.retain(|w| w.strong_count() > 0);
                workers
                    .iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .collect()
            };
            for cell in cells {
                tick_idle(&self.shared, &cell, &name);
            }
        }
    }

    /// A main-thread call ended.
    pub fn on_call_done(&self, envoy_id: u64, end: CallEnd, answer: CallAnswer) {
        self.on_stream_event(envoy_id, |a| *a = answer);
        self.on_stream_end(envoy_id, end);
    }

    /// Part of a main-thread call's answer arrived.
    pub fn on_stream_event(&self, envoy_id: u64, update: impl FnOnce(&mut CallAnswer)) {
        let mut pending = lock(&self.shared.pending);
        let entry = pending.entry(envoy_id).or_insert_with(|| Pending {
            to: None,
            answer: CallAnswer::default(),
            end: None,
        });
        update(&mut entry.answer);
    }

    /// A main-thread call ended: its answer goes to the worker that asked.
    pub fn on_stream_end(&self, envoy_id: u64, end: CallEnd) {
        let done = {
            let mut pending = lock(&self.shared.pending);
            match pending.remove(&envoy_id) {
                Some(Pending {
                    to: Some(to),
                    answer,
                    ..
                }) => Some((to, answer)),
                Some(mut early) => {
                    // Ended inside the call that started it.
                    early.end = Some(end);
                    pending.insert(envoy_id, early);
                    None
                }
                None => None,
            }
        };
        if let Some(((mailbox, call, kind), answer)) = done {
            mailbox.put(call, calls::response(kind, end, answer));
        }
        // The shipper and the main thread's own worker read their
        // mailboxes now.
        if let Some(audit) = &self.audit {
            audit.run(false);
        }
        if let Some(main) = WORKERS.with_borrow(|w| w.get(&self.shared.id).cloned()) {
            main.run(|_, _| {});
        }
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // No commit after the scheduler is deleted: stop the ticker first.
        self.ticker.take();
        lock(&self.shared.scheduler).take();
        if let Some(audit) = self.audit.take() {
            audit.release();
        }
        lock(&LIVE).remove(&self.shared.id);
        DESTROYED.fetch_add(1, Ordering::Relaxed);
        WORKERS.with_borrow_mut(|w| w.remove(&self.shared.id));
    }
}

thread_local! {
    /// This thread's worker per configuration.
    static WORKERS: RefCell<HashMap<u64, Rc<ThreadWorker>>> = RefCell::new(HashMap::new());
    /// `DESTROYED` as this thread last pruned its table.
    static PRUNED: Cell<u64> = const { Cell::new(0) };
}

/// What a thread's host works with: the streams it serves and the calls
/// in flight.
pub struct Tables {
    pub shared: Arc<Shared>,
    /// Live streams' filters, by the pipeline's stream id.
    pub streams: RefCell<HashMap<StreamId, abi::Filter>>,
    /// Calls streams own, by (stream, Envoy's id).
    pub calls: RefCell<HashMap<(StreamId, u64), (CallId, Kind)>>,
    /// Answers of stream-owned calls in progress.
    pub answers: RefCell<HashMap<(StreamId, u64), CallAnswer>>,
    /// Stream-owned calls that ended inside the call that started them.
    pub early: RefCell<HashMap<(StreamId, u64), CallEnd>>,
    pub mailbox: Arc<Mailbox>,
    /// The audit queue ([`crate::audit::queue_key`]) this thread's
    /// pipeline writes to, or its shipper drains.
    pub audit_queue: RefCell<Option<String>>,
    /// Whether this is the main thread (it makes worker-owned calls
    /// itself).
    pub main: bool,
    /// The worker's call ids (shared with the main thread, which makes
    /// the calls of an idle worker's tick).
    next_call: Arc<AtomicU32>,
}

impl Tables {
    fn new(shared: &Arc<Shared>, cell: Option<&WorkerCell>, main: bool) -> Tables {
        Tables {
            shared: Arc::clone(shared),
            streams: RefCell::new(HashMap::new()),
            calls: RefCell::new(HashMap::new()),
            answers: RefCell::new(HashMap::new()),
            early: RefCell::new(HashMap::new()),
            mailbox: cell.map_or_else(Arc::default, |c| Arc::clone(&c.mailbox)),
            audit_queue: RefCell::new(cell.and_then(|c| c.audit_queue.clone())),
            main,
            next_call: cell
                .map_or_else(|| Arc::new(AtomicU32::new(1)), |c| Arc::clone(&c.next_call)),
        }
    }

    pub fn next_call(&self) -> CallId {
        // Never 0, wrapping after 4 billion calls.
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            self.next_call.fetch_add(1, Ordering::Relaxed)
        } else {
            id
        }
    }

    /// Asks for a worker-owned call: made here on the main thread, or
    /// posted to it.
    pub fn worker_call(&self, request: Request) -> CallId {
        let call = self.next_call();
        let outgoing = Outgoing {
            mailbox: Arc::clone(&self.mailbox),
            call,
            request,
        };
        if self.main {
            self.shared.call(outgoing);
        } else {
            self.shared.post(outgoing);
        }
        call
    }
}

/// A worker, and what the main thread needs to tick it while its thread
/// serves no stream (Envoy gives a worker thread no timer of its own: the
/// main thread runs an idle worker's tick, so that its audit records,
/// usage reports and breaker upkeep do not wait for the next request).
pub struct WorkerCell {
    /// Locked by the worker's thread for each hook, by the main thread for
    /// an idle tick.
    worker: Mutex<Worker>,
    mailbox: Arc<Mailbox>,
    next_call: Arc<AtomicU32>,
    audit_queue: Option<String>,
    /// Streams of this worker alive in Envoy.
    live: AtomicUsize,
    next_tick_ms: AtomicU64,
    tick_ms: u64,
}

impl WorkerCell {
    /// Runs the tick when due.
    fn tick_if_due(&self, worker: &mut Worker, host: &mut NativeHost<'_>) {
        let now = ctxgate_core::host::Host::now_ms(host);
        if now >= self.next_tick_ms.load(Ordering::Relaxed) {
            self.next_tick_ms
                .store(now.saturating_add(self.tick_ms), Ordering::Relaxed);
            worker.on_tick(host);
            // Counts go to Envoy once per tick, not once per hook: a
            // labelled series costs Envoy thousands of instructions per
            // update (its tags are resolved on every call).
            worker.flush_counts(host);
        }
    }

    fn deliver(&self, worker: &mut Worker, host: &mut NativeHost<'_>) {
        for (call, response) in self.mailbox.take() {
            worker.on_call_response(host, call, response);
        }
    }
}

/// One thread's worker and the streams it serves.
pub struct ThreadWorker {
    /// The filter's name, at the start of its log lines.
    name: Rc<str>,
    tables: Tables,
    cell: Arc<WorkerCell>,
    /// A hook of this thread runs the worker (a hook Envoy runs inside it
    /// must not wait for it).
    running: Cell<bool>,
    next_stream: Cell<StreamId>,
}

impl ThreadWorker {
    fn new(shared: &Arc<Shared>, main: bool) -> Result<ThreadWorker, String> {
        let secret = random::<16>().ok_or("the system gave no random bytes")?;
        let reporter = random::<8>().ok_or("the system gave no random bytes")?;
        let seeds = Seeds {
            secret,
            reporter: u64::from_le_bytes(reporter),
        };
        let tables = Tables::new(shared, None, main);
        let name: Rc<str> = Rc::from(shared.name.as_str());
        let worker = crate::logger::for_filter(&name, || {
            let mut host = NativeHost::new(&tables);
            let worker = Worker::new(&shared.config, &shared.name, seeds, &mut host)
                .map_err(|e| e.to_string())?;
            host.finish();
            Ok::<_, String>(worker)
        })?;
        let audit_queue = worker
            .audit_queue()
            .map(|(vm_id, queue)| crate::audit::queue_key(vm_id, queue));
        tables.audit_queue.replace(audit_queue.clone());
        let cell = Arc::new(WorkerCell {
            tick_ms: worker.tick_ms(),
            worker: Mutex::new(worker),
            mailbox: Arc::clone(&tables.mailbox),
            next_call: Arc::clone(&tables.next_call),
            audit_queue,
            live: AtomicUsize::new(0),
            next_tick_ms: AtomicU64::new(0),
        });
        if !main {
            lock(&shared.workers).push(Arc::downgrade(&cell));
        }
        Ok(ThreadWorker {
            name,
            tables,
            cell,
            running: Cell::new(false),
            next_stream: Cell::new(1),
        })
    }

    /// This thread's worker for `shared`, created on first use.
    fn of(shared: &Arc<Shared>) -> Option<Rc<ThreadWorker>> {
        prune();
        if let Some(worker) = WORKERS.with_borrow(|w| w.get(&shared.id).cloned()) {
            return Some(worker);
        }
        match ThreadWorker::new(shared, false) {
            Ok(worker) => {
                let worker = Rc::new(worker);
                WORKERS.with_borrow_mut(|w| w.insert(shared.id, Rc::clone(&worker)));
                Some(worker)
            }
            Err(e) => {
                log::error!("ctxgate: cannot start a worker: {e}");
                None
            }
        }
    }

    /// Runs `f` on the worker, after the answers that arrived and a tick
    /// when one is due; then applies what the pipeline decided (replies,
    /// resumes), with the worker released, since Envoy may call back into
    /// this module while it applies them.
    fn run<T>(&self, f: impl FnOnce(&mut Worker, &mut NativeHost<'_>) -> T) -> Option<T> {
        crate::logger::for_filter(&self.name, || self.run_logged(f))
    }

    fn run_logged<T>(&self, f: impl FnOnce(&mut Worker, &mut NativeHost<'_>) -> T) -> Option<T> {
        if self.running.replace(true) {
            // A hook re-entered while the worker runs: the caller answers
            // from what it holds (answers wait in the mailbox).
            return None;
        }
        let mut host = NativeHost::new(&self.tables);
        let out = {
            // Waits only while the main thread ticks this worker idle.
            let mut worker = lock(&self.cell.worker);
            self.cell.deliver(&mut worker, &mut host);
            self.cell.tick_if_due(&mut worker, &mut host);
            let out = f(&mut worker, &mut host);
            // Answers that arrived while `f` ran (a call ended inside the
            // call that started it).
            self.cell.deliver(&mut worker, &mut host);
            out
        };
        self.running.set(false);
        host.finish();
        Some(out)
    }
}

/// Ticks `cell` on the main thread if its thread serves no stream and a
/// tick is due: the worker's calls go out from here, their answers wait
/// in its mailbox (delivered by the next idle tick or hook).
fn tick_idle(shared: &Arc<Shared>, cell: &WorkerCell, name: &Rc<str>) {
    let now_ms = crate::host::now_ms();
    if cell.live.load(Ordering::Acquire) > 0
        || (now_ms < cell.next_tick_ms.load(Ordering::Relaxed) && !cell.mailbox.waiting())
    {
        return;
    }
    // Busy: its thread runs it, and ticks it.
    let Ok(mut worker) = cell.worker.try_lock() else {
        return;
    };
    // A stream that began meanwhile waits for the lock: the pipeline
    // holds none of it yet. One that holds state in the pipeline is live.
    if cell.live.load(Ordering::Acquire) > 0 {
        return;
    }
    crate::logger::for_filter(name, || {
        let tables = Tables::new(shared, Some(cell), true);
        let mut host = NativeHost::new(&tables);
        cell.deliver(&mut worker, &mut host);
        cell.tick_if_due(&mut worker, &mut host);
        worker.flush_counts(&mut host);
        drop(worker);
        host.finish();
    });
}

/// The audit shipper of a configuration, on the main thread (see
/// [`crate::audit`]).
struct AuditShipper {
    shared: Arc<Shared>,
    name: Rc<str>,
    /// Its own mailbox and call ids: answers to its deliveries are its own.
    tables: Tables,
    shipper: RefCell<Shipper>,
    key: String,
    tick_ms: u64,
    next_tick_ms: Cell<u64>,
    claimed: Cell<bool>,
}

impl AuditShipper {
    fn new(shared: &Arc<Shared>) -> Result<Option<AuditShipper>, String> {
        let Some(config) = crate::audit::shipper_config(&shared.config)? else {
            return Ok(None);
        };
        let chain = random::<16>().ok_or("the system gave no random bytes")?;
        let key = crate::audit::queue_key(&config.audit.singleton_vm_id, &config.audit.queue);
        let tables = Tables::new(shared, None, true);
        tables.audit_queue.replace(Some(key.clone()));
        let name: Rc<str> = Rc::from(shared.name.as_str());
        let shipper = crate::logger::for_filter(&name, || {
            let mut host = NativeHost::new(&tables);
            let shipper = Shipper::new(config.audit, hex(&chain), &mut host);
            host.finish();
            shipper.map_err(|e| format!("audit.{e}"))
        })?;
        let audit = AuditShipper {
            shared: Arc::clone(shared),
            name,
            tick_ms: shipper.tick_ms(),
            tables,
            shipper: RefCell::new(shipper),
            key,
            next_tick_ms: Cell::new(0),
            claimed: Cell::new(false),
        };
        audit.claim();
        Ok(Some(audit))
    }

    /// Becomes the queue's shipper if no live configuration is.
    fn claim(&self) -> bool {
        if !self.claimed.get() && crate::audit::QUEUES.claim(&self.key, self.shared.id, self.wake())
        {
            self.claimed.set(true);
            let chain = self.shipper.borrow().chain().to_owned();
            crate::logger::for_filter(&self.name, || {
                log::info!("audit shipper: queue {}, chain {chain}", self.key);
            });
        }
        self.claimed.get()
    }

    fn wake(&self) -> std::sync::Weak<dyn crate::audit::Wake> {
        let shared: Arc<dyn crate::audit::Wake> = self.shared.clone();
        Arc::downgrade(&shared)
    }

    /// Delivers answers, drains the queue when `ready`, ticks when due.
    fn run(&self, ready: bool) {
        if !self.claim() {
            return;
        }
        let Ok(mut shipper) = self.shipper.try_borrow_mut() else {
            return;
        };
        crate::logger::for_filter(&self.name, || {
            let mut host = NativeHost::new(&self.tables);
            for (call, response) in self.tables.mailbox.take() {
                shipper.on_call_response(&mut host, call, &response);
            }
            if ready {
                shipper.on_queue_ready(&mut host);
            }
            let now = ctxgate_core::host::Host::now_ms(&host);
            if now >= self.next_tick_ms.get() {
                self.next_tick_ms.set(now.saturating_add(self.tick_ms));
                // What arrived without a wake-up (claimed late) too.
                shipper.on_queue_ready(&mut host);
                shipper.on_tick(&mut host);
            }
            host.finish();
        });
    }

    fn release(&self) {
        if self.claimed.get() {
            crate::audit::QUEUES.release(&self.key, self.shared.id);
        }
    }
}

/// Drops this thread's workers of destroyed configurations.
fn prune() {
    let destroyed = DESTROYED.load(Ordering::Relaxed);
    if PRUNED.get() == destroyed {
        return;
    }
    PRUNED.set(destroyed);
    let live = lock(&LIVE).clone();
    WORKERS.with_borrow_mut(|w| w.retain(|id, _| live.contains(id)));
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes)
}

/// One stream: Envoy's `http_filter_module_ptr`.
pub struct Stream {
    thread: Rc<ThreadWorker>,
    id: StreamId,
    filter: abi::Filter,
}

impl Stream {
    pub fn new(config: &Config, filter: abi::Filter) -> Option<Stream> {
        let thread = ThreadWorker::of(&config.shared)?;
        let id = thread.next_stream.get();
        thread.next_stream.set(id.wrapping_add(1).max(1));
        thread.tables.streams.borrow_mut().insert(id, filter);
        thread.cell.live.fetch_add(1, Ordering::AcqRel);
        Some(Stream { thread, id, filter })
    }

    fn run<T>(
        &self,
        failed: T,
        f: impl FnOnce(&mut Worker, &mut NativeHost<'_>, StreamId) -> T,
    ) -> T {
        self.thread
            .run(|worker, host| f(worker, host, self.id))
            .unwrap_or(failed)
    }

    pub fn on_request_headers(&self, end_of_stream: bool) -> Flow {
        self.run(Flow::Stop, |w, h, id| {
            flow(w.on_request_headers(h, id, end_of_stream))
        })
    }

    pub fn on_request_body(&self, end_of_stream: bool) -> Flow {
        let size = self.filter.body_size(abi::Body::BufferedRequest)
            + self.filter.body_size(abi::Body::ReceivedRequest);
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.run(Flow::Stop, |w, h, id| {
            flow(w.on_request_body(h, id, size, end_of_stream))
        })
    }

    pub fn on_response_headers(&self) -> Flow {
        self.run(Flow::Continue, |w, h, id| {
            flow(w.on_response_headers(h, id))
        })
    }

    pub fn on_response_body(&self, end_of_stream: bool) -> Flow {
        let size = self.filter.body_size(abi::Body::BufferedResponse)
            + self.filter.body_size(abi::Body::ReceivedResponse);
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.run(Flow::Continue, |w, h, id| {
            flow(w.on_response_body(h, id, size, end_of_stream))
        })
    }

    pub fn on_complete(&self) {
        self.run((), |w, h, id| w.on_done(h, id));
    }

    pub fn on_scheduled(&self, _event: u64) {
        self.run((), |_, _, _| {});
    }

    /// A one-shot call of this stream ended.
    pub fn on_call_done(&self, envoy_id: u64, end: CallEnd, answer: CallAnswer) {
        self.on_stream_event(envoy_id, |a| *a = answer);
        self.on_stream_end(envoy_id, end);
    }

    /// Part of the answer to a call of this stream arrived.
    pub fn on_stream_event(&self, envoy_id: u64, update: impl FnOnce(&mut CallAnswer)) {
        let mut answers = self.thread.tables.answers.borrow_mut();
        update(answers.entry((self.id, envoy_id)).or_default());
    }

    /// A call of this stream ended: its answer goes to the pipeline.
    pub fn on_stream_end(&self, envoy_id: u64, end: CallEnd) {
        let key = (self.id, envoy_id);
        let answer = self
            .thread
            .tables
            .answers
            .borrow_mut()
            .remove(&key)
            .unwrap_or_default();
        let Some((call, kind)) = self.thread.tables.calls.borrow_mut().remove(&key) else {
            // Ended inside the call that started it: the host finds it
            // once it knows the call's id.
            self.thread.tables.early.borrow_mut().insert(key, end);
            self.thread.tables.answers.borrow_mut().insert(key, answer);
            return;
        };
        self.thread
            .tables
            .mailbox
            .put(call, calls::response(kind, end, answer));
        self.run((), |_, _, _| {});
    }

    /// The stream is gone: forget it (Envoy cancels its calls).
    pub fn destroy(self) {
        self.thread.tables.streams.borrow_mut().remove(&self.id);
        self.thread.cell.live.fetch_sub(1, Ordering::AcqRel);
        self.thread
            .tables
            .calls
            .borrow_mut()
            .retain(|(stream, _), _| *stream != self.id);
        self.thread
            .tables
            .answers
            .borrow_mut()
            .retain(|(stream, _), _| *stream != self.id);
        self.thread
            .tables
            .early
            .borrow_mut()
            .retain(|(stream, _), _| *stream != self.id);
    }

    /// A hook of this stream panicked: refuse the request.
    pub fn fail_closed(filter: abi::Filter) {
        filter.send_response(500, &[], b"internal error\n", "ctxgate_internal_error");
    }
}

fn flow(flow: ctxgate_core::pipeline::Flow) -> Flow {
    match flow {
        ctxgate_core::pipeline::Flow::Continue => Flow::Continue,
        ctxgate_core::pipeline::Flow::Pause => Flow::Stop,
    }
}
