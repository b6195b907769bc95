//! The two codecs we send, as every party (answering peer, Sources, viewer) must describe them.

use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

use super::TrackKind;

/// Constrained baseline, packetization mode 1: what Chromium decodes over WebRTC, and what
/// FFmpeg is told to produce. `rtc` matches offers on these parameters.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
/// Opus as browsers offer it.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
/// Payload types we register; an answer uses the ones the offer chose instead.
pub const H264_PT: u8 = 102;
pub const OPUS_PT: u8 = 111;

/// RTP clock rate of a track.
pub fn clock_rate(kind: TrackKind) -> u32 {
    match kind {
        TrackKind::Video => 90_000,
        TrackKind::Audio => 48_000,
    }
}

/// The codec of a track, without RTCP feedback (each side adds what it handles).
pub fn rtp_codec(kind: TrackKind) -> RTCRtpCodec {
    let (mime, channels, fmtp) = match kind {
        TrackKind::Video => (MIME_TYPE_H264, 0, H264_FMTP),
        TrackKind::Audio => (MIME_TYPE_OPUS, 2, OPUS_FMTP),
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: clock_rate(kind),
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}
