//! The viewer's peer connection and its socket.

use super::*;
use crate::dataplane::media::{TrackKind, codecs};

/// Binds a UDP socket on all interfaces and picks the address to advertise: the source
/// address the kernel would use towards the WHEP host. `rtc` only accepts datagrams whose
/// `local_addr` is a candidate it knows, so that advertised address is what the event loop
/// reports, while the wildcard bind still receives from a server whose media address differs
/// from its HTTP address.
pub(super) async fn bind_socket(url: &Url) -> Result<(UdpSocket, SocketAddr), ClientError> {
    let host = url
        .host_str()
        .ok_or_else(|| url_error(url.as_str(), "no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let target = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| url_error(url.as_str(), "host did not resolve"))?;
    let ip = local_ip_towards(target)?;
    // A receive buffer big enough for a keyframe burst (a GOP replayed on join), so loss we
    // report is the server's, not our socket's.
    let socket =
        crate::dataplane::media::udp::bind(SocketAddr::new(unspecified_like(ip), 0), RECV_BUFFER)?;
    let advertised = SocketAddr::new(ip, socket.local_addr()?.port());
    Ok((socket, advertised))
}

/// The source address the routing table chooses for `target`; UDP connect sends nothing.
pub(super) fn local_ip_towards(target: SocketAddr) -> std::io::Result<IpAddr> {
    let probe = std::net::UdpSocket::bind(SocketAddr::new(unspecified_like(target.ip()), 0))?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

pub(super) fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// H.264 and Opus at fixed payload types, two recvonly transceivers. Interceptors (NACK,
/// receiver reports) only make sense when `rtc` sees the media, i.e. in inspect mode.
pub(super) fn build_peer_connection(inspect: bool) -> Result<RTCPeerConnection, ClientError> {
    let mut media = MediaEngine::default();
    media.register_codec(h264_codec(), RtpCodecKind::Video)?;
    media.register_codec(opus_codec(), RtpCodecKind::Audio)?;
    let registry = if inspect {
        configure_rtcp_reports(configure_nack(Registry::new(), &mut media))
    } else {
        Registry::new()
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())?;
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )?;
    }
    Ok(pc)
}

pub(super) fn h264_codec() -> RTCRtpCodecParameters {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            rtcp_feedback: vec![feedback("nack", ""), feedback("nack", "pli")],
            ..codecs::rtp_codec(TrackKind::Video)
        },
        payload_type: VIDEO_PT,
    }
}

pub(super) fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: codecs::rtp_codec(TrackKind::Audio),
        payload_type: AUDIO_PT,
    }
}

/// Adds our one candidate and ends gathering, so the offer carries the candidate and
/// `a=end-of-candidates`: WHEP servers need not support trickle.
pub(super) fn add_local_candidate(
    pc: &mut RTCPeerConnection,
    addr: SocketAddr,
    transport: MediaTransport,
) -> Result<(), ClientError> {
    let candidate = match transport {
        MediaTransport::Udp => crate::dataplane::media::host_candidate(addr)?,
        MediaTransport::Tcp => crate::dataplane::media::active_tcp_candidate(addr.ip())?,
    };
    pc.add_local_candidate(candidate)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_has_fixed_payload_types_candidate_and_recvonly() {
        let mut pc = build_peer_connection(false).unwrap();
        add_local_candidate(
            &mut pc,
            "127.0.0.1:40000".parse().unwrap(),
            MediaTransport::Udp,
        )
        .unwrap();
        let sdp = pc.create_offer(None).unwrap().sdp;
        assert!(sdp.contains("a=rtpmap:102 H264/90000"), "{sdp}");
        assert!(
            sdp.contains(&format!("a=fmtp:102 {}", codecs::H264_FMTP)),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtcp-fb:102 nack pli"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2"), "{sdp}");
        assert!(sdp.contains("127.0.0.1 40000 typ host"), "{sdp}");
        assert!(sdp.contains("a=end-of-candidates"), "{sdp}");
        assert_eq!(sdp.matches("a=recvonly").count(), 2, "{sdp}");
    }

    #[tokio::test]
    async fn advertises_the_route_source_address() {
        let url = Url::parse("http://127.0.0.1:9/whep/x").unwrap();
        let (socket, advertised) = bind_socket(&url).await.unwrap();
        assert_eq!(advertised.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(advertised.port(), socket.local_addr().unwrap().port());
    }
}
