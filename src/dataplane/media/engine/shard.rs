//! A shard: one task owning a set of peer connections (`Send`, not `Sync`), fed datagrams,
//! media and commands through one queue, sending what its peers produce in batches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::demux::{Route, local_candidate_for};
use super::peers::Peers;
use super::recent::Recent;
use super::tcp::TcpLink;
use super::{SessionId, Shared};
use crate::dataplane::media::codecs::clock_rate;
use crate::dataplane::media::feedback::{Latest, ViewerReports};
use crate::dataplane::media::keytap::KeyTap;
use crate::dataplane::media::outbox::Outbox;
use crate::dataplane::media::peer::TrackOut;
use crate::dataplane::media::rendition::{Feedback, Follower};
use crate::dataplane::media::sender::{Nack, SrtpSender, Stamp, Track};
use crate::dataplane::media::stun;
use crate::dataplane::media::{MediaPacket, StreamKey, TrackKind};
use crate::dataplane::metrics::{ProcessMetrics, Transport};

/// How long a new peer may take to connect before it is reaped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How late a peer's timer may fire while a peer of the shard is connecting (ICE checks and
/// DTLS flights are paced by it), so that timers due close together share one wake-up.
const TIMER_SLACK: Duration = Duration::from_millis(5);
/// How late timers and chores may run once every peer is connected (consent checks,
/// keepalives, reports): long enough that media bursts, which wake the shard every 20–33 ms,
/// serve them without wake-ups of their own.
const CONNECTED_SLACK: Duration = Duration::from_millis(50);
/// How often a shard with peers replays nominations, reads loss reports and reaps the stale.
const CHORES: Duration = Duration::from_millis(50);
/// How often a nomination `rtc` may have ignored is handed back to it.
const NOMINATION_REPLAY: Duration = Duration::from_millis(50);
/// How often a ladder viewer's reports (loss, REMB) are looked at (browsers send about one a
/// second).
const FEEDBACK_EVERY: Duration = Duration::from_secs(1);
/// ICE-TCP connections kept per session.
const MAX_TCP_LINKS: usize = 2;

