//! End to end: media over ICE-TCP on the HTTP port (RFC 6544 passive candidate at the address
//! of the WHEP request), with the real `serve`, real FFmpeg and real WebRTC viewers.

mod common;

use std::time::Duration;

use common::{Process, Server, free_udp_port, manifest, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webrtc_egress::client::{MediaTransport, ViewerOptions, ViewerStats, subscribe};

const MEDIA: Duration = Duration::from_secs(20);

fn has_av(s: &ViewerStats) -> bool {
    s.idr_seen && s.sps_seen && s.opus_seen
}

/// A server whose UDP candidates nobody can reach (TEST-NET-1): only ICE-TCP can carry media.
fn server_without_reachable_udp(extra_webrtc: &str) -> Server {
    let udp_port = free_udp_port();
    let yaml = manifest(udp_port, &[Process::test_pattern("cam1")]).replace(
        &format!("    udpPort: {udp_port}\n"),
        &format!("    udpPort: {udp_port}\n    publicIP: 192.0.2.1\n{extra_webrtc}"),
    );
    Server::start_with(&yaml, udp_port, &[])
}

fn tcp_viewer(url: String) -> ViewerOptions {
    ViewerOptions {
        transport: MediaTransport::Tcp,
        ..ViewerOptions::new(url)
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    server.metric(name).await.unwrap_or(0.0)
}

/// The `a=candidate` lines of an SDP's first section that carry TCP, component 1 (RTP).
fn tcp_candidates(sdp: &str) -> Vec<String> {
    let first_section = sdp.split("\nm=").nth(1).unwrap_or_default();
    first_section
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            l.starts_with("a=candidate:")
                && fields.get(1) == Some(&"1")
                && fields.get(2) == Some(&"tcp")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn media_flows_over_ice_tcp_to_the_address_the_viewer_used() {
    let server = server_without_reachable_udp("");
    server.wait_live("cam1").await;

    let viewer = subscribe(tcp_viewer(server.whep_url("cam1")))
        .await
        .expect("subscribe");
    let http_addr = server.base.trim_start_matches("http://");
    let candidates = tcp_candidates(viewer.answer_sdp());
    assert_eq!(candidates.len(), 1, "{}", viewer.answer_sdp());
    let fields: Vec<&str> = candidates[0].split(' ').collect();
    assert_eq!(format!("{}:{}", fields[4], fields[5]), http_addr);
    assert!(
        candidates[0].ends_with("typ host tcptype passive"),
        "{}",
        candidates[0]
    );
    // UDP host candidates stay first: higher priority than the TCP fallback.
    let udp_priority: u64 = viewer
        .answer_sdp()
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains(" udp "))
        .and_then(|l| l.split(' ').nth(3)?.parse().ok())
        .expect("a UDP candidate");
    assert!(udp_priority > fields[3].parse::<u64>().unwrap());

    let stats = viewer
        .wait_for(has_av, MEDIA)
        .await
        .expect("H.264 IDR + SPS and Opus over ICE-TCP");
    println!(
        "ICE-TCP join: connected {:?}, first keyframe {:?}",
        stats.time_to_connected(),
        stats.time_to_keyframe()
    );
    let before = viewer.stats().media_packets();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        viewer.stats().media_packets() > before + 100,
        "media keeps flowing"
    );
    assert_eq!(
        metric(
            &server,
            "webrtc_egress_sessions_connected{transport=\"tcp\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&server, "webrtc_egress_ice_tcp_connections_total").await,
        1.0
    );

    // Closing the TCP connection behaves like lost UDP: the session is reaped.
    viewer.abandon().await;
    wait_until(Duration::from_secs(40), "session reaped", || async {
        let s = server.stream("cam1").await?;
        (s["subscribers"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_host_name_is_advertised_as_written_and_the_setting_turns_tcp_off() {
    let server = server_without_reachable_udp("");
    server.wait_live("cam1").await;
    let offer = webrtc_offer().await;
    let answer = |host: &'static str| {
        let offer = offer.clone();
        let url = server.whep_url("cam1");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/sdp")
                .header("Host", host)
                .body(offer)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.text().await.unwrap()
        }
    };
    let named = tcp_candidates(&answer("Egress.Example.invalid:8443").await);
    assert_eq!(named.len(), 1);
    assert!(
        named[0].contains(" egress.example.invalid 8443 typ host tcptype passive"),
        "{}",
        named[0]
    );
    let default_port = tcp_candidates(&answer("203.0.113.5").await);
    assert!(
        default_port[0].contains(" 203.0.113.5 80 typ host"),
        "{}",
        default_port[0]
    );
    drop(server);

    let off = server_without_reachable_udp("    iceTCP: false\n");
    off.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions::new(off.whep_url("cam1")))
        .await
        .expect("subscribe");
    assert!(
        tcp_candidates(viewer.answer_sdp()).is_empty(),
        "{}",
        viewer.answer_sdp()
    );
}

/// A browser-like offer from our own viewer, for requests crafted by hand.
async fn webrtc_offer() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chromium-offer.sdp"
    ))
    .unwrap()
}

/// Reads until the server closes the connection, or fails after `within`.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// A framed STUN binding request whose USERNAME names `ufrag` as ours.
fn framed_binding_request(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:viewer");
    let padded = username.len().div_ceil(4) * 4;
    let mut stun = vec![0x00, 0x01];
    stun.extend(((4 + padded) as u16).to_be_bytes());
    stun.extend([0x21, 0x12, 0xa4, 0x42]);
    stun.extend([9u8; 12]);
    stun.extend([0x00, 0x06]);
    stun.extend((username.len() as u16).to_be_bytes());
    stun.extend(username.as_bytes());
    stun.resize(20 + 4 + padded, 0);
    let mut framed = (stun.len() as u16).to_be_bytes().to_vec();
    framed.extend(stun);
    framed
}

#[tokio::test]
async fn bad_tcp_connections_are_closed_without_touching_http_or_viewers() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .expect("subscribe");
    viewer
        .wait_for(has_av, MEDIA)
        .await
        .expect("UDP viewer plays");
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Garbage that is neither HTTP nor ICE-TCP: HTTP refuses it and closes.
    let mut garbage = TcpStream::connect(&addr).await.unwrap();
    garbage.write_all(&[0u8; 64]).await.unwrap();
    assert!(
        closed_by_server(&mut garbage, Duration::from_secs(5)).await,
        "garbage closed"
    );

    // A STUN start naming no session of ours.
    let mut stranger = TcpStream::connect(&addr).await.unwrap();
    stranger
        .write_all(&framed_binding_request("nobody"))
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut stranger, Duration::from_secs(5)).await,
        "unknown ufrag closed"
    );

    // Bound to the real session by its ufrag, then a frame longer than allowed.
    let ufrag = viewer
        .answer_sdp()
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned();
    let mut oversize = TcpStream::connect(&addr).await.unwrap();
    oversize
        .write_all(&framed_binding_request(&ufrag))
        .await
        .unwrap();
    oversize.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert!(
        closed_by_server(&mut oversize, Duration::from_secs(5)).await,
        "oversize closed"
    );

    // Silence: closed once it cannot be told apart in time.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    for conn in &mut idle {
        assert!(
            closed_by_server(conn, Duration::from_secs(20)).await,
            "idle closed"
        );
    }

    // Meanwhile HTTP answers and the viewer kept receiving.
    let before = viewer.stats().media_packets();
    let health = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.stats().media_packets() > before + 50,
        "viewer unaffected"
    );
    // The unknown ufrag and the 50 silent connections.
    assert!(metric(&server, "webrtc_egress_ice_tcp_refused_total").await >= 51.0);
}
