//! Builds one answering peer connection for a WHEP offer.

use std::time::Instant;

use rand::Rng;
use rand::distr::Alphanumeric;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{NackResponderBuilder, Registry, SenderReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind, TYPE_RTCP_FB_GOOG_REMB, TYPE_RTCP_FB_NACK,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::codecs::{H264_PT, OPUS_PT, rtp_codec};
use super::factory::PeerFactoryConfig;
use super::feedback::{FeedbackProbe, ViewerReports};
use super::keytap::KeyTap;
use super::{SubscribeError, TrackKind};

/// Below every named slot of `rtc`'s registry (the lowest is 1_000): the wire end of the chain.
const FEEDBACK_PROBE_SLOT: usize = 100;

const NO_H264: &str = "offer has no H.264 codec with packetization-mode=1 and a baseline profile";
/// Our connectivity checks are paced at 50 ms instead of the core's 200 ms. A viewer's
/// nominating check that arrives before our own check on that pair succeeded gets no answer
/// (the core only pings back), so the pace of our checks bounds join time: p95 208 → 57 ms at
/// 100 viewers. 28 attempts keep the core's 1.4 s window.
const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
const ICE_CHECK_ATTEMPTS: u16 = 28;

/// SRTP profiles we offer, the DTLS server (the viewer) picks one. The AES-CM one with a
/// 32-bit tag is left out: WebRTC requires the 80-bit one (RFC 8827 §6.5), and
/// [`KeyTap`] tells the two apart by nothing.
const SRTP_PROFILES: [SrtpProtectionProfile; 3] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];

/// Our sending leg of one track: the SSRC and the payload type this subscriber negotiated.
#[derive(Clone, Copy, Debug)]
pub struct TrackOut {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    pub payload_type: u8,
}

pub struct Answered {
    pub pc: RTCPeerConnection,
    /// Where the keys of what we send turn up once DTLS is done.
    pub keys: Arc<KeyTap>,
    pub local_ufrag: String,
    pub answer_sdp: String,
    pub video: Option<TrackOut>,
    pub audio: Option<TrackOut>,
}

/// `adaptive`: the viewer may change rendition, so we ask for its bandwidth estimate (REMB).
fn media_engine(adaptive: bool) -> Result<(MediaEngine, Registry), SubscribeError> {
    let mut engine = MediaEngine::default();
    for (kind, rtp_kind, pt) in [
        (TrackKind::Video, RtpCodecKind::Video, H264_PT),
        (TrackKind::Audio, RtpCodecKind::Audio, OPUS_PT),
    ] {
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: rtp_codec(kind),
                    payload_type: pt,
                },
                rtp_kind,
            )
            .map_err(internal)?;
    }
    // NACKs are answered from the sender's history; sender reports keep browsers' stats and
    // A/V sync. A viewer sends us no media, so the receiving halves (NACK generator, receiver
    // reports) are left out: each interceptor is one more queue every packet passes through.
    for parameter in ["", "pli"] {
        engine.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_NACK.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build());
    if adaptive {
        // Offered without transport-cc, it makes Chromium estimate on the receiving side and
        // send REMB; the answer carries it only if the offer had it.
        engine.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_GOOG_REMB.to_owned(),
                parameter: String::new(),
            },
            RtpCodecKind::Video,
        );
    }
    Ok((engine, registry))
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn internal(e: impl std::fmt::Display) -> SubscribeError {
    SubscribeError::Internal(e.to_string())
}

fn bad_offer(e: impl std::fmt::Display) -> SubscribeError {
    SubscribeError::BadOffer(e.to_string())
}

/// Which media kinds the offer asks to receive.
fn offered_kinds(offer: &RTCSessionDescription) -> Result<(bool, bool), SubscribeError> {
    let parsed = offer.unmarshal().map_err(bad_offer)?;
    let has = |kind: &str| {
        parsed
            .media_descriptions
            .iter()
            .any(|m| m.media_name.media == kind)
    };
    Ok((has("video"), has("audio")))
}

