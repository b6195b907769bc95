//! Our own sending leg to a viewer whose SRTP keys we hold ([`super::keytap`]): a packet is
//! marshalled into its datagram and encrypted there ([`super::srtp`]), instead of passing through `rtc`'s
//! pipeline (nine queues, the interceptors, two more copies), which took over half our CPU
//! at 300 viewers. It keeps what that pipeline gave the viewer: NACK answers (video; see
//! [`Nack`]) and the RTCP sender reports (RFC 3550 §6.4.1), which `rtc` still encrypts and
//! sends.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::MediaPacket;
use super::keytap::SrtpKeys;
use super::srtp::{SrtpProtect, Unsupported};

/// Video packets kept for retransmission: about 2.5 s at 2 Mbit/s, beyond any NACK worth
/// answering for live playback. A shard keeps a stream's as long.
pub const HISTORY: usize = 512;
/// How often each stream's sender report goes out (browsers expect about one a second).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One of the viewer's tracks as we send it.
#[derive(Clone, Copy, Debug)]
pub struct Track {
    pub ssrc: u32,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub nack: Nack,
}

/// Where the packets a viewer NACKs on a track are sent again from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nack {
    /// Nowhere (audio).
    Off,
    /// The viewer is numbered as the Source is (no ladder): from the packets its shard keeps
    /// for the stream, stamped again with the viewer's SSRC and payload type.
    Shared,
    /// The viewer has its own numbering (a ladder): from a history of what it was sent.
    Own,
}

/// What one viewer's copy of a shared packet changes in its header: its SSRC and payload
/// type, and with a ladder its own numbering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stamp {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
}

impl Stamp {
    /// A viewer's SSRC and payload type on a packet numbered as the Source numbered it.
    pub fn source_numbered(ssrc: u32, payload_type: u8, header: &rtp::header::Header) -> Self {
        Stamp {
            ssrc,
            payload_type,
            sequence_number: header.sequence_number,
            timestamp: header.timestamp,
        }
    }

    pub fn apply(&self, header: &mut rtp::header::Header) {
        header.ssrc = self.ssrc;
        header.payload_type = self.payload_type;
        header.sequence_number = self.sequence_number;
        header.timestamp = self.timestamp;
    }

    /// Writes these over the fixed header a datagram starts with (RFC 3550 §5.1), keeping the
    /// marker bit.
    fn write(&self, datagram: &mut [u8]) {
        datagram[1] = (datagram[1] & 0x80) | (self.payload_type & 0x7f);
        datagram[2..4].copy_from_slice(&self.sequence_number.to_be_bytes());
        datagram[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        datagram[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
}

struct Stream {
    track: Track,
    packets: u32,
    octets: u32,
    /// The latest packet's RTP timestamp and when it went out, for the report's RTP time.
    last: Option<(u32, Instant)>,
    /// The highest SRTP index sent (rollover count and sequence number).
    highest: Option<u64>,
    /// With [`Nack::Own`], the shared packets sent, by our sequence number, as stamped.
    history: Vec<Option<(Arc<MediaPacket>, Stamp)>>,
}

impl Stream {
    /// The SRTP index of `seq`, nearest the highest sent as RFC 3711 §3.3.1 has the receiver
    /// guess it, so that a packet resent from before a wrap keeps the index it first had.
    fn index(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq));
            return u64::from(seq);
        };
        let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
        let index = (highest as i64 + delta).max(0) as u64;
        if index > highest {
            self.highest = Some(index);
        }
        index
    }
}

pub struct SrtpSender {
    srtp: SrtpProtect,
    streams: Vec<Stream>,
    reported: Option<Instant>,
}