pub(super) enum ShardMsg {
    Datagram {
        from: SocketAddr,
        session: SessionId,
        data: BytesMut,
        at: Instant,
        protocol: TransportProtocol,
    },
    /// An ICE-TCP connection from `peer` now carries `session`.
    TcpAttach {
        session: SessionId,
        peer: SocketAddr,
        link: TcpLink,
    },
    TcpDetach {
        session: SessionId,
        peer: SocketAddr,
    },
    /// A Source's burst, shared by every shard holding a viewer of the stream.
    Media {
        stream: StreamKey,
        packets: Arc<[Arc<MediaPacket>]>,
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

pub(super) struct Subscriber {
    pub(super) id: SessionId,
    pub(super) stream: StreamKey,
    pub(super) pc: RTCPeerConnection,
    pub(super) video: Option<TrackOut>,
    pub(super) audio: Option<TrackOut>,
    pub(super) ufrag: String,
    /// Our host candidates as answered; `rtc` drops datagrams not addressed to one of them.
    pub(super) candidates: Vec<SocketAddr>,
    /// Our passive ICE-TCP candidate as given to `rtc`, the `local_addr` of every TCP packet.
    pub(super) tcp_candidate: Option<SocketAddr>,
    /// Open ICE-TCP connections of this session, by the viewer's address.
    pub(super) tcp_links: Vec<(SocketAddr, TcpLink)>,
    /// Transport of the last packet received: the one DTLS completed over names the session's.
    pub(super) last_protocol: TransportProtocol,
    /// Transport counted in the metrics once connected.
    pub(super) transport: Option<Transport>,
    /// The viewer's latest nomination while we are not connected, replayed until it takes.
    pub(super) nomination: Option<Nomination>,
    pub(super) connected: bool,
    pub(super) known_addrs: Vec<SocketAddr>,
    pub(super) created: Instant,
    /// Its process's series; media counts go in once per fan-out, through the shard.
    pub(super) metrics: ProcessMetrics,
    /// The rendition it follows, for a process with a ladder.
    pub(super) follower: Option<Follower>,
    pub(super) feedback: FeedbackRead,
    /// The rendition and sequence number of the last packet of the keyframe replay: bursts
    /// still queued for the shard when it connected repeat them, and are skipped up to there.
    pub(super) replayed: Option<(u8, u16)>,
    /// When `rtc` wants `handle_timeout`, as queued in the shard's timers.
    pub(super) timer: Option<Instant>,
    /// What the viewer's RTCP says: the NACKs our own sender answers (loss and estimates are
    /// read through `feedback`).
    pub(super) reports: ViewerReports,
    /// Where the keys of what we send turn up.
    pub(super) keys: Arc<KeyTap>,
    /// Our own sending leg, from connection on, when we hold the keys; else media goes
    /// through `rtc`'s pipeline.
    pub(super) sender: Option<SrtpSender>,
    /// Where `rtc` last sent DTLS or SRTP: the remote end of the selected candidate pair.
    pub(super) media_dest: Option<(SocketAddr, TransportProtocol)>,
}

/// A ladder viewer's reports, as its peer's [`FeedbackProbe`] notes them, and which of them
/// were handed on already.
///
/// [`FeedbackProbe`]: crate::dataplane::media::feedback::FeedbackProbe
pub(super) struct FeedbackRead {
    reports: Option<ViewerReports>,
    read_at: Instant,
    seen: Latest,
}

impl FeedbackRead {
    pub(super) fn new(reports: Option<ViewerReports>) -> Self {
        FeedbackRead {
            reports,
            read_at: Instant::now(),
            seen: Latest::default(),
        }
    }

    /// The latest loss and estimate on `ssrc` not handed on yet.
    fn next(&mut self, ssrc: u32, now: Instant) -> [Option<Feedback>; 2] {
        if now.saturating_duration_since(self.read_at) < FEEDBACK_EVERY {
            return [None, None];
        }
        self.read_at = now;
        let Some(latest) = self.reports.as_ref().and_then(|r| r.latest(ssrc)) else {
            return [None, None];
        };
        let seen = std::mem::replace(&mut self.seen, latest);
        [
            (latest.loss_reports > seen.loss_reports)
                .then_some(Feedback::Loss(latest.fraction_lost)),
            (latest.estimates > seen.estimates).then_some(Feedback::Estimate(latest.estimate_kbps)),
        ]
    }
}

/// A USE-CANDIDATE binding request kept for replay. `rtc` 0.21's controlled agent ignores a
/// nomination that arrives before its own check on that pair has succeeded; Chromium nominates
/// again, Firefox does not, and ICE would then fail. Handing the same request (same
/// transaction, same integrity) back to `rtc` once the check has succeeded selects the pair as
/// RFC 8445 §7.3.1.5 intends; the viewer sees at most a duplicate success response.
pub(super) struct Nomination {
    data: BytesMut,
    from: SocketAddr,
    protocol: TransportProtocol,
    replayed: Instant,
}

pub(super) struct Shard {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) peers: Peers<Subscriber>,
    /// Each stream's viewers here, by slot in `peers`.
    pub(super) by_stream: HashMap<StreamKey, Vec<usize>>,
    /// Each stream's series, so a fan-out adds its counts once rather than once per viewer.
    pub(super) stream_metrics: HashMap<StreamKey, ProcessMetrics>,
    /// Each stream's latest video packets, which its viewers' NACKs are answered from.
    pub(super) recent: HashMap<StreamKey, Recent>,
    /// Datagrams produced while handling messages, sent in one batch afterwards.
    pub(super) outbox: Outbox,
    /// Every peer's next timeout, earliest first; an entry whose peer's `timer` no longer
    /// matches is stale and skipped. The shard sleeps until the earliest instead of polling
    /// every peer on a fixed tick.
    pub(super) timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Peers not connected yet: while there are any, timers and chores run on time.
    pub(super) connecting: usize,
    /// When the chores are next due.
    pub(super) chores_at: Instant,
}

/// What a peer's outputs say should happen to it.
#[derive(PartialEq)]
enum Verdict {
    Keep,
    JustConnected,
    Reap(&'static str),
}

/// What one [`flush`] did: the verdict, and the bytes it handed on for sending.
struct Flushed {
    verdict: Verdict,
    bytes: u64,
}

impl Shard {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        // One timer, moved only when the next wake-up changes. Whatever wakes the shard (media
        // above all) also runs the timers and chores due, so with media flowing this one
        // rarely fires.
        let mut armed: Option<Instant> = None;
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            let wake = self.next_wake();
            if let Some(at) = wake
                && wake != armed
            {
                sleep.as_mut().reset(at.into());
            }
            armed = wake;
            let keep_going = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle_burst(msg, &mut rx),
                    None => false,
                },
                _ = &mut sleep, if armed.is_some() => true,
            };
            if keep_going {
                self.run_due(Instant::now());
            }
            self.send_outbox();
            if !keep_going {
                return;
            }
        }
    }

    /// When the shard must wake even if no message comes: the earliest timer or the chores,
    /// late by the slack the peers' states allow.
    fn next_wake(&self) -> Option<Instant> {
        let (timer_slack, chores_slack) = if self.connecting > 0 {
            (TIMER_SLACK, Duration::ZERO)
        } else {
            (CONNECTED_SLACK, CONNECTED_SLACK)
        };
        let timer = self.timers.peek().map(|Reverse((at, _))| *at + timer_slack);
        let chores = (!self.peers.is_empty()).then(|| self.chores_at + chores_slack);
        timer.into_iter().chain(chores).min()
    }

    /// Runs the timers and chores due at `now`.
    fn run_due(&mut self, now: Instant) {
        if self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            self.on_timers(now);
        }
        if !self.peers.is_empty() && now >= self.chores_at {
            self.chores_at = now + CHORES;
            self.on_chores(now);
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
        let result = self.outbox.send(self.shared.socket.sender());
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
                protocol,
            } => self.on_datagram(from, &session, data, at, protocol),
            ShardMsg::TcpAttach {
                session,
                peer,
                link,
            } => {
                if let Some(sub) = self.peers.get_mut(&session) {
                    // Few per session (a browser may reconnect); the oldest goes first.
                    if sub.tcp_links.len() >= MAX_TCP_LINKS {
                        sub.tcp_links.remove(0);
                    }
                    sub.tcp_links.push((peer, link));
                }
            }
            ShardMsg::TcpDetach { session, peer } => {
                if let Some(sub) = self.peers.get_mut(&session) {
                    sub.tcp_links.retain(|(addr, _)| *addr != peer);
                }
            }
            ShardMsg::Media { stream, packets } => self.on_media(stream, &packets),
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
                self.stream_metrics.remove(&stream);
                self.recent.remove(&stream);
                let slots = self.by_stream.remove(&stream).unwrap_or_default();
                let ids: Vec<SessionId> = slots
                    .iter()
                    .filter_map(|slot| Some(self.peers.at(*slot)?.id.clone()))
                    .collect();
                let closed = ids
                    .iter()
                    .filter(|id| self.reap(id, "stream torn down"))
                    .count();
                let _ = reply.send(closed);
            }
            ShardMsg::Shutdown { reply } => {
                let ids: Vec<_> = self.peers.ids().cloned().collect();
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
        self.stream_metrics
            .entry(stream)
            .or_insert_with(|| sub.metrics.clone());
        self.connecting += usize::from(!sub.connected);
        let slot = self.peers.insert(id.clone(), sub);
        self.by_stream.entry(stream).or_default().push(slot);
        if self.shared.closed_streams.lock().unwrap().contains(&stream) {
            self.reap(&id, "stream torn down");
            return;
        }
        self.service(&id);
    }

    fn on_datagram(
        &mut self,
        from: SocketAddr,
        id: &SessionId,
        data: BytesMut,
        at: Instant,
        protocol: TransportProtocol,
    ) {
        let Some(sub) = self.peers.get_mut(id) else {
            return;
        };
        let local_addr = match protocol {
            TransportProtocol::TCP => sub.tcp_candidate.unwrap_or(from),
            _ => local_candidate_for(&sub.candidates, from),
        };
        // Our check on the pair the viewer nominated just succeeded: its nomination can take
        // now rather than at the next replay, 50 ms on (Chromium's first check nominates).
        let nomination_due = !sub.connected
            && stun::is_binding_success(&data)
            && sub.nomination.as_ref().is_some_and(|n| n.from == from);
        if !sub.connected && stun::is_nomination(&data) {
            sub.nomination = Some(Nomination {
                data: data.clone(),
                from,
                protocol,
                replayed: at,
            });
        }
        let result = sub.pc.handle_read(TaggedBytesMut {
            now: at,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: protocol,
            },
            message: data,
        });
        if let Err(e) = result {
            self.shared.metrics.rtc_rejected.inc();
            debug!(session = %id, error = %e, "datagram rejected");
        }
        sub.last_protocol = protocol;
        if protocol == TransportProtocol::UDP && !sub.known_addrs.contains(&from) {
            sub.known_addrs.push(from);
        }
        let nacked = sub.reports.take_nacked();
        if let Some(sender) = sub.sender.as_mut() {
            let recent = self.recent.get(&sub.stream);
            let again: Vec<BytesMut> = nacked
                .into_iter()
                .filter_map(|(ssrc, seq)| {
                    sender.resend(ssrc, seq, self.outbox.buffer(), |seq| recent?.get(seq))
                })
                .collect();
            self.shared
                .metrics
                .rtp_retransmitted
                .inc_by(again.len() as u64);
            let mut bytes = 0;
            for datagram in again {
                bytes += sub.send_own(&self.shared, &mut self.outbox, datagram);
            }
            sub.metrics.bytes.inc_by(bytes);
        }
        self.service(id);
        // While connecting, `rtc` hands some of what a datagram started only to a timeout: the
        // DTLS client's first flight once ICE has selected a pair, which its DTLS handler learns
        // as the peer's events are drained (above). It goes out now, not at the ICE agent's next
        // timer (up to 50 ms on); what is not due yet is left alone.
        if let Some(sub) = self.peers.get_mut(id)
            && !sub.connected
        {
            if let Err(e) = sub.pc.handle_timeout(at) {
                debug!(session = %id, error = %e, "timeout handling failed");
            }
            self.service(id);
        }
        if nomination_due {
            self.replay_nomination(id, at);
        }
    }

    fn on_media(&mut self, stream: StreamKey, packets: &[Arc<MediaPacket>]) {
        let Some(slots) = self.by_stream.get(&stream).filter(|s| !s.is_empty()) else {
            return;
        };
        let recent = self.recent.entry(stream).or_default();
        for packet in packets {
            recent.keep(packet);
        }
        let now = Instant::now();
        let (mut forwarded, mut bytes) = (0, 0);
        for slot in slots {
            if let Some(sub) = self.peers.at_mut(*slot)
                && sub.connected
            {
                // The whole burst, then one pass through the peer's pipeline; the viewer's
                // datagrams end up next to each other in the outbox.
                for packet in packets {
                    if !sub.already_replayed(packet)
                        && let Some(sent) =
                            sub.write_media(packet, now, &self.shared, &mut self.outbox)
                    {
                        forwarded += 1;
                        bytes += sent;
                    }
                }
                // Our own leg sent its packets already; only `rtc`'s pipeline has some queued
                // (polling it for none walks every handler).
                if sub.sender.is_none() {
                    bytes += flush_writes(&self.shared, self.index, sub, &mut self.outbox);
                    // Writing arms `rtc`'s sender reports if nothing else is pending.
                    if sub.timer.is_none() {
                        sub.rearm(&mut self.timers);
                    }
                }
            }
        }
        self.shared.metrics.rtp_packets_forwarded.inc_by(forwarded);
        if let Some(metrics) = self.stream_metrics.get(&stream) {
            metrics.packets.inc_by(forwarded);
            metrics.bytes.inc_by(bytes);
        }
    }

    /// Hands `rtc` the timeouts due; each peer's next one is queued again as it is serviced.
    fn on_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek()
            && *at <= now
        {
            let Reverse((at, id)) = self.timers.pop().unwrap();
            if let Some(sub) = self.peers.get_mut(&id)
                && sub.timer == Some(at)
            {
                sub.timer = None;
                due.push(id);
            }
        }
        for id in due {
            let Some(sub) = self.peers.get_mut(&id) else {
                continue;
            };
            if let Err(e) = sub.pc.handle_timeout(now) {
                debug!(session = %id, error = %e, "timeout handling failed");
            }
            self.service(&id);
            // A timeout `rtc` did not move on is retried later, not in a busy loop.
            if let Some(sub) = self.peers.get_mut(&id)
                && sub.timer.is_some_and(|t| t <= now)
            {
                sub.timer = Some(now + TIMER_SLACK);
                self.timers.push(Reverse((now + TIMER_SLACK, id)));
            }
        }
    }

    fn on_chores(&mut self, now: Instant) {
        self.replay_nominations(now);
        self.read_feedback(now);
        self.send_reports(now);
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

    /// Hands `rtc` the sender reports our own senders have due, for it to encrypt and send.
    fn send_reports(&mut self, now: Instant) {
        let wall = SystemTime::now();
        let mut due = Vec::new();
        for sub in self.peers.values_mut() {
            let Some(sender) = sub.sender.as_mut() else {
                continue;
            };
            let reports = sender.reports_due(now, wall);
            if reports.is_empty() {
                continue;
            }
            let packets = reports
                .into_iter()
                .map(|sr| Box::new(sr) as Box<dyn rtc::rtcp::Packet>)
                .collect();
            let written = sub.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), packets),
            });
            if let Err(e) = written {
                debug!(session = %sub.id, error = %e, "sender report not sent");
            }
            due.push(sub.id.clone());
        }
        for id in due {
            self.service(&id);
        }
    }

    /// Once a second, hands each ladder viewer's latest reports to its follower.
    fn read_feedback(&mut self, now: Instant) {
        for sub in self.peers.values_mut() {
            let (Some(follower), Some(video), true) = (&mut sub.follower, sub.video, sub.connected)
            else {
                continue;
            };
            for feedback in sub.feedback.next(video.ssrc, now).into_iter().flatten() {
                if let Feedback::Estimate(_) = feedback {
                    sub.metrics.estimates.inc();
                }
                follower.on_feedback(feedback, now);
                debug!(session = %sub.id, ?feedback, rendition = follower.current(), "viewer report");
            }
        }
    }

    /// Hands each pending nomination back to `rtc` (see [`Nomination`]), at most every
    /// [`NOMINATION_REPLAY`], until the session connects.
    fn replay_nominations(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .peers
            .values()
            .filter(|sub| {
                sub.nomination.as_ref().is_some_and(|n| {
                    !sub.connected && now.duration_since(n.replayed) >= NOMINATION_REPLAY
                })
            })
            .map(|sub| sub.id.clone())
            .collect();
        for id in due {
            self.replay_nomination(&id, now);
        }
    }

    /// Hands one session's pending nomination back to `rtc`, if it is still not connected.
    fn replay_nomination(&mut self, id: &SessionId, now: Instant) {
        let Some(sub) = self.peers.get_mut(id).filter(|sub| !sub.connected) else {
            return;
        };
        let Some(nomination) = sub.nomination.as_mut() else {
            return;
        };
        nomination.replayed = now;
        let (data, from, protocol) = (
            nomination.data.clone(),
            nomination.from,
            nomination.protocol,
        );
        self.on_datagram(from, id, data, now, protocol);
    }

    /// Drains a peer's outputs and acts on its state changes.
    fn service(&mut self, id: &SessionId) {
        let Some(sub) = self.peers.get_mut(id) else {
            return;
        };
        let flushed = flush(&self.shared, self.index, sub, &mut self.outbox);
        sub.metrics.bytes.inc_by(flushed.bytes);
        match flushed.verdict {
            Verdict::Keep => {}
            Verdict::JustConnected => {
                self.connecting -= 1;
                let transport = Transport::of(sub.last_protocol);
                sub.transport = Some(transport);
                sub.nomination = None;
                self.shared.metrics.connected(transport).inc();
                let join = sub.created.elapsed();
                sub.metrics.join_seconds.observe(join.as_secs_f64());
                info!(session = %id, stream = sub.stream.0, ?transport, ?join, "subscriber connected");
                let now = Instant::now();
                let rendition = sub.follower.as_ref().map_or(0, Follower::current);
                if sub.follower.is_some() {
                    sub.metrics.rendition_viewers_add(rendition, 1);
                }
                sub.sender = sub.own_sender();
                if sub.sender.is_some() {
                    self.shared.metrics.sessions_own_srtp.inc();
                }
                let cache = self.shared.keyframes.replay(sub.stream, rendition);
                if let Some(last) = cache.last() {
                    let (mut sent, mut bytes) = (0, 0);
                    // Replayed packets may predate the shard's first viewer of the stream.
                    let recent = self.recent.entry(sub.stream).or_default();
                    for packet in &cache {
                        recent.keep(packet);
                        if let Some(own) =
                            sub.write_media(packet, now, &self.shared, &mut self.outbox)
                        {
                            sent += 1;
                            bytes += own;
                        }
                    }
                    sub.replayed = Some((rendition, last.packet.header.sequence_number));
                    self.shared.metrics.rtp_packets_forwarded.inc_by(sent);
                    sub.metrics.packets.inc_by(sent);
                    sub.metrics.bytes.inc_by(bytes);
                }
                let flushed = flush(&self.shared, self.index, sub, &mut self.outbox);
                sub.metrics.bytes.inc_by(flushed.bytes);
            }
            Verdict::Reap(reason) => {
                self.reap(id, reason);
                return;
            }
        }
        if let Some(sub) = self.peers.get_mut(id) {
            sub.rearm(&mut self.timers);
        }
    }

    /// Closes and forgets one peer. Returns false when it was not here.
    fn reap(&mut self, id: &SessionId, reason: &'static str) -> bool {
        let Some((slot, mut sub)) = self.peers.remove(id) else {
            return false;
        };
        self.connecting -= usize::from(!sub.connected);
        if let Some(slots) = self.by_stream.get_mut(&sub.stream) {
            slots.retain(|s| *s != slot);
            if slots.is_empty() {
                self.recent.remove(&sub.stream);
            }
        }
        // close() queues DTLS close_notify so the client learns at once rather than by timeout.
        let _ = sub.pc.close();
        flush(&self.shared, self.index, &mut sub, &mut self.outbox);
        self.shared.forget_session(id, &sub.ufrag, &sub.known_addrs);
        if let Some(transport) = sub.transport {
            self.shared.metrics.connected(transport).dec();
            if let Some(follower) = &sub.follower {
                sub.metrics.rendition_viewers_add(follower.current(), -1);
            }
        }
        info!(session = %id, stream = sub.stream.0, reason, "subscriber closed");
        true
    }
}

