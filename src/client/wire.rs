//! Bookkeeping on the wire: what a datagram is (RFC 7983), clear-text RTP headers, which
//! payload type is which media, and loss per SSRC — the same in cheap and inspect mode.

use super::*;

/// What a datagram on a WebRTC socket carries, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Datagram {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

pub(super) fn classify(data: &[u8]) -> Datagram {
    match data.first() {
        Some(0..=3) => Datagram::Stun,
        Some(20..=63) => Datagram::Dtls,
        // RTCP packet types 192..=223 sit where RTP's marker bit and payload type are (RFC 5761).
        Some(128..=191) => match data.get(1) {
            Some(192..=223) => Datagram::Rtcp,
            Some(_) => Datagram::Rtp,
            None => Datagram::Other,
        },
        _ => Datagram::Other,
    }
}

/// A DTLS record of content type 21 (alert). After the handshake the server sends one only to
/// end the session: close_notify, or a fatal error.
pub(super) fn is_dtls_alert(data: &[u8]) -> bool {
    data.first() == Some(&21)
}

/// The clear-text part of an (S)RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RtpHeader {
    pub(super) pt: u8,
    pub(super) seq: u16,
    pub(super) ssrc: u32,
    /// Header length including CSRCs and extension: where the payload starts.
    pub(super) len: usize,
}

impl RtpHeader {
    pub(super) fn parse(data: &[u8]) -> Option<Self> {
        if data.len() < 12 || data[0] >> 6 != 2 {
            return None;
        }
        let mut len = 12 + 4 * usize::from(data[0] & 0x0f);
        if data[0] & 0x10 != 0 {
            let words = data.get(len + 2..len + 4)?;
            len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        if len > data.len() {
            return None;
        }
        Some(Self {
            pt: data[1] & 0x7f,
            seq: u16::from_be_bytes([data[2], data[3]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            len,
        })
    }
}

/// Whether a payload type carries video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaKind {
    Video,
    Audio,
}

/// Payload type → kind, from the answer's `m=` lines (another server may answer with other
/// payload types than we offered); our fixed types are the fallback.
pub(super) struct PayloadKinds([Option<MediaKind>; 128]);

impl PayloadKinds {
    pub(super) fn from_sdp(sdp: &str) -> Self {
        let mut kinds = [None; 128];
        kinds[usize::from(VIDEO_PT)] = Some(MediaKind::Video);
        kinds[usize::from(AUDIO_PT)] = Some(MediaKind::Audio);
        for line in sdp.lines() {
            let Some(media) = line.strip_prefix("m=") else {
                continue;
            };
            let mut fields = media.split_whitespace();
            let kind = match fields.next() {
                Some("video") => MediaKind::Video,
                Some("audio") => MediaKind::Audio,
                _ => continue,
            };
            // m=<media> <port> <proto> <fmt> ...
            for pt in fields.skip(2).filter_map(|f| f.parse::<u8>().ok()) {
                if let Some(slot) = kinds.get_mut(usize::from(pt)) {
                    *slot = Some(kind);
                }
            }
        }
        Self(kinds)
    }

    pub(super) fn get(&self, pt: u8) -> Option<MediaKind> {
        self.0.get(usize::from(pt)).copied().flatten()
    }
}

/// Loss trackers by SSRC; a viewer sees two or three SSRCs, so a Vec beats a map.
#[derive(Debug, Default)]
pub(super) struct LossBySsrc(Vec<(u32, SeqTracker)>);

impl LossBySsrc {
    pub(super) fn record(&mut self, ssrc: u32, seq: u16) {
        match self.0.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, tracker)) => tracker.record(seq),
            None => self.0.push((ssrc, SeqTracker::new(seq))),
        }
    }

    pub(super) fn lost(&self) -> u64 {
        self.0.iter().map(|(_, t)| t.lost()).sum()
    }

    pub(super) fn duplicates(&self) -> u64 {
        self.0.iter().map(|(_, t)| t.duplicates).sum()
    }
}

/// A step of this many sequence numbers or more, either way, is a restarted stream rather than
/// loss or lateness (RFC 3550 A.1 uses 3000 for the forward case). Backward steps get the same
/// room because retransmissions (NACK, no RTX) come back on the same SSRC hundreds of packets
/// late.
pub(super) const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers remembered to recognise duplicates; more than `MAX_DROPOUT`, so every late
/// packet accepted is still remembered.
pub(super) const SEEN_WINDOW: u64 = 4096;

