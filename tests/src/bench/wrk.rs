//! Driving `wrk` and reading what it prints.
//!
//! Static loads (no token, one repeated token) use plain `-H` headers, so
//! wrk stays on its fast path with no Lua per request. Fresh-token loads use
//! a generated Lua script whose `request()` takes the next token of a pool
//! file; each wrk thread walks the pool with a stride of the thread count,
//! so threads never send the same token, and `done()` prints how many
//! tokens were used and whether any thread ran out and wrapped around.
//! POST loads (MCP calls) use a generated Lua script too, but one that only
//! sets `wrk.method`, `wrk.body` and `wrk.headers` at the top level: wrk
//! builds the request once from them and stays on its fast path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::tokens::Pool;

/// wrk's load shape; the same for every run of a benchmark.
#[derive(Clone, Debug)]
pub struct Params {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

impl Params {
    /// As written in the report: `-t1 -c32 -d8s --latency`.
    pub fn describe(&self) -> String {
        format!(
            "-t{} -c{} -d{}s --latency",
            self.threads,
            self.connections,
            self.duration.as_secs()
        )
    }
}

/// What to send.
pub enum Request<'a> {
    /// The same request every time, with these extra headers.
    Static { headers: Vec<(String, String)> },
    /// A new bearer token from `pool` on every request.
    Tokens {
        pool: &'a Pool,
        script_dir: &'a Path,
    },
    /// The same `POST` every time, with these headers and this body.
    Post {
        headers: Vec<(String, String)>,
        body: &'a str,
        script_dir: &'a Path,
    },
}

/// Parsed wrk output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub requests_per_sec: f64,
    /// Completed requests (`N requests in ...`).
    pub requests: u64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// `Non-2xx or 3xx responses` (wrk counts statuses above 399).
    pub non_2xx_3xx: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
    /// For token pools: tokens taken from the pool, and whether a thread
    /// reached the end of the pool and started over.
    pub tokens_used: Option<u64>,
    pub tokens_wrapped: bool,
}

/// wrk's version line, or an error telling how to install it.
pub fn version() -> Result<String> {
    // `wrk -v` prints the version and usage, and exits with status 1.
    let output = Command::new("wrk").arg("-v").output().map_err(|e| {
        anyhow!("cannot run wrk ({e}): install it with `make bootstrap` (Debian package wrk)")
    })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines()
        .find(|l| l.starts_with("wrk "))
        .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
        .ok_or_else(|| anyhow!("`wrk -v` printed no version line:\n{text}"))
}

/// Runs wrk against `addr` and parses its report.
pub fn run(params: &Params, addr: SocketAddr, path: &str, request: &Request) -> Result<Outcome> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", params.threads))
        .arg(format!("-c{}", params.connections))
        .arg(format!("-d{}s", params.duration.as_secs()))
        .arg("--latency");
    let _script = match request {
        Request::Static { headers } => {
            for (name, value) in headers {
                command.arg("-H").arg(format!("{name}: {value}"));
            }
            None
        }
        Request::Tokens { pool, script_dir } => {
            let script = tempfile::Builder::new()
                .prefix("tokens-")
                .suffix(".lua")
                .tempfile_in(script_dir)
                .context("cannot create the wrk script")?;
            std::fs::write(script.path(), token_script(pool, path, params.threads))
                .context("cannot write the wrk script")?;
            command.arg("-s").arg(script.path());
            Some(script)
        }
        Request::Post {
            headers,
            body,
            script_dir,
        } => {
            let script = tempfile::Builder::new()
                .prefix("post-")
                .suffix(".lua")
                .tempfile_in(script_dir)
                .context("cannot create the wrk script")?;
            std::fs::write(script.path(), post_script(headers, body))
                .context("cannot write the wrk script")?;
            command.arg("-s").arg(script.path());
            Some(script)
        }
    };
    command.arg(format!("http://{addr}{path}"));
    let output = command
        .output()
        .map_err(|e| anyhow!("cannot run wrk ({e}): install it with `make bootstrap`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("cannot parse wrk's output:\n{stdout}"))
}

/// The Lua script for a token pool; see the module docs.
fn token_script(pool: &Pool, path: &str, threads: u32) -> String {
    let mut script = String::new();
    let _ = writeln!(
        script,
        "-- generated by ctxgate-bench: a new bearer token on every request\n\
         local tokens_file = {file:?}\n\
         local path = {path:?}\n\
         local stride = {threads}",
        file = pool.path.display().to_string(),
    );
    script.push_str(
        r#"local threads = {}

function setup(thread)
  thread:set("ctxgate_first", #threads)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(tokens_file) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  if #tokens == 0 then error("no tokens in " .. tokens_file) end
  cursor = ctxgate_first
  used = 0
  wrapped = 0
end

function request()
  if cursor >= #tokens then
    cursor = cursor % #tokens
    wrapped = 1
  end
  local token = tokens[cursor + 1]
  cursor = cursor + stride
  used = used + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end

function done(summary, latency, requests)
  local used_total, wrapped_any = 0, 0
  for _, thread in ipairs(threads) do
    used_total = used_total + thread:get("used")
    wrapped_any = math.max(wrapped_any, thread:get("wrapped"))
  end
  io.write(string.format("ctxgate-bench tokens: used %d wrapped %d\n", used_total, wrapped_any))
end
"#,
    );
    script
}

/// The Lua script for a static `POST`: top-level settings only, no
/// `request()`, so wrk formats the request once per thread.
fn post_script(headers: &[(String, String)], body: &str) -> String {
    let mut script = String::from(
        "-- generated by ctxgate-bench: the same POST on every request\n\
         wrk.method = \"POST\"\n",
    );
    let _ = writeln!(script, "wrk.body = {}", lua_string(body));
    for (name, value) in headers {
        let _ = writeln!(
            script,
            "wrk.headers[{}] = {}",
            lua_string(name),
            lua_string(value)
        );
    }
    script
}

/// `text` as a Lua string literal: printable ASCII as is, everything else
/// (and `"`, `\\`) as a decimal escape, which Lua reads byte for byte.
fn lua_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for byte in text.bytes() {
        if (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "\\{byte:03}");
        }
    }
    out.push('"');
    out
}

