//! Outgoing datagrams of one shard, sent in batches: one `sendmmsg` call for what a media packet
//! fans out to every subscriber, instead of a `sendto` per datagram.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::UdpSocket;

/// Most datagrams handed to the kernel in one call (Linux caps `sendmmsg` at 1024).
const MAX_BATCH: usize = 1024;

#[derive(Default)]
pub struct Outbox {
    queued: Vec<(SocketAddr, BytesMut)>,
}

/// What one `send` achieved.
#[derive(Debug, Default, PartialEq)]
pub struct Sent {
    pub sent: usize,
    /// Not sent because the socket buffer was full (or another send error): dropped, as UDP.
    pub dropped: usize,
}

impl Outbox {
    pub fn push(&mut self, dest: SocketAddr, datagram: BytesMut) {
        self.queued.push((dest, datagram));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued without blocking; what the kernel will not take now is dropped.
    pub fn send(&mut self, socket: &UdpSocket) -> Sent {
        let mut result = Sent::default();
        for chunk in self.queued.chunks(MAX_BATCH) {
            let sent = send_batch(socket, chunk);
            result.sent += sent;
            result.dropped += chunk.len() - sent;
        }
        self.queued.clear();
        result
    }
}

#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddr, BytesMut)]) -> usize {
    use std::os::fd::AsRawFd;

    let addrs: Vec<socket2::SockAddr> = batch.iter().map(|(a, _)| (*a).into()).collect();
    let mut iovecs: Vec<libc::iovec> = batch
        .iter()
        .map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .zip(&addrs)
        .map(|(iov, addr)| {
            // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = addr.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr
        })
        .collect();
    let mut done = 0;
    while done < headers.len() {
        // SAFETY: `headers[done..]` points at live iovecs, buffers and addresses.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[done..].as_mut_ptr(),
                (headers.len() - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            done += n as usize;
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else if n < 0 && done < headers.len() {
            // Full buffer or an unreachable destination: skip that one datagram, keep going.
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                break;
            }
            headers.remove(done);
        } else {
            break;
        }
    }
    done
}

#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddr, BytesMut)]) -> usize {
    batch
        .iter()
        .filter(|(dest, d)| socket.try_send_to(d, *dest).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_reaches_every_destination_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut outbox = Outbox::default();
        for i in 0..3u8 {
            outbox.push(a.local_addr().unwrap(), BytesMut::from(&[i][..]));
            outbox.push(b.local_addr().unwrap(), BytesMut::from(&[10 + i][..]));
        }
        assert_eq!(
            outbox.send(&sender),
            Sent {
                sent: 6,
                dropped: 0
            }
        );
        assert!(outbox.is_empty());
        let mut buf = [0u8; 4];
        for expected in [[0u8, 1, 2], [10, 11, 12]] {
            let socket = if expected[0] == 0 { &a } else { &b };
            for e in expected {
                let (n, _) = socket.recv_from(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &[e]);
            }
        }
    }
}
