//! A WHEP subscriber (viewer) built on the sans-IO `rtc` stack.
//!
//! Integration tests use it to watch a stream the way a player does; `bench` uses it to load a
//! server with hundreds of viewers. Each viewer owns one UDP socket and one tokio task that
//! drives its `RTCPeerConnection`.
//!
//! Two modes:
//! - *cheap* (`inspect_media == false`): ICE, DTLS and SRTP complete normally, but media is
//!   counted from the RTP header, which SRTP leaves in clear text, and is never decrypted. That
//!   keeps the load generator's CPU well below the server's.
//! - *inspect*: everything goes through `rtc`; decrypted H.264 and Opus payloads are examined
//!   (keyframes, SPS, non-empty audio), and NACKs and receiver reports are sent like a browser.
//!
//! Packet counts, bytes and loss come from the datagrams on the wire in both modes, so the two
//! modes report the same figures for the same traffic.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderMap, IF_MATCH, LOCATION};
use reqwest::{StatusCode, Url};
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::statistics::StatsSelector;
use rtc::statistics::report::RTCStatsReportEntry;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

mod driver;
mod peer;
mod signal;
mod wire;

use driver::Driver;
use peer::*;
use signal::*;
use wire::{LossBySsrc, PayloadKinds};

/// Payload type offered for H.264; fixed so raw SRTP packets can be classified by header.
pub const VIDEO_PT: u8 = crate::dataplane::media::codecs::H264_PT;
/// Payload type offered for Opus; fixed for the same reason.
pub const AUDIO_PT: u8 = crate::dataplane::media::codecs::OPUS_PT;
/// Bound on every HTTP exchange, so a hung server fails a test instead of stalling it.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close` waits for the task to send its close_notify and stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Timer used when `rtc` has no deadline of its own.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Socket receive buffer requested per viewer.
const RECV_BUFFER: usize = 4 << 20;
/// Datagrams handled per wakeup before timers get a turn.
const RECV_BATCH: usize = 64;
/// Largest SRTP authentication tag (AEAD_AES_128_GCM); what a header-only look must discount.
const SRTP_MAX_TAG: usize = 16;
/// RTCP packet type of a sender report (RFC 3550 §6.4.1).
const RTCP_SENDER_REPORT: u8 = 200;
/// How often the NACK count of `rtc`'s stats is copied into a viewer's.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often `wait_for` re-checks its predicate.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What to subscribe to and how closely to look at the media.
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// WHEP endpoint, e.g. `http://127.0.0.1:8080/whep/cam1`.
    pub url: String,
    /// Sent as `Authorization: Bearer` on every request when set.
    pub token: Option<String>,
    /// Decrypt and parse media (keyframes, SPS, Opus). Off for load tests.
    pub inspect_media: bool,
    /// How media reaches us: UDP, or only ICE-TCP to the server's passive candidate.
    pub transport: MediaTransport,
    /// Discards the first arrival of every video packet whose sequence number is a multiple
    /// of this, as a lossy link would; NACKs (inspect mode) should get each one back.
    pub drop_video_every: Option<u16>,
}

/// The transport a viewer offers for its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaTransport {
    /// A UDP host candidate, as browsers prefer.
    #[default]
    Udp,
    /// Only an active ICE-TCP candidate: media over a TCP connection to the server's passive
    /// candidate (RFC 6544), as a browser behind a UDP-blocking network ends up using.
    Tcp,
}

impl ViewerOptions {
    /// Inspecting viewer without a token, the usual choice in tests.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            inspect_media: true,
            transport: MediaTransport::Udp,
            drop_video_every: None,
        }
    }
}

/// Snapshot of what a viewer has seen so far.
#[derive(Debug, Clone)]
pub struct ViewerStats {
    /// When the offer POST was sent: the origin of every join-time figure.
    pub post_sent_at: Instant,
    /// When the 201 answer arrived.
    pub answered_at: Instant,
    /// First time the peer connection reached `connected` (ICE + DTLS done).
    pub connected_at: Option<Instant>,
    /// First video or audio RTP packet on the wire.
    pub first_packet_at: Option<Instant>,
    /// Most recent video or audio RTP packet, to see media stop and resume.
    pub last_packet_at: Option<Instant>,
    /// First H.264 IDR slice (NAL type 5); inspect mode only.
    pub first_keyframe_at: Option<Instant>,
    /// RTP packets whose payload type the answer lists under `m=video`.
    pub video_packets: u64,
    /// RTP packets whose payload type the answer lists under `m=audio`.
    pub audio_packets: u64,
    /// RTP packets with a payload type of neither section.
    pub other_packets: u64,
    /// Datagram bytes of video packets as received (SRTP, tag included).
    pub video_bytes: u64,
    /// Datagram bytes of audio packets as received.
    pub audio_bytes: u64,
    /// Packets missing from the sequence numbers seen, summed over SSRCs; a late
    /// retransmission fills its gap.
    pub lost: u64,
    /// Packets received again (e.g. retransmitted twice); included in the packet counts.
    pub duplicate_packets: u64,
    /// Video packets discarded on arrival by `drop_video_every`; not in the packet counts.
    pub dropped_on_purpose: u64,
    /// NACKs this viewer sent, as its `rtc` counts them (inspect mode; read about once a
    /// second).
    pub nacks_sent: u64,
    /// RTCP sender reports received from the server, counted on the wire.
    pub sender_reports: u64,
    /// RTP packets `rtc` decrypted and handed back; inspect mode only.
    pub decrypted_packets: u64,
    /// An H.264 IDR NAL was seen; inspect mode only.
    pub idr_seen: bool,
    /// An H.264 SPS NAL was seen; inspect mode only.
    pub sps_seen: bool,
    /// An Opus packet (PT 111) with a non-empty payload was seen.
    pub opus_seen: bool,
    /// Last peer connection state (`new`, `connecting`, `connected`, ...).
    pub state: String,
    /// Last ICE connection state.
    pub ice_state: String,
    /// The server ended the session (DTLS alert such as close_notify, or the connection went
    /// disconnected/failed/closed after connecting) while this viewer was not closing.
    pub closed_by_server: bool,
    /// When `closed_by_server` became true.
    pub server_closed_at: Option<Instant>,
}

