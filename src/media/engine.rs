//! One UDP socket for every peer: demultiplexing, sharded peer connections, and fan-out.
//!
//! `RTCPeerConnection` is `Send` but not `Sync`, so peers live in shards, each a task that owns
//! its peers outright; the socket reader routes datagrams to the owning shard by source address,
//! or, for an address not seen yet, by the local ufrag in the STUN USERNAME.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::factory::PeerFactoryConfig;
use super::outbox::Outbox;
use super::peer::{self, TrackOut};
use super::{MediaPacket, StreamKey, TrackKind};
use crate::telemetry::Metrics;

pub type SessionId = Arc<str>;

/// How long a new peer may take to connect before it is reaped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Packets kept per stream so a new viewer starts at the latest keyframe, not the next one.
const KEYFRAME_CACHE_LIMIT: usize = 4096;
const SHARD_QUEUE: usize = 8192;
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("bad offer: {0}")]
    BadOffer(String),
    #[error("stream is gone")]
    StreamGone,
    #[error("session limit of {0} reached")]
    TooManySessions(usize),
    #[error("no such session")]
    UnknownSession,
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    #[error("engine is closed")]
    Closed,
    #[error("internal WebRTC error: {0}")]
    Internal(String),
}

pub struct EngineConfig {
    pub bind: SocketAddr,
    pub factory: PeerFactoryConfig,
    pub shards: usize,
    pub max_sessions: usize,
}

/// A new session's answer, for the WHEP response.
pub struct Answer {
    pub session: SessionId,
    pub sdp: String,
    pub etag: String,
}

#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub stream: StreamKey,
    pub etag: String,
    pub remote_ufrag: Option<String>,
    shard: usize,
}

#[derive(Clone)]
struct Route {
    shard: usize,
    session: SessionId,
}

#[derive(Default)]
struct Routes {
    by_addr: HashMap<SocketAddr, Route>,
    by_ufrag: HashMap<String, Route>,
}

struct Shared {
    socket: Arc<UdpSocket>,
    /// Advertised addresses and ICE servers can change at run time (a load balancer's IP
    /// arrives after the pod starts); existing peers keep the candidates they answered with.
    factory: RwLock<PeerFactoryConfig>,
    routes: RwLock<Routes>,
    sessions: Mutex<HashMap<SessionId, SessionInfo>>,
    /// Streams torn down: late subscribers to them are refused, even if already in flight.
    closed_streams: Mutex<HashSet<StreamKey>>,
    metrics: Metrics,
}

