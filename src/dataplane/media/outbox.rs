//! Outgoing datagrams of one shard, sent in batches: one `sendmmsg` call for what a media packet
//! fans out to every subscriber, instead of a `sendto` per datagram. A run of equal-sized
//! datagrams to one viewer (a video frame's packets) goes as one GSO message (`UDP_SEGMENT`):
//! the kernel walks its stack once for the run and cuts it into the same datagrams. Buffers
//! of sent datagrams are kept and handed out again, so a datagram costs no allocation.

use std::net::{SocketAddr, UdpSocket};

use bytes::BytesMut;

/// Most messages handed to the kernel in one call (Linux caps `sendmmsg` at 1024).
const MAX_BATCH: usize = 1024;
/// Most datagrams in one GSO message (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message: its UDP length must fit 16 bits.
const MAX_GSO_BYTES: usize = 65_000;

/// Buffers kept for reuse, at most: a few keyframe bursts to a few hundred viewers.
const SPARE: usize = 4096;
/// Room of a buffer handed out: an RTP packet of a full-size MTU and its SRTP tag. Smaller
/// buffers (STUN, DTLS from `rtc`) are not kept.
const BUFFER: usize = 1500;

pub struct Outbox {
    queued: Vec<(SocketAddr, BytesMut)>,
    /// Buffers of datagrams sent, emptied, for the next ones: no allocation per datagram.
    spare: Vec<BytesMut>,
    /// Cleared when the kernel refuses a GSO message (a device without checksum offload).
    gso: bool,
    /// The datagram counts of one send's messages, and the system call's arrays: kept from
    /// one send to the next, as a fan-out to hundreds of viewers makes them tens of KiB.
    runs: Vec<usize>,
    scratch: Scratch,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            queued: Vec::new(),
            spare: Vec::new(),
            gso: cfg!(target_os = "linux"),
            runs: Vec::new(),
            scratch: Scratch::default(),
        }
    }
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

    /// An empty buffer to build a datagram in, one that went out before if any.
    pub fn buffer(&mut self) -> BytesMut {
        self.spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
    }

    /// Sends everything queued without blocking; what the kernel will not take now is dropped.
    pub fn send(&mut self, socket: &UdpSocket) -> Sent {
        runs(&self.queued, self.gso, &mut self.runs);
        let mut result = Sent::default();
        let mut first = 0;
        for chunk in self.runs.chunks(MAX_BATCH) {
            let count: usize = chunk.iter().sum();
            let batch = &self.queued[first..first + count];
            let sent = self.scratch.send(socket, batch, chunk, &mut self.gso);
            result.sent += sent;
            result.dropped += count - sent;
            first += count;
        }
        for (_, mut datagram) in self.queued.drain(..) {
            if self.spare.len() < SPARE && datagram.capacity() >= BUFFER {
                datagram.clear();
                self.spare.push(datagram);
            }
        }
        result
    }
}

/// Splits the queue into messages: the datagram counts of runs to one destination, every
/// datagram of a run but the last of the same size and the last no bigger (as GSO requires);
/// runs of one without GSO.
fn runs(queued: &[(SocketAddr, BytesMut)], gso: bool, runs: &mut Vec<usize>) {
    runs.clear();
    let mut start = 0;
    for (i, (dest, datagram)) in queued.iter().enumerate() {
        let (first_dest, first) = &queued[start];
        let (n, bytes) = (i - start, first.len() * (i - start + 1));
        let joins = gso
            && n > 0
            && dest == first_dest
            && n < MAX_SEGMENTS
            && bytes <= MAX_GSO_BYTES
            && datagram.len() <= first.len()
            // the one before is not a shorter, closing one
            && queued[i - 1].1.len() == first.len();
        if joins {
            continue;
        }
        if i > start {
            runs.push(i - start);
        }
        start = i;
    }
    if queued.len() > start {
        runs.push(queued.len() - start);
    }
}

#[cfg(target_os = "linux")]
const UDP_SEGMENT: libc::c_int = 103;

/// Room for one `UDP_SEGMENT` control message (a u16), aligned as cmsghdr wants.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 24]);