/// Loss for one SSRC in the spirit of RFC 3550 A.3: expected (from the extended highest
/// sequence number) minus distinct packets received. Late packets count without moving the
/// highest; duplicates (repeated retransmissions) count once; a big jump starts a new run,
/// keeping the loss counted so far.
#[derive(Debug, Clone)]
pub(super) struct SeqTracker {
    /// Lowest extended sequence number of the current run. Extended numbers start one cycle
    /// up, so a packet from just before the first one still has a non-negative number.
    pub(super) base: u64,
    /// Highest extended sequence number of the current run; wraps counted.
    pub(super) highest: u64,
    /// Distinct packets received in the current run.
    pub(super) received: u64,
    /// Loss of earlier runs.
    pub(super) lost_before: u64,
    pub(super) duplicates: u64,
    /// Bit per extended sequence number modulo `SEEN_WINDOW`.
    pub(super) seen: Box<[u64; SEEN_WINDOW as usize / 64]>,
}

impl SeqTracker {
    pub(super) fn new(seq: u16) -> Self {
        let mut tracker = Self {
            base: 0,
            highest: 0,
            received: 0,
            lost_before: 0,
            duplicates: 0,
            seen: Box::new([0; SEEN_WINDOW as usize / 64]),
        };
        tracker.start_run(seq);
        tracker
    }

    pub(super) fn start_run(&mut self, seq: u16) {
        let ext = (1 << 16) + u64::from(seq);
        self.base = ext;
        self.highest = ext;
        self.received = 1;
        self.seen.fill(0);
        self.mark(ext);
    }

    pub(super) fn record(&mut self, seq: u16) {
        let delta = seq.wrapping_sub(self.highest as u16);
        if delta == 0 {
            self.duplicates += 1;
        } else if delta < MAX_DROPOUT {
            for ext in self.highest + 1..self.highest + u64::from(delta) {
                self.unmark(ext);
            }
            self.highest += u64::from(delta);
            self.received += 1;
            self.mark(self.highest);
        } else if delta > u16::MAX - MAX_DROPOUT {
            self.record_late(self.highest - u64::from(delta.wrapping_neg()));
        } else {
            self.lost_before += self.run_lost();
            self.start_run(seq);
        }
    }

    pub(super) fn record_late(&mut self, ext: u64) {
        if ext < self.base {
            // Sent before the first packet we saw: the run starts earlier than we thought.
            for gap in ext + 1..self.base {
                self.unmark(gap);
            }
            self.base = ext;
        } else if self.is_marked(ext) {
            self.duplicates += 1;
            return;
        }
        self.received += 1;
        self.mark(ext);
    }

    pub(super) fn bit(ext: u64) -> (usize, u64) {
        let idx = ext % SEEN_WINDOW;
        ((idx / 64) as usize, 1 << (idx % 64))
    }

    pub(super) fn mark(&mut self, ext: u64) {
        let (word, bit) = Self::bit(ext);
        self.seen[word] |= bit;
    }

    pub(super) fn unmark(&mut self, ext: u64) {
        let (word, bit) = Self::bit(ext);
        self.seen[word] &= !bit;
    }

    pub(super) fn is_marked(&self, ext: u64) -> bool {
        let (word, bit) = Self::bit(ext);
        self.seen[word] & bit != 0
    }

    pub(super) fn run_lost(&self) -> u64 {
        (self.highest - self.base + 1).saturating_sub(self.received)
    }

