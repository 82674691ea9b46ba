//! The HTTP listener, with CONTRACT §10's limits on the connection itself:
//! a request's headers must arrive within [`HEADER_READ_TIMEOUT`], at most
//! [`Limits::max_connections`] connections are open at once (beyond that,
//! new ones wait in the kernel's backlog rather than take the last file
//! descriptor), and on shutdown connections are drained for at most
//! [`DRAIN_TIMEOUT`]. The whole-request deadline and the body limits are
//! layers of the router (`http/mod.rs`).
//!
//! hyper's header-read timer also runs while a keep-alive connection waits
//! for its next request (hyper 1.x starts it as soon as it waits for a
//! head), so an idle keep-alive connection is closed after
//! [`HEADER_READ_TIMEOUT`] too: within §10's 60 s bound for idle
//! connections, and it is the bound a slow-header attacker cannot stretch.
//!
//! This is axum's own `serve` loop (hyper-util's `TowerToHyperService` over
//! hyper's HTTP/1 connection) with those three additions, which `axum::serve`
//! does not offer; each connection's peer address is put in the request's
//! extensions as [`ConnectInfo`] for the failed-authentication throttle.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// File descriptors kept for everything else (PostgreSQL, calls to Amazon, logs).
const RESERVED_DESCRIPTORS: usize = 128;
const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
}

impl Limits {
    /// At most 4,096 connections, and fewer when the process may open fewer
    /// files (its soft `RLIMIT_NOFILE`, less what everything else needs).
    pub fn for_this_process() -> Limits {
        let max_connections = open_files_limit()
            .map(|limit| limit.saturating_sub(RESERVED_DESCRIPTORS).max(64))
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
            .min(DEFAULT_MAX_CONNECTIONS);
        Limits { max_connections }
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and drains open connections for at most [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was taken: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // An error here is the client's (reset, timed out, malformed).
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after the drain timeout: closing them");
        }
    }
    Ok(())
}
