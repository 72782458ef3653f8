//! A lean HTTP/1.1 keep-alive client over hyper: one connection per worker, reconnect on error.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Connection {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Sent as `Authorization: Bearer …` with every request.
    bearer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    #[error("request timed out")]
    Timeout,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            sender: None,
            bearer: None,
        }
    }

    /// Sends `token` as the bearer token from now on (`None`: no token).
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token;
        self
    }

    pub fn set_bearer(&mut self, token: Option<String>) {
        self.bearer = token;
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream =
                TcpStream::connect(self.addr)
                    .await
                    .map_err(|source| ClientError::Connect {
                        addr: self.addr,
                        source,
                    })?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().unwrap())
    }

    /// Sends one request; on any error the connection is dropped and re-made next time.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let result =
            tokio::time::timeout(timeout, self.send_inner(method, path, content_type, body)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout)
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host.as_str())
            .header("content-type", content_type);
        if let Some(token) = &self.bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(Full::new(body)).expect("valid request")
    }

    /// Sends one request and hands the response body to `on_chunk` as it arrives, with the
    /// response's status (for downloads that show progress). Returns the status; a body that
    /// ends early is an error.
    pub async fn send_streaming(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        mut on_chunk: impl FnMut(StatusCode, &[u8]),
    ) -> Result<StatusCode, ClientError> {
        let req = self.request(method, path, content_type, body);
        let sender = self.connect().await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                on_chunk(status, data);
            }
        }
        Ok(status)
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let req = self.request(method, path, content_type, body);
        let sender = self.connect().await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }
}
