//! Real processes: the FFmpeg command line against the installed ffmpeg, and the supervisor
//! against small shell programs. Timeouts are generous: the machine is shared and noisy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use webrtc_egress::dataplane::ffmpeg::{
    AudioOpts, FfmpegError, Input, ProcessMedia, ProcessState, ProcessStatus, RtpTargets,
    Supervisor, SupervisorConfig, VideoMode, build_args, check_ffmpeg,
};

const FFMPEG: &str = "ffmpeg";
const PATIENCE: Duration = Duration::from_secs(60);

fn lavfi(address: &str) -> Input {
    Input {
        address: address.into(),
        options: vec!["-re".into(), "-f".into(), "lavfi".into()],
    }
}

fn config(program: &str, args: &[&str], id: &str) -> SupervisorConfig {
    SupervisorConfig::new(program, args.iter().map(|a| (*a).to_owned()).collect(), id)
}

/// Waits (generously) until the status satisfies `pred`, returning that status.
async fn wait_status(
    rx: &mut watch::Receiver<ProcessStatus>,
    what: &str,
    pred: impl FnMut(&ProcessStatus) -> bool,
) -> ProcessStatus {
    let got = timeout(PATIENCE, async {
        rx.wait_for(pred).await.map(|s| s.clone())
    })
    .await;
    match got {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("supervisor gone while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last status {:?}",
            *rx.borrow()
        ),
    }
}

/// Whether a process is still alive (a zombie counts as gone: it was killed).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- RTP parsing ---------------------------------------------------------------------------

struct Rtp<'a> {
    payload_type: u8,
    timestamp: u32,
    payload: &'a [u8],
}

/// Parses an RTP packet (RFC 3550), skipping CSRCs and a header extension.
fn parse_rtp(d: &[u8]) -> Option<Rtp<'_>> {
    if d.len() < 12 || d[0] >> 6 != 2 {
        return None;
    }
    let mut off = 12 + 4 * usize::from(d[0] & 0x0f);
    if d[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([*d.get(off + 2)?, *d.get(off + 3)?]));
        off += 4 + 4 * words;
    }
    let mut end = d.len();
    if d[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*d.last()?))?;
    }
    Some(Rtp {
        payload_type: d[1] & 0x7f,
        timestamp: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        payload: d.get(off..end)?,
    })
}

/// NAL unit types that begin in this H.264 RTP payload (RFC 6184, packetization-mode 1).
fn nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&first) = payload.first() else {
        return vec![];
    };
    match first & 0x1f {
        // STAP-A: 16-bit size, NAL, repeated.
        24 => {
            let mut types = vec![];
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                types.push(payload[i + 2] & 0x1f);
                i += 2 + size;
            }
            types
        }
        // FU-A: only the fragment with the start bit begins a NAL.
        28 => match payload.get(1) {
            Some(&fu) if fu & 0x80 != 0 => vec![fu & 0x1f],
            _ => vec![],
        },
        t => vec![t],
    }
}

#[derive(Default)]
struct Seen {
    video_packets: usize,
    audio_packets: usize,
    /// RTP timestamps of access units holding an SPS / an IDR slice.
    sps: BTreeSet<u32>,
    idr: BTreeSet<u32>,
    audio_timestamps: Vec<u32>,
    foreign: Vec<String>,
    max_len: usize,
}

/// Binds two UDP sockets on loopback, the audio one on the port right after the video one
/// when possible: that is where FFmpeg's RTCP would land if it were not disabled.
async fn bind_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..20 {
        let video = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = video.local_addr().unwrap().port();
        if let Some(next) = port.checked_add(1)
            && let Ok(audio) = UdpSocket::bind(("127.0.0.1", next)).await
        {
            return (video, audio);
        }
    }
    (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    )
}

/// Receives until `done` or the patience runs out; marks the supervisor running on the first
/// packet, as the media side does.
async fn receive(
    sup: &Supervisor,
    video: &UdpSocket,
    audio: &UdpSocket,
    mut done: impl FnMut(&Seen) -> bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut vbuf = vec![0u8; 2048];
    let mut abuf = vec![0u8; 2048];
    let deadline = Instant::now() + PATIENCE;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = timeout(left, async {
            tokio::select! {
                r = video.recv_from(&mut vbuf) => (true, r.unwrap().0),
                r = audio.recv_from(&mut abuf) => (false, r.unwrap().0),
            }
        })
        .await;
        let Ok((is_video, n)) = got else {
            panic!(
                "timed out: video {} audio {} sps {} idr {} status {:?}",
                seen.video_packets,
                seen.audio_packets,
                seen.sps.len(),
                seen.idr.len(),
                *sup.status().borrow()
            );
        };
        sup.mark_running();
        let data = if is_video { &vbuf[..n] } else { &abuf[..n] };
        seen.max_len = seen.max_len.max(n);
        let Some(rtp) = parse_rtp(data) else {
            seen.foreign.push(format!("non-RTP {n} bytes"));
            continue;
        };
        match (is_video, rtp.payload_type) {
            (true, 96) => {
                seen.video_packets += 1;
                for t in nal_types(rtp.payload) {
                    match t {
                        7 => {
                            seen.sps.insert(rtp.timestamp);
                        }
                        5 => {
                            seen.idr.insert(rtp.timestamp);
                        }
                        _ => {}
                    }
                }
            }
            (false, 111) => {
                seen.audio_packets += 1;
                seen.audio_timestamps.push(rtp.timestamp);
            }
            (v, pt) => seen
                .foreign
                .push(format!("video={v} pt={pt} byte1={}", data[1])),
        }
    }
    seen
}

