//! [`LinkProxy`]: a TCP proxy for one directed link between two nodes, with faults.
//!
//! Node A dials node B's Raft address through the proxy of link A→B (`raft.dial_overrides`),
//! so B→A traffic on connections B opens is a different proxy: each direction of each pair
//! fails on its own. Faults:
//!
//! - [`Fault::Pass`] — bytes flow (after the configured delay, if any);
//! - [`Fault::Cut`] — every open connection is reset and new ones are closed at once, as a
//!   partition that a TCP stack notices;
//! - [`Fault::Delay`] — each chunk waits this long before it is forwarded, both directions.
//!
//! The proxy runs on the caller's tokio runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    Delay(Duration),
}

/// Bytes forwarded per read.
const CHUNK: usize = 64 * 1024;

pub struct LinkProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    accept: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, faults) = watch::channel(Fault::Pass);
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if *faults.borrow() == Fault::Cut {
                    // Dropping the socket closes it: the dialler sees its connection fail.
                    drop(inbound);
                    continue;
                }
                let faults = faults.clone();
                let task = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ri, wo, faults.clone()) => {}
                        _ = pump(ro, wi, faults.clone()) => {}
                        _ = cut(faults) => {}
                    }
                });
                let mut tracked = tracked.lock().unwrap_or_else(|p| p.into_inner());
                tracked.retain(|t| !t.is_finished());
                tracked.push(task);
            }
        });
        Ok(LinkProxy { addr, fault, accept, connections })
    }

    /// Where the dialling node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

/// Completes when the link is cut, which ends (and so resets) the connection.
async fn cut(mut faults: watch::Receiver<Fault>) {
    loop {
        if *faults.borrow_and_update() == Fault::Cut {
            return;
        }
        if faults.changed().await.is_err() {
            return;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Fault>,
) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let fault = *faults.borrow();
        if let Fault::Delay(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut reply))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(reply.to_vec())
    }

    #[tokio::test]
    async fn a_cut_link_resets_connections_and_refuses_new_ones_until_it_passes_again() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut open).await.unwrap(), b"ping");

        proxy.set(Fault::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(roundtrip(&mut open).await.is_err(), "an open connection survived the cut");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(roundtrip(&mut fresh).await.is_err(), "a new connection got through the cut");

        proxy.set(Fault::Pass);
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut healed).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn a_delayed_link_delivers_late() {
        let proxy = LinkProxy::start(echo_server().await).await.unwrap();
        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(roundtrip(&mut stream).await.unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(300), "both directions are delayed");
    }
}