/// Parses wrk 4's report (with `--latency`).
pub fn parse(text: &str) -> Result<Outcome> {
    let mut out = Outcome::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => rps = value.parse::<f64>().ok(),
            ["50%", value] => p50 = latency_us(value),
            ["99%", value] => p99 = latency_us(value),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => out.non_2xx_3xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                out.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["ctxgate-bench", "tokens:", "used", used, "wrapped", wrapped] => {
                out.tokens_used = Some(used.parse()?);
                out.tokens_wrapped = *wrapped != "0";
            }
            _ => {}
        }
    }
    out.requests_per_sec = rps.ok_or_else(|| anyhow!("no `Requests/sec:` line"))?;
    out.p50_us = p50.ok_or_else(|| anyhow!("no `50%` latency line (was --latency given?)"))?;
    out.p99_us = p99.ok_or_else(|| anyhow!("no `99%` latency line"))?;
    out.requests = requests.ok_or_else(|| anyhow!("no `N requests in` line"))?;
    Ok(out)
}

/// `853.00us`, `1.23ms`, `2.00s`, `1.50m` in microseconds.
fn latency_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 8s test @ http://127.0.0.1:40000/v1/contexts/projects/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.26ms  506.01us  14.39ms   92.01%
    Req/Sec    25.80k     1.56k   27.94k    82.50%
  Latency Distribution
     50%  853.00us
     75%    1.31ms
     90%    1.76ms
     99%    2.00s
  205311 requests in 8.00s, 25.06MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:  25659.20
Transfer/sec:      3.13MB
ctxgate-bench tokens: used 205343 wrapped 1
";

    #[test]
    fn it_parses_a_full_report_with_mixed_units() {
        let out = parse(SAMPLE).unwrap();
        assert_eq!(out.requests_per_sec, 25659.20);
        assert_eq!(out.requests, 205_311);
        assert!((out.p50_us - 853.0).abs() < 1e-9);
        assert!((out.p99_us - 2_000_000.0).abs() < 1e-6);
        assert_eq!(out.non_2xx_3xx, 17);
        assert_eq!(out.socket_errors, 5);
        assert_eq!(out.tokens_used, Some(205_343));
        assert!(out.tokens_wrapped);
    }

    #[test]
    fn it_reports_what_is_missing() {
        let without_latency: String = SAMPLE
            .lines()
            .filter(|l| !l.contains('%') || l.contains("Stdev"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = parse(&without_latency).unwrap_err().to_string();
        assert!(err.contains("--latency"), "{err}");
    }

    #[test]
    fn it_converts_latency_units() {
        assert_eq!(latency_us("12.50us"), Some(12.5));
        assert_eq!(latency_us("1.50ms"), Some(1500.0));
        assert_eq!(latency_us("1.00m"), Some(60e6));
        assert_eq!(latency_us("7ns"), None);
        assert_eq!(latency_us("ms"), None);
    }

    #[test]
    fn post_scripts_set_method_body_and_headers_only() {
        let headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        let script = post_script(&headers, r#"{"a":"b\c"}"#);
        assert!(script.contains("wrk.method = \"POST\""), "{script}");
        assert!(
            script.contains(r#"wrk.body = "{\034a\034:\034b\092c\034}""#),
            "{script}"
        );
        assert!(script.contains(r#"wrk.headers["Content-Type"] = "application/json""#));
        assert!(!script.contains("function"), "{script}");
    }

    #[test]
    fn lua_strings_escape_quotes_backslashes_and_non_ascii() {
        assert_eq!(lua_string("plain text"), r#""plain text""#);
        assert_eq!(lua_string("\"\\\n"), r#""\034\092\010""#);
        assert_eq!(lua_string("é"), r#""\195\169""#);
    }

    #[test]
    fn token_script_strides_by_thread_count() {
        let pool = Pool {
            path: "/tmp/pool \"x\".txt".into(),
        };
        let script = token_script(&pool, "/p", 3);
        assert!(script.contains(r#"local tokens_file = "/tmp/pool \"x\".txt""#));
        assert!(script.contains("local stride = 3"));
    }
}
