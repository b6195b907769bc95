//! End to end: the HTTP port under abuse — half-sent requests, floods of offers, oversized
//! bodies — while a real viewer keeps playing and new viewers still join.

mod common;

use std::time::{Duration, Instant};

use common::{Process, Server, playing_viewer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn half_sent_requests_are_closed_within_the_header_timeout() {
    let server = Server::start(
        &[Process::test_pattern("cam1")],
        &["--http-header-timeout", "2"],
    );
    server.wait_live("cam1").await;
    let viewer = playing_viewer(server.whep_url("cam1")).await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    let sent = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"POST /whep/cam1 HTTP/1.1\r\nHost: x\r\nContent-Type: app")
            .await
            .unwrap();
        slow.push(conn);
    }
    // New viewers still join while the half-sent requests are held.
    playing_viewer(server.whep_url("cam1")).await;

    let mut buf = [0u8; 256];
    for conn in &mut slow {
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "every half-sent request is closed by the server"
        );
    }
    let closed_after = sent.elapsed();
    println!("200 half-sent requests closed {closed_after:?} after they were sent");
    assert!(closed_after < Duration::from_secs(10));

    let before = viewer.stats().media_packets();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.stats().media_packets() > before + 50,
        "the viewer kept playing"
    );
}

#[tokio::test]
async fn offer_floods_get_429_and_big_bodies_413_without_memory_growth() {
    let mut server = Server::start(
        &[Process::test_pattern("cam1")],
        &["--offer-rate-per-ip", "5"],
    );
    server.wait_live("cam1").await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(server.whep_url("cam1"))
            .header("Content-Type", "application/sdp")
            .body(body)
            .send()
    };

    // Rate: a burst of 10 passes (bad SDP: 400), then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(post(b"v=0\r\nnot sdp".to_vec()).await.unwrap());
    }
    let limited = statuses.iter().filter(|r| r.status() == 429).count();
    assert!(limited >= 4, "429s: {limited}");
    let first_429 = statuses.iter().find(|r| r.status() == 429).unwrap();
    assert!(first_429.headers().contains_key("retry-after"));
    assert!(statuses.iter().all(|r| !r.status().is_server_error()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Bodies of 10 MB in rounds: refused (413) and memory stays put between rounds.
    let pid = server.pid();
    let mut after_round = Vec::new();
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let request = http
                .post(server.whep_url("cam1"))
                .header("Content-Type", "application/sdp")
                .body(vec![b'a'; 10 << 20])
                .send();
            tasks.push(tokio::spawn(request));
        }
        for task in tasks {
            if let Ok(Ok(response)) = task.await {
                assert!(
                    response.status() == 413 || response.status() == 429,
                    "{}",
                    response.status()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        after_round.push(rss_kib(pid));
    }
    println!("RSS after each round of 20 x 10 MB bodies: {after_round:?} KiB");
    let growth = after_round[2].saturating_sub(after_round[0]);
    assert!(
        growth < 8 * 1024,
        "RSS grew {growth} KiB between rounds 1 and 3"
    );
    assert!(server.exit_status().is_none());
}
