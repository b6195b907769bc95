//! Why a subscription or a session request failed; the WHEP layer maps each to an HTTP status.

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("bad offer: {0}")]
    BadOffer(String),
    #[error("stream is gone")]
    StreamGone,
    #[error("this server holds its limit of {0} viewers: retry, another replica may have room")]
    ServerFull(usize),
    #[error("this process has its limit of {0} viewers on this server: retry later")]
    ProcessFull(usize),
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
