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
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MediaEngine,
};
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
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

/// Payload type offered for H.264; fixed so raw SRTP packets can be classified by header.
pub const VIDEO_PT: u8 = 102;
/// Payload type offered for Opus; fixed for the same reason.
pub const AUDIO_PT: u8 = 111;
/// Constrained baseline, the profile browsers decode over WebRTC (DESIGN.md §3).
pub const H264_FMTP: &str =
    "packetization-mode=1;profile-level-id=42e01f;level-asymmetry-allowed=1";
/// Opus parameters as a browser offers them.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

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
}

impl ViewerOptions {
    /// Inspecting viewer without a token, the usual choice in tests.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            inspect_media: true,
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
    add_host_candidate(&mut pc, local_addr)?;
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
        kinds: PayloadKinds::from_sdp(&answer.sdp),
        loss: LossBySsrc::default(),
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

fn url_error(url: &str, reason: impl ToString) -> ClientError {
    ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// One client per viewer, without keep-alive: hundreds of viewers must not hold hundreds of
/// idle TCP connections (file descriptors) besides their UDP sockets.
fn http_client() -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(HTTP_TIMEOUT)
        .build()?)
}

/// Binds a UDP socket on all interfaces and picks the address to advertise: the source
/// address the kernel would use towards the WHEP host. `rtc` only accepts datagrams whose
/// `local_addr` is a candidate it knows, so that advertised address is what the event loop
/// reports, while the wildcard bind still receives from a server whose media address differs
/// from its HTTP address.
async fn bind_socket(url: &Url) -> Result<(UdpSocket, SocketAddr), ClientError> {
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
    let socket = bind_udp(unspecified_like(ip))?;
    let advertised = SocketAddr::new(ip, socket.local_addr()?.port());
    Ok((socket, advertised))
}

/// A UDP socket on an ephemeral port with a receive buffer big enough for a keyframe burst
/// (a GOP replayed on join), so loss we report is the server's, not our socket's.
fn bind_udp(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The source address the routing table chooses for `target`; UDP connect sends nothing.
fn local_ip_towards(target: SocketAddr) -> std::io::Result<IpAddr> {
    let probe = std::net::UdpSocket::bind(SocketAddr::new(unspecified_like(target.ip()), 0))?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// H.264 and Opus at fixed payload types, two recvonly transceivers. Interceptors (NACK,
/// receiver reports) only make sense when `rtc` sees the media, i.e. in inspect mode.
fn build_peer_connection(inspect: bool) -> Result<RTCPeerConnection, ClientError> {
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

fn h264_codec() -> RTCRtpCodecParameters {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: H264_FMTP.to_owned(),
            rtcp_feedback: vec![feedback("nack", ""), feedback("nack", "pli")],
        },
        payload_type: VIDEO_PT,
    }
}

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: OPUS_FMTP.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: AUDIO_PT,
    }
}

/// Adds our host candidate and ends gathering, so the offer carries the candidate and
/// `a=end-of-candidates`: WHEP servers need not support trickle.
fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), ClientError> {
    pc.add_local_candidate(crate::media::host_candidate(addr)?)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(())
}

/// The parts of a 201 response a viewer keeps.
struct Answer {
    sdp: String,
    location: String,
    session_url: Url,
    etag: Option<String>,
    headers: HeaderMap,
}

