//! End to end: the real `serve` binary, real FFmpeg, real WebRTC viewers over loopback.

mod common;

use std::time::{Duration, Instant};

use common::{Process, Server, manifest, wait_until};
use webrtc_egress::client::{ClientError, ViewerOptions, ViewerStats, subscribe};

const CHROMIUM_OFFER: &str = include_str!("fixtures/chromium-offer.sdp");
const MEDIA: Duration = Duration::from_secs(20);

fn has_av(s: &ViewerStats) -> bool {
    s.idr_seen && s.sps_seen && s.opus_seen
}

async fn post_offer(
    server: &Server,
    process: &str,
    content_type: &str,
    body: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.whep_url(process))
        .header("Content-Type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("HTTP request")
}

#[tokio::test]
async fn viewer_receives_h264_keyframes_and_opus() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;

    let viewer = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .expect("subscribe");
    let stats = viewer
        .wait_for(has_av, MEDIA)
        .await
        .expect("H.264 IDR + SPS and Opus");
    println!(
        "join: connected {:?}, first packet {:?}, first keyframe {:?}",
        stats.time_to_connected(),
        stats.time_to_first_packet(),
        stats.time_to_keyframe()
    );

    // The WHEP response: Location, ETag, ICE server Link, CORS exposure.
    let headers = viewer.response_headers();
    assert!(
        viewer.location().starts_with("/whep/cam1/"),
        "{}",
        viewer.location()
    );
    assert!(viewer.etag().is_some());
    let link = headers.get("link").expect("Link header").to_str().unwrap();
    assert_eq!(link, "<stun:stun.example.org:3478>; rel=\"ice-server\"");
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "*");
    let exposed = headers
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(exposed.contains("Location") && exposed.contains("ETag"));

    // The answer: sendonly, bundled, rtcp-mux, constrained baseline H.264, Opus, our one port.
    let sdp = viewer.answer_sdp();
    for needle in [
        "a=sendonly",
        "a=group:BUNDLE",
        "a=rtcp-mux",
        "profile-level-id=42e01f",
        "packetization-mode=1",
        "opus/48000/2",
    ] {
        assert!(sdp.contains(needle), "answer lacks {needle}:\n{sdp}");
    }
    assert!(
        sdp.lines()
            .any(|l| l.contains("typ host") && l.contains(&format!(" {} ", server.udp_port))),
        "answer has no host candidate on udpPort {}:\n{sdp}",
        server.udp_port
    );

    // A second viewer joins mid-GOP and still starts on a keyframe, from the cache.
    let second = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    let joined = second.wait_for(|s| s.idr_seen, MEDIA).await.unwrap();
    println!(
        "second viewer: first keyframe {:?} after POST",
        joined.time_to_keyframe()
    );
    assert!(
        joined.first_packet_at.is_some() && joined.first_keyframe_at.is_some(),
        "keyframe expected"
    );

    let before = server.stream("cam1").await.unwrap();
    assert_eq!(before["subscribers"], 2);
    viewer.close().await;
    wait_until(
        Duration::from_secs(10),
        "DELETE to release the session",
        || async {
            server
                .stream("cam1")
                .await
                .filter(|s| s["subscribers"] == 1)
        },
    )
    .await;
    second.close().await;
}

#[tokio::test]
async fn chromium_style_offer_gets_its_own_payload_types() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;
    let response = post_offer(&server, "cam1", "application/sdp", CHROMIUM_OFFER).await;
    assert_eq!(response.status(), 201);
    let answer = response.text().await.unwrap();
    assert!(answer.contains("a=rtpmap:106 H264/90000"), "{answer}");
    assert!(answer.contains("a=rtpmap:109 opus/48000/2"), "{answer}");
    assert!(
        !answer.contains("VP8"),
        "only H.264 is offered back: {answer}"
    );
}

