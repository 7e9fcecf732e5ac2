//! Serving: the gRPC server on a listener, on the caller's runtime
//! ([`serve`]) or on a thread of its own ([`spawn_in_thread`], for tests and
//! harnesses that are not async); and the Prometheus endpoint
//! ([`serve_metrics`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Limits;
use crate::counters::{Counters, StorageConfig};
use crate::metrics::{self, Metrics};
use crate::report::Dedupe;
use crate::service::{RlsService, stamp_deadline};

/// Opens the counter storage and builds the service (with Redis: fails if
/// Redis cannot be reached now).
pub async fn rate_limiter(
    limits: Limits,
    storage: &StorageConfig,
    dedupe: Dedupe,
) -> Result<RlsService> {
    let counters = Counters::open(storage, dedupe).await?;
    Ok(RlsService::new(Arc::new(limits), counters))
}

/// Serves `envoy.service.ratelimit.v3.RateLimitService` and
/// `grpc.health.v1.Health` (SERVING for "" and for the rate limit service)
/// on `listener` until `shutdown` resolves. Then it stops accepting, lets
/// in-flight calls finish for at most `grace` (a client that never acks the
/// HTTP/2 GOAWAY must not hold the process), and returns.
pub async fn serve(
    listener: TcpListener,
    limiter: RlsService,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RlsService>>()
        .await;
    let (drain, draining) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::with_interceptor(
            limiter,
            stamp_deadline,
        ))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = draining.await;
            },
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("the gRPC server failed"),
        () = shutdown => {}
    }
    let _ = drain.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.context("the gRPC server failed"),
        Err(_) => {
            tracing::warn!(
                "connections still open {} ms after shutdown began: closing them",
                grace.as_millis()
            );
            Ok(())
        }
    }
}

/// The metrics endpoint's connections at once; more wait to be accepted.
const METRICS_CONNECTIONS: usize = 32;
/// The longest request head (request line and headers) it reads.
const METRICS_MAX_HEAD_BYTES: usize = 8 << 10;
/// How long a connection may take to send a request head, and stay idle
/// between requests (keep-alive).
const METRICS_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `metrics` for Prometheus over HTTP/1.1 on `listener` until the
/// future is dropped, which closes its connections too: `GET /metrics`
/// answers 200 with the text exposition ([`metrics::CONTENT_TYPE`]); any
/// other path is 404, any other method on `/metrics` 405. Connections are
/// kept alive, at most 32 at once (more wait in the listen backlog), with
/// request heads of at most 8 KiB that must arrive within 10 s of the
/// connection or of the previous answer.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEAD_TIMEOUT)
        .max_header_size(METRICS_MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= METRICS_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: try again shortly.
                tracing::warn!("metrics listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let response = metrics_response(request.method(), request.uri().path(), &metrics);
                std::future::ready(Ok::<_, Infallible>(response))
            }),
        );
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

/// The answer to `method path` on the metrics endpoint.
fn metrics_response(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found: try GET /metrics\n".to_owned(),
        )
    } else if method != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET /metrics\n".to_owned(),
        )
    } else {
        (StatusCode::OK, metrics.snapshot().render())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if status == StatusCode::OK {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

/// A server started by [`spawn_in_thread`]; stops it when dropped.
#[derive(Debug)]
pub struct RlsHandle {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RlsHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, for a tonic client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's counters (what `--metrics-listen` would serve).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops the server now, waiting for its thread to end.
    pub fn shutdown(self) {}
}

impl Drop for RlsHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` (`127.0.0.1:0` for a free port), opens the storage and
/// serves on a background thread with its own tokio runtime, so it works
/// from sync code and from inside any async test alike. Binding, Redis and
/// runtime errors are returned here, not on the thread. Report ids are
/// remembered as [`Dedupe::default`] says.
pub fn spawn_in_thread(addr: &str, limits: Limits, storage: StorageConfig) -> Result<RlsHandle> {
    spawn_in_thread_with(addr, limits, storage, Dedupe::default())
}

/// [`spawn_in_thread`], remembering report ids as `dedupe` says.
pub fn spawn_in_thread_with(
    addr: &str,
    limits: Limits,
    storage: StorageConfig,
    dedupe: Dedupe,
) -> Result<RlsHandle> {
    let addr = addr.to_owned();
    let (ready, started) = std::sync::mpsc::channel::<Result<(SocketAddr, Arc<Metrics>)>>();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ctxgate-rls".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ctxgate-rls-worker")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(e).context("cannot start a tokio runtime"));
                    return;
                }
            };
            runtime.block_on(async move {
                let setup = async {
                    let listener = TcpListener::bind(&addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    let local = listener
                        .local_addr()
                        .context("cannot read the listener address")?;
                    let limiter = rate_limiter(limits, &storage, dedupe).await?;
                    anyhow::Ok((listener, local, limiter))
                };
                let (listener, local, limiter) = match setup.await {
                    Ok(ready_to_serve) => ready_to_serve,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok((local, Arc::clone(limiter.metrics()))));
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = serve(listener, limiter, shutdown, Duration::from_millis(100)).await
                {
                    tracing::error!("{e:#}");
                }
            });
            // Dropping the runtime cancels whatever is left.
            drop(runtime);
        })
        .context("cannot start the server thread")?;
    let (addr, metrics) = started
        .recv()
        .context("the server thread ended before it started serving")??;
    Ok(RlsHandle {
        addr,
        metrics,
        stop: Some(stop),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn answer(method: Method, path: &str, metrics: &Metrics) -> (StatusCode, String, String) {
        let response = metrics_response(&method, path, metrics);
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn answers_get_metrics_only() {
        let metrics = Metrics::new();
        metrics.hits_added(7);
        let (status, content_type, body) = answer(Method::GET, "/metrics", &metrics).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        assert!(body.contains("\nctxgate_rls_hits_total 7\n"), "{body}");

        for path in ["/", "/metrics/", "/metricsx", "/other"] {
            let (status, _, _) = answer(Method::GET, path, &metrics).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(
            answer(Method::POST, "/other", &metrics).await.0,
            StatusCode::NOT_FOUND
        );
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
            let response = metrics_response(&method, "/metrics", &metrics);
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
            assert_eq!(response.headers().get(ALLOW).unwrap(), "GET");
        }
    }
}
