//! webrtc-egress: a Kubernetes operator and data plane that serves live FFmpeg inputs over WHEP.
//!
//! Control plane: [`crd`] (the resource) and [`operator`]. Data plane, what every egress pod
//! runs: [`dataplane`] (subsystem, FFmpeg, media, WHEP), fed by [`agent`] from the cluster or by
//! `serve` from a file. Between them, the contract both import: [`entries`] (operator to
//! pods) and [`reports`] (pods to operator). Apart from both:
//! [`client`] (a WHEP viewer) and [`bench`] (the load generator built on it).

pub mod agent;
pub mod bench;
pub mod client;
pub mod crd;
pub mod dataplane;
pub mod entries;
pub mod health;
pub mod operator;
pub mod outage;
pub mod reports;
pub mod telemetry;
