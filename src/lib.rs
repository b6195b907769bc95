//! webrtc-egress: a Kubernetes operator and data plane that serves live FFmpeg inputs over WHEP.

pub mod agent;
pub mod bench;
pub mod client;
pub mod crd;
pub mod dataplane;
pub mod ffmpeg;
pub mod media;
pub mod operator;
pub mod subsystem;
pub mod telemetry;
pub mod whep;
mod whep_pages;