impl ViewerStats {
    fn new(post_sent_at: Instant, answered_at: Instant) -> Self {
        Self {
            post_sent_at,
            answered_at,
            connected_at: None,
            first_packet_at: None,
            last_packet_at: None,
            first_keyframe_at: None,
            video_packets: 0,
            audio_packets: 0,
            other_packets: 0,
            video_bytes: 0,
            audio_bytes: 0,
            lost: 0,
            duplicate_packets: 0,
            dropped_on_purpose: 0,
            nacks_sent: 0,
            sender_reports: 0,
            decrypted_packets: 0,
            idr_seen: false,
            sps_seen: false,
            opus_seen: false,
            state: RTCPeerConnectionState::New.to_string(),
            ice_state: String::new(),
            closed_by_server: false,
            server_closed_at: None,
        }
    }

    /// Video plus audio packets.
    pub fn media_packets(&self) -> u64 {
        self.video_packets + self.audio_packets
    }

    /// POST to first media packet, the join time a user perceives.
    pub fn time_to_first_packet(&self) -> Option<Duration> {
        self.first_packet_at.map(|t| t - self.post_sent_at)
    }

    /// POST to connected.
    pub fn time_to_connected(&self) -> Option<Duration> {
        self.connected_at.map(|t| t - self.post_sent_at)
    }

    /// POST to first keyframe.
    pub fn time_to_keyframe(&self) -> Option<Duration> {
        self.first_keyframe_at.map(|t| t - self.post_sent_at)
    }
}

/// Why a subscription or request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WHEP URL could not be parsed or resolved.
    #[error("invalid WHEP URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The server answered with an unexpected status; tests assert on `status`.
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// The request did not complete (connection refused, timeout, ...).
    #[error("HTTP request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// A 201 without a Location the viewer could resolve.
    #[error("201 response without a usable Location header: {0}")]
    Location(String),
    /// The WebRTC stack rejected something (e.g. the answer SDP).
    #[error("WebRTC: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
    /// Socket setup failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// `wait_for` gave up; carries the last stats to explain why.
    #[error("condition not met within {after:?}; last stats: {stats:?}")]
    Timeout {
        after: Duration,
        stats: Box<ViewerStats>,
    },
}

/// A subscribed viewer. Dropping it closes the peer connection without a DELETE.
pub struct Viewer {
    http: reqwest::Client,
    token: Option<String>,
    location: String,
    session_url: Url,
    etag: Option<String>,
    answer_sdp: String,
    headers: HeaderMap,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    deleted: AtomicBool,
    stop: Option<oneshot::Sender<StopMode>>,
    task: Option<JoinHandle<()>>,
}

