//! One UDP socket for every peer: demultiplexing, sharded peer connections, and fan-out.
//!
//! `RTCPeerConnection` is `Send` but not `Sync`, so peers live in shards, each a task that owns
//! its peers outright; the socket reader routes datagrams to the owning shard by source address,
//! or, for an address not seen yet, by the local ufrag in the STUN USERNAME.

mod demux;
mod fanout;
mod keyframes;
mod peers;
mod recent;
mod shard;
mod tcp;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::shared::TransportProtocol;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::factory::PeerFactoryConfig;
use super::feedback::ViewerReports;
use super::outbox::Outbox;
use super::peer::{self, TcpCandidate};
use super::rendition::{Follower, Ladder};
use super::udp::MediaSocket;
use super::{MediaPacket, StreamKey, SubscribeError};
use crate::dataplane::metrics::{Metrics, ProcessMetrics};
use demux::{Route, Routes, read_socket};
use fanout::Fanout;
use keyframes::KeyframeCache;
use peers::Peers;
use shard::{FeedbackRead, Shard, ShardMsg, Subscriber};

pub type SessionId = Arc<str>;

const SHARD_QUEUE: usize = 8192;
/// ICE-TCP connections allowed beyond one per session: reconnects, connections not yet bound.
const TCP_SLACK: usize = 64;
/// Kernel buffers of the shared socket: hundreds of subscribers and keyframe bursts.
const SOCKET_BUFFER: usize = 8 << 20;

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
    viewers: Gauge,
}

/// What a new viewer asks for: a process's stream, as the subsystem describes it.
pub struct Subscription {
    pub stream: StreamKey,
    pub has_audio: bool,
    /// The process's own cap on this server (`maxViewers`).
    pub max_viewers: Option<usize>,
    /// The process's renditions as this viewer follows them; None without a ladder.
    pub ladder: Option<Ladder>,
    pub metrics: ProcessMetrics,
}

/// Whether new viewers are taken, and if not, why: what `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Open,
    Full { held: usize, limit: usize },
    Draining,
}

