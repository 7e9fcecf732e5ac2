//! Serving: the gRPC server on a listener, on the caller's runtime
//! ([`serve`]) or on a thread of its own ([`spawn_in_thread`], for tests and
//! harnesses that are not async).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Limits;
use crate::counters::{Counters, StorageConfig};
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

/// A server started by [`spawn_in_thread`]; stops it when dropped.
#[derive(Debug)]
pub struct RlsHandle {
    addr: SocketAddr,
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
    let (ready, started) = std::sync::mpsc::channel::<Result<SocketAddr>>();
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
                let _ = ready.send(Ok(local));
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
    let addr = started
        .recv()
        .context("the server thread ended before it started serving")??;
    Ok(RlsHandle {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}