/// The arrays of one `sendmmsg` call. They are refilled at the start of every send; between
/// sends their pointers are stale values that nothing reads.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Scratch {
    iovecs: Vec<libc::iovec>,
    addrs: Vec<socket2::SockAddr>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams in each message still to send.
    datagrams: Vec<usize>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` are only dereferenced (by the kernel)
// within `send`, which first points them at the batch it was given and at `self`; moving them
// between threads moves no access.
#[cfg(target_os = "linux")]
unsafe impl Send for Scratch {}

#[cfg(target_os = "linux")]
impl Scratch {
    /// Sends `batch`, cut into messages of `runs` datagrams; returns the datagrams sent.
    fn send(
        &mut self,
        socket: &UdpSocket,
        batch: &[(SocketAddr, BytesMut)],
        runs: &[usize],
        gso: &mut bool,
    ) -> usize {
        use std::os::fd::AsRawFd;

        let Scratch {
            iovecs,
            addrs,
            controls,
            headers,
            datagrams,
        } = self;
        iovecs.clear();
        iovecs.extend(batch.iter().map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        }));
        addrs.clear();
        let mut at = 0;
        for run in runs {
            addrs.push(batch[at].0.into());
            at += run;
        }
        controls.clear();
        controls.resize(runs.len(), Control([0; 24]));
        headers.clear();
        let mut first = 0;
        for (k, &run) in runs.iter().enumerate() {
            // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let addr = &addrs[k];
            hdr.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = addr.len();
            hdr.msg_hdr.msg_iov = iovecs[first..].as_mut_ptr();
            hdr.msg_hdr.msg_iovlen = run as _;
            if run > 1 {
                let control = &mut controls[k];
                hdr.msg_hdr.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the buffer holds
                // CMSG_SPACE(2).
                unsafe {
                    hdr.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let cmsg = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                    let segment = batch[first].1.len() as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
                }
            }
            headers.push(hdr);
            first += run;
        }
        datagrams.clear();
        datagrams.extend_from_slice(runs);
        let (mut done, mut sent) = (0, 0);
        while done < headers.len() {
            // SAFETY: `headers[done..]` points at live iovecs, buffers, addresses and controls.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers[done..].as_mut_ptr(),
                    (headers.len() - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                sent += datagrams[done..done + n as usize].iter().sum::<usize>();
                done += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => break,
                _ => {
                    // A device without checksum offload refuses GSO (EIO): no more of it; the
                    // message is dropped like any other that fails, and later ones go one by
                    // one.
                    if datagrams[done] > 1
                        && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                    {
                        *gso = false;
                    }
                    // Full buffer or an unreachable destination: skip that message, keep going.
                    headers.remove(done);
                    datagrams.remove(done);
                }
            }
        }
        sent
    }
}

#[cfg(not(target_os = "linux"))]
#[derive(Default)]
struct Scratch;

#[cfg(not(target_os = "linux"))]
impl Scratch {
    fn send(
        &mut self,
        socket: &UdpSocket,
        batch: &[(SocketAddr, BytesMut)],
        _runs: &[usize],
        _gso: &mut bool,
    ) -> usize {
        batch
            .iter()
            .filter(|(dest, d)| socket.send_to(d, *dest).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_reaches_every_destination_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
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

    #[tokio::test]
    async fn buffers_of_sent_datagrams_are_handed_out_again_empty() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut outbox = Outbox::default();
        let mut media = outbox.buffer();
        media.extend_from_slice(&[7; 1200]);
        let at = media.as_ptr();
        outbox.push(to.local_addr().unwrap(), media);
        // Too small to be worth keeping.
        outbox.push(to.local_addr().unwrap(), BytesMut::from(&[1u8; 64][..]));
        assert_eq!(outbox.send(&sender).sent, 2);
        let again = outbox.buffer();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(again.capacity() >= BUFFER);
        assert_ne!(outbox.buffer().as_ptr(), at, "one spare only");
    }

    #[tokio::test]
    async fn a_run_to_one_viewer_arrives_as_the_datagrams_it_was() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut outbox = Outbox::default();
        let datagrams: [(SocketAddr, &[u8]); 6] = [
            (to_a, &[1, 1, 1]),
            (to_a, &[2, 2, 2]),
            (to_a, &[3, 3]),
            (to_a, &[4, 4, 4]),
            (to_b, &[5]),
            (to_b, &[6, 6]),
        ];
        for (dest, d) in datagrams {
            outbox.push(dest, BytesMut::from(d));
        }
        let mut cut = vec![9];
        runs(&outbox.queued, true, &mut cut);
        assert_eq!(cut, vec![3, 1, 1, 1]);
        runs(&outbox.queued, false, &mut cut);
        assert_eq!(cut, vec![1; 6]);
        assert_eq!(outbox.send(&sender).sent, 6);
        let mut buf = [0u8; 8];
        for (dest, d) in datagrams {
            let socket = if dest == to_a { &a } else { &b };
            let (n, _) = socket.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], d);
        }
    }
}
