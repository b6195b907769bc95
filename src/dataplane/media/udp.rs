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

/// A UDP socket for media that the runtime watches for reading only: the server's shared
/// socket and each Source's.
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

    /// Waits for datagrams and reads what is queued, up to the batch's room, in one system
    /// call. A read that leaves room emptied the queue, so the readiness is cleared without a
    /// second call to see it empty: a datagram queued since raises a new edge, and tokio keeps
    /// readiness seen after the one cleared.
    pub async fn recv_batch(&self, batch: &mut Batch) -> std::io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match batch.read(self.fd.get_ref()) {
                Ok(n) => {
                    if n < batch.room() {
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what is queued without waiting (`WouldBlock` when nothing is), leaving the
    /// readiness as it is: for reading on after a full batch.
    pub fn try_recv_batch(&self, batch: &mut Batch) -> std::io::Result<usize> {
        batch.read(self.fd.get_ref())
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
    /// The call's message headers, kept from one read to the next rather than built each time.
    #[cfg(target_os = "linux")]
    headers: Headers,
}

/// `recvmmsg`'s headers and their iovecs. Their pointers are set afresh before every call, so
/// between calls they are stale values that nothing reads.
#[cfg(target_os = "linux")]
struct Headers {
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers are only dereferenced (by the kernel) during a `read`, after it has
// pointed them at memory that `&mut Batch` holds; moving them between threads moves no access.
#[cfg(target_os = "linux")]
unsafe impl Send for Headers {}

impl Batch {
    /// Room for `slots` datagrams at once.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Batch {
            buf: vec![0; slots * SLOT],
            lens: Vec::with_capacity(slots),
            #[cfg(target_os = "linux")]
            headers: Headers {
                iovecs: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    };
                    slots
                ],
                // SAFETY: an all-zero mmsghdr is valid (no name, no control, no iovec).
                msgs: vec![unsafe { std::mem::zeroed() }; slots],
            },
        }
    }

    /// Most datagrams one read takes.
    pub fn room(&self) -> usize {
        self.buf.len() / SLOT
    }

    /// Reads what is queued now, up to the batch's room, without waiting; `WouldBlock` when
    /// nothing is.
    fn read(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        self.lens.clear();
        self.read_into(socket)?;
        Ok(self.lens.len())
    }

    /// The datagrams of the last `read`, in order (each cut to its slot, should it have been
    /// longer).
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.buf
            .chunks(SLOT)
            .zip(&self.lens)
            .map(|(slot, len)| &slot[..*len])
    }

    #[cfg(target_os = "linux")]
    fn read_into(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Headers { iovecs, msgs } = &mut self.headers;
        for ((slot, iov), msg) in self
            .buf
            .chunks_mut(SLOT)
            .zip(iovecs.iter_mut())
            .zip(msgs.iter_mut())
        {
            *iov = libc::iovec {
                iov_base: slot.as_mut_ptr() as *mut libc::c_void,
                iov_len: slot.len(),
            };
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at its own iovec and slot of `buf`, both held by
        // `&mut self` for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.lens.extend(
            msgs[..n as usize]
                .iter()
                .map(|m| (m.msg_len as usize).min(SLOT)),
        );
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn read_into(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<()> {
        for slot in self.buf.chunks_mut(SLOT) {
            match socket.recv(slot) {
                Ok(n) => self.lens.push(n),
                Err(e) if self.lens.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    async fn a_batch_reads_every_queued_datagram_in_order_with_one_call_per_read() {
        let media = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = media.local_addr().unwrap();
        let mut batch = Batch::new(4);
        assert_eq!(batch.room(), 4);
        assert_eq!(
            media.try_recv_batch(&mut batch).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        for i in 0..6u8 {
            sender.send_to(&vec![i; 100 + usize::from(i)], to).unwrap();
        }
        let mut got = Vec::new();
        // A full batch, then the rest: the short read cleared the readiness itself.
        for expected in [4, 2] {
            let n = tokio::time::timeout(Duration::from_secs(10), media.recv_batch(&mut batch))
                .await
                .expect("what is queued is read without waiting for more")
                .unwrap();
            assert_eq!(n, expected);
            got.extend(batch.datagrams().map(<[u8]>::to_vec));
        }
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), 100 + i, "datagram {i}");
            assert!(d.iter().all(|b| usize::from(*b) == i), "datagram {i}");
        }
        // Nothing is queued: the next read waits for the next datagram.
        let n = {
            let wait = media.recv_batch(&mut batch);
            tokio::pin!(wait);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut wait)
                    .await
                    .is_err()
            );
            sender.send_to(b"late", to).unwrap();
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("a datagram sent after the queue was emptied wakes the reader")
                .unwrap()
        };
        assert_eq!(n, 1);
        assert_eq!(batch.datagrams().next(), Some(&b"late"[..]));
    }

    /// Clearing readiness after a short read must not lose a datagram queued just after it:
    /// a sender on another thread races the reader's reads thousands of times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datagrams_racing_the_readers_clear_are_all_read() {
        const BURSTS: usize = 3000;
        let media = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 8 << 20).unwrap();
        let to = media.local_addr().unwrap();
        let sender = std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..BURSTS {
                for _ in 0..=i % 3 {
                    socket.send_to(&[1], to).unwrap();
                }
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let expected: usize = (0..BURSTS).map(|i| i % 3 + 1).sum();
        let mut batch = Batch::new(2);
        let mut got = 0;
        while got < expected {
            got += tokio::time::timeout(Duration::from_secs(10), media.recv_batch(&mut batch))
                .await
                .unwrap_or_else(|_| panic!("stuck after {got} of {expected} datagrams"))
                .unwrap();
        }
        sender.join().unwrap();
        assert_eq!(got, expected);
    }
}
