//! Accepting HTTP connections: at most `http.max_connections` at once (further
//! ones wait in the listen backlog), each cut off when its client takes longer
//! than `http.header_timeout` to send a request's line and headers (also the idle
//! limit of a keep-alive connection), and a graceful stop: on shutdown no new
//! connection is accepted, requests in flight are answered, then each connection
//! closes.
//!
//! `axum::serve` offers neither a header timeout nor a cap, so this is the small
//! accept loop it would be, on hyper's HTTP/1.1 server with tokio's timer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;

/// Serves `router` on `listener` until `shutdown` fires, then waits for the
/// connections to finish their requests. Dropping the returned future (after a
/// grace period) aborts the connections still open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept(&listener, &slots) => {
                let (stream, peer, slot) = accepted;
                connections.spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    settings,
                    shutdown.clone(),
                    slot,
                ));
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Waits for a free slot, then for a connection. Cancel-safe: a slot taken while
/// no connection came is given back when the future is dropped.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, slot),
            // The client gave up before we took its connection: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            // Out of file descriptors or similar: wait instead of spinning.
            Err(e) => {
                tracing::error!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Serves one connection; `_slot` frees its place in the cap when it ends.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let service = TowerToHyperService::new(router);
    // Handlers learn the peer as axum's `ConnectInfo`, as with `axum::serve`.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&service, request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Answers the request in flight, if any, then closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up: routine on the open internet.
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
