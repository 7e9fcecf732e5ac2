//! The rate-limit service side of global rate limiting, for tests: the real
//! `ctxgate-rls` binary, a throwaway `redis-server`, and a stand-in RLS that
//! answers too late.
//!
//! `ctxgate-rls` runs as a process, from its release build
//! (`cargo build --release -p ctxgate-rls`), never as a library: the suites
//! test the binary as deployed (command line, logs, crashes and restarts on
//! a fixed address). Like [`crate::Envoy`], every process here is forked
//! from the harness's long-lived spawner thread with
//! `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the test process, and is
//! killed when its value is dropped.
//!
//! Outage tests need the service to go away and come back *on the same
//! address*, because Envoy's cluster names a fixed endpoint: [`Rls::stop`]
//! leaves the port closed (connections are refused), [`SlowRls::start_on`]
//! can take the port over to answer late, and [`Rls::restart`] binds it again.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;
use tokio::sync::oneshot;

use crate::config::Cluster;
use crate::envoy::spawn_guarded;

/// How long a service may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL on drop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The `ctxgate-rls` binary: `$CTXGATE_RLS`, else
/// `<repo>/target/release/ctxgate-rls`.
pub fn rls_binary() -> PathBuf {
    let path = crate::path_from_env("CTXGATE_RLS", "target/release/ctxgate-rls");
    assert!(
        path.is_file(),
        "ctxgate-rls binary {} not found: run `cargo build --release -p ctxgate-rls` \
         (or set CTXGATE_RLS to the binary)",
        path.display()
    );
    path
}

/// Stops `child`: SIGTERM, then SIGKILL after `grace` (zero: SIGKILL now).
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    if !grace.is_zero()
        && let Ok(pid) = libc::pid_t::try_from(child.id())
    {
        // SAFETY: the child is not reaped yet, so the pid is still its own.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_file(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A free port on 127.0.0.1 (bound once and released, so another process
/// could take it in between; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running `ctxgate-rls`, killed when dropped.
pub struct Rls {
    // Field order matters: the process is stopped before its dir is removed.
    child: Option<Child>,
    dir: TempDir,
    redis: Option<String>,
    addr: SocketAddr,
}

impl Rls {
    /// Writes `config_yaml` (envoyproxy/ratelimit format) to a temp dir and
    /// starts `ctxgate-rls --listen 127.0.0.1:0` on it, counting in memory
    /// or, with `redis` (`redis://127.0.0.1:PORT`), in Redis. Returns once
    /// it listens; panics with its log if it exits or does not listen
    /// within 20 s.
    #[track_caller]
    pub fn start(config_yaml: &str, redis: Option<&str>) -> Rls {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-rls-")
            .tempdir()
            .expect("create temp dir for ctxgate-rls");
        std::fs::write(dir.path().join("limits.yaml"), config_yaml).expect("write RLS config");
        let mut rls = Rls {
            child: None,
            dir,
            redis: redis.map(str::to_owned),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        rls.addr = rls.spawn(rls.addr);
        rls
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An HTTP/2 cluster named `name` pointing at this RLS.
    pub fn cluster(&self, name: &str) -> Cluster {
        Cluster::new(name, [self.addr]).http2(true)
    }

    /// Everything the service logged (stderr), over all its (re)starts.
    pub fn log(&self) -> String {
        read_file(&self.log_path())
    }

    /// Kills the service (SIGKILL, like a crash) and waits until it is
    /// gone: from now on connections to [`Rls::addr`] are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::ZERO);
        }
    }

    /// Starts the service again on the same address, with the same config
    /// and storage. Panics if the port was taken meanwhile.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let bound = self.spawn(addr);
        assert_eq!(bound, addr, "ctxgate-rls came back on another address");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("rls.log")
    }

    /// Spawns on `listen` and waits for the "listening on <addr>" line.
    #[track_caller]
    fn spawn(&mut self, listen: SocketAddr) -> SocketAddr {
        let log_path = self.log_path();
        let seen_before = read_file(&log_path).len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open RLS log");
        let mut command = Command::new(rls_binary());
        command
            .args(["--listen", &listen.to_string()])
            .arg("--config")
            .arg(self.dir.path().join("limits.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = &self.redis {
            command.args(["--redis-url", url]);
        }
        let mut child = spawn_guarded(command).expect("spawn ctxgate-rls");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            // The first line it logs once serving:
            // `... INFO ctxgate-rls listening on 127.0.0.1:PORT (gRPC ...`.
            let text = read_file(&log_path);
            let fresh = text.get(seen_before..).unwrap_or("");
            if let Some(addr) = fresh
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok())
            {
                self.child = Some(child);
                return addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ctxgate-rls exited during startup ({status}):\n{fresh}");
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                panic!("ctxgate-rls not listening after {STARTUP_TIMEOUT:?}:\n{fresh}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, STOP_GRACE);
        }
    }
}

/// A throwaway `redis-server` on 127.0.0.1 (no persistence), killed when
/// dropped.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server --port <free> --save '' --appendonly no` and
    /// waits until it answers PING.
    #[track_caller]
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`, for `ctxgate-rls --redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server; its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::ZERO);
        }
    }

    /// Freezes the server (SIGSTOP), like a hung Redis: connections stay
    /// open and commands wait in its sockets, unanswered, until
    /// [`Redis::resume`]; then it runs them all.
    #[track_caller]
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [paused](Redis::pause) server go on (SIGCONT).
    #[track_caller]
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    #[track_caller]
    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("redis-server pid");
        // SAFETY: the child is not reaped yet (we hold it), so the pid is its own.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "cannot signal redis-server: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts (again, empty) on the same port.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child =
            spawn_guarded(command).expect("spawn redis-server (scripts/bootstrap installs it)");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !self.pings() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                panic!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