impl SrtpSender {
    pub fn new(keys: &SrtpKeys, tracks: &[Track]) -> Result<Self, Unsupported> {
        let srtp = SrtpProtect::new(keys)?;
        let streams = tracks
            .iter()
            .map(|&track| Stream {
                track,
                packets: 0,
                octets: 0,
                last: None,
                highest: None,
                history: if track.nack == Nack::Own {
                    vec![None; HISTORY]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(SrtpSender {
            srtp,
            streams,
            reported: None,
        })
    }

    /// The SRTP datagram of the shared `media` as stamped for this viewer, built in `buf`;
    /// noted for reports and, with [`Nack::Own`], kept for NACKs.
    pub fn protect(
        &mut self,
        media: &Arc<MediaPacket>,
        stamp: Stamp,
        now: Instant,
        buf: BytesMut,
    ) -> Option<BytesMut> {
        let index = self.stream_index(stamp.ssrc)?;
        let datagram = self.encrypt(index, &media.packet, stamp, buf)?;
        let stream = &mut self.streams[index];
        stream.packets = stream.packets.wrapping_add(1);
        stream.octets = stream
            .octets
            .wrapping_add(media.packet.payload.len() as u32);
        stream.last = Some((stamp.timestamp, now));
        if !stream.history.is_empty() {
            let slot = stamp.sequence_number as usize % HISTORY;
            stream.history[slot] = Some((media.clone(), stamp));
        }
        Some(datagram)
    }

    /// The packet `seq` of `ssrc` again, built in `buf`, if it is still kept: in the history,
    /// or with [`Nack::Shared`] by `shared`, which finds a stream's packet by its number.
    pub fn resend<'a>(
        &mut self,
        ssrc: u32,
        seq: u16,
        buf: BytesMut,
        shared: impl FnOnce(u16) -> Option<&'a Arc<MediaPacket>>,
    ) -> Option<BytesMut> {
        let index = self.stream_index(ssrc)?;
        let stream = &self.streams[index];
        let (media, stamp) = match stream.track.nack {
            Nack::Off => return None,
            Nack::Own => {
                let (media, stamp) = stream.history.get(seq as usize % HISTORY)?.as_ref()?;
                if stamp.sequence_number != seq {
                    return None;
                }
                (media.clone(), *stamp)
            }
            Nack::Shared => {
                let media = shared(seq)?;
                let stamp =
                    Stamp::source_numbered(ssrc, stream.track.payload_type, &media.packet.header);
                (media.clone(), stamp)
            }
        };
        self.encrypt(index, &media.packet, stamp, buf)
    }

    /// A sender report per stream that has sent, once every [`REPORT_EVERY`].
    pub fn reports_due(&mut self, now: Instant, wall: SystemTime) -> Vec<SenderReport> {
        if self
            .reported
            .is_some_and(|at| now.saturating_duration_since(at) < REPORT_EVERY)
        {
            return Vec::new();
        }
        self.reported = Some(now);
        let ntp_time = ntp(wall);
        self.streams
            .iter()
            .filter_map(|s| {
                let (timestamp, at) = s.last?;
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                Some(SenderReport {
                    ssrc: s.track.ssrc,
                    ntp_time,
                    rtp_time: timestamp
                        .wrapping_add((elapsed * f64::from(s.track.clock_rate)) as u32),
                    packet_count: s.packets,
                    octet_count: s.octets,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn stream_index(&self, ssrc: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.track.ssrc == ssrc)
    }

    /// `packet` of stream `index`, stamped, as an SRTP datagram in `buf`.
    fn encrypt(
        &mut self,
        index: usize,
        packet: &rtp::Packet,
        stamp: Stamp,
        mut buf: BytesMut,
    ) -> Option<BytesMut> {
        let size = packet.marshal_size();
        let header_len = packet.header.marshal_size();
        buf.clear();
        buf.reserve(size + self.srtp.overhead());
        if packet.header.padding {
            buf.resize(size, 0);
            let n = packet.marshal_to(&mut buf).ok()?;
            buf.truncate(n);
        } else {
            // Only the header is zeroed and written; the payload is appended, copied once.
            buf.resize(header_len, 0);
            packet.header.marshal_to(&mut buf).ok()?;
            buf.extend_from_slice(&packet.payload);
        }
        stamp.write(&mut buf);
        let srtp_index = self.streams[index].index(stamp.sequence_number);
        self.srtp
            .protect_rtp(&mut buf, header_len, stamp.ssrc, srtp_index);
        Some(buf)
    }
}

/// `wall` as a 64-bit NTP timestamp: seconds since 1900 and a 32-bit fraction.
fn ntp(wall: SystemTime) -> u64 {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::context::Context;

    use crate::dataplane::media::srtp::PROFILES;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn keys(profile: ProtectionProfile) -> SrtpKeys {
        SrtpKeys {
            profile,
            master_key: vec![7; profile.key_len()],
            master_salt: vec![9; profile.salt_len()],
        }
    }

    /// The viewer's side: decrypts with the same keys, as its SRTP stack would.
    fn viewer(keys: &SrtpKeys) -> Context {
        keys.context().unwrap()
    }

    fn packet(ssrc: u32, seq: u16, timestamp: u32, payload: &'static [u8]) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 102,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    /// Sends a Source's packet stamped with `packet`'s header: the shared packet carries other
    /// values (FFmpeg's own), which the stamp must replace, and a marker bit, which it keeps.
    fn protect(sender: &mut SrtpSender, packet: &rtp::Packet, now: Instant) -> Option<BytesMut> {
        let h = &packet.header;
        let mut source = packet.clone();
        source.header.ssrc = 42;
        source.header.payload_type = 96;
        source.header.sequence_number = h.sequence_number.wrapping_add(1000);
        source.header.timestamp = h.timestamp.wrapping_add(5);
        source.header.marker = true;
        let media = Arc::new(MediaPacket {
            kind: crate::dataplane::media::TrackKind::Video,
            keyframe_start: false,
            rendition: 0,
            packet: source,
        });
        let stamp = Stamp {
            ssrc: h.ssrc,
            payload_type: h.payload_type,
            sequence_number: h.sequence_number,
            timestamp: h.timestamp,
        };
        sender.protect(&media, stamp, now, BytesMut::new())
    }

    /// A ladder's viewer: numbered its own way, so it keeps a history.
    const VIDEO: Track = Track {
        ssrc: 1111,
        payload_type: 102,
        clock_rate: 90_000,
        nack: Nack::Own,
    };
    const AUDIO: Track = Track {
        ssrc: 2222,
        payload_type: 111,
        clock_rate: 48_000,
        nack: Nack::Off,
    };

    fn nothing_shared(_: u16) -> Option<&'static Arc<MediaPacket>> {
        None
    }

    #[test]
    fn what_we_encrypt_the_viewer_decrypts_across_a_sequence_wrap() {
        for profile in PROFILES {
            let keys = keys(profile);
            let mut sender = SrtpSender::new(&keys, &[VIDEO, AUDIO]).unwrap();
            let mut viewer = viewer(&keys);
            let now = Instant::now();
            for seq in [65534u16, 65535, 0, 1] {
                let sent = packet(VIDEO.ssrc, seq, 3000, b"frame");
                let datagram = protect(&mut sender, &sent, now).unwrap();
                let clear = viewer.decrypt_rtp(&datagram).unwrap();
                let got = rtp::Packet::unmarshal(&mut clear.freeze()).unwrap();
                let h = &got.header;
                assert_eq!(
                    (
                        h.ssrc,
                        h.payload_type,
                        h.sequence_number,
                        h.timestamp,
                        h.marker
                    ),
                    (VIDEO.ssrc, 102, seq, 3000, true),
                    "{profile:?}"
                );
                assert_eq!(got.payload, sent.payload, "{profile:?}");
            }
            // Not one of the viewer's SSRCs: nothing to send.
            assert!(protect(&mut sender, &packet(3333, 1, 0, b"x"), now).is_none());
        }
    }

    #[test]
    fn the_viewer_gets_the_bytes_rtc_would_marshal_with_csrcs_extensions_and_padding() {
        use rtc::shared::marshal::Marshal;
        let keys = keys(ProtectionProfile::AeadAes128Gcm);
        for padding in [false, true] {
            let mut sender = SrtpSender::new(&keys, &[VIDEO, AUDIO]).unwrap();
            let mut viewer = viewer(&keys);
            let mut sent = packet(VIDEO.ssrc, 7, 3000, b"a payload of odd size");
            sent.header.padding = padding;
            sent.header.csrc = vec![5, 6];
            sent.header.extension = true;
            sent.header.extension_profile = 0xBEDE;
            sent.header
                .set_extension(3, Bytes::from_static(&[1, 2, 3]))
                .unwrap();
            let datagram = protect(&mut sender, &sent, Instant::now()).unwrap();
            let clear = viewer.decrypt_rtp(&datagram).unwrap();
            let mut expected = sent.clone();
            expected.header.marker = true;
            assert_eq!(
                &clear[..],
                &expected.marshal().unwrap()[..],
                "padding {padding}"
            );
        }
    }

    #[test]
    fn a_nacked_video_packet_is_sent_again_while_kept() {
        let keys = keys(ProtectionProfile::AeadAes128Gcm);
        let mut sender = SrtpSender::new(&keys, &[VIDEO, AUDIO]).unwrap();
        let mut viewer = viewer(&keys);
        let now = Instant::now();
        for seq in 0..=HISTORY as u16 {
            let datagram = protect(&mut sender, &packet(VIDEO.ssrc, seq, 0, b"v"), now).unwrap();
            if seq != 5 {
                viewer.decrypt_rtp(&datagram).unwrap();
            }
        }
        protect(&mut sender, &packet(AUDIO.ssrc, 5, 0, b"a"), now).unwrap();
        let again = sender
            .resend(VIDEO.ssrc, 5, BytesMut::new(), nothing_shared)
            .unwrap();
        let clear = viewer.decrypt_rtp(&again).unwrap();
        let got = rtp::Packet::unmarshal(&mut clear.freeze()).unwrap();
        assert_eq!(got.header.sequence_number, 5);
        // Seq 0 was overwritten by seq HISTORY; audio keeps no history.
        assert!(
            sender
                .resend(VIDEO.ssrc, 0, BytesMut::new(), nothing_shared)
                .is_none()
        );
        assert!(
            sender
                .resend(AUDIO.ssrc, 5, BytesMut::new(), nothing_shared)
                .is_none()
        );
    }

    #[test]
    fn a_viewer_numbered_as_the_source_is_answered_from_the_shards_packets() {
        let keys = keys(ProtectionProfile::AeadAes128Gcm);
        let track = Track {
            nack: Nack::Shared,
            ..VIDEO
        };
        let mut sender = SrtpSender::new(&keys, &[track, AUDIO]).unwrap();
        assert!(
            sender.streams[0].history.is_empty(),
            "no history of its own"
        );
        let mut viewer = viewer(&keys);
        let now = Instant::now();
        // The Source's packets, as the shard keeps them: FFmpeg's SSRC and payload type.
        let kept: Vec<Arc<MediaPacket>> = (0..8u16)
            .map(|seq| {
                let mut p = packet(42, 65533u16.wrapping_add(seq), 7000 + u32::from(seq), b"v");
                p.header.payload_type = 96;
                Arc::new(MediaPacket {
                    kind: crate::dataplane::media::TrackKind::Video,
                    keyframe_start: false,
                    rendition: 0,
                    packet: p,
                })
            })
            .collect();
        for media in &kept {
            let h = &media.packet.header;
            let stamp = Stamp::source_numbered(track.ssrc, track.payload_type, h);
            let datagram = sender.protect(media, stamp, now, BytesMut::new()).unwrap();
            if h.sequence_number != 65535 {
                viewer.decrypt_rtp(&datagram).unwrap();
            }
        }
        let find = |seq: u16| kept.iter().find(|m| m.packet.header.sequence_number == seq);
        // Sent before the wrap, so with rollover count 0.
        let again = sender
            .resend(track.ssrc, 65535, BytesMut::new(), find)
            .unwrap();
        let clear = viewer.decrypt_rtp(&again).unwrap();
        let got = rtp::Packet::unmarshal(&mut clear.freeze()).unwrap();
        let h = &got.header;
        assert_eq!(
            (h.ssrc, h.payload_type, h.sequence_number, h.timestamp),
            (track.ssrc, track.payload_type, 65535, 7002)
        );
        assert_eq!(&got.payload[..], b"v");
        // No longer kept by the shard: nothing to send.
        assert!(
            sender
                .resend(track.ssrc, 100, BytesMut::new(), find)
                .is_none()
        );
        assert!(
            sender
                .resend(AUDIO.ssrc, 0, BytesMut::new(), find)
                .is_none()
        );
    }

    #[test]
    fn a_packet_resent_after_a_wrap_keeps_its_rollover_count() {
        for profile in PROFILES {
            let keys = keys(profile);
            let mut sender = SrtpSender::new(&keys, &[VIDEO]).unwrap();
            let mut viewer = viewer(&keys);
            let now = Instant::now();
            for seq in [65533u16, 65534, 65535, 0, 1] {
                let datagram =
                    protect(&mut sender, &packet(VIDEO.ssrc, seq, 0, b"v"), now).unwrap();
                if seq != 65534 {
                    viewer.decrypt_rtp(&datagram).unwrap();
                }
            }
            // Sent with rollover count 0; encrypting it with 1 would fail authentication.
            let again = sender
                .resend(VIDEO.ssrc, 65534, BytesMut::new(), nothing_shared)
                .unwrap();
            let clear = viewer
                .decrypt_rtp(&again)
                .unwrap_or_else(|e| panic!("{profile:?}: {e}"));
            let got = rtp::Packet::unmarshal(&mut clear.freeze()).unwrap();
            assert_eq!(got.header.sequence_number, 65534);
        }
    }

    #[test]
    fn sender_reports_count_what_was_sent_once_a_second() {
        let keys = keys(ProtectionProfile::AeadAes128Gcm);
        let mut sender = SrtpSender::new(&keys, &[VIDEO, AUDIO]).unwrap();
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_millis(1_500);
        assert!(sender.reports_due(t0, wall).is_empty(), "nothing sent yet");
        for seq in 0..3 {
            protect(&mut sender, &packet(VIDEO.ssrc, seq, 90_000, b"12345"), t0).unwrap();
        }
        assert!(sender.reports_due(t0, wall).is_empty(), "not a second yet");
        let later = t0 + Duration::from_millis(1_500);
        let reports = sender.reports_due(later, wall);
        assert_eq!(reports.len(), 1, "only video has sent");
        let sr = &reports[0];
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (1111, 3, 15));
        assert_eq!(sr.rtp_time, 90_000 + 135_000);
        assert_eq!(sr.ntp_time >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(sr.ntp_time & 0xffff_ffff, 1 << 31);
        assert!(sender.reports_due(later, wall).is_empty());
    }
}
