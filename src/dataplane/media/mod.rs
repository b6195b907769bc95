//! The pod's media plane: Sources fed by FFmpeg RTP, and one UDP socket serving every WebRTC peer.
//!
//! Built on the sans-IO core `rtc`: the async `webrtc` layer binds one socket per peer and
//! ignores NAT 1:1 addresses, which a Kubernetes pod exposing one UDP port cannot use (see the
//! README's "How the media plane is built").

pub mod codecs;
mod engine;
mod error;
mod factory;
mod feedback;
pub mod framing;
pub mod h264;
mod keytap;
pub mod outbox;
mod peer;
pub mod rendition;
mod sender;
mod source;
mod srtp;
mod stun;
pub mod udp;

pub use engine::{Admission, Answer, Engine, EngineConfig, SessionId, SessionInfo, Subscription};
pub use error::SubscribeError;
pub use factory::{PeerFactoryConfig, translate};
pub use framing::is_ice_tcp_start;
pub use peer::{TcpCandidate, active_tcp_candidate, host_candidate};
pub use source::Source;

use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one incarnation of a process's stream. Re-adding a process id gets a new key, so
/// peers and caches of the old incarnation can never be fed by the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(pub u64);

impl StreamKey {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        StreamKey(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One RTP packet from a Source, shared by reference among every subscriber's sender.
#[derive(Debug)]
pub struct MediaPacket {
    pub kind: TrackKind,
    /// First packet of a decodable keyframe (SPS or IDR start): where a new viewer can begin.
    pub keyframe_start: bool,
    /// Which rendition of the process's ladder it belongs to (0: the top one, or the only one).
    pub rendition: u8,
    pub packet: rtc::rtp::Packet,
}
