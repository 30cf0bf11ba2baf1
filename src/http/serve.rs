//! The accept loop: HTTP/1 connections served by hyper with a header read
//! timeout, a write timeout, a bound on connections at once and on those of
//! one client address, and graceful shutdown.
//!
//! `axum::serve` sets none of these bounds, so a client that sends half a
//! request header, or never reads its answer, holds its connection (and its
//! file descriptor) forever, and enough of them exhaust the process.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use ipnet::IpNet;
use tokio_io_timeout::TimeoutStream;

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;

use super::peers::{self, Connections};

/// The bounds of the accept loop.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// A connection whose request headers have not all arrived after this
    /// long is closed (hyper answers 408 first when it can).
    pub header_read_timeout: Duration,
    /// Connections served at once. Past it the loop stops accepting, so new
    /// connections wait in the listen backlog until one closes (and past the
    /// backlog the operating system refuses them).
    pub max_connections: usize,
    /// Largest read buffer of one connection (`READ_BUFFER_BYTES`).
    pub read_buffer_bytes: usize,
    /// Connections of one client address at once
    /// (`MAX_CONNECTIONS_PER_IP`, see [`peers`]).
    pub max_connections_per_ip: usize,
    /// Proxies whose connections carry many clients and are not refused.
    pub trusted_proxies: Vec<IpNet>,
    /// A connection whose answer has waited this long for the client to
    /// read it ends (`RESPONSE_WRITE_TIMEOUT_SECS`).
    pub write_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting (the listener is closed) and waits for every connection to
/// finish its request in flight. Each connection is counted in
/// `connections` under its client address while it lives.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = http1::Builder::new();
    // A connection's read buffer grows up to this (hyper's default is
    // about 408 KiB). Every chunk of an upload's body is cut from it, and a
    // streamed upload holds a few chunks at once (being parsed, waiting for
    // storage, being sent), so it bounds an upload's memory. The default of
    // 64 KiB keeps 10 concurrent uploads under 64 MiB; 1 MiB reads cost
    // about a sixth less CPU per byte and several times the memory
    // (docs/benchmarks.md).
    builder
        .max_buf_size(bounds.read_buffer_bytes)
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then a connection: at the bound nothing is accepted.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of
                    // spinning, as axum::serve does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let (held, count) = connections.enter(peers::client_of(remote.ip()));
        let limit = bounds.max_connections_per_ip;
        let proxied = bounds
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&remote.ip()));
        // One too many from this address: its request is answered 429 and
        // the connection closed, unread bodies and all.
        let refused = count > limit && !proxied;
        if refused {
            metrics::counter!("intake_concurrency_refusals_total", "bound" => "address_connections")
                .increment(1);
        }
        let router = router.clone();
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            let router = router.clone();
            async move {
                if refused {
                    return Ok(peers::refusal(limit));
                }
                router.oneshot(req.map(Body::new)).await
            }
        });
        // A write that the client leaves waiting (its window and our send
        // buffer full) for the write timeout ends the connection, and with
        // it the request's answer and all it holds. The timer runs only
        // while a write waits, so a slow handler is not the client's fault.
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(bounds.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let connection = graceful.watch(builder.serve_connection(io, service));
        metrics::gauge!("intake_http_connections_open").increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header and write timeouts, resets and the like: the
                // client's doing.
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            metrics::gauge!("intake_http_connections_open").decrement(1.0);
            drop(held);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
