//! The HTTP port carries two protocols: HTTP (WHEP, player, health, metrics) and RFC 6544
//! passive ICE-TCP, so that whatever reaches the port (`kubectl port-forward`, a TCP load
//! balancer, a proxy tunnel) carries the media too. Each accepted connection is told apart by
//! its first bytes, in a task of its own so that a slow one never holds up the others; HTTP
//! connections are then handed to axum, ICE-TCP ones to the media engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use super::media::{Engine, is_ice_tcp_start};

/// A connection must show what it is this soon.
const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that have not yet shown what they are, at most.
const MAX_UNCLASSIFIED: usize = 1024;
/// How often a connection whose first bytes are too few to tell is looked at again.
const PEEK_RETRY: Duration = Duration::from_millis(5);

/// The HTTP half of the port: the connections told apart as HTTP.
pub struct SplitListener {
    http: mpsc::Receiver<(TcpStream, SocketAddr)>,
}

/// Both ends of a request's connection, for handlers that need to know how they were reached.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl SplitListener {
    /// Accepts on `listener` from now on, diverting ICE-TCP connections to `engine`; those
    /// that show nothing in time count as `refused`.
    pub fn spawn(listener: TcpListener, engine: Arc<Engine>, refused: Counter) -> Self {
        let (tx, http) = mpsc::channel(256);
        tokio::spawn(accept_loop(listener, engine, tx, refused));
        SplitListener { http }
    }

    /// The next HTTP connection and its peer.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.http.recv().await {
            Some(conn) => conn,
            // The accept loop only ends with the runtime; never hand out anything again.
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    engine: Arc<Engine>,
    http: mpsc::Sender<(TcpStream, SocketAddr)>,
    refused: Counter,
) {
    let pending = Arc::new(Semaphore::new(MAX_UNCLASSIFIED));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            refused.inc();
            debug!(%peer, "too many connections not yet classified; closing");
            continue;
        };
        let (engine, http, refused) = (engine.clone(), http.clone(), refused.clone());
        tokio::spawn(async move {
            let verdict = tokio::time::timeout(CLASSIFY_TIMEOUT, classify(&stream)).await;
            drop(permit);
            match verdict {
                Ok(Ok(Some(true))) => engine.accept_tcp(stream, peer),
                Ok(Ok(Some(false))) => {
                    let _ = http.send((stream, peer)).await;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {}
                Err(_) => {
                    refused.inc();
                    debug!(%peer, "connection sent nothing to tell it apart; closed");
                }
            }
        });
    }
}

/// `Some(true)` for ICE-TCP, `Some(false)` for anything else (HTTP, or garbage that HTTP will
/// refuse), `None` when the peer closed first.
async fn classify(stream: &TcpStream) -> std::io::Result<Option<bool>> {
    let mut head = [0u8; 10];
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(ice) = is_ice_tcp_start(&head[..n]) {
            return Ok(Some(ice));
        }
        tokio::time::sleep(PEEK_RETRY).await;
    }
}
