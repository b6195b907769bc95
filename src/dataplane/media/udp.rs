//! UDP sockets for media, server and viewer alike.

use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

/// A non-blocking UDP socket bound to `addr` (IPv6 ones dual-stack) whose kernel buffers are
/// raised to `buffer_bytes` each way, best effort (the kernel caps them at `net.core.*mem_max`):
/// keyframe bursts to hundreds of peers, or one replayed GOP, overflow the defaults.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(open(addr, buffer_bytes)?)
}

fn open(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_send_buffer_size(buffer_bytes);
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The server's shared media socket, watched by the runtime for reading only.
///
/// Tokio's `UdpSocket` also registers for write readiness, and the kernel signals it (edge
/// triggered) every time datagrams we sent are freed, which on loopback is at once: each burst
/// sent woke an idle worker thread that had nothing to do. Sends here never wait for room
/// (`MSG_DONTWAIT`; what the kernel refuses is dropped, as UDP), so they need no readiness.
pub struct MediaSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl MediaSocket {
    /// Binds as [`bind`] does.
    pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<Self> {
        let socket = open(addr, buffer_bytes)?;
        // SAFETY: the socket owns its descriptor, which stays open and the same for as long
        // as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(MediaSocket { fd })
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            if let Ok(result) = ready.try_io(|fd| fd.get_ref().recv_from(buf)) {
                return result;
            }
        }
    }

    /// The socket to send on: non-blocking, and never waited on.
    pub fn sender(&self) -> &std::net::UdpSocket {
        self.fd.get_ref()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }
}

/// Room for one datagram in [`Batch`]: a full Ethernet MTU, and more than FFmpeg's RTP legs use.
const SLOT: usize = 2048;

/// Buffers to read several datagrams with one `recvmmsg` call: one system call per burst (a
/// video frame's packets) rather than one per packet and one more to find the queue empty.
pub struct Batch {
    buf: Vec<u8>,
    lens: Vec<usize>,
}

impl Batch {
    /// Room for `slots` datagrams at once.
    pub fn new(slots: usize) -> Self {
        Batch {
            buf: vec![0; slots.max(1) * SLOT],
            lens: Vec::with_capacity(slots.max(1)),
        }
    }

    /// Reads what is queued now, up to the batch's room, without waiting; `WouldBlock` when
    /// nothing is.
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        self.lens.clear();
        socket.try_io(Interest::READABLE, || {
            recv_into(socket, &mut self.buf, &mut self.lens)
        })?;
        Ok(self.lens.len())
    }

    /// The datagrams of the last `recv`, in order (each cut to its slot, should it have been
    /// longer).
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.buf
            .chunks(SLOT)
            .zip(&self.lens)
            .map(|(slot, len)| &slot[..*len])
    }
}

#[cfg(target_os = "linux")]
fn recv_into(socket: &UdpSocket, buf: &mut [u8], lens: &mut Vec<usize>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = buf
        .chunks_mut(SLOT)
        .map(|slot| libc::iovec {
            iov_base: slot.as_mut_ptr() as *mut libc::c_void,
            iov_len: slot.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control); the iovec outlives
            // the call.
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr
        })
        .collect();
    // SAFETY: every header points at its own live slot of `buf`.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    lens.extend(
        headers[..n as usize]
            .iter()
            .map(|h| (h.msg_len as usize).min(SLOT)),
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn recv_into(socket: &UdpSocket, buf: &mut [u8], lens: &mut Vec<usize>) -> std::io::Result<()> {
    for slot in buf.chunks_mut(SLOT) {
        match socket.try_recv(slot) {
            Ok(n) => lens.push(n),
            Err(e) if lens.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_media_socket_receives_and_sends_without_write_readiness() {
        let media = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (at, from) = (media.local_addr().unwrap(), peer.local_addr().unwrap());
        peer.send_to(b"ping", at).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, source) = media.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], source), (&b"ping"[..], from));
        media.sender().send_to(b"pong", from).unwrap();
        let (n, source) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], source), (&b"pong"[..], at));
    }

    #[tokio::test]
    async fn a_batch_reads_every_queued_datagram_in_order_then_would_block() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = socket.local_addr().unwrap();
        let mut batch = Batch::new(4);
        assert_eq!(
            batch.recv(&socket).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        for i in 0..6u8 {
            sender
                .send_to(&vec![i; 100 + usize::from(i)], to)
                .await
                .unwrap();
        }
        socket.readable().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 6 {
            match batch.recv(&socket) {
                Ok(n) => {
                    assert!(n <= 4);
                    got.extend(batch.datagrams().map(<[u8]>::to_vec));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.readable().await.unwrap()
                }
                Err(e) => panic!("{e}"),
            }
        }
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), 100 + i, "datagram {i}");
            assert!(d.iter().all(|b| usize::from(*b) == i), "datagram {i}");
        }
    }
}