#[tokio::test]
async fn removing_a_process_cuts_its_viewers_and_readding_works() {
    let server = Server::start(
        &[Process::test_pattern("cam1"), Process::test_pattern("cam2")],
        &[],
    );
    server.wait_live("cam1").await;
    server.wait_live("cam2").await;
    let v1 = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    let v2 = subscribe(ViewerOptions::new(server.whep_url("cam2")))
        .await
        .unwrap();
    v1.wait_for(has_av, MEDIA).await.unwrap();
    v2.wait_for(has_av, MEDIA).await.unwrap();

    // Remove cam1: its viewer is closed by the server, cam2's keeps playing.
    let removed_at = Instant::now();
    server.write_manifest(&manifest(server.udp_port, &[Process::test_pattern("cam2")]));
    let closed = v1
        .wait_for(|s| s.closed_by_server, Duration::from_secs(10))
        .await
        .expect("server closes cam1's viewer");
    println!(
        "teardown: viewer closed {:?} after the manifest edit",
        closed.server_closed_at.map(|t| t - removed_at)
    );
    let post = post_offer(&server, "cam1", "application/sdp", CHROMIUM_OFFER).await;
    assert_eq!(post.status(), 404);
    let before = v2.stats().video_packets;
    v2.wait_for(
        |s| s.video_packets > before + 30 && !s.closed_by_server,
        MEDIA,
    )
    .await
    .expect("cam2 unaffected");

    // An invalid edit is refused and what runs keeps running.
    let mut bad = manifest(server.udp_port, &[Process::test_pattern("cam2")]);
    bad = bad.replace("udpPort:", "publicIP: 300.1.2.3\n    udpPort:");
    server.write_manifest(&bad);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = v2.stats().video_packets;
    v2.wait_for(
        |s| s.video_packets > before + 30 && !s.closed_by_server,
        MEDIA,
    )
    .await
    .expect("cam2 survives an invalid edit");
    assert!(server.stream("cam1").await.is_none());

    // Re-adding the same id serves it again.
    server.write_manifest(&manifest(
        server.udp_port,
        &[Process::test_pattern("cam1"), Process::test_pattern("cam2")],
    ));
    server.wait_live("cam1").await;
    let again = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    again
        .wait_for(has_av, MEDIA)
        .await
        .expect("re-added cam1 plays");
    again.close().await;
    v2.close().await;
}

