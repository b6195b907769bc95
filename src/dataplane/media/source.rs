//! A Source: the fan-out point of one track, fed by FFmpeg's RTP on a local UDP port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::rtp;
use rtc::shared::marshal::Unmarshal;
use tokio::task::JoinHandle;

use super::codecs::clock_rate;
use super::h264::KeyframeDetector;
use super::udp::{Batch, MediaSocket};
use super::{MediaPacket, TrackKind};

/// Takes the packets read in one wake-up, in order: one hand-off (and one batch of sends) for
/// a burst, such as the packets of one video frame.
pub type PacketSink = Arc<dyn Fn(Vec<Arc<MediaPacket>>) + Send + Sync>;
/// Called for every packet: proof that the producer is alive.
pub type OnMedia = Arc<dyn Fn() + Send + Sync>;

pub struct Source {
    kind: TrackKind,
    addr: SocketAddr,
    shared: Arc<SourceShared>,
    task: JoinHandle<()>,
}

struct SourceShared {
    started: Instant,
    /// Milliseconds since `started` of the last packet, 0 before the first.
    last_packet_ms: AtomicU64,
    packets: AtomicU64,
    closed: AtomicBool,
}

impl Source {
    /// Binds the track's loopback port; FFmpeg's RTP leg for this track (of `rendition`, for
    /// a video ladder) is aimed at `addr()`.
    pub async fn bind(
        kind: TrackKind,
        rendition: u8,
        sink: PacketSink,
        on_media: OnMedia,
    ) -> std::io::Result<Self> {
        let socket = MediaSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)), SOCKET_BUFFER)?;
        let addr = socket.local_addr()?;
        let shared = Arc::new(SourceShared {
            started: Instant::now(),
            last_packet_ms: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let task = tokio::spawn(receive(
            socket,
            (kind, rendition),
            shared.clone(),
            sink,
            on_media,
        ));
        Ok(Source {
            kind,
            addr,
            shared,
            task,
        })
    }

    pub fn kind(&self) -> TrackKind {
        self.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn packets(&self) -> u64 {
        self.shared.packets.load(Ordering::Relaxed)
    }

    /// True when media arrived within `window`.
    pub fn is_live(&self, window: Duration) -> bool {
        let last = self.shared.last_packet_ms.load(Ordering::Relaxed);
        last != 0
            && (self.shared.started.elapsed().as_millis() as u64) < last + window.as_millis() as u64
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Stops receiving and releases the port; no packet is delivered after this returns.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.task.abort();
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Most packets handed on at once; a 2 Mbit/s keyframe is a few dozen.
const MAX_BURST: usize = 64;
/// Packets read per system call: a video frame's at 2 Mbit/s and 30 fps is about seven.
const BATCH: usize = 16;
/// The kernel's receive buffer asked for (it caps it at `net.core.rmem_max`): a keyframe of a
/// high rendition waits there while the worker is busy.
const SOCKET_BUFFER: usize = 1 << 20;

async fn receive(
    socket: MediaSocket,
    (kind, rendition): (TrackKind, u8),
    shared: Arc<SourceShared>,
    sink: PacketSink,
    on_media: OnMedia,
) {
    let mut batch = Batch::new(BATCH);
    let mut reader = Reader {
        kind,
        rendition,
        normalizer: Normalizer::new(clock_rate(kind)),
        keyframes: KeyframeDetector::default(),
    };
    loop {
        let Ok(mut read) = socket.recv_batch(&mut batch).await else {
            continue;
        };
        // Everything already queued is read now and handed on together.
        let mut burst = Vec::with_capacity(read);
        reader.take(&batch, &mut burst);
        // A full batch may have left more queued.
        while read == batch.room() && burst.len() < MAX_BURST {
            match socket.try_recv_batch(&mut batch) {
                Ok(n) => read = n,
                Err(_) => break,
            }
            reader.take(&batch, &mut burst);
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if burst.is_empty() {
            continue;
        }
        let ms = (shared.started.elapsed().as_millis() as u64).max(1);
        shared.last_packet_ms.store(ms, Ordering::Relaxed);
        shared
            .packets
            .fetch_add(burst.len() as u64, Ordering::Relaxed);
        on_media();
        sink(burst);
    }
}

/// Turns the datagrams FFmpeg sent into the packets a track's subscribers are sent.
struct Reader {
    kind: TrackKind,
    rendition: u8,
    normalizer: Normalizer,
    keyframes: KeyframeDetector,
}

impl Reader {
    /// Appends the RTP packets of the batch's last read to `burst`, skipping what is not RTP.
    fn take(&mut self, batch: &Batch, burst: &mut Vec<Arc<MediaPacket>>) {
        for datagram in batch.datagrams() {
            let Ok(mut packet) = rtp::Packet::unmarshal(&mut BytesMut::from(datagram)) else {
                continue;
            };
            self.normalizer.apply(&mut packet.header, Instant::now());
            // Subscribers negotiate no extensions with FFmpeg's ids; rtc drops packets
            // carrying them.
            packet.header.extension = false;
            packet.header.extensions.clear();
            packet.header.extensions_padding = 0;
            let keyframe_start = self.kind == TrackKind::Video
                && self
                    .keyframes
                    .is_keyframe_start(packet.header.timestamp, &packet.payload);
            burst.push(Arc::new(MediaPacket {
                kind: self.kind,
                keyframe_start,
                rendition: self.rendition,
                packet,
            }));
        }
    }
}

/// Keeps one continuous sequence-number and timestamp space across FFmpeg restarts, so
/// subscribers' jitter buffers see a pause rather than a new, unrelated stream.
struct Normalizer {
    clock_rate: u32,
    input_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last_out: Option<(u16, u32, Instant)>,
}

impl Normalizer {
    fn new(clock_rate: u32) -> Self {
        Normalizer {
            clock_rate,
            input_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out: None,
        }
    }

    /// Rewrites the header in place; returns true when a new input stream began.
    fn apply(&mut self, header: &mut rtp::header::Header, now: Instant) -> bool {
        let restarted = self.input_ssrc != Some(header.ssrc);
        if restarted {
            self.input_ssrc = Some(header.ssrc);
            if let Some((seq, ts, at)) = self.last_out {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                let gap = ((elapsed * self.clock_rate as f64) as u32).max(1);
                self.seq_offset = seq.wrapping_add(1).wrapping_sub(header.sequence_number);
                self.ts_offset = ts.wrapping_add(gap).wrapping_sub(header.timestamp);
            }
        }
        header.sequence_number = header.sequence_number.wrapping_add(self.seq_offset);
        header.timestamp = header.timestamp.wrapping_add(self.ts_offset);
        self.last_out = Some((header.sequence_number, header.timestamp, now));
        restarted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ssrc: u32, seq: u16, ts: u32) -> rtp::header::Header {
        rtp::header::Header {
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn normalizer_continues_sequence_across_restart() {
        let mut n = Normalizer::new(90_000);
        let t0 = Instant::now();
        let mut h = header(1, 65535, 1000);
        assert!(n.apply(&mut h, t0));
        let mut h = header(1, 0, 4000);
        assert!(!n.apply(&mut h, t0));
        assert_eq!(h.sequence_number, 0);
        // FFmpeg restarted: new SSRC, random sequence and timestamp.
        let mut h = header(2, 5000, 77);
        assert!(n.apply(&mut h, t0 + Duration::from_secs(1)));
        assert_eq!(h.sequence_number, 1);
        assert_eq!(h.timestamp, 4000 + 90_000);
        let mut h = header(2, 5001, 3077);
        n.apply(&mut h, t0 + Duration::from_secs(1));
        assert_eq!((h.sequence_number, h.timestamp), (2, 4000 + 93_000));
    }
}
