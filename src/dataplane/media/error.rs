//! Why a subscription or a session request failed; the WHEP layer maps each to an HTTP status.

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
    #[error("this server is draining: new sessions go to another replica")]
    Draining,
    #[error("internal WebRTC error: {0}")]
    Internal(String),
}
