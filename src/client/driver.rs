//! The sans-IO driver of one viewer: socket reads, `rtc` timers, and the stop signal.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::wire::*;
use super::*;
use crate::dataplane::media::{framing, h264};

/// Drives one peer connection: socket reads, `rtc` timers, and the stop signal.
pub(super) struct Driver {
    pub(super) pc: RTCPeerConnection,
    pub(super) socket: UdpSocket,
    /// The advertised candidate address, handed to `rtc` as every datagram's local address.
    pub(super) local_addr: SocketAddr,
    /// The ICE-TCP connection, opened when `rtc` first sends over TCP.
    pub(super) tcp: Option<ActiveTcp>,
    pub(super) kinds: PayloadKinds,
    pub(super) loss: LossBySsrc,
    /// See [`ViewerOptions::drop_video_every`]; `dropped` holds what was discarded, so that
    /// its retransmission gets through.
    pub(super) drop_video_every: Option<u16>,
    pub(super) dropped: HashSet<(u32, u16)>,
    /// When the RTCP figures of `rtc`'s stats were last copied into ours.
    pub(super) stats_read_at: Instant,
    pub(super) inspect: bool,
    pub(super) shared: Arc<Shared>,
}

impl Driver {
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<StopMode>) {
        let mut buf = vec![0u8; 2048];
        let timer = tokio::time::sleep(IDLE_WAKEUP);
        tokio::pin!(timer);
        let mut touched = true;
        loop {
            // Only drain `rtc` when it was given something: in cheap mode most wakeups are
            // RTP that never reaches it.
            if touched {
                self.drain().await;
                timer.as_mut().reset(self.next_deadline());
                touched = false;
            }
            tokio::select! {
                mode = &mut stop => {
                    self.stop(mode.unwrap_or(StopMode::Graceful)).await;
                    return;
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if let Err(err) = self.pc.handle_timeout(now) {
                        debug!(%err, "handle_timeout");
                    }
                    self.read_rtcp_stats(now);
                    touched = true;
                }
                ready = self.socket.readable() => {
                    if let Err(err) = ready {
                        debug!(%err, "viewer socket failed");
                        return;
                    }
                    touched |= self.read_available(&mut buf);
                }
                (peer, frame) = next_tcp_frame(&mut self.tcp) => match frame {
                    Some(Ok(frame)) => {
                        touched |= self.on_datagram(&frame, peer, TransportProtocol::TCP);
                    }
                    _ => {
                        debug!(%peer, "ICE-TCP connection closed");
                        self.tcp = None;
                    }
                },
            }
        }
    }

    pub(super) fn next_deadline(&mut self) -> tokio::time::Instant {
        let fallback = Instant::now() + IDLE_WAKEUP;
        tokio::time::Instant::from_std(self.pc.poll_timeout().unwrap_or(fallback).min(fallback))
    }

    pub(super) async fn stop(&mut self, mode: StopMode) {
        if mode == StopMode::Graceful {
            if let Err(err) = self.pc.close() {
                debug!(%err, "closing peer connection");
            }
            self.drain().await;
        }
    }

    /// Moves everything `rtc` has queued: decrypted media, events, then outgoing datagrams
    /// (last, since reading and events can queue more of them).
    pub(super) async fn drain(&mut self) {
        while let Some(msg) = self.pc.poll_read() {
            self.on_message(msg.message);
        }
        while let Some(event) = self.pc.poll_event() {
            self.on_event(event);
        }
        while let Some(msg) = self.pc.poll_write() {
            let peer = msg.transport.peer_addr;
            let sent = if msg.transport.transport_protocol == TransportProtocol::TCP {
                self.send_tcp(peer, msg.message).await
            } else {
                self.socket.send_to(&msg.message, peer).await.map(drop)
            };
            if let Err(err) = sent {
                debug!(%err, %peer, "send failed");
            }
        }
    }

    /// Handles the datagrams already queued on the socket; true if `rtc` was fed any.
    pub(super) fn read_available(&mut self, buf: &mut [u8]) -> bool {
        let mut touched = false;
        for _ in 0..RECV_BATCH {
            match self.socket.try_recv_from(buf) {
                Ok((n, peer)) => {
                    touched |= self.on_datagram(&buf[..n], peer, TransportProtocol::UDP)
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    debug!(%err, "recv failed");
                    break;
                }
            }
        }
        touched
    }

    /// Counts RTP from its header, watches for the server's DTLS alert, and feeds `rtc`
    /// everything it needs (all of it in inspect mode). Returns whether `rtc` was fed.
    pub(super) fn on_datagram(
        &mut self,
        data: &[u8],
        peer_addr: SocketAddr,
        protocol: TransportProtocol,
    ) -> bool {
        let now = Instant::now();
        match classify(data) {
            Datagram::Rtp => {
                if let Some(header) = RtpHeader::parse(data) {
                    if self.drops(&header) {
                        self.shared.stats().dropped_on_purpose += 1;
                        return false;
                    }
                    self.count_rtp(&header, data.len(), now);
                }
                if !self.inspect {
                    return false;
                }
            }
            Datagram::Dtls if is_dtls_alert(data) => self.note_server_close(now),
            // SRTCP leaves the first header in clear (RFC 3711 §3.4): a compound starting with
            // a sender report.
            Datagram::Rtcp if data[1] == RTCP_SENDER_REPORT => {
                self.shared.stats().sender_reports += 1;
            }
            _ => {}
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr,
                ecn: None,
                transport_protocol: protocol,
            },
            message: BytesMut::from(data),
        };
        if let Err(err) = self.pc.handle_read(msg) {
            debug!(%err, "handle_read");
        }
        true
    }

    /// True for the first arrival of a video packet `drop_video_every` discards.
    fn drops(&mut self, header: &RtpHeader) -> bool {
        let Some(every) = self.drop_video_every.filter(|n| *n > 0) else {
            return false;
        };
        header.seq.is_multiple_of(every)
            && self.kinds.get(header.pt) == Some(MediaKind::Video)
            && self.dropped.insert((header.ssrc, header.seq))
    }

    /// Copies the NACKs sent from `rtc`'s stats, about once a second (a report walks every
    /// stats object).
    fn read_rtcp_stats(&mut self, now: Instant) {
        if !self.inspect || now.duration_since(self.stats_read_at) < STATS_EVERY {
            return;
        }
        self.stats_read_at = now;
        let report = self.pc.get_stats(now, StatsSelector::None);
        let nacks = report
            .iter()
            .filter_map(|entry| match entry {
                RTCStatsReportEntry::InboundRtp(s) => Some(u64::from(s.nack_count)),
                _ => None,
            })
            .sum();
        self.shared.stats().nacks_sent = nacks;
    }

    pub(super) fn count_rtp(&mut self, header: &RtpHeader, len: usize, now: Instant) {
        self.loss.record(header.ssrc, header.seq);
        let kind = self.kinds.get(header.pt);
        let mut stats = self.shared.stats();
        stats.lost = self.loss.lost();
        stats.duplicate_packets = self.loss.duplicates();
        match kind {
            Some(MediaKind::Video) => {
                stats.video_packets += 1;
                stats.video_bytes += len as u64;
            }
            Some(MediaKind::Audio) => {
                stats.audio_packets += 1;
                stats.audio_bytes += len as u64;
                // Header-only view: the payload is what remains after the header and the tag.
                if !self.inspect && header.pt == AUDIO_PT && len > header.len + SRTP_MAX_TAG {
                    stats.opus_seen = true;
                }
            }
            None => {
                stats.other_packets += 1;
                return;
            }
        }
        stats.first_packet_at.get_or_insert(now);
        stats.last_packet_at = Some(now);
    }

    /// Inspects decrypted media; other messages (RTCP) need nothing from us.
    pub(super) fn on_message(&mut self, message: RTCMessage) {
        let RTCMessage::RtpPacket(_, packet) = message else {
            return;
        };
        let now = Instant::now();
        let mut stats = self.shared.stats();
        stats.decrypted_packets += 1;
        let pt = packet.header.payload_type;
        match self.kinds.get(pt) {
            Some(MediaKind::Video) => note_h264(&mut stats, &packet.payload, now),
            Some(MediaKind::Audio) if pt == AUDIO_PT && !packet.payload.is_empty() => {
                stats.opus_seen = true;
            }
            _ => {}
        }
    }

    pub(super) fn on_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let now = Instant::now();
                let connected_before = {
                    let mut stats = self.shared.stats();
                    stats.state = state.to_string();
                    if state == RTCPeerConnectionState::Connected {
                        stats.connected_at.get_or_insert(now);
                    }
                    stats.connected_at.is_some()
                };
                let ended = matches!(
                    state,
                    RTCPeerConnectionState::Disconnected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                );
                // A connection that never came up failed; it was not closed by the server.
                if ended && connected_before {
                    self.note_server_close(now);
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                self.shared.stats().ice_state = state.to_string();
            }
            _ => {}
        }
    }

    pub(super) fn note_server_close(&self, now: Instant) {
        if self.shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let mut stats = self.shared.stats();
        if !stats.closed_by_server {
            stats.closed_by_server = true;
            stats.server_closed_at = Some(now);
        }
    }
}

