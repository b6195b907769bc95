//! End to end: viewer caps from the resource (`spec.limits.maxViewersPerPod`, a process's
//! `maxViewers`) with real `serve`, FFmpeg and WebRTC viewers: a full server or process answers
//! 503 with `Retry-After` and a reason, a full server reports not-ready (so a Service sends
//! newcomers elsewhere) while its viewers keep playing, and cap edits apply live without
//! cutting anyone.

mod common;

use std::time::Duration;

use common::{Server, free_udp_port, wait_until};
use webrtc_egress::client::{Viewer, ViewerOptions, subscribe};

fn manifest(udp_port: u16, per_pod: u32, cam1_max: u32) -> String {
    let process = |id: &str, extra: &str| {
        format!(
            "    - id: {id}\n      inputs:\n        - address: \"testsrc2=size=320x180:rate=15\"\n          \
             options: [\"-re\", \"-f\", \"lavfi\"]\n      video: {{bitrateKbps: 300}}\n{extra}"
        )
    };
    format!(
        "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: caps\n\
         spec:\n  webrtc:\n    udpPort: {udp_port}\n  limits:\n    maxViewersPerPod: {per_pod}\n  \
         processes:\n{}{}",
        process("cam1", &format!("      maxViewers: {cam1_max}\n")),
        process("cam2", "")
    )
}

async fn viewer(url: String) -> Viewer {
    let viewer = subscribe(ViewerOptions::new(url)).await.expect("subscribe");
    viewer
        .wait_for(|s| s.idr_seen, Duration::from_secs(20))
        .await
        .expect("an H.264 keyframe");
    viewer
}

/// The refusal a new viewer gets, as the client reports it (status and body).
async fn refusal(url: String) -> String {
    subscribe(ViewerOptions::new(url))
        .await
        .err()
        .expect("the viewer is refused")
        .to_string()
}

async fn readyz(server: &Server) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn metric(server: &Server, series: &str) -> f64 {
    let value = server.metric(series).await;
    value.unwrap_or_else(|| panic!("no {series} on /metrics"))
}

async fn still_playing(viewers: &[&Viewer]) {
    for v in viewers {
        let before = v.stats().media_packets();
        v.wait_for(|s| s.media_packets() > before + 20, Duration::from_secs(10))
            .await
            .expect("a held viewer keeps playing");
        assert!(!v.stats().closed_by_server);
    }
}

#[tokio::test]
async fn full_servers_and_processes_refuse_with_503_and_keep_their_viewers() {
    let udp = free_udp_port();
    let server = Server::start_with(&manifest(udp, 3, 2), udp, &[]);
    server.wait_live("cam1").await;
    server.wait_live("cam2").await;
    let (cam1, cam2) = (server.whep_url("cam1"), server.whep_url("cam2"));

    // A process at its own cap refuses; the server still has room.
    let a = viewer(cam1.clone()).await;
    let b = viewer(cam1.clone()).await;
    let refused = refusal(cam1.clone()).await;
    assert!(
        refused.contains("503") && refused.contains("limit of 2 viewers"),
        "{refused}"
    );
    assert_eq!(readyz(&server).await.0, 200, "one slot is left");

    // The server's last slot goes: it turns not-ready and refuses every process.
    let c = viewer(cam2.clone()).await;
    let (status, reason) = readyz(&server).await;
    assert_eq!((status, reason.trim()), (503, "full: 3/3 viewers"));
    let response = reqwest::Client::new()
        .post(&cam2)
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("limit of 3 viewers") && body.contains("another replica"),
        "{body}"
    );
    still_playing(&[&a, &b, &c]).await;

    // Per-process series: viewers held, media sent, joins observed.
    let viewers = metric(&server, "webrtc_egress_process_viewers{process=\"cam1\"}").await;
    assert_eq!(viewers, 2.0);
    assert!(
        metric(
            &server,
            "webrtc_egress_process_rtp_packets_sent_total{process=\"cam1\"}"
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &server,
            "webrtc_egress_process_bytes_sent_total{process=\"cam2\"}"
        )
        .await
            > 0.0
    );
    let joins = metric(
        &server,
        "webrtc_egress_process_join_seconds_count{process=\"cam1\"}",
    )
    .await;
    assert_eq!(joins, 2.0);

    // A viewer leaves: room again, and the server is ready.
    assert_eq!(c.delete().await.unwrap(), 200);
    wait_until(Duration::from_secs(5), "ready again", || async {
        (readyz(&server).await.0 == 200).then_some(())
    })
    .await;

    // Caps edited live: nobody is cut, the process is not restarted, the new caps hold.
    let pid = server.stream("cam1").await.unwrap()["pid"].clone();
    server.write_manifest(&manifest(udp, 3, 1));
    wait_until(Duration::from_secs(10), "the new cap", || async {
        let r = refusal(cam1.clone()).await;
        r.contains("limit of 1 viewers").then_some(())
    })
    .await;
    assert_eq!(
        server.stream("cam1").await.unwrap()["pid"],
        pid,
        "FFmpeg restarted"
    );
    still_playing(&[&a, &b]).await;
    let d = viewer(cam2.clone()).await;
    still_playing(&[&d]).await;
    for v in [a, b, d] {
        v.close().await;
    }
}
