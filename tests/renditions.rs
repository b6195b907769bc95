//! End to end: a process with a rendition ladder, real `serve`, FFmpeg and WebRTC viewers. One
//! FFmpeg encodes every rendition; viewers start on the top one, `?rendition=NAME` pins one,
//! an unknown name is a 400 naming the valid ones, and each rendition carries its own bitrate.

mod common;

use std::time::{Duration, Instant};

use common::{Server, free_udp_port, wait_until};
use webrtc_egress::client::{Viewer, ViewerOptions, subscribe};

fn manifest(udp_port: u16) -> String {
    format!(
        "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: ladder\n\
         spec:\n  webrtc:\n    udpPort: {udp_port}\n  processes:\n\
         \x20   - id: cam1\n      inputs:\n        - address: \"testsrc2=size=640x360:rate=15\"\n\
         \x20         options: [\"-re\", \"-f\", \"lavfi\"]\n      video:\n        renditions:\n\
         \x20         - {{name: hd, height: 360, bitrateKbps: 900}}\n\
         \x20         - {{name: sd, height: 180, bitrateKbps: 150}}\n\
         \x20   - id: flat\n      inputs:\n        - address: \"testsrc2=size=320x180:rate=15\"\n\
         \x20         options: [\"-re\", \"-f\", \"lavfi\"]\n      video: {{bitrateKbps: 200}}\n"
    )
}

async fn viewer(url: String) -> Viewer {
    let viewer = subscribe(ViewerOptions::new(url)).await.expect("subscribe");
    viewer
        .wait_for(|s| s.idr_seen && s.sps_seen, Duration::from_secs(20))
        .await
        .expect("an H.264 keyframe with its SPS");
    viewer
}

/// Video bits per second a viewer receives over `window`.
async fn video_rate(viewer: &Viewer, window: Duration) -> f64 {
    let (before, start) = (viewer.stats().video_bytes, Instant::now());
    tokio::time::sleep(window).await;
    (viewer.stats().video_bytes - before) as f64 * 8.0 / start.elapsed().as_secs_f64()
}

async fn post(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn viewers_follow_a_rendition_pinned_or_from_the_top() {
    let udp = free_udp_port();
    let server = Server::start_with(&manifest(udp), udp, &[]);
    let stream = server.wait_live("cam1").await;
    let names: Vec<&str> = stream["renditions"]
        .as_array()
        .expect("the ladder is listed")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hd", "sd"]);
    server.wait_live("flat").await;

    let (status, body) = post(&format!("{}?rendition=uhd", server.whep_url("cam1"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"uhd\"") && body.contains("hd, sd"),
        "{body}"
    );
    let (status, body) = post(&format!("{}?rendition=sd", server.whep_url("flat"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no renditions"), "{body}");

    let top = viewer(server.whep_url("cam1")).await;
    let sd = viewer(format!("{}?rendition=sd", server.whep_url("cam1"))).await;
    let hd = viewer(format!("{}?rendition=hd", server.whep_url("cam1"))).await;
    let rendition_viewers = |name: &'static str| {
        let series = format!(
            "webrtc_egress_process_rendition_viewers{{process=\"cam1\",rendition=\"{name}\"}}"
        );
        let server = &server;
        async move { server.metric(&series).await }
    };
    wait_until(Duration::from_secs(10), "viewers per rendition", || async {
        let counts = (rendition_viewers("hd").await, rendition_viewers("sd").await);
        (counts == (Some(2.0), Some(1.0))).then_some(())
    })
    .await;

    // Each rendition is its own encode: the pinned viewers get their bitrates, the unpinned
    // one (a clean loopback link) stays on the top rendition.
    let window = Duration::from_secs(4);
    let (top_bps, sd_bps, hd_bps) = tokio::join!(
        video_rate(&top, window),
        video_rate(&sd, window),
        video_rate(&hd, window)
    );
    println!("received: top {top_bps:.0} bit/s, hd {hd_bps:.0}, sd {sd_bps:.0}");
    assert!(hd_bps > 2.5 * sd_bps, "hd {hd_bps} vs sd {sd_bps}");
    assert!(top_bps > 2.5 * sd_bps, "top {top_bps} vs sd {sd_bps}");
    for v in [&top, &sd, &hd] {
        assert_eq!(v.stats().lost, 0, "one continuous sequence");
    }
    let switches = server
        .metric(
            "webrtc_egress_process_rendition_switches_total{process=\"cam1\",direction=\"down\"}",
        )
        .await;
    assert_eq!(switches, Some(0.0));
    for v in [top, sd, hd] {
        v.close().await;
    }
}