    pub(super) fn lost(&self) -> u64 {
        self.lost_before + self.run_lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xAA; 20]);
        p
    }

    #[test]
    fn classifies_by_first_byte_per_rfc7983() {
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), Datagram::Stun);
        assert_eq!(classify(&[0x01, 0x01]), Datagram::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), Datagram::Dtls);
        assert_eq!(classify(&[23, 0xfe, 0xfd]), Datagram::Dtls);
        assert_eq!(classify(&rtp(102, 1, 7)), Datagram::Rtp);
        // Marker bit set on PT 102 is 0xe6 = 230, still RTP.
        assert_eq!(classify(&[0x80, 0x80 | 102]), Datagram::Rtp);
        assert_eq!(classify(&[0x80, 200]), Datagram::Rtcp); // SR
        assert_eq!(classify(&[0x81, 201]), Datagram::Rtcp); // RR
        assert_eq!(classify(&[0x81, 205]), Datagram::Rtcp); // RTPFB (NACK)
        assert_eq!(classify(&[0x80]), Datagram::Other);
        assert_eq!(classify(&[]), Datagram::Other);
        assert_eq!(classify(&[64]), Datagram::Other);
        assert_eq!(classify(&[200, 0]), Datagram::Other);
    }

    #[test]
    fn dtls_alert_is_content_type_21() {
        assert!(is_dtls_alert(&[21, 0xfe, 0xfd, 0, 1]));
        assert!(!is_dtls_alert(&[23, 0xfe, 0xfd, 0, 1]));
    }

    #[test]
    fn parses_clear_text_rtp_header() {
        let h = RtpHeader::parse(&rtp(0x80 | 111, 0xfffe, 0xdeadbeef)).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                pt: 111,
                seq: 0xfffe,
                ssrc: 0xdeadbeef,
                len: 12
            }
        );
    }

    #[test]
    fn rtp_header_length_covers_csrcs_and_extension() {
        let mut p = rtp(102, 5, 9);
        p[0] = 0x80 | 0x10 | 0x02; // extension, two CSRCs
        // After 12 + 8 bytes: extension profile (2) and length 1 word.
        p.splice(20..24, [0xbe, 0xde, 0x00, 0x01]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.len, 12 + 8 + 4 + 4);
    }

    #[test]
    fn rejects_truncated_or_wrong_version_rtp() {
        assert!(RtpHeader::parse(&[0x80, 102, 0, 1]).is_none());
        let mut p = rtp(102, 1, 1);
        p[0] = 0x40;
        assert!(RtpHeader::parse(&p).is_none());
        let mut p = rtp(102, 1, 1);
        p[0] = 0x80 | 0x0f; // 15 CSRCs do not fit
        assert!(RtpHeader::parse(&p).is_none());
    }

    fn lost_after(seqs: &[u16]) -> u64 {
        let mut t = SeqTracker::new(seqs[0]);
        for &s in &seqs[1..] {
            t.record(s);
        }
        t.lost()
    }

    #[test]
    fn no_loss_for_contiguous_sequence() {
        assert_eq!(lost_after(&[10, 11, 12, 13]), 0);
    }

    #[test]
    fn counts_gaps() {
        assert_eq!(lost_after(&[10, 11, 14, 15]), 2);
    }

    #[test]
    fn handles_wraparound() {
        assert_eq!(lost_after(&[65533, 65534, 65535, 0, 1]), 0);
        assert_eq!(lost_after(&[65534, 1, 2]), 2); // 65535 and 0 missing
    }

    #[test]
    fn reordered_packet_is_not_lost() {
        assert_eq!(lost_after(&[1, 2, 4, 3, 5]), 0);
        assert_eq!(lost_after(&[65535, 1, 0, 2]), 0);
    }

    #[test]
    fn late_retransmission_recovers_loss() {
        let mut t = SeqTracker::new(1);
        t.record(3);
        assert_eq!(t.lost(), 1);
        t.record(2);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn duplicates_count_once() {
        let mut t = SeqTracker::new(1);
        for seq in [2, 2, 2, 4, 4] {
            t.record(seq);
        }
        assert_eq!((t.lost(), t.duplicates), (1, 3));
    }

    #[test]
    fn retransmissions_hundreds_late_fill_gaps_once() {
        // As seen from a server answering NACKs without RTX: a hole, the stream moves on,
        // then the hole arrives twice.
        let mut t = SeqTracker::new(10_967);
        let live = (10_968..=11_065).chain(11_096..=11_252);
        let hole = 11_066..=11_095;
        for seq in live.chain(hole.clone()).chain(11_253..=11_355).chain(hole) {
            t.record(seq);
        }
        assert_eq!(t.lost(), 0);
        assert_eq!(t.duplicates, 30);
    }

    #[test]
    fn packet_from_before_the_first_extends_the_run() {
        assert_eq!(lost_after(&[100, 101, 98]), 1); // 99 missing
        assert_eq!(lost_after(&[1, 2, 65535]), 1); // 0 missing, across the wrap
    }

    #[test]
    fn big_jump_starts_a_new_run_and_keeps_earlier_loss() {
        // 1 lost before the jump, then a restart at 40000 with 1 lost after it.
        assert_eq!(lost_after(&[1, 3, 40000, 40002]), 2);
        // A jump backwards beyond the dropout is a restart too.
        assert_eq!(lost_after(&[5000, 5001, 100, 101]), 0);
    }

    #[test]
    fn tracks_loss_per_ssrc() {
        let mut loss = LossBySsrc::default();
        for (ssrc, seq) in [(1, 10), (2, 500), (1, 12), (2, 501)] {
            loss.record(ssrc, seq);
        }
        assert_eq!(loss.lost(), 1);
        loss.record(2, 505);
        assert_eq!(loss.lost(), 4);
    }

    #[test]
    fn payload_kinds_follow_the_answer() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 106 107\r\na=rtpmap:106 H264/90000\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 109\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let kinds = PayloadKinds::from_sdp(sdp);
        assert_eq!(kinds.get(106), Some(MediaKind::Video));
        assert_eq!(kinds.get(107), Some(MediaKind::Video));
        assert_eq!(kinds.get(109), Some(MediaKind::Audio));
        assert_eq!(kinds.get(VIDEO_PT), Some(MediaKind::Video));
        assert_eq!(kinds.get(AUDIO_PT), Some(MediaKind::Audio));
        assert_eq!(kinds.get(96), None);
        assert_eq!(kinds.get(200), None);
    }
}
