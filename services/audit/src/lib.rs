//! The demo audit collector and the verifier.
//!
//! The collector takes the audit singleton's batches (one JSON line per
//! POST, see `ctxgate_core::audit::batch`) and appends each to a file
//! exactly as received, once: a batch `(chain, seq)` it already wrote (a
//! retry after a lost answer) is acknowledged and not written again. It
//! learns what it wrote from the file when it starts, so a restart keeps
//! that promise.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use ctxgate_core::audit::batch::{self, Broken, Summary};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Largest batch accepted.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// The file and the last `seq` written per chain.
struct Trail {
    file: File,
    last: HashMap<String, u64>,
}

/// What the collector did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Duplicate,
}

pub struct Collector {
    trail: Mutex<Trail>,
}

impl Collector {
    /// Opens (creates) `path` for appending and reads what it holds.
    pub fn open(path: &Path) -> Result<Collector> {
        let mut last = HashMap::new();
        if let Ok(existing) = File::open(path) {
            for line in BufReader::new(existing).split(b'\n') {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if let Some(head) = batch::head(&line) {
                    let seq = last.entry(head.chain).or_insert(0);
                    *seq = head.seq.max(*seq);
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Collector {
            trail: Mutex::new(Trail { file, last }),
        })
    }

    /// Appends one batch, unless it was written already.
    pub fn append(&self, body: &[u8]) -> Result<Outcome, String> {
        let line = body.strip_suffix(b"\n").unwrap_or(body);
        if line.is_empty() || line.contains(&b'\n') {
            return Err("a batch is one non-empty line".to_owned());
        }
        let head = batch::head(line).ok_or("not a batch: no chain and seq")?;
        let mut trail = self.trail.lock().map_err(|_| "collector state poisoned")?;
        if trail
            .last
            .get(&head.chain)
            .is_some_and(|last| head.seq <= *last)
        {
            return Ok(Outcome::Duplicate);
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        trail
            .file
            .write_all(&bytes)
            .and_then(|()| trail.file.flush())
            .map_err(|e| format!("cannot write: {e}"))?;
        trail.last.insert(head.chain, head.seq);
        Ok(Outcome::Written)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, text: &str| {
            let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
            *response.status_mut() = status;
            response
        };
        if request.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST a batch\n");
        }
        let body = match http_body_util::Limited::new(request.into_body(), MAX_BATCH_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        match self.append(&body) {
            Ok(Outcome::Written) => reply(StatusCode::OK, "written\n"),
            Ok(Outcome::Duplicate) => reply(StatusCode::OK, "duplicate\n"),
            Err(e) => reply(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        }
    }
}

/// Serves `collector` on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, collector: Arc<Collector>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let collector = Arc::clone(&collector);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let collector = Arc::clone(&collector);
                async move { Ok::<_, std::convert::Infallible>(collector.handle(request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A collector on its own thread, stopped (connections closed) when
/// dropped: for tests that take the collector away and bring it back.
pub struct CollectorHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CollectorHandle {
    /// Listens on `addr` (port 0: any) and appends to `out`.
    pub fn spawn(addr: SocketAddr, out: PathBuf) -> Result<CollectorHandle> {
        let collector = Arc::new(Collector::open(&out)?);
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                tokio::select! {
                    () = serve(listener, collector) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task.
        });
        Ok(CollectorHandle {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CollectorHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Verifies a collector's file.
pub fn verify_file(path: &Path) -> Result<Result<Summary, Broken>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    if body.is_empty() {
        return Ok(Ok(Summary::default()));
    }
    Ok(batch::verify(body.split(|b| *b == b'\n')))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use ctxgate_core::audit::batch::{GENESIS, encode};

    fn batches(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let b = encode("c1", seq, &prev, 1, 0, 1, br#"{"decisions":[{}]}"#);
                prev = b.hash;
                b.bytes
            })
            .collect()
    }

    #[test]
    fn a_batch_is_written_once_also_across_a_restart() {
        let dir = tempfile_dir();
        let path = dir.join("trail.jsonl");
        let b = batches(3);
        let collector = Collector::open(&path).unwrap();
        assert_eq!(collector.append(&b[0]), Ok(Outcome::Written));
        assert_eq!(collector.append(&b[1]), Ok(Outcome::Written));
        assert_eq!(collector.append(&b[1]), Ok(Outcome::Duplicate), "a retry");
        drop(collector);
        let collector = Collector::open(&path).unwrap();
        assert_eq!(
            collector.append(&b[1]),
            Ok(Outcome::Duplicate),
            "known after a restart"
        );
        assert_eq!(collector.append(&b[2]), Ok(Outcome::Written));
        assert!(collector.append(b"not json").is_err());
        assert!(
            collector
                .append(b"{\"chain\":\"c\",\"seq\":1}\n{}")
                .is_err(),
            "two lines"
        );
        let summary = verify_file(&path).unwrap().unwrap();
        assert_eq!((summary.batches, summary.events), (3, 3));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ctxgate-audit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
