//! RFC 6544 passive ICE-TCP: media over a TCP connection the viewer opened to our HTTP port,
//! each packet framed by RFC 4571 (a 2-byte big-endian length, then the packet).
//!
//! What `rtc` 0.21 does and does not do, which shapes this module:
//! - it never frames: each `handle_read` takes one deframed packet tagged `TransportProtocol::TCP`,
//!   and each `poll_write` for the TCP pair must be framed by us;
//! - it matches an incoming STUN request to a local passive TCP candidate by protocol and exact
//!   address, so every packet of the connection is handed in with the session's advertised TCP
//!   candidate as `local_addr`, whatever address the socket really has (a forward, a proxy);
//! - as the controlled side it pairs that candidate with a peer-reflexive one learnt from the
//!   first binding request (browsers' `tcptype active` candidates are dropped), so the first
//!   STUN request both names the session (our ufrag) and opens the pair.
//!
//! A connection is bound to one session by its first frame; from then on it only carries that
//! session. Garbage, oversize frames, unknown ufrags and silence close it, never anything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rtc::shared::TransportProtocol;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::debug;

use super::shard::ShardMsg;
use super::{SessionId, Shared};
use crate::dataplane::media::{framing, stun};

/// The first frame must come this soon after the connection is told apart from HTTP.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// ICE consent checks arrive every few seconds; this much silence means the viewer is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued towards one viewer before we drop (and count) rather than stall its shard.
const SEND_QUEUE: usize = 512;

/// Writes framed packets to one connection; what the shard holds per TCP path of a session.
pub(super) type TcpLink = mpsc::Sender<BytesMut>;

type Frames = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("silent for {0:?}")]
    Silent(Duration),
    #[error("closed by the peer")]
    Eof,
    #[error("empty frame")]
    Empty,
    #[error("first frame is not a STUN request naming one of our sessions")]
    UnknownSession,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves one ICE-TCP connection until it closes. `peer` is the connection's remote address.
pub(super) async fn serve(
    shared: Arc<Shared>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, framing::codec());
    let bound = next_frame(&mut frames, FIRST_FRAME_TIMEOUT)
        .await
        .and_then(|frame| {
            let ufrag = stun::local_ufrag(&frame).ok_or(Closed::UnknownSession)?;
            let route = shared.routes.read().unwrap().by_ufrag.get(ufrag).cloned();
            route.map(|r| (r, frame)).ok_or(Closed::UnknownSession)
        });
    let (route, first) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            shared.metrics.ice_tcp_refused.inc();
            debug!(%peer, error = %e, "ICE-TCP connection refused");
            return;
        }
    };
    shared.metrics.ice_tcp_connections.inc();
    let shard = &shards[route.shard];
    let (link, queue) = mpsc::channel(SEND_QUEUE);
    tokio::spawn(write_frames(write, queue));
    let attach = ShardMsg::TcpAttach {
        session: route.session.clone(),
        peer,
        link,
    };
    if shard.send(attach).await.is_err() {
        return;
    }
    let mut frame = Ok(first);
    loop {
        match frame {
            Ok(data) => {
                if shard
                    .try_send(datagram(peer, &route.session, data))
                    .is_err()
                {
                    shared.metrics.media_dropped.inc();
                }
            }
            Err(e) => {
                debug!(%peer, session = %route.session, error = %e, "ICE-TCP connection ended");
                break;
            }
        }
        frame = next_frame(&mut frames, IDLE_TIMEOUT).await;
    }
    let _ = shard
        .send(ShardMsg::TcpDetach {
            session: route.session,
            peer,
        })
        .await;
}

fn datagram(peer: SocketAddr, session: &SessionId, data: BytesMut) -> ShardMsg {
    ShardMsg::Datagram {
        from: peer,
        session: session.clone(),
        data,
        at: Instant::now(),
        protocol: TransportProtocol::TCP,
    }
}

/// The next non-empty frame, within `timeout`.
async fn next_frame(frames: &mut Frames, timeout: Duration) -> Result<BytesMut, Closed> {
    match tokio::time::timeout(timeout, frames.next()).await {
        Err(_) => Err(Closed::Silent(timeout)),
        Ok(None) => Err(Closed::Eof),
        Ok(Some(Err(e))) => Err(Closed::Io(e)),
        Ok(Some(Ok(frame))) if frame.is_empty() => Err(Closed::Empty),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}

/// Frames what the shard queues and writes it, one flush for whatever is already queued. Ends
/// (closing our side) when the session lets go of the link or the peer is gone.
async fn write_frames(write: OwnedWriteHalf, mut queue: mpsc::Receiver<BytesMut>) {
    let mut sink = FramedWrite::new(write, framing::codec());
    while let Some(first) = queue.recv().await {
        let mut result = sink.feed(Bytes::from(first)).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(next) => result = sink.feed(Bytes::from(next)).await,
                Err(_) => break,
            }
        }
        if result.is_err() || SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
            return;
        }
    }
    let _ = SinkExt::<Bytes>::close(&mut sink).await;
}
