//! Datagram routing: which session a datagram on the shared socket belongs to. By source
//! address once known; for a new address, by our ICE ufrag in the STUN USERNAME (we choose
//! every session's ufrag). `rtc` does not check sources after ICE, so this demux is ours.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::shared::TransportProtocol;
use tokio::sync::mpsc;
use tracing::debug;

use super::shard::ShardMsg;
use super::{SessionId, Shared};
use crate::dataplane::media::stun;

#[derive(Clone)]
pub(super) struct Route {
    pub(super) shard: usize,
    pub(super) session: SessionId,
}

#[derive(Default)]
pub(super) struct Routes {
    pub(super) by_addr: HashMap<SocketAddr, Route>,
    pub(super) by_ufrag: HashMap<String, Route>,
}

pub(super) async fn read_socket(shared: Arc<Shared>, shards: Vec<mpsc::Sender<ShardMsg>>) {
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
            let ufrag = stun::local_ufrag(data)?;
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
            protocol: TransportProtocol::UDP,
        };
        if shards[route.shard].try_send(msg).is_err() {
            shared.metrics.media_dropped.inc();
        }
    }
}

/// The candidate a datagram from `remote` is taken to have arrived on. The socket is bound to
/// one port (often on 0.0.0.0), so pick the candidate the remote most plausibly addressed: its
/// own IP (same host), then one of the same family and scope, then any.
pub(super) fn local_candidate_for(candidates: &[SocketAddr], remote: SocketAddr) -> SocketAddr {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
