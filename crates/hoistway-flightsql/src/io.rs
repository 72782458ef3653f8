//! Connections for tonic: TCP, or TLS with the server's current certificate (reloaded as the
//! other listeners' are), each telling the service its peer and whether it is encrypted.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Who is on a connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub secure: bool,
}

pub enum Io {
    Plain(TcpStream, SocketAddr),
    Tls(Box<TlsStream<TcpStream>>, SocketAddr),
}

impl Connected for Io {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Io::Plain(_, addr) => Peer {
                addr: *addr,
                secure: false,
            },
            Io::Tls(_, addr) => Peer {
                addr: *addr,
                secure: true,
            },
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The server's acceptor with HTTP/2 offered by ALPN, as gRPC clients require.
fn grpc(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Accepted connections; TLS handshakes run on their own tasks, so a slow client holds back
/// nobody. The stream ends when the listener task does (with the server).
pub fn incoming(
    listener: TcpListener,
    tls: watch::Receiver<Option<TlsAcceptor>>,
) -> impl Stream<Item = io::Result<Io>> {
    let (tx, rx) = mpsc::channel::<io::Result<Io>>(64);
    tokio::spawn(async move {
        let mut current: Option<(TlsAcceptor, TlsAcceptor)> = None;
        loop {
            let (socket, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "flight listener could not accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = tls.borrow().clone();
            let acceptor = acceptor.map(|a| match &current {
                // Rebuilt only when the certificate was reloaded.
                Some((base, h2)) if Arc::ptr_eq(base.config(), a.config()) => h2.clone(),
                _ => {
                    let h2 = grpc(&a);
                    current = Some((a, h2.clone()));
                    h2
                }
            });
            let tx = tx.clone();
            match acceptor {
                None => {
                    if tx.send(Ok(Io::Plain(socket, addr))).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            acceptor.accept(socket),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(Io::Tls(Box::new(stream), addr))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, error = %e, "flight TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%addr, "flight TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