async fn post_offer(
    http: &reqwest::Client,
    url: &Url,
    token: Option<&str>,
    offer: String,
) -> Result<Answer, ClientError> {
    let mut req = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/sdp")
        .body(offer);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    if status != StatusCode::CREATED {
        return Err(ClientError::Http {
            status: status.as_u16(),
            body,
        });
    }
    let location = header_str(&headers, LOCATION)
        .ok_or_else(|| ClientError::Location("missing".to_owned()))?;
    let session_url = url
        .join(&location)
        .map_err(|e| ClientError::Location(format!("{location:?}: {e}")))?;
    Ok(Answer {
        sdp: body,
        location,
        session_url,
        etag: header_str(&headers, ETAG),
        headers,
    })
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn send_delete(
    http: &reqwest::Client,
    session_url: &Url,
    token: Option<&str>,
) -> Result<u16, ClientError> {
    let mut req = http.delete(session_url.clone());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    Ok(req.send().await?.status().as_u16())
}

/// Drives one peer connection: socket reads, `rtc` timers, and the stop signal.
struct Driver {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    /// The advertised candidate address, handed to `rtc` as every datagram's local address.
    local_addr: SocketAddr,
    kinds: PayloadKinds,
    loss: LossBySsrc,
    inspect: bool,
    shared: Arc<Shared>,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<StopMode>) {
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
                    if let Err(err) = self.pc.handle_timeout(Instant::now()) {
                        debug!(%err, "handle_timeout");
                    }
                    touched = true;
                }
                ready = self.socket.readable() => {
                    if let Err(err) = ready {
                        debug!(%err, "viewer socket failed");
                        return;
                    }
                    touched |= self.read_available(&mut buf);
                }
            }
        }
    }

    fn next_deadline(&mut self) -> tokio::time::Instant {
        let fallback = Instant::now() + IDLE_WAKEUP;
        tokio::time::Instant::from_std(self.pc.poll_timeout().unwrap_or(fallback).min(fallback))
    }

    async fn stop(&mut self, mode: StopMode) {
        if mode == StopMode::Graceful {
            if let Err(err) = self.pc.close() {
                debug!(%err, "closing peer connection");
            }
            self.drain().await;
        }
    }

    /// Moves everything `rtc` has queued: decrypted media, events, then outgoing datagrams
    /// (last, since reading and events can queue more of them).
    async fn drain(&mut self) {
        while let Some(msg) = self.pc.poll_read() {
            self.on_message(msg.message);
        }
        while let Some(event) = self.pc.poll_event() {
            self.on_event(event);
        }
        while let Some(msg) = self.pc.poll_write() {
            if let Err(err) = self
                .socket
                .send_to(&msg.message, msg.transport.peer_addr)
                .await
            {
                debug!(%err, peer = %msg.transport.peer_addr, "send failed");
            }
        }
    }

    /// Handles the datagrams already queued on the socket; true if `rtc` was fed any.
    fn read_available(&mut self, buf: &mut [u8]) -> bool {
        let mut touched = false;
        for _ in 0..RECV_BATCH {
            match self.socket.try_recv_from(buf) {
                Ok((n, peer)) => touched |= self.on_datagram(&buf[..n], peer),
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
    fn on_datagram(&mut self, data: &[u8], peer_addr: SocketAddr) -> bool {
        let now = Instant::now();
        match classify(data) {
            Datagram::Rtp => {
                if let Some(header) = RtpHeader::parse(data) {
                    self.count_rtp(&header, data.len(), now);
                }
                if !self.inspect {
                    return false;
                }
            }
            Datagram::Dtls if is_dtls_alert(data) => self.note_server_close(now),
            _ => {}
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(err) = self.pc.handle_read(msg) {
            debug!(%err, "handle_read");
        }
        true
    }

    fn count_rtp(&mut self, header: &RtpHeader, len: usize, now: Instant) {
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
    fn on_message(&mut self, message: RTCMessage) {
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

    fn on_event(&mut self, event: RTCPeerConnectionEvent) {
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

    fn note_server_close(&self, now: Instant) {
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

/// Records the H.264 NAL types that start in one RTP payload.
fn note_h264(stats: &mut ViewerStats, payload: &[u8], now: Instant) {
    for nal in h264_nal_types(payload) {
        match nal {
            NAL_IDR => {
                stats.idr_seen = true;
                stats.first_keyframe_at.get_or_insert(now);
            }
            NAL_SPS => stats.sps_seen = true,
            _ => {}
        }
    }
}

/// What a datagram on a WebRTC socket carries, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datagram {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

fn classify(data: &[u8]) -> Datagram {
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
fn is_dtls_alert(data: &[u8]) -> bool {
    data.first() == Some(&21)
}

/// The clear-text part of an (S)RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RtpHeader {
    pt: u8,
    seq: u16,
    ssrc: u32,
    /// Header length including CSRCs and extension: where the payload starts.
    len: usize,
}

impl RtpHeader {
    fn parse(data: &[u8]) -> Option<Self> {
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
enum MediaKind {
    Video,
    Audio,
}

/// Payload type → kind, from the answer's `m=` lines (another server may answer with other
/// payload types than we offered); our fixed types are the fallback.
struct PayloadKinds([Option<MediaKind>; 128]);

impl PayloadKinds {
    fn from_sdp(sdp: &str) -> Self {
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

    fn get(&self, pt: u8) -> Option<MediaKind> {
        self.0.get(usize::from(pt)).copied().flatten()
    }
}

/// Loss trackers by SSRC; a viewer sees two or three SSRCs, so a Vec beats a map.
#[derive(Debug, Default)]
struct LossBySsrc(Vec<(u32, SeqTracker)>);

impl LossBySsrc {
    fn record(&mut self, ssrc: u32, seq: u16) {
        match self.0.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, tracker)) => tracker.record(seq),
            None => self.0.push((ssrc, SeqTracker::new(seq))),
        }
    }

    fn lost(&self) -> u64 {
        self.0.iter().map(|(_, t)| t.lost()).sum()
    }

    fn duplicates(&self) -> u64 {
        self.0.iter().map(|(_, t)| t.duplicates).sum()
    }
}

/// A step of this many sequence numbers or more, either way, is a restarted stream rather than
/// loss or lateness (RFC 3550 A.1 uses 3000 for the forward case). Backward steps get the same
/// room because retransmissions (NACK, no RTX) come back on the same SSRC hundreds of packets
/// late.
const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers remembered to recognise duplicates; more than `MAX_DROPOUT`, so every late
/// packet accepted is still remembered.
const SEEN_WINDOW: u64 = 4096;

/// Loss for one SSRC in the spirit of RFC 3550 A.3: expected (from the extended highest
/// sequence number) minus distinct packets received. Late packets count without moving the
/// highest; duplicates (repeated retransmissions) count once; a big jump starts a new run,
/// keeping the loss counted so far.
#[derive(Debug, Clone)]
struct SeqTracker {
    /// Lowest extended sequence number of the current run. Extended numbers start one cycle
    /// up, so a packet from just before the first one still has a non-negative number.
    base: u64,
    /// Highest extended sequence number of the current run; wraps counted.
    highest: u64,
    /// Distinct packets received in the current run.
    received: u64,
    /// Loss of earlier runs.
    lost_before: u64,
    duplicates: u64,
    /// Bit per extended sequence number modulo `SEEN_WINDOW`.
    seen: Box<[u64; SEEN_WINDOW as usize / 64]>,
}

impl SeqTracker {
    fn new(seq: u16) -> Self {
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

    fn start_run(&mut self, seq: u16) {
        let ext = (1 << 16) + u64::from(seq);
        self.base = ext;
        self.highest = ext;
        self.received = 1;
        self.seen.fill(0);
        self.mark(ext);
    }

    fn record(&mut self, seq: u16) {
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

    fn record_late(&mut self, ext: u64) {
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

    fn bit(ext: u64) -> (usize, u64) {
        let idx = ext % SEEN_WINDOW;
        ((idx / 64) as usize, 1 << (idx % 64))
    }

    fn mark(&mut self, ext: u64) {
        let (word, bit) = Self::bit(ext);
        self.seen[word] |= bit;
    }

    fn unmark(&mut self, ext: u64) {
        let (word, bit) = Self::bit(ext);
        self.seen[word] &= !bit;
    }

    fn is_marked(&self, ext: u64) -> bool {
        let (word, bit) = Self::bit(ext);
        self.seen[word] & bit != 0
    }

    fn run_lost(&self) -> u64 {
        (self.highest - self.base + 1).saturating_sub(self.received)
    }

    fn lost(&self) -> u64 {
        self.lost_before + self.run_lost()
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Types of the NAL units that start in an H.264 RTP payload (RFC 6184): a single NAL, each
/// unit of a STAP-A, or the first fragment of an FU-A.
fn h264_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&first) = payload.first() else {
        return Vec::new();
    };
    match first & 0x1f {
        NAL_STAP_A => stap_a_types(&payload[1..]),
        NAL_FU_A => match payload.get(1) {
            Some(&fu) if fu & 0x80 != 0 => vec![fu & 0x1f],
            _ => Vec::new(),
        },
        nal @ 1..=23 => vec![nal],
        _ => Vec::new(),
    }
}

/// STAP-A units: a 2-byte size, then the NAL (header byte first); stops at a malformed size.
fn stap_a_types(mut rest: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while rest.len() > 2 {
        let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if size == 0 || rest.len() < 2 + size {
            break;
        }
        types.push(rest[2] & 0x1f);
        rest = &rest[2 + size..];
    }
    types
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
    fn single_nal_types() {
        assert_eq!(h264_nal_types(&[0x65, 0x88]), vec![NAL_IDR]);
        assert_eq!(h264_nal_types(&[0x67, 0x42]), vec![NAL_SPS]);
        assert_eq!(h264_nal_types(&[0x41, 0x9a]), vec![1]);
        assert!(h264_nal_types(&[]).is_empty());
    }

    #[test]
    fn stap_a_lists_each_unit() {
        // STAP-A header, then SPS (3 bytes), PPS (2 bytes), IDR (2 bytes).
        let payload = [
            0x78, 0x00, 0x03, 0x67, 0x42, 0xe0, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x65, 0x88,
        ];
        assert_eq!(h264_nal_types(&payload), vec![NAL_SPS, 8, NAL_IDR]);
    }

    #[test]
    fn stap_a_stops_at_truncated_unit() {
        let payload = [0x78, 0x00, 0x03, 0x67, 0x42, 0xe0, 0x00, 0x09, 0x68];
        assert_eq!(h264_nal_types(&payload), vec![NAL_SPS]);
    }

    #[test]
    fn fu_a_reports_type_only_on_start_fragment() {
        assert_eq!(h264_nal_types(&[0x7c, 0x85, 0x88]), vec![NAL_IDR]); // start
        assert!(h264_nal_types(&[0x7c, 0x05, 0x88]).is_empty()); // middle
        assert!(h264_nal_types(&[0x7c, 0x45, 0x88]).is_empty()); // end
        assert!(h264_nal_types(&[0x7c]).is_empty());
    }

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

    #[test]
    fn offer_has_fixed_payload_types_candidate_and_recvonly() {
        let mut pc = build_peer_connection(false).unwrap();
        add_host_candidate(&mut pc, "127.0.0.1:40000".parse().unwrap()).unwrap();
        let sdp = pc.create_offer(None).unwrap().sdp;
        assert!(sdp.contains("a=rtpmap:102 H264/90000"), "{sdp}");
        assert!(sdp.contains(&format!("a=fmtp:102 {H264_FMTP}")), "{sdp}");
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
