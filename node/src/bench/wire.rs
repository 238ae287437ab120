//! A minimal HTTPS/1.1 keep-alive client for the benchmarks: one connection per load client,
//! a prepared request written as is, the response read by its Content-Length. Both systems
//! under test get the same client, and it spends far less CPU per request than a general
//! HTTP client, so on a small machine the figures measure the servers, not the load generator.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Largest response accepted; benchmark answers are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Where to connect and how to verify the server.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
}

impl Target {
    /// `url` is `https://127.0.0.1:PORT`; the certificate must cover 127.0.0.1.
    pub fn new(url: &str, tls: rustls::ClientConfig) -> Result<Self> {
        let host = url.strip_prefix("https://").context("the wire client speaks HTTPS only")?;
        let host = host.split('/').next().unwrap_or(host);
        Ok(Target { addr: host.parse().context("a loopback address")?, connector: TlsConnector::from(Arc::new(tls)) })
    }

    pub async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let stream = self.connector.connect(name, tcp).await?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096) })
    }
}

/// Builds a POST request with a JSON body and one extra header.
pub fn post(addr: SocketAddr, path: &str, header: (&str, &str), body: &[u8]) -> Vec<u8> {
    post_typed(addr, path, "application/json", Some(header), body)
}

/// Builds a POST request with a body of `content_type` and at most one extra header.
pub fn post_typed(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    header: Option<(&str, &str)>,
    body: &[u8],
) -> Vec<u8> {
    let extra = header.map(|(name, value)| format!("{name}: {value}\r\n")).unwrap_or_default();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

pub struct Conn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// Sends `request` and returns the status and body of the response.
    pub async fn roundtrip(&mut self, request: &[u8]) -> Result<(u16, &[u8])> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed mid-response");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf)? {
                let status = response.code.context("no status")?;
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .context("response without Content-Length")?;
                if head + length > MAX_RESPONSE {
                    bail!("response larger than {MAX_RESPONSE} bytes");
                }
                while self.buf.len() < head + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("connection closed mid-body");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, &self.buf[head..head + length]));
            }
            if self.buf.len() > MAX_RESPONSE {
                bail!("response head larger than {MAX_RESPONSE} bytes");
            }
        }
    }
}