#[tokio::test]
async fn ffmpeg_crash_is_restarted_and_viewers_resume() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    let live = server.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    viewer.wait_for(has_av, MEDIA).await.unwrap();

    let pid = live["pid"].as_u64().expect("ffmpeg pid") as i32;
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();

    let restarted = wait_until(Duration::from_secs(30), "FFmpeg restart", || async {
        server.stream("cam1").await.filter(|s| {
            s["restarts"].as_u64() >= Some(1)
                && s["pid"].as_u64() != Some(pid as u64)
                && s["live"] == true
        })
    })
    .await;
    println!("restarted: {restarted}");
    let stats = viewer
        .wait_for(
            |s| {
                s.last_packet_at
                    .is_some_and(|t| t > killed_at + Duration::from_millis(500))
            },
            MEDIA,
        )
        .await
        .expect("media resumes on the same session");
    assert!(
        !stats.closed_by_server,
        "the viewer stays connected across the restart"
    );
    let resumed = stats.video_packets;
    viewer
        .wait_for(|s| s.video_packets > resumed + 60, MEDIA)
        .await
        .expect("media keeps flowing after the restart");
    viewer.close().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_and_never_5xx() {
    let server = Server::start(
        &[
            Process::test_pattern("cam1"),
            Process {
                id: "dead",
                video: "/nonexistent/input.mp4",
                audio: false,
            },
        ],
        &[],
    );
    server.wait_live("cam1").await;
    let http = reqwest::Client::new();

    let r = post_offer(&server, "cam1", "text/plain", CHROMIUM_OFFER).await;
    assert_eq!(r.status(), 415);
    let r = post_offer(&server, "nope", "application/sdp", CHROMIUM_OFFER).await;
    assert_eq!(r.status(), 404);
    let r = post_offer(&server, "cam1", "application/sdp", "this is not sdp").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not an SDP offer"));
    let no_video = CHROMIUM_OFFER.split("m=video").next().unwrap().to_owned()
        + &CHROMIUM_OFFER[CHROMIUM_OFFER.find("m=audio").unwrap()..];
    let r = post_offer(&server, "cam1", "application/sdp", &no_video).await;
    assert_eq!(r.status(), 400);
    let vp8_only = CHROMIUM_OFFER.replace("H264/90000", "VP9/90000");
    let r = post_offer(&server, "cam1", "application/sdp", &vp8_only).await;
    assert_eq!(r.status(), 400, "an offer without H.264 is refused");
    assert!(r.text().await.unwrap().contains("H.264"));

    // A known process whose FFmpeg cannot run: 409 with Retry-After.
    let r = post_offer(&server, "dead", "application/sdp", CHROMIUM_OFFER).await;
    assert_eq!(r.status(), 409);
    assert!(r.headers().contains_key("retry-after"));

    // Mangled offers: every one is answered, none with a 5xx.
    let lines: Vec<&str> = CHROMIUM_OFFER.lines().collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..60 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut mangled: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let at = (seed as usize) % mangled.len();
        match round % 4 {
            0 => {
                mangled.remove(at);
            }
            1 => mangled[at] = mangled[at].chars().rev().collect(),
            2 => {
                let half = mangled[at].len() / 2;
                mangled[at].truncate(half)
            }
            _ => mangled.insert(at, "a=\u{0}\u{7f}garbage:".repeat(1 + round)),
        }
        let r = post_offer(&server, "cam1", "application/sdp", &mangled.join("\r\n")).await;
        assert!(
            r.status().is_success() || r.status().is_client_error(),
            "round {round}: {} for line {at}",
            r.status()
        );
    }
    let r = http
        .post(server.whep_url("cam1"))
        .header("Content-Type", "application/sdp")
        .body(vec![0xffu8, 0xfe, 0x00, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "non-UTF-8 body");

    // Session resource errors.
    let viewer = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    let etag = viewer.etag().unwrap().to_owned();
    let candidate = "a=mid:0\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host\r\n";
    assert_eq!(
        viewer
            .patch_candidates(candidate, Some("\"stale\""))
            .await
            .unwrap(),
        412
    );
    assert_eq!(
        viewer
            .patch_candidates(candidate, Some(&etag))
            .await
            .unwrap(),
        204
    );
    let restart = "a=ice-ufrag:zzzz\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";
    assert_eq!(viewer.patch_candidates(restart, None).await.unwrap(), 428);
    assert_eq!(
        viewer.patch_candidates(restart, Some(&etag)).await.unwrap(),
        422
    );
    let r = http
        .patch(viewer.session_url())
        .header("Content-Type", "application/sdp")
        .body(candidate)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http
        .delete(format!("{}/whep/cam1/nosuchsession", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .request(reqwest::Method::OPTIONS, server.whep_url("cam1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let allowed = r
        .headers()
        .get("access-control-allow-methods")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(allowed.contains("POST") && allowed.contains("PATCH") && allowed.contains("DELETE"));
    viewer.close().await;
    assert_eq!(
        http.delete(format!("{}{}", server.base, "/whep/cam1/gone"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let health = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "server survived");
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let server = Server::start(&[Process::test_pattern("cam1")], &["--token", "s3cret"]);
    server.wait_live("cam1").await;
    let r = post_offer(&server, "cam1", "application/sdp", CHROMIUM_OFFER).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let mut opts = ViewerOptions::new(server.whep_url("cam1"));
    opts.token = Some("wrong".into());
    match subscribe(opts.clone()).await {
        Err(ClientError::Http { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    opts.token = Some("s3cret".into());
    let viewer = subscribe(opts).await.expect("right token");
    viewer.wait_for(|s| s.idr_seen, MEDIA).await.unwrap();
    viewer.close().await;
}

/// `serve --jwt-secret-file`: HS256 viewer tokens scoped to processes, refused with the
/// RFC 6750 challenge that says why; the static token keeps working beside them.
#[tokio::test]
async fn jwt_viewer_tokens_are_scoped_to_processes_and_expire() {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("hs256.key");
    std::fs::write(&key_file, "a shared key of at least 32 bytes!\n").unwrap();
    let server = Server::start(
        &[Process::test_pattern("cam1"), Process::test_pattern("cam2")],
        &[
            "--jwt-secret-file",
            key_file.to_str().unwrap(),
            "--jwt-audience",
            "whep",
            "--token",
            "s3cret",
        ],
    );
    server.wait_live("cam1").await;
    let key = EncodingKey::from_secret(b"a shared key of at least 32 bytes!").unwrap();
    let now = get_current_timestamp() as i64;
    let token = |claims: serde_json::Value| encode(&Header::default(), &claims, &key).unwrap();
    let for_cam1 =
        token(serde_json::json!({"exp": now + 600, "aud": "whep", "processes": ["cam1"]}));
    let expired =
        token(serde_json::json!({"exp": now - 600, "aud": "whep", "processes": ["cam1"]}));
    let offer = |process: &'static str, bearer: Option<String>| {
        let url = server.whep_url(process);
        async move {
            let mut request = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/sdp")
                .body(CHROMIUM_OFFER);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let r = request.send().await.expect("HTTP request");
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), challenge, r.text().await.unwrap())
        }
    };

    let (status, challenge, _) = offer("cam1", None).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer realm=\"whep\""))
    );
    let (status, challenge, reason) = offer("cam1", Some(expired)).await;
    assert_eq!(status, 401);
    assert_eq!(reason.trim(), "token expired");
    assert!(
        challenge.unwrap().contains("error=\"invalid_token\""),
        "RFC 6750 error code"
    );
    let (status, challenge, reason) = offer("cam2", Some(for_cam1.clone())).await;
    assert_eq!(status, 403);
    assert_eq!(reason.trim(), "token does not allow process \"cam2\"");
    assert!(challenge.unwrap().contains("error=\"insufficient_scope\""));

    // The token for cam1 plays cam1 (the client sends it as the player page does).
    let mut opts = ViewerOptions::new(server.whep_url("cam1"));
    opts.token = Some(for_cam1);
    let viewer = subscribe(opts)
        .await
        .expect("scoped token plays its process");
    viewer.wait_for(|s| s.idr_seen, MEDIA).await.unwrap();
    viewer.close().await;
    // Only cam1 was waited for; an offer to a process not live yet is refused (409).
    server.wait_live("cam2").await;
    let (status, _, _) = offer("cam2", Some("s3cret".into())).await;
    assert_eq!(status, 201, "the static token still opens every process");
}

#[tokio::test]
async fn ffmpeg_dies_with_a_killed_server() {
    let mut server = Server::start(&[Process::test_pattern("cam1")], &[]);
    let live = server.wait_live("cam1").await;
    let ffmpeg = live["pid"].as_u64().expect("ffmpeg pid");
    server.kill_hard();
    wait_until(
        Duration::from_secs(10),
        "FFmpeg to exit with its parent",
        || async { (!std::path::Path::new(&format!("/proc/{ffmpeg}")).exists()).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_viewer_that_vanishes_is_reaped() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions::new(server.whep_url("cam1")))
        .await
        .unwrap();
    viewer.wait_for(|s| s.idr_seen, MEDIA).await.unwrap();
    assert_eq!(server.stream("cam1").await.unwrap()["subscribers"], 1);
    let gone_at = Instant::now();
    viewer.abandon().await;
    wait_until(
        Duration::from_secs(60),
        "the server to reap a silent viewer",
        || async {
            server
                .stream("cam1")
                .await
                .filter(|s| s["subscribers"] == 0)
        },
    )
    .await;
    println!("silent viewer reaped after {:?}", gone_at.elapsed());
}

/// A viewer that discards every 10th video packet on arrival, as a lossy link would, gets each
/// one back: its NACKs are answered from the packets its shard keeps. The server's sender
/// reports arrive too (browsers need them for A/V sync and their stats).
#[tokio::test]
async fn nacked_video_is_retransmitted_and_sender_reports_arrive() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions {
        drop_video_every: Some(10),
        ..ViewerOptions::new(server.whep_url("cam1"))
    })
    .await
    .unwrap();
    let stats = viewer
        .wait_for(
            |s| s.dropped_on_purpose >= 20 && s.nacks_sent > 0 && s.sender_reports >= 2,
            MEDIA,
        )
        .await
        .expect("drops, NACKs and sender reports");
    println!(
        "dropped {}, NACKs {}, lost {}, sender reports {}",
        stats.dropped_on_purpose, stats.nacks_sent, stats.lost, stats.sender_reports
    );
    // The latest drops may still be on their way back; without retransmission every drop
    // would stay lost.
    let stats = viewer
        .wait_for(|s| s.lost * 4 < s.dropped_on_purpose, MEDIA)
        .await
        .expect("drops recovered");
    assert!(stats.video_packets > stats.dropped_on_purpose);
    // Sent by our own SRTP leg, which answered the NACKs itself.
    let own = server.metric("webrtc_egress_sessions_own_srtp_total").await;
    assert_eq!(own, Some(1.0));
    let again = server.metric("webrtc_egress_rtp_retransmitted_total").await;
    assert!(again.unwrap_or(0.0) >= 15.0, "{again:?}");
    viewer.close().await;
}

#[tokio::test]
async fn cheap_viewer_counts_media_without_decrypting() {
    let server = Server::start(&[Process::test_pattern("cam1")], &[]);
    server.wait_live("cam1").await;
    let viewer = subscribe(ViewerOptions {
        inspect_media: false,
        ..ViewerOptions::new(server.whep_url("cam1"))
    })
    .await
    .unwrap();
    let stats = viewer
        .wait_for(|s| s.video_packets > 200 && s.audio_packets > 20, MEDIA)
        .await
        .expect("cheap viewer counts packets");
    assert!(stats.opus_seen);
    assert_eq!(stats.decrypted_packets, 0, "cheap mode does not decrypt");
    viewer.close().await;
}
