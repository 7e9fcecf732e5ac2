//! Real MCP peers for tests: the demo MCP server and a command-line MCP
//! client, both on the official Python SDK (`mcp` 2.3.0, installed into
//! `.venv` by `scripts/bootstrap`), so the gateway is tested against an
//! implementation the project did not write.
//!
//! [`McpServer`] runs `services/mcp-demo/server.py` as a process on a port
//! the kernel picks, and reads back what it received: the server logs every
//! HTTP request as one line (`mcp-demo request {json}`), which
//! [`McpServer::requests`] parses. [`McpClient`] runs
//! `services/mcp-demo/client.py` once per operation and parses its JSON
//! lines into an [`McpOutput`].
//!
//! Like the other processes of the harness, both are forked from its
//! long-lived spawner thread with `PR_SET_PDEATHSIG(SIGKILL)`, so they die
//! with the test process, and the server is stopped when dropped.
//!
//! ```no_run
//! use ctxgate_e2e::mcp::{McpClient, McpServer, Sessions};
//! use serde_json::json;
//!
//! let server = McpServer::start(Sessions::Stateful);
//! let client = McpClient::new(server.url());
//! let read = client.call("read_context", &json!({"path": "projects/engineering/roadmap"}));
//! assert_eq!(read.structured()["path"], "projects/engineering/roadmap");
//! ```

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::config::Cluster;
use crate::envoy::spawn_guarded;
use crate::rls::stop_child;

/// How long the server may take to start (Python imports the SDK first:
/// about 1.5 s on a loaded 2-core machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL on drop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// What the client waits for each answer (`--timeout`), by default.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client process may take beyond its answer timeout (Python
/// start-up, the handshake) before the harness kills it.
const CLIENT_SLACK: Duration = Duration::from_secs(30);

/// The Python that has the SDK: `$CTXGATE_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let path = crate::path_from_env("CTXGATE_PYTHON", ".venv/bin/python");
    assert!(
        path.is_file(),
        "Python {} not found: run `make bootstrap` (creates .venv with the MCP SDK) \
         or set CTXGATE_PYTHON to a Python that has mcp==2.3.0",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    crate::repo_root().join("services/mcp-demo").join(name)
}

/// Whether the server issues sessions to clients of the 2025 revisions.
/// 2026-07-28 requests carry no session in either mode: the SDK serves them
/// one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sessions {
    /// No `Mcp-Session-Id`: every request is served on its own.
    Stateless,
    /// `initialize` issues an `Mcp-Session-Id` that later requests must carry.
    Stateful,
}

/// A running `services/mcp-demo/server.py`, stopped when dropped.
pub struct McpServer {
    // Field order matters: the process is stopped before its dir is removed.
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
}

impl McpServer {
    /// Starts the server with the default delay between streamed events
    /// (100 ms).
    #[track_caller]
    pub fn start(sessions: Sessions) -> McpServer {
        McpServer::start_with_delay(sessions, Duration::from_millis(100))
    }

    /// Starts the server on 127.0.0.1, a port the kernel picks, with
    /// `event_delay` between the events `traverse_context` streams. Returns
    /// once it serves; panics with its log if it exits or does not serve
    /// within 20 s.
    #[track_caller]
    pub fn start_with_delay(sessions: Sessions, event_delay: Duration) -> McpServer {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-mcp-")
            .tempdir()
            .expect("create temp dir for the MCP server");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("create the MCP server log");
        let mut command = Command::new(python());
        command
            .arg(script("server.py"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--event-delay-ms", &event_delay.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if sessions == Sessions::Stateful {
            command.arg("--stateful");
        }
        let mut child = spawn_guarded(command).expect("spawn the MCP demo server");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Logged once the app has started: `mcp-demo listening {"address":"127.0.0.1:PORT",...}`.
            if let Some(addr) = log_records(&text, "listening")
                .next()
                .and_then(|line| line["address"].as_str()?.parse::<SocketAddr>().ok())
            {
                return McpServer {
                    child: Some(child),
                    dir,
                    addr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the MCP demo server exited during startup ({status}):\n{text}");
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                panic!("the MCP demo server is not serving after {STARTUP_TIMEOUT:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// An HTTP/1.1 cluster named `name` pointing at this server (uvicorn
    /// speaks HTTP/1.1 only).
    pub fn cluster(&self, name: &str) -> Cluster {
        Cluster::new(name, [self.addr])
    }

    /// Everything the server logged (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Every HTTP request the server received so far, oldest first. Each is
    /// logged before the SDK handles it, so a request is here once its
    /// response (or its first streamed event) arrived.
    pub fn requests(&self) -> Vec<McpRequest> {
        log_records(&self.log(), "request")
            .map(|record| McpRequest::from_record(&record))
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, STOP_GRACE);
        }
    }
}

/// The JSON of each `mcp-demo <kind> {json}` line in `log`.
fn log_records<'a>(log: &'a str, kind: &str) -> impl Iterator<Item = Value> + 'a {
    let prefix = format!("mcp-demo {kind} ");
    log.lines()
        .filter_map(move |line| serde_json::from_str(line.strip_prefix(prefix.as_str())?).ok())
}

/// One HTTP request as the demo MCP server received it: which MCP message
/// it carried and which identity headers arrived. Never a header's secret:
/// for `Authorization` only whether one arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpRequest {
    /// `POST`, `GET` (the 2025 revisions' server-to-client stream), `DELETE`.
    pub http_method: String,
    /// The JSON-RPC method of the body (`initialize`, `tools/call`, ...).
    pub rpc_method: Option<String>,
    /// The tool or prompt name, or the resource URI.
    pub name: Option<String>,
    pub authorization: bool,
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    /// The routing tags that arrived (`x-mcp-method`, `x-mcp-tool`).
    pub tag_method: Option<String>,
    pub tag_tool: Option<String>,
}

