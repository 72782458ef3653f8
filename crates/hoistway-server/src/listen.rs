//! The accept loop: HTTP/1.1 connections with a deadline for the request head (a client that
//! trickles its headers is cut off), the client's address on every request, and a graceful
//! shutdown that lets requests in flight finish; TLS when the binary hands it an acceptor.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time a client has to send a request's head (line and headers), from its first byte.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests (and a new one before
    /// its first request). Lifts post every 10 s over one connection: this must exceed that.
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for open requests.
/// With an acceptor in `tls`, every connection is TLS (the current acceptor at accept time, so
/// a reloaded certificate serves new connections at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: crate::tls::Acceptors,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own head timeout also runs while a keep-alive connection is idle, which would cut
    // every lift that posts every 10 s; `HeadDeadline` applies it from a request's first byte.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(req.map(Body::new))
        });
        let acceptor = tls.borrow().clone();
        match acceptor {
            None => {
                let stream = HeadDeadline::new(stream, limits);
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %remote, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                // The handshake runs on the connection's task, under the same deadline as a
                // request head: a client that stalls it holds no more than its own task.
                let http = http.clone();
                let watcher = graceful.watcher();
                let deadline = limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            metrics::counter!("hoistway_tls_handshake_failures_total").increment(1);
                            tracing::debug!(error = %e, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("hoistway_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let stream = HeadDeadline::new(stream, limits);
                    let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %remote, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open at the end of the drain time were cut");
    }
    Ok(())
}

/// Where a connection is in its request cycle, for [`HeadDeadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests (or before the first): the idle limit applies.
    Idle,
    /// A request's first bytes arrived: its head must be complete by the head limit.
    Head,
    /// The head is complete (its blank line seen): the body and the answer take their time.
    Body,
}

/// Cuts a connection whose request head does not arrive within `header_read_timeout` of its
/// first byte, or that stays idle longer than `idle_timeout`. It watches the bytes read for the
/// blank line that ends a head, and treats the first write after it (the answer) as the end
/// of the request.
struct HeadDeadline<T> {
    inner: T,
    limits: ConnLimits,
    phase: Phase,
    /// The last three bytes of the head so far (a blank line split across reads).
    tail: [u8; 3],
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> HeadDeadline<T> {
    fn new(inner: T, limits: ConnLimits) -> Self {
        Self {
            inner,
            limits,
            phase: Phase::Idle,
            tail: [0; 3],
            deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }

    fn arm(&mut self, after: Duration) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }

    /// The answer is being written: the request is over, and the connection is idle until the
    /// next one. The deadline is polled here too, so that it wakes this connection's task even
    /// if nothing reads before it passes.
    fn answering(&mut self, cx: &mut std::task::Context<'_>) {
        if self.phase != Phase::Idle {
            self.phase = Phase::Idle;
            let idle = self.limits.idle_timeout;
            self.arm(idle);
            let _ = self.deadline.as_mut().poll(cx);
        }
    }

    /// Follows the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.tail = [0; 3];
            self.arm(self.limits.header_read_timeout);
        }
        if self.phase == Phase::Head {
            let mut window = Vec::with_capacity(3 + bytes.len());
            window.extend_from_slice(&self.tail);
            window.extend_from_slice(bytes);
            if window.windows(4).any(|w| w == b"\r\n\r\n") {
                self.phase = Phase::Body;
            } else {
                let n = window.len();
                self.tail.copy_from_slice(&window[n - 3..]);
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HeadDeadline<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.phase != Phase::Body => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let what = if self.phase == Phase::Idle {
                        "idle keep-alive connection closed"
                    } else {
                        "request head not received in time"
                    };
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        what,
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.answering(cx);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.answering(cx);
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The address a request came from, when served by [`serve`].
pub fn remote_addr(req: &axum::extract::Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
