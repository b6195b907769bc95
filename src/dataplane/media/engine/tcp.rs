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

use bytes::{BufMut, BytesMut};
use rtc::shared::TransportProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::debug;

use super::demux::stun_local_ufrag;
use super::shard::ShardMsg;
use super::{SessionId, Shared};

/// The first frame must come this soon after the connection is told apart from HTTP.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// ICE consent checks arrive every few seconds; this much silence means the viewer is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Larger than any STUN message, DTLS record or RTCP compound a viewer sends.
pub const MAX_FRAME: usize = 8 * 1024;
/// Frames queued towards one viewer before we drop (and count) rather than stall its shard.
const SEND_QUEUE: usize = 512;

/// Writes framed packets to one connection; what the shard holds per TCP path of a session.
pub(super) type TcpLink = mpsc::Sender<BytesMut>;

/// Why a connection was closed before it carried a session.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no frame within {FIRST_FRAME_TIMEOUT:?}")]
    Silent,
    #[error("frame of {0} bytes is outside 1..={MAX_FRAME}")]
    FrameSize(usize),
    #[error("first frame is not a STUN request naming one of our sessions")]
    UnknownSession,
    #[error("read failed: {0}")]
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
    let mut read = BufReader::new(read);
    let first = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut read)).await {
        Err(_) => Err(Refused::Silent),
        Ok(result) => result,
    };
    let bound = first.and_then(|frame| {
        let ufrag = stun_local_ufrag(&frame).ok_or(Refused::UnknownSession)?;
        let route = shared.routes.read().unwrap().by_ufrag.get(ufrag).cloned();
        route.map(|r| (r, frame)).ok_or(Refused::UnknownSession)
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
                let msg = datagram(peer, &route.session, data);
                if shard.try_send(msg).is_err() {
                    shared.metrics.media_dropped.inc();
                }
            }
            Err(e) => {
                debug!(%peer, session = %route.session, error = %e, "ICE-TCP connection ended");
                break;
            }
        }
        frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut read)).await {
            Err(_) => Err(Refused::Silent),
            Ok(result) => result,
        };
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

/// Reads one RFC 4571 frame.
async fn read_frame(read: &mut BufReader<OwnedReadHalf>) -> Result<BytesMut, Refused> {
    let len = read.read_u16().await? as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Refused::FrameSize(len));
    }
    let mut data = BytesMut::zeroed(len);
    read.read_exact(&mut data).await?;
    Ok(data)
}

/// Frames what the shard queues and writes it, coalescing what is already queued into one
/// write. Ends (closing our side) when the session lets go of the link or the peer is gone.
async fn write_frames(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<BytesMut>) {
    let mut buf = BytesMut::new();
    while let Some(first) = queue.recv().await {
        buf.clear();
        frame_into(&mut buf, &first);
        while buf.len() < 64 * 1024 {
            match queue.try_recv() {
                Ok(next) => frame_into(&mut buf, &next),
                Err(_) => break,
            }
        }
        if write.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Appends `packet` with its RFC 4571 length prefix; longer packets cannot be framed and are
/// never produced by the core (its MTU is far below 64 KiB).
fn frame_into(buf: &mut BytesMut, packet: &[u8]) {
    if let Ok(len) = u16::try_from(packet.len()) {
        buf.put_u16(len);
        buf.put_slice(packet);
    }
}

/// Whether the first bytes of a connection on the HTTP port are an RFC 4571 frame holding a
/// STUN binding request (RFC 5389: type 0x0001, magic cookie 0x2112A442). `None` while too few
/// bytes have arrived to tell. HTTP requests start with an ASCII method name, which as a
/// length would exceed any STUN message, so the two can never be confused.
pub fn is_ice_tcp_start(head: &[u8]) -> Option<bool> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if head.first().is_some_and(u8::is_ascii_alphabetic) {
        return Some(false);
    }
    if head.len() < 10 {
        return None;
    }
    let len = u16::from_be_bytes([head[0], head[1]]) as usize;
    Some((20..=MAX_FRAME).contains(&len) && head[2..4] == [0x00, 0x01] && head[6..10] == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request_frame() -> Vec<u8> {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend([7u8; 12]);
        let mut framed = (stun.len() as u16).to_be_bytes().to_vec();
        framed.extend(stun);
        framed
    }

    #[test]
    fn tells_ice_tcp_from_http_by_the_first_bytes() {
        let frame = binding_request_frame();
        assert_eq!(is_ice_tcp_start(&frame), Some(true));
        assert_eq!(is_ice_tcp_start(&frame[..4]), None, "too short to tell");
        for http in [&b"GET / HTTP/1.1\r\n"[..], b"POST /whep/x", b"OPTIONS *"] {
            assert_eq!(is_ice_tcp_start(http), Some(false));
            assert_eq!(is_ice_tcp_start(&http[..1]), Some(false));
        }
        let mut response = frame.clone();
        response[3] = 0x01;
        response[2] = 0x01; // a binding success response does not open a connection
        assert_eq!(is_ice_tcp_start(&response), Some(false));
        let mut no_magic = frame.clone();
        no_magic[6] = 0;
        assert_eq!(is_ice_tcp_start(&no_magic), Some(false));
        assert_eq!(is_ice_tcp_start(&[0u8; 16]), Some(false));
        assert_eq!(
            is_ice_tcp_start(&[0x16, 3, 1, 0, 0, 1, 0, 0, 0, 0]),
            Some(false),
            "TLS"
        );
    }

    #[test]
    fn frames_carry_a_big_endian_length() {
        let mut buf = BytesMut::new();
        frame_into(&mut buf, &[1, 2, 3]);
        frame_into(&mut buf, &[]);
        assert_eq!(&buf[..], &[0, 3, 1, 2, 3, 0, 0]);
    }

    #[tokio::test]
    async fn frames_are_read_back_and_bad_sizes_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            frame_into(&mut buf, b"hello");
            buf.put_u16((MAX_FRAME + 1) as u16);
            conn.write_all(&buf).await.unwrap();
            conn
        });
        let (conn, _) = listener.accept().await.unwrap();
        let (read, _write) = conn.into_split();
        let mut read = BufReader::new(read);
        assert_eq!(&read_frame(&mut read).await.unwrap()[..], b"hello");
        assert!(matches!(
            read_frame(&mut read).await,
            Err(Refused::FrameSize(n)) if n == MAX_FRAME + 1
        ));
        drop(client.await.unwrap());
        assert!(matches!(read_frame(&mut read).await, Err(Refused::Io(_))));
    }
}