/// State the event loop writes and the `Viewer` reads.
struct Shared {
    stats: Mutex<ViewerStats>,
    /// Set before we close, so our own teardown is not reported as the server's.
    closing: AtomicBool,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, ViewerStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How the event loop should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopMode {
    /// Close the peer connection and send its DTLS close_notify.
    Graceful,
    /// Vanish without a word, like a client whose network went away.
    Abandon,
}

/// Subscribes to a WHEP endpoint: offer, POST, answer, then media flows on a spawned task.
pub async fn subscribe(opts: ViewerOptions) -> Result<Viewer, ClientError> {
    let url = Url::parse(&opts.url).map_err(|e| url_error(&opts.url, e))?;
    let http = http_client()?;
    let (socket, local_addr) = bind_socket(&url).await?;
    let mut pc = build_peer_connection(opts.inspect_media)?;
    add_local_candidate(&mut pc, local_addr, opts.transport)?;
    let offer = pc.create_offer(None)?;
    pc.set_local_description(Instant::now(), offer.clone())?;

    let post_sent_at = Instant::now();
    let answer = post_offer(&http, &url, opts.token.as_deref(), offer.sdp).await?;
    let answered_at = Instant::now();
    let remote = RTCSessionDescription::answer(answer.sdp.clone())
        .and_then(|desc| pc.set_remote_description(Instant::now(), desc));
    if let Err(err) = remote {
        // The server holds a session for us; don't leave it to be reaped.
        let _ = send_delete(&http, &answer.session_url, opts.token.as_deref()).await;
        return Err(err.into());
    }

    let shared = Arc::new(Shared {
        stats: Mutex::new(ViewerStats::new(post_sent_at, answered_at)),
        closing: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let driver = Driver {
        pc,
        socket,
        local_addr,
        tcp: None,
        kinds: PayloadKinds::from_sdp(&answer.sdp),
        loss: LossBySsrc::default(),
        drop_video_every: opts.drop_video_every,
        dropped: HashSet::new(),
        stats_read_at: Instant::now(),
        inspect: opts.inspect_media,
        shared: shared.clone(),
    };
    let task = tokio::spawn(driver.run(stop_rx));

    Ok(Viewer {
        http,
        token: opts.token,
        location: answer.location,
        session_url: answer.session_url,
        etag: answer.etag,
        answer_sdp: answer.sdp,
        headers: answer.headers,
        local_addr,
        shared,
        deleted: AtomicBool::new(false),
        stop: Some(stop_tx),
        task: Some(task),
    })
}

impl Viewer {
    /// Current statistics.
    pub fn stats(&self) -> ViewerStats {
        self.shared.stats().clone()
    }

    /// Polls the stats until `pred` holds, or fails with the last stats after `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&ViewerStats) -> bool,
        timeout: Duration,
    ) -> Result<ViewerStats, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return Ok(stats);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    after: timeout,
                    stats: Box::new(stats),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The `Location` header exactly as the server sent it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The session resource: `Location` resolved against the WHEP URL.
    pub fn session_url(&self) -> &str {
        self.session_url.as_str()
    }

    /// The `ETag` of the POST response, if any.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The answer SDP from the POST response.
    pub fn answer_sdp(&self) -> &str {
        &self.answer_sdp
    }

    /// All headers of the POST response (Link, ETag, CORS, ...).
    pub fn response_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The address advertised in our host candidate.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends a trickle-ICE PATCH to the session and returns the status, whatever it is.
    pub async fn patch_candidates(
        &self,
        sdpfrag: &str,
        if_match: Option<&str>,
    ) -> Result<u16, ClientError> {
        let mut req = self
            .http
            .patch(self.session_url.clone())
            .header(CONTENT_TYPE, "application/trickle-ice-sdpfrag")
            .body(sdpfrag.to_owned());
        if let Some(tag) = if_match {
            req = req.header(IF_MATCH, tag);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Ok(req.send().await?.status().as_u16())
    }

    /// Sends DELETE to the session and returns the status; the media task keeps running so a
    /// test can watch the server's side of the teardown.
    pub async fn delete(&self) -> Result<u16, ClientError> {
        self.shared.closing.store(true, Ordering::SeqCst);
        let status = send_delete(&self.http, &self.session_url, self.token.as_deref()).await?;
        self.deleted.store(true, Ordering::SeqCst);
        Ok(status)
    }

    /// Leaves politely: DELETE (unless `delete` already ran), then close the peer connection
    /// so DTLS close_notify goes out, then stop the task.
    pub async fn close(self) {
        if !self.deleted.load(Ordering::SeqCst)
            && let Err(err) = self.delete().await
        {
            debug!(%err, session = %self.session_url, "DELETE failed");
        }
        self.stop(StopMode::Graceful).await;
    }

    /// Closes the peer connection (close_notify) without DELETE.
    pub async fn hangup(self) {
        self.stop(StopMode::Graceful).await;
    }

    /// Stops without DELETE or close_notify, like a client that lost its network.
    pub async fn abandon(self) {
        self.stop(StopMode::Abandon).await;
    }

    async fn stop(mut self, mode: StopMode) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(mode);
        }
        if let Some(task) = self.task.take()
            && tokio::time::timeout(STOP_TIMEOUT, task).await.is_err()
        {
            debug!(session = %self.session_url, "viewer task did not stop in time");
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        // The dropped sender ends the task gracefully; our teardown is not the server's.
        self.shared.closing.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_errors_carry_status_and_body() {
        // A one-shot HTTP server answering 404, to check the error mapping.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16384];
            let _ = conn.read(&mut buf).await;
            let body = "unknown process";
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await.unwrap();
        });
        let err = subscribe(ViewerOptions::new(format!("http://{addr}/whep/nope")))
            .await
            .err()
            .unwrap();
        match err {
            ClientError::Http { status, body } => {
                assert_eq!(status, 404);
                assert_eq!(body, "unknown process");
            }
            other => panic!("unexpected error {other}"),
        }
    }
}