fn test_media(video: VideoMode) -> ProcessMedia {
    ProcessMedia {
        inputs: vec![
            lavfi("testsrc2=size=640x360:rate=30"),
            lavfi("sine=frequency=440:sample_rate=48000"),
        ],
        video,
        audio: Some(AudioOpts { bitrate_kbps: 64 }),
    }
}

fn targets(video: &UdpSocket, audio: &UdpSocket) -> RtpTargets {
    RtpTargets {
        video: vec![video.local_addr().unwrap()],
        audio: Some(audio.local_addr().unwrap()),
    }
}

#[test]
fn check_ffmpeg_reports_version() {
    let version = check_ffmpeg(FFMPEG).expect("ffmpeg must be installed for these tests");
    assert!(version.starts_with("ffmpeg version"), "{version}");
}

#[test]
fn check_ffmpeg_missing_binary_is_clear() {
    let err = check_ffmpeg("no-such-ffmpeg-binary").unwrap_err();
    assert!(matches!(err, FfmpegError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "ffmpeg binary 'no-such-ffmpeg-binary' not found: install ffmpeg or pass --ffmpeg PATH"
    );
}

#[test]
fn check_ffmpeg_rejects_a_failing_binary() {
    let err = check_ffmpeg("false").unwrap_err();
    assert!(matches!(err, FfmpegError::Version { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_produces_h264_and_opus_rtp() {
    let (video, audio) = bind_pair().await;
    let args = build_args(
        &test_media(VideoMode::Transcode { bitrate_kbps: 1000 }),
        &targets(&video, &audio),
    );
    let sup = Supervisor::spawn(SupervisorConfig::new(FFMPEG, args, "cam1"));

    // Three IDRs span two seconds of media: enough to see the one-second cadence.
    let seen = receive(&sup, &video, &audio, |s| {
        s.idr.len() >= 3 && s.audio_packets >= 50
    })
    .await;
    let status = sup.status().borrow().clone();
    sup.stop().await;

    assert_eq!(status.state, ProcessState::Running, "{status:?}");
    assert!(
        seen.foreign.is_empty(),
        "unexpected packets: {:?}",
        seen.foreign
    );
    assert!(seen.max_len <= 1200, "packet of {} bytes", seen.max_len);

    // A keyframe every second of media time (90 kHz clock; 30 fps gives exact seconds).
    let idr: Vec<u32> = seen.idr.iter().copied().collect();
    for pair in idr.windows(2) {
        let gap = pair[1].wrapping_sub(pair[0]);
        assert!(
            (80_000..=100_000).contains(&gap),
            "IDR gap {gap} in {idr:?}"
        );
    }
    // SPS/PPS repeated with every keyframe, so a late joiner can decode.
    for ts in &idr {
        assert!(
            seen.sps.contains(ts),
            "IDR at {ts} without SPS; sps {:?}",
            seen.sps
        );
    }
    // Opus in 20 ms frames (960 ticks at 48 kHz).
    let steps: BTreeSet<u32> = seen
        .audio_timestamps
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]))
        .collect();
    assert!(steps.contains(&960), "audio timestamp steps {steps:?}");
}

/// Writes a short H.264 file in a length-prefixed container, as RTMP delivers it.
fn make_flv(dir: &Path) -> PathBuf {
    let path = dir.join("in.flv");
    let status = std::process::Command::new(FFMPEG)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=30")
        .args(["-t", "20", "-c:v", "libx264", "-profile:v", "baseline"])
        .args(["-g", "30", "-bf", "0"])
        .arg(&path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_of_flv_h264_carries_sps_and_idr() {
    let dir = std::env::temp_dir().join(format!("webrtc-egress-ffmpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = make_flv(&dir);

    let (video, audio) = bind_pair().await;
    let media = ProcessMedia {
        inputs: vec![Input {
            address: file.to_string_lossy().into_owned(),
            options: vec!["-re".into()],
        }],
        video: VideoMode::Passthrough,
        audio: None,
    };
    let args = build_args(&media, &targets(&video, &audio));
    let sup = Supervisor::spawn(SupervisorConfig::new(FFMPEG, args, "file1"));
    let seen = receive(&sup, &video, &audio, |s| s.idr.len() >= 2).await;
    sup.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        seen.foreign.is_empty(),
        "unexpected packets: {:?}",
        seen.foreign
    );
    assert_eq!(seen.audio_packets, 0);
    for ts in &seen.idr {
        assert!(
            seen.sps.contains(ts),
            "IDR at {ts} without SPS; sps {:?}",
            seen.sps
        );
    }
}

#[tokio::test]
async fn exiting_child_is_restarted_with_backoff_then_failed() {
    let mut cfg = config("sh", &["-c", "echo boom >&2; exit 3"], "crashy");
    cfg.restart.initial = Duration::from_millis(100);
    cfg.restart.max = Duration::from_millis(400);
    let started = Instant::now();
    let sup = Supervisor::spawn(cfg);
    let mut rx = sup.status();

    let s = wait_status(&mut rx, "first exit", |s| s.last_error.is_some()).await;
    let err = s.last_error.clone().unwrap();
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(
        matches!(s.state, ProcessState::Restarting | ProcessState::Starting),
        "{s:?}"
    );

    // Five runs without media make it Failed (four restarts after the first run).
    let s = wait_status(&mut rx, "Failed", |s| s.state == ProcessState::Failed).await;
    assert!(s.restarts >= 4, "{s:?}");
    assert!(s.last_error.as_deref().unwrap().contains("boom"));

    // Still retried while Failed, and Failed sticks across those retries.
    let s = wait_status(&mut rx, "more restarts", |s| s.restarts >= 7).await;
    assert_eq!(s.state, ProcessState::Failed);
    // Delays double up to the cap: at least 100+200+400+400+400+400+400 ms before restart 7.
    // (A lower bound only: sleeps never end early, but the machine may be slow.)
    assert!(
        started.elapsed() >= Duration::from_millis(2300),
        "{:?}",
        started.elapsed()
    );

    timeout(PATIENCE, sup.stop()).await.expect("stop");
    let s = rx.borrow().clone();
    assert_eq!(s.pid, None);
}

#[tokio::test]
async fn mark_running_moves_starting_to_running_only_with_a_child() {
    let mut cfg = config("sh", &["-c", "sleep 1; echo bye >&2; exit 1"], "marked");
    cfg.restart.initial = Duration::from_secs(600);
    let sup = Supervisor::spawn(cfg);
    let mut rx = sup.status();
    let s = wait_status(&mut rx, "pid", |s| s.pid.is_some()).await;
    assert_eq!(s.state, ProcessState::Starting);
    sup.mark_running();
    assert_eq!(rx.borrow().state, ProcessState::Running);

    let s = wait_status(&mut rx, "exit", |s| s.state == ProcessState::Restarting).await;
    assert!(s.last_error.unwrap().contains("bye"));
    // Late packets from the dead child do not revive it.
    sup.mark_running();
    assert_eq!(rx.borrow().state, ProcessState::Restarting);
    // Stop is prompt even during a 10-minute backoff.
    timeout(PATIENCE, sup.stop())
        .await
        .expect("stop during backoff");
}

#[tokio::test]
async fn stop_kills_a_long_running_child() {
    let sup = Supervisor::spawn(config("sleep", &["1000"], "sleeper"));
    let mut rx = sup.status();
    let pid = wait_status(&mut rx, "pid", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    assert!(alive(pid));
    timeout(PATIENCE, sup.stop()).await.expect("stop");
    assert!(!alive(pid), "child {pid} survived stop");
    assert_eq!(rx.borrow().pid, None);
    // A second stop is harmless.
    timeout(PATIENCE, sup.stop()).await.expect("second stop");
}

#[tokio::test]
async fn dropping_the_supervisor_kills_the_child() {
    let sup = Supervisor::spawn(config("sleep", &["1000"], "dropped"));
    let mut rx = sup.status();
    let pid = wait_status(&mut rx, "pid", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    drop(sup);
    wait_gone(pid).await;
}

#[tokio::test]
async fn missing_binary_is_failed_and_retried() {
    let mut cfg = config("/nonexistent/ffmpeg", &["-version"], "nobin");
    cfg.restart.initial = Duration::from_millis(20);
    cfg.restart.max = Duration::from_millis(50);
    let sup = Supervisor::spawn(cfg);
    let mut rx = sup.status();
    let s = wait_status(&mut rx, "Failed", |s| s.state == ProcessState::Failed).await;
    assert_eq!(
        s.last_error.as_deref(),
        Some("ffmpeg binary '/nonexistent/ffmpeg' not found: install ffmpeg or pass --ffmpeg PATH")
    );
    assert_eq!(s.pid, None);
    let s = wait_status(&mut rx, "retries", |s| s.restarts >= 3).await;
    assert_eq!(s.state, ProcessState::Failed);
    timeout(PATIENCE, sup.stop()).await.expect("stop");
}