/// Our side of an ICE-TCP path: the connection to the server's passive candidate.
pub(super) struct ActiveTcp {
    peer: SocketAddr,
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    sink: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
}

impl Driver {
    /// Sends one packet over ICE-TCP, connecting to `peer` first if need be.
    async fn send_tcp(&mut self, peer: SocketAddr, packet: BytesMut) -> std::io::Result<()> {
        if self.tcp.as_ref().is_none_or(|t| t.peer != peer) {
            let stream = tokio::time::timeout(HTTP_TIMEOUT, TcpStream::connect(peer)).await??;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            self.tcp = Some(ActiveTcp {
                peer,
                frames: FramedRead::new(read, framing::codec()),
                sink: FramedWrite::new(write, framing::codec()),
            });
        }
        let tcp = self.tcp.as_mut().expect("connected above");
        tcp.sink.send(packet.freeze()).await
    }
}

/// The next frame of the ICE-TCP connection; never resolves while there is none.
async fn next_tcp_frame(
    tcp: &mut Option<ActiveTcp>,
) -> (SocketAddr, Option<std::io::Result<BytesMut>>) {
    match tcp {
        Some(tcp) => (tcp.peer, tcp.frames.next().await),
        None => std::future::pending().await,
    }
}

/// Records the H.264 NAL types that start in one RTP payload.
pub(super) fn note_h264(stats: &mut ViewerStats, payload: &[u8], now: Instant) {
    for nal in h264::starting_nal_types(payload) {
        match nal {
            h264::NAL_IDR => {
                stats.idr_seen = true;
                stats.first_keyframe_at.get_or_insert(now);
            }
            h264::NAL_SPS => stats.sps_seen = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_h264_sets_flags_and_first_keyframe_once() {
        let t0 = Instant::now();
        let mut stats = ViewerStats::new(t0, t0);
        note_h264(&mut stats, &[0x67, 0x42], t0);
        assert!(stats.sps_seen && !stats.idr_seen && stats.first_keyframe_at.is_none());
        let t1 = t0 + Duration::from_millis(5);
        note_h264(&mut stats, &[0x65], t1);
        note_h264(&mut stats, &[0x65], t1 + Duration::from_millis(5));
        assert!(stats.idr_seen);
        assert_eq!(stats.first_keyframe_at, Some(t1));
        assert_eq!(stats.time_to_keyframe(), Some(Duration::from_millis(5)));
    }
}