struct Shared {
    socket: Arc<MediaSocket>,
    /// Advertised addresses and ICE servers can change at run time (a load balancer's IP
    /// arrives after the pod starts); existing peers keep the candidates they answered with.
    factory: RwLock<PeerFactoryConfig>,
    routes: RwLock<Routes>,
    sessions: Mutex<HashMap<SessionId, SessionInfo>>,
    /// Streams torn down: late subscribers to them are refused, even if already in flight.
    closed_streams: Mutex<HashSet<StreamKey>>,
    /// Which shards hold each stream's sessions; moved with `sessions`, under its lock.
    fanout: Fanout,
    keyframes: KeyframeCache,
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
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(info) = sessions.remove(id) {
            self.fanout.leave(info.stream, info.shard);
            info.viewers.dec();
            self.metrics.sessions_closed.inc();
            self.metrics.sessions_active.dec();
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    max_sessions: usize,
    /// `spec.limits.maxViewersPerPod`, changeable at run time; `usize::MAX` when unset.
    viewer_limit: AtomicUsize,
    /// Bounds the ICE-TCP connections held at once, so idle or hostile ones cannot pile up.
    tcp_permits: Arc<Semaphore>,
    /// Cleared when draining: sessions held keep flowing, new ones are refused.
    accepting: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Binds the one media port and starts the reader and the shards.
    pub async fn start(config: EngineConfig, metrics: Metrics) -> std::io::Result<Arc<Engine>> {
        let socket = MediaSocket::bind(config.bind, SOCKET_BUFFER)?;
        let shared = Arc::new(Shared {
            socket: Arc::new(socket),
            factory: RwLock::new(config.factory.clone()),
            routes: RwLock::default(),
            sessions: Mutex::default(),
            closed_streams: Mutex::default(),
            fanout: Fanout::default(),
            keyframes: KeyframeCache::default(),
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
                peers: Peers::default(),
                by_stream: HashMap::new(),
                stream_metrics: HashMap::new(),
                recent: HashMap::new(),
                outbox: Outbox::default(),
                timers: Default::default(),
                connecting: 0,
                chores_at: Instant::now(),
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
            max_sessions: config.max_sessions,
            viewer_limit: AtomicUsize::new(usize::MAX),
            tcp_permits: Arc::new(Semaphore::new(config.max_sessions + TCP_SLACK)),
            accepting: AtomicBool::new(true),
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

    /// Notes a Source's burst of packets in the keyframe cache and hands it to every shard
    /// holding a viewer of `stream`; never blocks, drops (and counts, in total and in the
    /// process's `dropped`) when full.
    pub fn dispatch(&self, stream: StreamKey, packets: Vec<Arc<MediaPacket>>, dropped: &Counter) {
        self.shared.keyframes.note(stream, &packets);
        let count = packets.len() as u64;
        let packets: Arc<[Arc<MediaPacket>]> = packets.into();
        self.shared.fanout.each_shard(stream, |shard| {
            if self.shards[shard]
                .try_send(ShardMsg::Media {
                    stream,
                    packets: packets.clone(),
                })
                .is_err()
            {
                self.shared.metrics.media_dropped.inc_by(count);
                dropped.inc_by(count);
            }
        });
    }

    /// Sets the resource's cap on viewers per pod (`None`: only `--max-sessions`). Lowering it
    /// below the viewers held closes none of them; new ones wait for room.
    pub fn set_viewer_limit(&self, limit: Option<usize>) {
        self.viewer_limit
            .store(limit.unwrap_or(usize::MAX), Ordering::Release);
    }

    /// Most sessions held at once: the smaller of `--max-sessions` and the resource's cap.
    fn capacity(&self) -> usize {
        self.max_sessions
            .min(self.viewer_limit.load(Ordering::Acquire))
    }

    /// Whether a new viewer would be taken now.
    pub fn admission(&self) -> Admission {
        if !self.accepting.load(Ordering::Acquire) {
            return Admission::Draining;
        }
        let (held, limit) = (self.sessions_held(), self.capacity());
        if held >= limit {
            Admission::Full { held, limit }
        } else {
            Admission::Open
        }
    }

    /// Refuses a new session of `to` when the server or the process is at its cap.
    fn check_room(
        &self,
        sessions: &HashMap<SessionId, SessionInfo>,
        to: &Subscription,
    ) -> Result<(), SubscribeError> {
        let limit = self.capacity();
        if sessions.len() >= limit {
            return Err(SubscribeError::ServerFull(limit));
        }
        if let Some(max) = to.max_viewers {
            let held = sessions.values().filter(|s| s.stream == to.stream).count();
            if held >= max {
                return Err(SubscribeError::ProcessFull(max));
            }
        }
        Ok(())
    }

    /// Answers a WHEP offer for `stream` and starts the session. `tcp` is where the viewer's
    /// request arrived, offered as a passive ICE-TCP candidate unless the settings turn it off.
    pub async fn subscribe(
        &self,
        to: Subscription,
        offer_sdp: &str,
        tcp: Option<TcpCandidate>,
    ) -> Result<Answer, SubscribeError> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(SubscribeError::Draining);
        }
        // Checked before the costly answer, and again as the session is recorded.
        self.check_room(&self.shared.sessions.lock().unwrap(), &to)?;
        let Subscription {
            stream, has_audio, ..
        } = to;
        // Only a viewer free to change rendition is asked for estimates and has them read.
        let adaptive = to.ladder.as_ref().is_some_and(|l| !l.pinned);
        let reports = ViewerReports::default();
        let probe = reports.clone();
        let factory = self.factory();
        let candidates: Vec<SocketAddr> = factory.candidate_addrs().collect();
        let tcp = tcp.filter(|_| factory.ice_tcp);
        let tcp_candidate = tcp.as_ref().map(|c| c.addr);
        let offer = offer_sdp.to_owned();
        // The core is third-party code fed untrusted input: a panic must become a 400, not a 500.
        let answered = std::panic::catch_unwind(move || {
            peer::answer(&offer, &factory, has_audio, tcp.as_ref(), &probe, adaptive)
        })
        .map_err(|_| SubscribeError::BadOffer("the offer could not be processed".into()))??;
        let session: SessionId = peer::random_id().into();
        let etag = format!("\"{}\"", peer::random_id());
        let shard = {
            let mut sessions = self.shared.sessions.lock().unwrap();
            if self.shared.closed_streams.lock().unwrap().contains(&stream) {
                return Err(SubscribeError::StreamGone);
            }
            self.check_room(&sessions, &to)?;
            let shard = self.shared.fanout.join(stream, self.shards.len());
            sessions.insert(
                session.clone(),
                SessionInfo {
                    stream,
                    etag: etag.clone(),
                    remote_ufrag: ice_ufrag(offer_sdp),
                    shard,
                    viewers: to.metrics.viewers.clone(),
                },
            );
            to.metrics.viewers.inc();
            shard
        };
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
            tcp_candidate,
            tcp_links: Vec::new(),
            last_protocol: TransportProtocol::UDP,
            transport: None,
            nomination: None,
            connected: false,
            known_addrs: Vec::new(),
            created: Instant::now(),
            metrics: to.metrics,
            follower: to.ladder.map(Follower::new),
            feedback: FeedbackRead::new(adaptive.then(|| reports.clone())),
            reports,
            keys: answered.keys,
            sender: None,
            media_dest: None,
            replayed: None,
            timer: None,
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

    /// Takes an ICE-TCP connection accepted on the HTTP port and serves it until it closes;
    /// beyond the connection limit it is closed at once.
    pub fn accept_tcp(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.tcp_permits.clone().try_acquire_owned() else {
            self.shared.metrics.ice_tcp_refused.inc();
            warn!(%peer, "ICE-TCP connection limit reached; closing");
            return;
        };
        let (shared, shards) = (self.shared.clone(), self.shards.clone());
        tokio::spawn(async move {
            tcp::serve(shared, shards, stream, peer).await;
            drop(permit);
        });
    }

    /// Refuses new sessions from now on; those held carry on until they end.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
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
        self.shared.keyframes.forget(stream);
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

/// The remote's `a=ice-ufrag`, to recognise an ICE restart in a PATCH.
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufrag_from_sdp() {
        assert_eq!(
            ice_ufrag("v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\n").as_deref(),
            Some("abcd")
        );
    }
}