/// Reading a [`Redis`] over RESP, and outages that keep its data: what the
/// fault tests need to compare Redis's own count with what the gateways
/// admitted.
impl Redis {
    /// Like [`Redis::start`], but the server keeps its data across
    /// [`Redis::shutdown_saving`] and [`Redis::restart_saved`], in `dir`
    /// (`dump.rdb`): a production Redis with persistence, stopped for
    /// maintenance or by a crash it recovers from.
    #[track_caller]
    pub fn start_saving_in(dir: &Path) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.launch(Some(dir));
        redis
    }

    /// Shuts the server down saving its data (`SHUTDOWN SAVE`, into the
    /// dir it was started with): from now on connections are refused, and
    /// [`Redis::restart_saved`] brings the data back.
    #[track_caller]
    pub fn shutdown_saving(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // On success the server closes the connection without a reply.
        let reply = self.try_command(&["SHUTDOWN", "SAVE"]);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                panic!("redis-server did not shut down ({reply:?})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port, with what [`Redis::shutdown_saving`]
    /// saved in `dir`.
    #[track_caller]
    pub fn restart_saved(&mut self, dir: &Path) {
        self.stop();
        self.launch(Some(dir));
    }

    /// `GET key`: the value, or `None` if there is no such key.
    #[track_caller]
    pub fn get(&self, key: &str) -> Option<String> {
        match self.try_command(&["GET", key]) {
            Ok(Resp::Bulk(value)) => value,
            other => panic!("redis GET {key}: {other:?}"),
        }
    }

    /// `GET key` as a number, 0 if there is no such key.
    #[track_caller]
    pub fn get_u64(&self, key: &str) -> u64 {
        self.get(key).map_or(0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("redis {key} is not a number: {v:?}"))
        })
    }

    /// Sends one command on a fresh connection and reads one reply.
    fn try_command(&self, args: &[&str]) -> std::io::Result<Resp> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request)?;
        Resp::read(&mut std::io::BufReader::new(stream))
    }

    /// Starts `redis-server` on this port, keeping its data in `dir` if
    /// given, and waits until it answers PING.
    #[track_caller]
    fn launch(&mut self, dir: Option<&Path>) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = dir {
            command
                .arg("--dir")
                .arg(dir)
                .args(["--dbfilename", "dump.rdb"]);
        }
        let mut child =
            spawn_guarded(command).expect("spawn redis-server (scripts/bootstrap installs it)");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !self.pings() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                panic!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }
}

/// A RESP reply, as far as the harness reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None`: the null bulk string (no such key).
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

impl Resp {
    fn read(reader: &mut impl std::io::BufRead) -> std::io::Result<Resp> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| invalid(format!("bad RESP line {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Integer(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Resp::Bulk(None),
                Ok(len) => {
                    let mut data = vec![0u8; len + 2];
                    reader.read_exact(&mut data)?;
                    data.truncate(len);
                    Resp::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
                }
            },
            "*" => match usize::try_from(number()?) {
                Err(_) => Resp::Array(Vec::new()),
                Ok(n) => Resp::Array(
                    (0..n)
                        .map(|_| Resp::read(reader))
                        .collect::<Result<_, _>>()?,
                ),
            },
            _ => return Err(invalid(format!("bad RESP line {line:?}"))),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Rate Limit Service that answers every call `OK` (no limit), but only
/// after `delay`: an RLS slowed beyond any reasonable deadline. It speaks
/// h2c on a given address, so it can take over the port of a stopped
/// [`Rls`] that Envoy's cluster points at.
pub struct SlowRls {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SlowRls {
    /// Listens on `addr` (`SO_REUSEADDR`, so a port just released works).
    #[track_caller]
    pub fn start_on(addr: SocketAddr, delay: Duration) -> SlowRls {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("SlowRls cannot listen on {addr}: {e}"));
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("listener address");
        let calls = Arc::new(AtomicU64::new(0));
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let thread_calls = calls.clone();
        let thread = std::thread::Builder::new()
            .name(format!("slow-rls-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("register listener");
                    loop {
                        tokio::select! {
                            _ = &mut shutdown_rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let calls = thread_calls.clone();
                                tokio::spawn(async move {
                                    let service = service_fn(move |_request: hyper::Request<Incoming>| {
                                        calls.fetch_add(1, Ordering::SeqCst);
                                        async move {
                                            tokio::time::sleep(delay).await;
                                            Ok::<_, Infallible>(grpc_ok())
                                        }
                                    });
                                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("start SlowRls thread");
        SlowRls {
            addr,
            calls,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls received so far (counted on arrival).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for SlowRls {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A gRPC `RateLimitResponse { overall_code: OK }` with `grpc-status: 0`
/// trailers.
fn grpc_ok() -> hyper::Response<GrpcBody> {
    // Field 1 (overall_code), varint 1 (OK), behind the 5-byte gRPC frame
    // header (uncompressed, big-endian length).
    let message = [0x08, 0x01];
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let mut response = hyper::Response::new(GrpcBody {
        frames: vec![Frame::trailers(trailers), Frame::data(Bytes::from(framed))],
    });
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A body of prepared frames (popped from the back).
struct GrpcBody {
    frames: Vec<Frame<Bytes>>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}
