//! UDP sockets for media, server and viewer alike.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// A non-blocking UDP socket bound to `addr` (IPv6 ones dual-stack) whose kernel buffers are
/// raised to `buffer_bytes` each way, best effort (the kernel caps them at `net.core.*mem_max`):
/// keyframe bursts to hundreds of peers, or one replayed GOP, overflow the defaults.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_send_buffer_size(buffer_bytes);
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