impl McpRequest {
    fn from_record(record: &Value) -> McpRequest {
        let text = |key: &str| record[key].as_str().map(str::to_owned);
        McpRequest {
            http_method: text("http").unwrap_or_default(),
            rpc_method: text("rpc"),
            name: text("name"),
            authorization: record["authorization"].as_bool().unwrap_or(false),
            tenant: text("tenant"),
            subject: text("subject"),
            session_id: text("session_id"),
            protocol_version: text("protocol_version"),
            tag_method: text("tag_method"),
            tag_tool: text("tag_tool"),
        }
    }
}

/// `services/mcp-demo/client.py` against one MCP endpoint: each operation
/// runs the client once and returns what it printed.
#[derive(Clone, Debug)]
pub struct McpClient {
    url: String,
    token: Option<String>,
    protocol_version: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl McpClient {
    /// A client of `url` (e.g. [`McpServer::url`], or the gateway's
    /// `http://127.0.0.1:PORT/mcp`) that negotiates the way the SDK does by
    /// default: `server/discover` at 2026-07-28, else the 2025 handshake.
    pub fn new(url: impl Into<String>) -> McpClient {
        McpClient {
            url: url.into(),
            token: None,
            protocol_version: None,
            headers: Vec::new(),
            timeout: ANSWER_TIMEOUT,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn token(mut self, token: &str) -> McpClient {
        self.token = Some(token.to_owned());
        self
    }

    /// Speaks this revision: `2026-07-28` without a probe, a 2025 one
    /// through the `initialize` handshake offering it.
    pub fn protocol_version(mut self, version: &str) -> McpClient {
        self.protocol_version = Some(version.to_owned());
        self
    }

    /// Sends this header with every request.
    pub fn header(mut self, name: &str, value: &str) -> McpClient {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// How long the client waits for each answer (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> McpClient {
        self.timeout = timeout;
        self
    }

    /// `tools/list`.
    #[track_caller]
    pub fn list_tools(&self) -> McpOutput {
        self.run(&["list-tools"])
    }

    /// `tools/call` without a progress token.
    #[track_caller]
    pub fn call(&self, tool: &str, args: &Value) -> McpOutput {
        self.run(&["call", tool, "--args", &args.to_string()])
    }

    /// `tools/call` with a progress token and log messages opted in: the
    /// output has the events as they arrived, see
    /// [`McpOutput::time_to_first_event`].
    #[track_caller]
    pub fn call_streamed(&self, tool: &str, args: &Value) -> McpOutput {
        self.run(&["call", tool, "--args", &args.to_string(), "--progress"])
    }

    /// `resources/read`.
    #[track_caller]
    pub fn read_resource(&self, uri: &str) -> McpOutput {
        self.run(&["read-resource", uri])
    }

    /// `prompts/get`.
    #[track_caller]
    pub fn get_prompt(&self, name: &str, args: &Value) -> McpOutput {
        self.run(&["get-prompt", name, "--args", &args.to_string()])
    }

    /// Initializes (2025 handshake unless a protocol version was set), lists
    /// the tools on the session and leaves the session open; the result is
    /// `{"session_id": ...}`.
    #[track_caller]
    pub fn open_session(&self) -> McpOutput {
        self.run(&["session-id"])
    }

    /// `tools/call` on `session_id` without a handshake, as a client that
    /// got hold of another client's session id would send it.
    #[track_caller]
    pub fn call_with_session(&self, session_id: &str, tool: &str, args: &Value) -> McpOutput {
        self.run(&[
            "call-with-session",
            session_id,
            tool,
            "--args",
            &args.to_string(),
        ])
    }

    /// Sends an unauthenticated request, follows the 401's `resource_metadata`
    /// with the SDK's discovery helpers, and returns the protected resource
    /// metadata found.
    #[track_caller]
    pub fn discover(&self) -> McpOutput {
        self.run(&["discover"])
    }

    /// Runs `client.py <options> <command...>`. Panics with its output on a
    /// harness fault (a wrong command line, a crash, no JSON outcome, or no
    /// exit within the answer timeout and 30 s more).
    #[track_caller]
    pub fn run(&self, command: &[&str]) -> McpOutput {
        let mut cmd = Command::new(python());
        cmd.arg(script("client.py"))
            .args(["--url", &self.url])
            .args(["--timeout", &self.timeout.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = &self.token {
            cmd.args(["--token", token]);
        }
        if let Some(version) = &self.protocol_version {
            cmd.args(["--protocol-version", version]);
        }
        for (name, value) in &self.headers {
            cmd.args(["--header", &format!("{name}: {value}")]);
        }
        cmd.args(command);
        let mut child = spawn_guarded(cmd).expect("spawn the MCP demo client");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + self.timeout + CLIENT_SLACK;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, Duration::ZERO);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let context = || format!("client.py {command:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let Some(status) = status else {
            panic!("the MCP client did not exit in time: {}", context());
        };
        let lines: Vec<Value> = stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{}", context()))
            })
            .collect();
        let answered = match status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("the MCP client failed ({status}): {}", context()),
        };
        assert!(
            lines
                .last()
                .is_some_and(|last| last.get("result").is_some() || last.get("error").is_some()),
            "the MCP client printed no outcome: {}",
            context()
        );
        McpOutput {
            lines,
            answered,
            stderr,
        }
    }
}

/// Reads a child's pipe to the end on its own thread (so a full pipe never
/// blocks the child while the harness waits for it to exit).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// What one run of the client printed: its events, then its outcome.
#[derive(Clone, Debug)]
pub struct McpOutput {
    /// Every line, in order; the last is the outcome.
    pub lines: Vec<Value>,
    /// Whether the server answered (exit 0), with a result or an error;
    /// false when no answer came (connection refused or closed, timeout).
    pub answered: bool,
    pub stderr: String,
}

impl McpOutput {
    /// The last line: `{"result": ...}` or `{"error": ...}`.
    pub fn outcome(&self) -> &Value {
        self.lines.last().unwrap_or(&Value::Null)
    }