impl Subscriber {
    /// Queues the peer's next timeout if it changed.
    fn rearm(&mut self, timers: &mut BinaryHeap<Reverse<(Instant, SessionId)>>) {
        let next = self.pc.poll_timeout();
        if next != self.timer {
            self.timer = next;
            if let Some(at) = next {
                timers.push(Reverse((at, self.id.clone())));
            }
        }
    }

    /// True for a video packet the keyframe replay sent already; the first later one ends the
    /// check.
    fn already_replayed(&mut self, media: &MediaPacket) -> bool {
        let Some((rendition, last)) = self.replayed else {
            return false;
        };
        if media.kind != TrackKind::Video || media.rendition != rendition {
            return false;
        }
        let seq = media.packet.header.sequence_number;
        let behind = (seq.wrapping_sub(last) as i16) <= 0;
        if !behind {
            self.replayed = None;
        }
        behind
    }

    /// Our own sending leg, if `rtc` has derived keys we hold.
    fn own_sender(&self) -> Option<SrtpSender> {
        let Some(keys) = self.keys.keys() else {
            debug!(session = %self.id, "media through rtc: its SRTP keys were not seen");
            return None;
        };
        let tracks: Vec<Track> = [
            (TrackKind::Video, self.video),
            (TrackKind::Audio, self.audio),
        ]
        .into_iter()
        .filter_map(|(kind, out)| {
            out.map(|out| Track {
                ssrc: out.ssrc,
                payload_type: out.payload_type,
                clock_rate: clock_rate(kind),
                nack: match kind {
                    TrackKind::Audio => Nack::Off,
                    TrackKind::Video if self.follower.is_some() => Nack::Own,
                    TrackKind::Video => Nack::Shared,
                },
            })
        })
        .collect();
        match SrtpSender::new(&keys, &tracks) {
            Ok(sender) => {
                debug!(session = %self.id, profile = ?keys.profile, "media on our own SRTP leg");
                Some(sender)
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, ?keys, "media through rtc");
                None
            }
        }
    }

    /// Stamps this subscriber's SSRC and payload type on a shared packet and sends it; with a
    /// ladder, only packets of the rendition it follows, renumbered as one track. On our own
    /// leg it goes out now (returns its bytes), else into `rtc`'s pipeline, whose datagrams
    /// [`flush_writes`] collects (returns 0). None when not sent.
    fn write_media(
        &mut self,
        media: &Arc<MediaPacket>,
        now: Instant,
        shared: &Shared,
        outbox: &mut Outbox,
    ) -> Option<u64> {
        let out = match media.kind {
            TrackKind::Video => self.video,
            TrackKind::Audio => self.audio,
        };
        let out = out?;
        let header = &media.packet.header;
        let mut stamp = Stamp::source_numbered(out.ssrc, out.payload_type, header);
        if media.kind == TrackKind::Video
            && let Some(follower) = &mut self.follower
        {
            let admitted = follower.admit(
                media.rendition,
                media.keyframe_start,
                header.sequence_number,
                header.timestamp,
                media.packet.payload.len(),
                now,
            );
            let ((seq, timestamp), switched) = admitted?;
            (stamp.sequence_number, stamp.timestamp) = (seq, timestamp);
            if let Some(switched) = switched {
                let m = &self.metrics;
                m.rendition_viewers_add(switched.from, -1);
                m.rendition_viewers_add(switched.to, 1);
                let up = switched.is_up(follower.ladder());
                if up { &m.switches_up } else { &m.switches_down }.inc();
                debug!(session = %self.id, ?switched, up, "rendition switched");
            }
        }
        if let Some(sender) = self.sender.as_mut() {
            let datagram = sender.protect(media, stamp, now, outbox.buffer())?;
            return Some(self.send_own(shared, outbox, datagram));
        }
        let mut packet = media.packet.clone();
        stamp.apply(&mut packet.header);
        // Straight into the pipeline rather than through `RTCRtpSender::write_rtp`, whose
        // per-packet checks (SSRC, payload type, extensions) hold by construction here and
        // which allocates the track id on every packet; the pipeline routes by SSRC and
        // ignores the id.
        self.pc
            .handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), packet),
            })
            .ok()
            .map(|()| 0)
    }

    /// Sends a datagram of our own leg where `rtc` sends its media; returns the bytes sent.
    fn send_own(&mut self, shared: &Shared, outbox: &mut Outbox, datagram: BytesMut) -> u64 {
        let Some((dest, protocol)) = self.media_dest else {
            // Not reached: DTLS completed over the pair before media starts.
            self.metrics.dropped.inc();
            return 0;
        };
        let len = datagram.len() as u64;
        if protocol == TransportProtocol::TCP {
            return if self.send_tcp(shared, dest, datagram) {
                len
            } else {
                0
            };
        }
        outbox.push(dest, datagram);
        len
    }

    /// Sends over the ICE-TCP connection the viewer opened from `dest`, else its newest one;
    /// false (and counted) when there is none or it is full.
    fn send_tcp(&mut self, shared: &Shared, dest: SocketAddr, datagram: BytesMut) -> bool {
        let link = self
            .tcp_links
            .iter()
            .find(|(addr, _)| *addr == dest)
            .or(self.tcp_links.last());
        let sent = link.is_some_and(|(_, link)| link.try_send(datagram).is_ok());
        if !sent {
            shared.metrics.tcp_send_dropped.inc();
            self.metrics.dropped.inc();
        }
        sent
    }
}

