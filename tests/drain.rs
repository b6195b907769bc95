//! End to end: a terminating server (a pod in a rollout) keeps its viewers, refuses new ones,
//! and exits as soon as the last viewer leaves — real `serve`, FFmpeg and WebRTC viewers.

mod common;

use std::time::{Duration, Instant};

use common::{Process, Server, playing_viewer, wait_until};
use webrtc_egress::client::{ViewerOptions, subscribe};

#[tokio::test]
async fn a_draining_server_keeps_its_viewers_refuses_new_ones_and_exits_when_they_leave() {
    let mut server = Server::start(
        &[Process::test_pattern("cam1")],
        &["--drain-seconds", "120"],
    );
    server.wait_live("cam1").await;
    let viewer = playing_viewer(server.whep_url("cam1")).await;

    server.terminate();
    let http = reqwest::Client::new();
    let ready = wait_until(Duration::from_secs(5), "not ready", || async {
        let r = http
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    });
    ready.await;
    let refused = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .err()
        .expect("a new viewer is refused while draining");
    let refused = refused.to_string();
    assert!(
        refused.contains("503") && refused.contains("draining"),
        "{refused}"
    );
    let response = http
        .post(server.whep_url("cam1"))
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));

    // The viewer held keeps receiving for as long as it stays.
    let drained_since = Instant::now();
    for _ in 0..5 {
        let before = viewer.stats().media_packets();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            viewer.stats().media_packets() > before + 50,
            "media kept flowing"
        );
    }
    assert!(server.exit_status().is_none(), "still serving its viewer");
    println!(
        "drained viewer kept playing for {:?} after SIGTERM",
        drained_since.elapsed()
    );

    // The last viewer leaves: the server exits at once, not at the end of the drain time.
    assert_eq!(viewer.delete().await.unwrap(), 200);
    let left = Instant::now();
    let status = wait_until(
        Duration::from_secs(10),
        "exit after the last viewer",
        || {
            let status = server.exit_status();
            async move { status }
        },
    )
    .await;
    println!("exited {:?} after the last viewer left", left.elapsed());
    assert!(status.success(), "{status}");
}