    /// The MCP result. Panics if the outcome is an error.
    #[track_caller]
    pub fn result(&self) -> &Value {
        let outcome = self.outcome();
        assert!(
            outcome.get("result").is_some(),
            "expected a result, got {outcome}\n{}",
            self.stderr
        );
        &outcome["result"]
    }

    /// `{"http_status", "jsonrpc_code", "message", "www_authenticate"}`.
    /// Panics if the outcome is a result.
    #[track_caller]
    pub fn error(&self) -> &Value {
        let outcome = self.outcome();
        assert!(
            outcome.get("error").is_some(),
            "expected an error, got {outcome}"
        );
        &outcome["error"]
    }

    /// A tool result's `structuredContent`. Panics if the outcome is an
    /// error or the tool failed (`isError`).
    #[track_caller]
    pub fn structured(&self) -> &Value {
        let result = self.result();
        assert_eq!(result["isError"], false, "the tool failed: {result}");
        &result["structuredContent"]
    }

    /// The protocol revision the client spoke.
    pub fn protocol_version(&self) -> Option<&str> {
        self.outcome()["protocol_version"].as_str()
    }

    /// The `Mcp-Session-Id` the server issued, if it issued one.
    pub fn session_id(&self) -> Option<&str> {
        self.outcome()["session_id"].as_str()
    }

    /// Progress and log events, as they arrived.
    pub fn events(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|line| line.get("event").is_some())
            .collect()
    }

    /// When each event arrived, counted from when the call was sent (the
    /// client's monotonic clock).
    pub fn event_times(&self) -> Vec<Duration> {
        self.events()
            .iter()
            .map(|event| seconds(&event["t"]))
            .collect()
    }

    /// From sending the call to its first progress or log event; `None` if
    /// no event came.
    pub fn time_to_first_event(&self) -> Option<Duration> {
        self.event_times().first().copied()
    }

    /// From sending the call to its result (calls only).
    pub fn time_to_result(&self) -> Option<Duration> {
        self.outcome().get("t").map(seconds)
    }
}

fn seconds(value: &Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().unwrap_or(0.0).max(0.0))
}
