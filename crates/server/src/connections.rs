//! The connection loop: accepts TCP connections up to a ceiling, serves the router on each with hyper's
//! HTTP/1, and closes a connection that takes too long to send a request head or sits idle too long.
//!
//! `axum::serve` bounds none of this, so a client that opens a connection and sends nothing (or a request
//! head one line every few seconds) would hold a file descriptor for as long as it likes. Here:
//! - a connection must deliver a complete request head within `header_read_timeout` of being accepted, and
//!   of the first byte of each later head;
//! - between requests, a keep-alive connection may sit idle for `idle_timeout`;
//! - at most `max_connections` are open; beyond that a new one is answered 503 and closed at once (not
//!   left in the kernel's backlog, and not served at the cost of file descriptors the store needs).
//!
//! Hyper's own `header_read_timeout` starts whenever hyper waits for a head, including the idle wait
//! between keep-alive requests, so it cannot give the two limits separately. Each connection keeps its
//! own deadline instead (see [`Clock`]), and hyper's is turned off: it armed a timer for every request head
//! of a keep-alive connection (a boxed `Sleep`, registered in tokio's timer wheel and taken out again), about
//! 800 instructions per request under callgrind, to enforce a limit the clock already enforces.
//! The request itself, once its head has arrived, is bounded by the request timeout of the router.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long a connection may take, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a complete request head: from the accept, and from the first byte of each later head.
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may sit between the end of a response and the next request.
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond, new ones are refused (503) and closed.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stopping` turns true, then stops accepting, lets each connection
/// finish the request it is serving (an idle one is closed at once), and returns when every connection
/// has closed.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, mut stopping: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            biased;
            _ = stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or a connection reset before it was accepted:
                    // pause rather than spin, and keep serving the connections already open.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("http_connections_refused_total").increment(1);
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, router.clone(), limits, stopping.clone(), slot));
    }
    drop(listener);
    // Every connection holds a slot until it closes: all slots back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Completes once shutdown has begun (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in the caller's `select!`.
    let _ = stopping.wait_for(|s| *s).await;
}

/// Turns a connection over the ceiling away at once: a 503 if the socket takes it without waiting, then close.
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
        connection: close\r\ncontent-length: 28\r\n\r\ntoo many connections; retry\n";
    let _ = stream.try_write(BUSY);
}

/// Where a connection stands: serving a request (no deadline of its own), or waiting for a head or for
/// the next request, with the instant it is closed if nothing more happens.
struct Clock {
    limits: Limits,
    state: Mutex<Waiting>,
}

struct Waiting {
    /// Requests being served (HTTP/1: one at most, but a count cannot go wrong).
    busy: usize,
    /// Which limit runs while none is: "head" or "idle".
    phase: &'static str,
    deadline: Instant,
}

impl Clock {
    fn new(limits: Limits) -> Arc<Self> {
        let waiting = Waiting { busy: 0, phase: "head", deadline: Instant::now() + limits.header_read_timeout };
        Arc::new(Self { limits, state: Mutex::new(waiting) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived. While idle they are the start of the next head, which then has the head limit.
    fn on_read(&self) {
        let mut w = self.lock();
        if w.busy == 0 && w.phase == "idle" {
            w.phase = "head";
            w.deadline = Instant::now() + self.limits.header_read_timeout;
        }
    }

    /// A head arrived and its request is served: no connection deadline until its response is sent.
    fn start(self: &Arc<Self>) -> Serving {
        self.lock().busy += 1;
        Serving(self.clone())
    }

    /// When this connection is closed if nothing happens; `None` while a request is served.
    fn deadline(&self) -> Option<Instant> {
        let w = self.lock();
        (w.busy == 0).then_some(w.deadline)
    }

    /// The limit that ran out, if one did.
    fn expired(&self, now: Instant) -> Option<&'static str> {
        let w = self.lock();
        (w.busy == 0 && now >= w.deadline).then_some(w.phase)
    }
}

/// A request being served; dropped with its response body (once hyper has sent it), which starts the idle
/// limit.
struct Serving(Arc<Clock>);

impl Drop for Serving {
    fn drop(&mut self) {
        let mut w = self.0.lock();
        w.busy = w.busy.saturating_sub(1);
        if w.busy == 0 {
            w.phase = "idle";
            w.deadline = Instant::now() + self.0.limits.idle_timeout;
        }
    }
}

/// The socket, telling the clock when bytes arrive.
struct Tracked {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts a connection in `http_connections_open` for as long as it lives.
struct Open;

impl Open {
    fn enter() -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

/// Serves one connection until it ends, a limit runs out, or shutdown has let its last request finish.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _open = Open::enter();
    let clock = Clock::new(limits);
    let io = TokioIo::new(Tracked { stream, clock: clock.clone() });
    let service = {
        let clock = clock.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let serving = clock.start();
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await.unwrap_or_else(|e| match e {});
                // The clock's idle limit starts when hyper drops the body, after sending its last byte.
                let response = response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &serving;
                        frame
                    }))
                });
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder.header_read_timeout(None); // the clock's job (see the module's documentation)
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stop_seen = false;
    loop {
        // While a request is served, look again after the shorter limit (its response may be sent by then).
        let wake =
            clock.deadline().unwrap_or_else(|| Instant::now() + limits.header_read_timeout.min(limits.idle_timeout));
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped(&mut stopping), if !stop_seen => {
                stop_seen = true;
                if clock.deadline().is_some() {
                    return; // no request on it: close now
                }
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Some(phase) = clock.expired(Instant::now()) {
                    metrics::counter!("http_connections_timed_out_total", "phase" => phase).increment(1);
                    tracing::debug!(phase, "closing a connection: its time limit ran out");
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}