/// Queues what the peer wants sent, learns its addresses, and reports state changes.
fn flush(shared: &Shared, shard: usize, sub: &mut Subscriber, outbox: &mut Outbox) -> Flushed {
    let bytes = flush_writes(shared, shard, sub, outbox);
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
    Flushed { verdict, bytes }
}

/// Queues what the peer wants sent and learns its addresses; returns the bytes handed on.
/// All that writing media needs: it raises no event and reads nothing, so the media path
/// skips [`flush`]'s sweeps of the peer's read and event queues.
fn flush_writes(shared: &Shared, shard: usize, sub: &mut Subscriber, outbox: &mut Outbox) -> u64 {
    let mut bytes = 0;
    while let Some(out) = sub.pc.poll_write() {
        let dest = out.transport.peer_addr;
        let protocol = out.transport.transport_protocol;
        let len = out.message.len() as u64;
        // DTLS and SRTP(C) go only to the selected pair (STUN checks may go elsewhere): where
        // our own leg sends too (RFC 7983 first bytes: 20..=63 DTLS, 128..=191 RTP/RTCP).
        if out.message.first().is_some_and(|b| *b >= 20) {
            sub.media_dest = Some((dest, protocol));
        }
        if protocol == TransportProtocol::TCP {
            if sub.send_tcp(shared, dest, out.message) {
                bytes += len;
            }
            continue;
        }
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
        bytes += len;
        outbox.push(dest, out.message);
    }
    bytes
}