/// Our passive ICE-TCP candidate in one answer: where the viewer's WHEP request was sent,
/// reachable from the viewer by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpCandidate {
    /// What `rtc` is given (it takes only IP literals) and stamps on the connection's packets.
    pub addr: SocketAddr,
    /// Written into the answer instead of `addr`'s IP when the viewer named us by host name;
    /// Chromium resolves such a candidate, Firefox ignores it (and uses UDP).
    pub host: Option<String>,
}

/// Answers `offer_sdp` with sendonly tracks for the stream's media, our UDP host candidates
/// and, if given, a passive ICE-TCP candidate (lower priority, per RFC 6544, so UDP wins).
/// What the viewer reports lands in `reports`; an `adaptive` viewer is asked for REMB too.
pub fn answer(
    offer_sdp: &str,
    config: &PeerFactoryConfig,
    stream_has_audio: bool,
    tcp: Option<&TcpCandidate>,
    reports: &ViewerReports,
    adaptive: bool,
) -> Result<Answered, SubscribeError> {
    if !offer_sdp.trim_start().starts_with("v=") {
        return Err(SubscribeError::BadOffer(
            "body is not an SDP offer (must start with v=)".into(),
        ));
    }
    let offer = RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(bad_offer)?;
    let (wants_video, wants_audio) = offered_kinds(&offer)?;
    if !wants_video {
        return Err(SubscribeError::BadOffer(
            "offer has no video media section".into(),
        ));
    }

    let local_ufrag = random_token(16);
    let (media_engine, registry) = media_engine(adaptive)?;
    // Wire-most, so that it sees RTCP before any interceptor consumes it.
    let registry = registry.with(
        Slot::Custom(FEEDBACK_PROBE_SLOT),
        FeedbackProbe::new(reports.clone()),
    );
    let keys = KeyTap::new().map_err(internal)?;
    let settings = SettingEngineBuilder::new()
        .with_ice_credentials(local_ufrag.clone(), random_token(32))
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_CHECK_ATTEMPTS))
        .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
        .with_crypto_provider(keys.clone())
        .build();
    let now = Instant::now();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(internal)?;
    pc.set_remote_description(now, offer).map_err(bad_offer)?;

    let stream_id = random_token(12);
    let mut add = |kind: TrackKind| -> Result<TrackOut, SubscribeError> {
        let ssrc = rand::random::<u32>();
        let track = MediaStreamTrack::new(
            stream_id.clone(),
            random_token(12),
            format!("{kind:?}").to_lowercase(),
            match kind {
                TrackKind::Video => RtpCodecKind::Video,
                TrackKind::Audio => RtpCodecKind::Audio,
            },
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: rtp_codec(kind),
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).map_err(|e| match kind {
            TrackKind::Video => SubscribeError::BadOffer(format!("{NO_H264} ({e})")),
            TrackKind::Audio => bad_offer(e),
        })?;
        Ok(TrackOut {
            sender,
            ssrc,
            payload_type: 0,
        })
    };
    let video = add(TrackKind::Video)?;
    let audio = if wants_audio && stream_has_audio {
        Some(add(TrackKind::Audio)?)
    } else {
        None
    };

    for addr in config.candidate_addrs() {
        pc.add_local_candidate(host_candidate(addr).map_err(internal)?)
            .map_err(internal)?;
    }
    if let Some(tcp) = tcp {
        pc.add_local_candidate(passive_tcp_candidate(tcp.addr).map_err(internal)?)
            .map_err(internal)?;
    }

    let answer = pc.create_answer(None).map_err(bad_offer)?;
    pc.set_local_description(now, answer.clone())
        .map_err(bad_offer)?;
    let video = Some(
        negotiated(&mut pc, video, MIME_TYPE_H264)
            .ok_or_else(|| SubscribeError::BadOffer(NO_H264.into()))?,
    );
    let audio = audio.and_then(|a| negotiated(&mut pc, a, MIME_TYPE_OPUS));
    let answer_sdp = match tcp.and_then(|t| t.host.as_deref()) {
        Some(host) => name_tcp_candidates(&answer.sdp, host),
        None => answer.sdp,
    };
    Ok(Answered {
        pc,
        keys,
        local_ufrag,
        answer_sdp,
        video,
        audio,
    })
}