impl Shared {
    fn forget_session(&self, id: &SessionId, ufrag: &str, addrs: &[SocketAddr]) {
        let mut routes = self.routes.write().unwrap();
        routes.by_ufrag.remove(ufrag);
        for addr in addrs {
            if routes.by_addr.get(addr).is_some_and(|r| &r.session == id) {
                routes.by_addr.remove(addr);
            }
        }
        drop(routes);
        if self.sessions.lock().unwrap().remove(id).is_some() {
            self.metrics.sessions_closed.inc();
            self.metrics.sessions_active.dec();
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    next_shard: AtomicUsize,
    max_sessions: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

enum ShardMsg {
    Datagram {
        from: SocketAddr,
        session: SessionId,
        data: BytesMut,
        at: Instant,
    },
    Media {
        stream: StreamKey,
        packet: Arc<MediaPacket>,
    },
    Add(Box<Subscriber>),
    Candidate {
        session: SessionId,
        candidate: RTCIceCandidateInit,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Remove {
        session: SessionId,
        reply: oneshot::Sender<bool>,
    },
    DropStream {
        stream: StreamKey,
        reply: oneshot::Sender<usize>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Engine {
    /// Binds the one media port and starts the reader and the shards.
    pub async fn start(config: EngineConfig, metrics: Metrics) -> std::io::Result<Arc<Engine>> {
        let socket = bind_udp(config.bind)?;
        let shared = Arc::new(Shared {
            socket: Arc::new(socket),
            factory: RwLock::new(config.factory.clone()),
            routes: RwLock::default(),
            sessions: Mutex::default(),
            closed_streams: Mutex::default(),
            metrics,
        });
        let mut tasks = Vec::new();
        let mut shards = Vec::new();
        for index in 0..config.shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            shards.push(tx);
            let shard = Shard {
                index,
                shared: shared.clone(),
                peers: HashMap::new(),
                by_stream: HashMap::new(),
                keyframe_cache: HashMap::new(),
                outbox: Outbox::default(),
            };
            tasks.push(tokio::spawn(shard.run(rx)));
        }
        tasks.push(tokio::spawn(read_socket(shared.clone(), shards.clone())));
        info!(
            bind = %config.bind,
            advertised = ?config.factory.advertised_ips,
            "media port open"
        );
        Ok(Arc::new(Engine {
            shared,
            shards,
            next_shard: AtomicUsize::new(0),
            max_sessions: config.max_sessions,
            tasks: Mutex::new(tasks),
        }))
    }

    pub fn factory(&self) -> PeerFactoryConfig {
        self.shared.factory.read().unwrap().clone()
    }

    /// Replaces what new peers are told; the bound port cannot change.
    pub fn set_factory(&self, mut factory: PeerFactoryConfig) {
        let mut current = self.shared.factory.write().unwrap();
        if factory.udp_port != current.udp_port {
            warn!(
                bound = current.udp_port,
                requested = factory.udp_port,
                "udpPort cannot change while running; keeping the bound port"
            );
            factory.udp_port = current.udp_port;
        }
        if *current != factory {
            info!(advertised = ?factory.advertised_ips, "peer factory updated");
            *current = factory;
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// Hands a Source's packet to every shard; never blocks, drops (and counts) when full.
    pub fn dispatch(&self, stream: StreamKey, packet: Arc<MediaPacket>) {
        for shard in &self.shards {
            if shard
                .try_send(ShardMsg::Media {
                    stream,
                    packet: packet.clone(),
                })
                .is_err()
            {
                self.shared.metrics.media_dropped.inc();
            }
        }
    }

    /// Answers a WHEP offer for `stream` and starts the session.
    pub async fn subscribe(
        &self,
        stream: StreamKey,
        has_audio: bool,
        offer_sdp: &str,
    ) -> Result<Answer, SubscribeError> {
        if self.sessions_held() >= self.max_sessions {
            return Err(SubscribeError::TooManySessions(self.max_sessions));
        }
        let factory = self.factory();
        let candidates: Vec<SocketAddr> = factory.candidate_addrs().collect();
        let offer = offer_sdp.to_owned();
        // The core is third-party code fed untrusted input: a panic must become a 400, not a 500.
        let answered = std::panic::catch_unwind(move || peer::answer(&offer, &factory, has_audio))
            .map_err(|_| SubscribeError::BadOffer("the offer could not be processed".into()))??;
        let session: SessionId = peer::random_id().into();
        let etag = format!("\"{}\"", peer::random_id());
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        {
            let mut sessions = self.shared.sessions.lock().unwrap();
            if self.shared.closed_streams.lock().unwrap().contains(&stream) {
                return Err(SubscribeError::StreamGone);
            }
            sessions.insert(
                session.clone(),
                SessionInfo {
                    stream,
                    etag: etag.clone(),
                    remote_ufrag: ice_ufrag(offer_sdp),
                    shard,
                },
            );
        }
        self.shared.routes.write().unwrap().by_ufrag.insert(
            answered.local_ufrag.clone(),
            Route {
                shard,
                session: session.clone(),
            },
        );
        self.shared.metrics.sessions_created.inc();
        self.shared.metrics.sessions_active.inc();
        let subscriber = Subscriber {
            id: session.clone(),
            stream,
            pc: answered.pc,
            video: answered.video,
            audio: answered.audio,
            ufrag: answered.local_ufrag,
            candidates,
            connected: false,
            known_addrs: Vec::new(),
            created: Instant::now(),
        };
        if self.shards[shard]
            .send(ShardMsg::Add(Box::new(subscriber)))
            .await
            .is_err()
        {
            return Err(SubscribeError::Closed);
        }
        Ok(Answer {
            session,
            sdp: answered.answer_sdp,
            etag,
        })
    }

    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.shared.sessions.lock().unwrap().get(id).cloned()
    }

    pub fn sessions_held(&self) -> usize {
        self.shared.sessions.lock().unwrap().len()
    }

    pub fn subscribers_of(&self, stream: StreamKey) -> usize {
        self.shared
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.stream == stream)
            .count()
    }

    /// Adds trickled remote candidates to a session.
    pub async fn add_candidates(
        &self,
        id: &str,
        candidates: Vec<RTCIceCandidateInit>,
    ) -> Result<(), SubscribeError> {
        let (key, info) = self.session_entry(id)?;
        for candidate in candidates {
            let (reply, rx) = oneshot::channel();
            self.shards[info.shard]
                .send(ShardMsg::Candidate {
                    session: key.clone(),
                    candidate,
                    reply,
                })
                .await
                .map_err(|_| SubscribeError::Closed)?;
            rx.await
                .map_err(|_| SubscribeError::UnknownSession)?
                .map_err(SubscribeError::BadCandidate)?;
        }
        Ok(())
    }

    /// Closes one session (WHEP DELETE). Returns false when it did not exist.
    pub async fn unsubscribe(&self, id: &str) -> bool {
        let Ok((key, info)) = self.session_entry(id) else {
            return false;
        };
        let (reply, rx) = oneshot::channel();
        if self.shards[info.shard]
            .send(ShardMsg::Remove {
                session: key,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Closes every peer of `stream` and refuses new ones: the WHEP side of the teardown hook.
    /// Returns the number of peers closed once every shard has done so.
    pub async fn drop_stream(&self, stream: StreamKey) -> usize {
        {
            let _sessions = self.shared.sessions.lock().unwrap();
            self.shared.closed_streams.lock().unwrap().insert(stream);
        }
        let mut closed = 0;
        for shard in &self.shards {
            let (reply, rx) = oneshot::channel();
            if shard
                .send(ShardMsg::DropStream { stream, reply })
                .await
                .is_ok()
            {
                closed += rx.await.unwrap_or(0);
            }
        }
        closed
    }

    /// Closes every peer and stops the socket; later subscribes fail with `Closed`.
    pub async fn close(&self) {
        for shard in &self.shards {
            let (reply, rx) = oneshot::channel();
            if shard.send(ShardMsg::Shutdown { reply }).await.is_ok() {
                let _ = rx.await;
            }
        }
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn session_entry(&self, id: &str) -> Result<(SessionId, SessionInfo), SubscribeError> {
        let sessions = self.shared.sessions.lock().unwrap();
        sessions
            .get_key_value(id)
            .map(|(k, v)| (k.clone(), v.clone()))
            .ok_or(SubscribeError::UnknownSession)
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Hundreds of subscribers and keyframe bursts need more than the default buffers.
    let _ = socket.set_send_buffer_size(8 << 20);
    let _ = socket.set_recv_buffer_size(8 << 20);
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The remote's `a=ice-ufrag`, to recognise an ICE restart in a PATCH.
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

async fn read_socket(shared: Arc<Shared>, shards: Vec<mpsc::Sender<ShardMsg>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "media socket receive failed");
                continue;
            }
        };
        shared.metrics.udp_datagrams_in.inc();
        let data = &buf[..n];
        let route = shared.routes.read().unwrap().by_addr.get(&from).cloned();
        let route = route.or_else(|| {
            let ufrag = stun_local_ufrag(data)?;
            let mut routes = shared.routes.write().unwrap();
            let route = routes.by_ufrag.get(ufrag)?.clone();
            routes.by_addr.insert(from, route.clone());
            Some(route)
        });
        let Some(route) = route else {
            shared.metrics.udp_datagrams_unrouted.inc();
            continue;
        };
        let msg = ShardMsg::Datagram {
            from,
            session: route.session,
            data: BytesMut::from(data),
            at: Instant::now(),
        };
        if shards[route.shard].try_send(msg).is_err() {
            shared.metrics.media_dropped.inc();
        }
    }
}

/// The candidate a datagram from `remote` is taken to have arrived on. The socket is bound to
/// one port (often on 0.0.0.0), so pick the candidate the remote most plausibly addressed: its
/// own IP (same host), then one of the same family and scope, then any.
fn local_candidate_for(candidates: &[SocketAddr], remote: SocketAddr) -> SocketAddr {
    let same_family = |c: &&SocketAddr| c.is_ipv4() == remote.is_ipv4();
    candidates
        .iter()
        .find(|c| c.ip() == remote.ip())
        .or_else(|| {
            candidates
                .iter()
                .filter(same_family)
                .find(|c| c.ip().is_loopback() == remote.ip().is_loopback())
        })
        .or_else(|| candidates.iter().find(same_family))
        .or(candidates.first())
        .copied()
        .unwrap_or(remote)
}

/// The first half of a STUN request's USERNAME (`ours:theirs`), i.e. our local ufrag.
fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if data.len() < 20 || data[0] > 3 || data[4..8] != MAGIC {
        return None;
    }
    let mut at = 20;
    while at + 4 <= data.len() {
        let typ = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        let value = data.get(at + 4..at + 4 + len)?;
        if typ == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

struct Subscriber {
    id: SessionId,
    stream: StreamKey,
    pc: RTCPeerConnection,
    video: Option<TrackOut>,
    audio: Option<TrackOut>,
    ufrag: String,
    /// Our host candidates as answered; `rtc` drops datagrams not addressed to one of them.
    candidates: Vec<SocketAddr>,
    connected: bool,
    known_addrs: Vec<SocketAddr>,
    created: Instant,
}

struct Shard {
    index: usize,
    shared: Arc<Shared>,
    peers: HashMap<SessionId, Subscriber>,
    by_stream: HashMap<StreamKey, Vec<SessionId>>,
    keyframe_cache: HashMap<StreamKey, Vec<Arc<MediaPacket>>>,
    /// Datagrams produced while handling messages, sent in one batch afterwards.
    outbox: Outbox,
}

/// What a peer's outputs say should happen to it.
#[derive(PartialEq)]
enum Verdict {
    Keep,
    JustConnected,
    Reap(&'static str),
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let keep_going = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle_burst(msg, &mut rx),
                    None => false,
                },
                _ = tick.tick() => {
                    self.on_tick();
                    true
                }
            };
            self.send_outbox();
            if !keep_going {
                return;
            }
        }
    }

    /// Handles `first` and whatever else is already queued (up to a bound), so one batch of
    /// sends covers them all.
    fn handle_burst(&mut self, first: ShardMsg, rx: &mut mpsc::Receiver<ShardMsg>) -> bool {
        const BURST: usize = 64;
        if !self.handle(first) {
            return false;
        }
        for _ in 0..BURST {
            let Ok(msg) = rx.try_recv() else { break };
            if !self.handle(msg) {
                return false;
            }
        }
        true
    }

    fn send_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let result = self.outbox.send(&self.shared.socket);
        if result.dropped > 0 {
            self.shared
                .metrics
                .udp_send_dropped
                .inc_by(result.dropped as u64);
        }
    }

    /// Returns false when the shard should stop.
    fn handle(&mut self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Datagram {
                from,
                session,
                data,
                at,
            } => self.on_datagram(from, &session, data, at),
            ShardMsg::Media { stream, packet } => self.on_media(stream, packet),
            ShardMsg::Add(sub) => self.add(*sub),
            ShardMsg::Candidate {
                session,
                candidate,
                reply,
            } => {
                let result = match self.peers.get_mut(&session) {
                    Some(sub) => sub
                        .pc
                        .add_remote_candidate(candidate)
                        .map_err(|e| e.to_string()),
                    None => Err("no such session".into()),
                };
                let _ = reply.send(result);
                self.service(&session);
            }
            ShardMsg::Remove { session, reply } => {
                let _ = reply.send(self.reap(&session, "deleted by client"));
            }
            ShardMsg::DropStream { stream, reply } => {
                self.keyframe_cache.remove(&stream);
                let ids = self.by_stream.remove(&stream).unwrap_or_default();
                let closed = ids
                    .iter()
                    .filter(|id| self.reap(id, "stream torn down"))
                    .count();
                let _ = reply.send(closed);
            }
            ShardMsg::Shutdown { reply } => {
                let ids: Vec<_> = self.peers.keys().cloned().collect();
                for id in ids {
                    self.reap(&id, "shutdown");
                }
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    fn add(&mut self, sub: Subscriber) {
        let id = sub.id.clone();
        let stream = sub.stream;
        self.peers.insert(id.clone(), sub);
        self.by_stream.entry(stream).or_default().push(id.clone());
        if self.shared.closed_streams.lock().unwrap().contains(&stream) {
            self.reap(&id, "stream torn down");
            return;
        }
        self.service(&id);
    }

    fn on_datagram(&mut self, from: SocketAddr, id: &SessionId, data: BytesMut, at: Instant) {
        let Some(sub) = self.peers.get_mut(id) else {
            return;
        };
        let local_addr = local_candidate_for(&sub.candidates, from);
        let result = sub.pc.handle_read(TaggedBytesMut {
            now: at,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        });
        if let Err(e) = result {
            self.shared.metrics.rtc_rejected.inc();
            debug!(session = %id, error = %e, "datagram rejected");
        }
        if !sub.known_addrs.contains(&from) {
            sub.known_addrs.push(from);
        }
        self.service(id);
    }

    fn on_media(&mut self, stream: StreamKey, packet: Arc<MediaPacket>) {
        if packet.kind == TrackKind::Video {
            let cache = self.keyframe_cache.entry(stream).or_default();
            if packet.keyframe_start {
                cache.clear();
            }
            if (!cache.is_empty() || packet.keyframe_start) && cache.len() < KEYFRAME_CACHE_LIMIT {
                cache.push(packet.clone());
            }
        }
        let Some(ids) = self.by_stream.get(&stream) else {
            return;
        };
        let now = Instant::now();
        let mut forwarded = 0;
        for id in ids {
            if let Some(sub) = self.peers.get_mut(id)
                && sub.connected
            {
                forwarded += sub.write_media(&packet, now) as u64;
                flush(&self.shared, self.index, sub, &mut self.outbox);
            }
        }
        self.shared.metrics.rtp_packets_forwarded.inc_by(forwarded);
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let ids: Vec<SessionId> = self
            .peers
            .iter_mut()
            .filter_map(|(id, sub)| {
                let due = sub.pc.poll_timeout().is_some_and(|t| t <= now);
                due.then(|| id.clone())
            })
            .collect();
        for id in ids {
            if let Some(sub) = self.peers.get_mut(&id)
                && let Err(e) = sub.pc.handle_timeout(now)
            {
                debug!(session = %id, error = %e, "timeout handling failed");
            }
            self.service(&id);
        }
        let stale: Vec<SessionId> = self
            .peers
            .values()
            .filter(|s| !s.connected && s.created.elapsed() > CONNECT_TIMEOUT)
            .map(|s| s.id.clone())
            .collect();
        for id in stale {
            self.reap(&id, "did not connect in time");
        }
    }

    /// Drains a peer's outputs and acts on its state changes.
    fn service(&mut self, id: &SessionId) {
        let Some(sub) = self.peers.get_mut(id) else {
            return;
        };
        let verdict = flush(&self.shared, self.index, sub, &mut self.outbox);
        match verdict {
            Verdict::Keep => {}
            Verdict::JustConnected => {
                info!(session = %id, stream = sub.stream.0, "subscriber connected");
                let now = Instant::now();
                if let Some(cache) = self.keyframe_cache.get(&sub.stream) {
                    let mut sent = 0;
                    for packet in cache {
                        sent += sub.write_media(packet, now) as u64;
                    }
                    self.shared.metrics.rtp_packets_forwarded.inc_by(sent);
                }
                flush(&self.shared, self.index, sub, &mut self.outbox);
            }
            Verdict::Reap(reason) => {
                self.reap(id, reason);
            }
        }
    }

    /// Closes and forgets one peer. Returns false when it was not here.
    fn reap(&mut self, id: &SessionId, reason: &'static str) -> bool {
        let Some(mut sub) = self.peers.remove(id) else {
            return false;
        };
        if let Some(ids) = self.by_stream.get_mut(&sub.stream) {
            ids.retain(|s| s != id);
        }
        // close() queues DTLS close_notify so the client learns at once rather than by timeout.
        let _ = sub.pc.close();
        flush(&self.shared, self.index, &mut sub, &mut self.outbox);
        self.shared.forget_session(id, &sub.ufrag, &sub.known_addrs);
        info!(session = %id, stream = sub.stream.0, reason, "subscriber closed");
        true
    }
}

impl Subscriber {
    /// Stamps this subscriber's SSRC and payload type on a shared packet and sends it.
    fn write_media(&mut self, media: &MediaPacket, now: Instant) -> bool {
        let out = match media.kind {
            TrackKind::Video => self.video,
            TrackKind::Audio => self.audio,
        };
        let Some(out) = out else {
            return false;
        };
        let mut packet = media.packet.clone();
        packet.header.ssrc = out.ssrc;
        packet.header.payload_type = out.payload_type;
        match self.pc.rtp_sender(out.sender) {
            Some(mut sender) => sender.write_rtp(now, packet).is_ok(),
            None => false,
        }
    }
}

/// Queues what the peer wants sent, learns its addresses, and reports state changes.
fn flush(shared: &Shared, shard: usize, sub: &mut Subscriber, outbox: &mut Outbox) -> Verdict {
    while let Some(out) = sub.pc.poll_write() {
        let dest = out.transport.peer_addr;
        if !sub.known_addrs.contains(&dest) {
            sub.known_addrs.push(dest);
            shared.routes.write().unwrap().by_addr.insert(
                dest,
                Route {
                    shard,
                    session: sub.id.clone(),
                },
            );
        }
        outbox.push(dest, out.message);
    }
    while sub.pc.poll_read().is_some() {}
    let mut verdict = Verdict::Keep;
    while let Some(event) = sub.pc.poll_event() {
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
            match state {
                RTCPeerConnectionState::Connected if !sub.connected => {
                    sub.connected = true;
                    verdict = Verdict::JustConnected;
                }
                RTCPeerConnectionState::Disconnected => verdict = Verdict::Reap("disconnected"),
                RTCPeerConnectionState::Failed => verdict = Verdict::Reap("ICE/DTLS failed"),
                RTCPeerConnectionState::Closed => verdict = Verdict::Reap("closed"),
                _ => {}
            }
        }
    }
    if let Verdict::Reap(reason) = verdict
        && sub.connected
    {
        warn!(session = %sub.id, reason, "subscriber lost");
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_username_routes_by_our_ufrag() {
        let mut msg = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        msg.extend([0u8; 12]);
        let username = b"ours:theirs";
        msg.extend([0x00, 0x06, 0, username.len() as u8]);
        msg.extend(username);
        msg.push(0);
        assert_eq!(stun_local_ufrag(&msg), Some("ours"));
        assert_eq!(stun_local_ufrag(&msg[..10]), None);
        let mut rtp = msg.clone();
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
    }

    #[test]
    fn local_candidate_matches_remote_scope() {
        let cands: Vec<SocketAddr> = ["127.0.0.1:9", "192.0.2.2:9", "[2001:db8::1]:9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let pick = |r: &str| local_candidate_for(&cands, r.parse().unwrap()).to_string();
        assert_eq!(pick("127.0.0.1:5000"), "127.0.0.1:9");
        assert_eq!(pick("192.0.2.2:5000"), "192.0.2.2:9");
        assert_eq!(pick("198.51.100.7:5000"), "192.0.2.2:9");
        assert_eq!(pick("[2001:db8::7]:5000"), "[2001:db8::1]:9");
    }

    #[test]
    fn ufrag_from_sdp() {
        assert_eq!(
            ice_ufrag("v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\n").as_deref(),
            Some("abcd")
        );
    }
}