/// A UDP host candidate for `addr`: our advertised address in an answer, or a viewer's own.
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, rtc::shared::error::Error> {
    candidate("udp", addr, TcpType::Unspecified)
}

/// An active ICE-TCP host candidate (RFC 6544): a viewer that connects out from `ip`; port 9
/// by convention, since the real one is only known once connected.
pub fn active_tcp_candidate(ip: IpAddr) -> Result<RTCIceCandidateInit, rtc::shared::error::Error> {
    candidate("tcp", SocketAddr::new(ip, 9), TcpType::Active)
}

/// A passive ICE-TCP host candidate (RFC 6544) at `addr`.
fn passive_tcp_candidate(
    addr: SocketAddr,
) -> Result<RTCIceCandidateInit, rtc::shared::error::Error> {
    candidate("tcp", addr, TcpType::Passive)
}

fn candidate(
    network: &str,
    addr: SocketAddr,
    tcp_type: TcpType,
) -> Result<RTCIceCandidateInit, rtc::shared::error::Error> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

/// Replaces the address of every TCP candidate line with `host`. `rtc` keeps its own parsed
/// candidates (with the IP), so only what the viewer reads changes.
fn name_tcp_candidates(sdp: &str, host: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        // a=candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ ...
        if line.starts_with("a=candidate:")
            && fields.len() > 5
            && fields[2].eq_ignore_ascii_case("tcp")
        {
            let mut named = fields.clone();
            named[4] = host;
            out.push_str(&named.join(" "));
            out.push_str(&line[line.trim_end().len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Fills in the payload type the remote chose for `mime`, or None when it was not negotiated.
fn negotiated(pc: &mut RTCPeerConnection, mut out: TrackOut, mime: &str) -> Option<TrackOut> {
    let mut sender = pc.rtp_sender(out.sender)?;
    let pt = sender
        .get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)?;
    out.payload_type = pt;
    Some(out)
}

/// An unguessable identifier for sessions and ETags.
pub fn random_id() -> String {
    random_token(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../../../tests/fixtures/chromium-offer.sdp");

    fn answer_sdp(adaptive: bool, offer: &str) -> String {
        let config = PeerFactoryConfig {
            advertised_ips: vec!["127.0.0.1".parse().unwrap()],
            udp_port: 9,
            ice_servers: vec![],
            ice_tcp: false,
        };
        answer(
            offer,
            &config,
            true,
            None,
            &ViewerReports::default(),
            adaptive,
        )
        .unwrap()
        .answer_sdp
    }

    fn h264_remb_lines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.ends_with(" goog-remb")).collect()
    }

    #[test]
    fn an_adaptive_viewer_is_asked_for_remb_and_only_if_it_offered_it() {
        let adaptive = answer_sdp(true, CHROMIUM_OFFER);
        assert_eq!(h264_remb_lines(&adaptive).len(), 1, "{adaptive}");
        assert!(!adaptive.contains("transport-cc"), "{adaptive}");
        assert!(h264_remb_lines(&answer_sdp(false, CHROMIUM_OFFER)).is_empty());
        let without: String = CHROMIUM_OFFER
            .split_inclusive('\n')
            .filter(|l| !l.contains("goog-remb"))
            .collect();
        let answered = answer_sdp(true, &without);
        assert!(h264_remb_lines(&answered).is_empty(), "{answered}");
    }
}
