//! FFmpeg: the command line that turns a process's inputs into RTP legs aimed at our local
//! Sources, and the supervisor that keeps that FFmpeg running.
//!
//! FFmpeg exiting on its own is not a deletion: the supervisor restarts it with backoff so
//! subscribers stay connected and resume when media returns.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// RTP payload type of the video leg (dynamic range; the WHEP side re-stamps per subscriber).
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;
/// RTP payload type of the audio leg.
pub const AUDIO_PAYLOAD_TYPE: u8 = 111;
/// Largest RTP packet FFmpeg may send: leaves room for SRTP, UDP/IP and TURN headers under a
/// ~1280-byte path MTU.
pub const RTP_PACKET_SIZE: usize = 1200;

/// Runs that end without ever being marked Running before the state turns Failed.
const FAILED_AFTER_UNHEALTHY_RUNS: u32 = 5;
/// A run this long counts as stable even if no media was seen: the backoff starts over.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// How many trailing stderr lines go into `last_error`: FFmpeg's cause is often a line or two
/// above its final "Error initializing output stream" line.
const STDERR_TAIL_LINES: usize = 3;
/// Longest stderr line kept for `last_error` (the full line is still logged).
const STDERR_LINE_MAX: usize = 300;
/// How long to keep reading stderr after the child exited; a grandchild may hold the pipe.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// One FFmpeg input, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// What follows `-i` (URL, file, lavfi graph).
    pub address: String,
    /// Options placed before this input's `-i` (e.g. `-re -f lavfi`).
    pub options: Vec<String>,
}

/// How the video track is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoMode {
    /// Re-encode to constrained-baseline H.264, which every browser decodes over WebRTC.
    Transcode { bitrate_kbps: u32 },
    /// Forward the input's H.264 as is (FFmpeg fails if the input is not H.264).
    Passthrough,
    /// One encode per rung from the one decode, each its own RTP leg, keyframes at the same
    /// instants in every leg so a viewer can switch between them at any keyframe.
    Ladder(Vec<Rung>),
}

/// One rendition of a ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub height: u32,
    pub bitrate_kbps: u32,
}

/// Opus encoding of the audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioOpts {
    pub bitrate_kbps: u32,
}

/// What FFmpeg should read and produce for one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMedia {
    pub inputs: Vec<Input>,
    pub video: VideoMode,
    /// `None` for a video-only process.
    pub audio: Option<AudioOpts>,
}

/// Local UDP addresses of the process's Sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpTargets {
    /// One per video leg: a single one, or one per rung of a ladder, in ladder order.
    pub video: Vec<SocketAddr>,
    pub audio: Option<SocketAddr>,
}

/// Builds FFmpeg's arguments (without the program name): the inputs in order, then one RTP
/// output per track.
///
/// Each track is its own output with automatic stream selection, so the best video and best
/// audio are picked across all inputs (video and audio may come from different inputs). The
/// audio leg is emitted only when `media.audio` and `targets.audio` are both set.
pub fn build_args(media: &ProcessMedia, targets: &RtpTargets) -> Vec<String> {
    // `-nostats`: some FFmpeg versions print progress lines even at `-loglevel warning`,
    // which would flood the logs we forward.
    let mut args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-nostats",
    ]);
    for input in &media.inputs {
        args.extend(input.options.iter().cloned());
        args.push("-i".into());
        args.push(input.address.clone());
    }

    match &media.video {
        VideoMode::Transcode { bitrate_kbps } => {
            args.extend(strings(&["-an", "-sn", "-dn"]));
            args.extend(x264_args(*bitrate_kbps, "repeat-headers=1"));
            push_rtp_output(&mut args, VIDEO_PAYLOAD_TYPE, targets.video[0]);
        }
        VideoMode::Ladder(rungs) => {
            // Every output reads the same decoded frames (FFmpeg decodes an input stream once)
            // through its own scaler. Keyframes are forced on the same media times in every
            // leg, and scene-cut keyframes are off so that no leg adds its own.
            for (rung, target) in rungs.iter().zip(&targets.video) {
                args.extend(strings(&["-an", "-sn", "-dn"]));
                args.extend(["-vf".into(), format!("scale=-2:{}", rung.height)]);
                args.extend(x264_args(rung.bitrate_kbps, "repeat-headers=1:scenecut=0"));
                push_rtp_output(&mut args, VIDEO_PAYLOAD_TYPE, *target);
            }
        }
        VideoMode::Passthrough => {
            // dump_extra alone corrupts length-prefixed H.264 (RTMP/FLV, MP4): it prepends
            // avcC bytes to each keyframe. Converting to Annex B first makes it insert real
            // SPS/PPS before every keyframe, for inputs that send them only once.
            args.extend(strings(&[
                "-an",
                "-sn",
                "-dn",
                "-c:v",
                "copy",
                "-bsf:v",
                "h264_mp4toannexb,dump_extra=freq=keyframe",
            ]));
            push_rtp_output(&mut args, VIDEO_PAYLOAD_TYPE, targets.video[0]);
        }
    }

    if let (Some(audio), Some(target)) = (media.audio, targets.audio) {
        let rate = format!("{}k", audio.bitrate_kbps);
        args.extend(strings(&[
            "-vn",
            "-sn",
            "-dn",
            "-c:a",
            "libopus",
            "-ar",
            "48000",
            "-ac",
            "2",
            "-b:a",
            &rate,
            "-application",
            "lowdelay",
            "-frame_duration",
            "20",
        ]));
        push_rtp_output(&mut args, AUDIO_PAYLOAD_TYPE, target);
    }
    args
}

/// One H.264 encode at `bitrate_kbps`.
///
/// Constrained baseline (SPS profile bytes 42c01f), no B-frames: what the answer's
/// profile-level-id=42e01f promises. A keyframe every second of media time (not every N frames)
/// bounds join time whatever the input frame rate, and repeat-headers puts SPS/PPS before every
/// IDR so a joiner can decode it. A one-second VBV keeps the bitrate smooth for low latency.
fn x264_args(bitrate_kbps: u32, x264_params: &str) -> Vec<String> {
    let rate = format!("{bitrate_kbps}k");
    strings(&[
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-level:v",
        "3.1",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-bf",
        "0",
        "-b:v",
        &rate,
        "-maxrate",
        &rate,
        "-bufsize",
        &rate,
        "-force_key_frames",
        "expr:gte(t,n_forced*1)",
        "-x264-params",
        x264_params,
    ])
}

/// Ends an output leg: RTP to `target`.
///
/// `skip_rtcp`: FFmpeg sends RTCP to port+1, which is the other track's Source when the
/// ports are adjacent; we generate our own reports towards subscribers anyway.
fn push_rtp_output(args: &mut Vec<String>, payload_type: u8, target: SocketAddr) {
    args.extend([
        "-payload_type".into(),
        payload_type.to_string(),
        "-rtpflags".into(),
        "skip_rtcp".into(),
        "-f".into(),
        "rtp".into(),
        format!("rtp://{target}?pkt_size={RTP_PACKET_SIZE}"),
    ]);
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Why FFmpeg could not be run.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("ffmpeg binary '{bin}' not found: install ffmpeg or pass --ffmpeg PATH")]
    NotFound { bin: String },
    #[error("cannot run ffmpeg binary '{bin}': {error}")]
    Spawn { bin: String, error: io::Error },
    #[error("'{bin} -version' failed: {detail}")]
    Version { bin: String, detail: String },
}

fn spawn_error(bin: &str, error: io::Error) -> FfmpegError {
    if error.kind() == io::ErrorKind::NotFound {
        FfmpegError::NotFound {
            bin: bin.to_owned(),
        }
    } else {
        FfmpegError::Spawn {
            bin: bin.to_owned(),
            error,
        }
    }
}

/// Runs `bin -version` and returns its first line, so a missing or broken FFmpeg is reported
/// at startup rather than as a stream that never goes live. Blocks while FFmpeg runs.
pub fn check_ffmpeg(bin: &str) -> Result<String, FfmpegError> {
    let out = std::process::Command::new(bin)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(bin, e))?;
    let first_line = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    if !out.status.success() {
        let detail = match first_line(&out.stderr) {
            Some(line) => format!("{}: {line}", out.status),
            None => out.status.to_string(),
        };
        return Err(FfmpegError::Version {
            bin: bin.to_owned(),
            detail,
        });
    }
    first_line(&out.stdout).ok_or_else(|| FfmpegError::Version {
        bin: bin.to_owned(),
        detail: "no version output".to_owned(),
    })
}

/// Lifecycle of a supervised FFmpeg; the reports agents publish carry it as is.
pub use crate::reports::ProcessState;
use crate::reports::truncate;

/// What the supervisor knows about its FFmpeg, published on a watch channel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub state: ProcessState,
    /// Why the last run ended or could not start: exit status and FFmpeg's last stderr lines.
    /// Kept after recovery, as history.
    pub last_error: Option<String>,
    /// The gist of `last_error` for people and the pod's report: FFmpeg's own last stderr line
    /// (e.g. `rtmp://origin/live: Connection refused`), with the per-run memory addresses
    /// FFmpeg prints (`[tcp @ 0x55d…]`) taken out so that a crash loop repeats the same text;
    /// the exit status when FFmpeg printed nothing; or why it could not be spawned.
    pub reason: Option<String>,
    /// Starts after the first one.
    pub restarts: u32,
    /// Set while a child is alive.
    pub pid: Option<u32>,
}

/// How fast a process that exits on its own is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay before a restart; doubled after each unhealthy run.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

/// What to run and how fast to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    pub program: String,
    pub args: Vec<String>,
    /// Used in logs.
    pub process_id: String,
    pub restart: RestartPolicy,
}

impl SupervisorConfig {
    /// A config with the default restart policy.
    pub fn new(
        program: impl Into<String>,
        args: Vec<String>,
        process_id: impl Into<String>,
    ) -> Self {
        Self {
            program: program.into(),
            args,
            process_id: process_id.into(),
            restart: RestartPolicy::default(),
        }
    }
}

/// Keeps one FFmpeg running: restarts it with backoff when it exits, forwards its stderr to
/// the log, and publishes a [`ProcessStatus`].
///
/// Dropping it kills the child (as does [`Supervisor::stop`], which also waits).
pub struct Supervisor {
    process_id: String,
    status: Arc<watch::Sender<ProcessStatus>>,
    /// `true`, or dropped, tells the task to kill the child and end.
    stop_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts supervising on the current tokio runtime (panics outside one).
    pub fn spawn(cfg: SupervisorConfig) -> Supervisor {
        let status = Arc::new(watch::Sender::new(ProcessStatus::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let process_id = cfg.process_id.clone();
        let task = tokio::spawn(supervise(cfg, status.clone(), stop_rx));
        Supervisor {
            process_id,
            status,
            stop_tx,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    pub fn status(&self) -> watch::Receiver<ProcessStatus> {
        self.status.subscribe()
    }

    /// Records that this run produces media (Starting or Failed → Running), which also makes
    /// the next exit restart quickly. Cheap once Running, so it may be called per packet.
    pub fn mark_running(&self) {
        let needed = {
            let s = self.status.borrow();
            s.pid.is_some() && matches!(s.state, ProcessState::Starting | ProcessState::Failed)
        };
        if needed {
            self.status.send_if_modified(|s| {
                let change = s.pid.is_some()
                    && matches!(s.state, ProcessState::Starting | ProcessState::Failed);
                if change {
                    s.state = ProcessState::Running;
                }
                change
            });
        }
    }

    /// Kills the child and ends supervision, returning once the child is reaped. Prompt even
    /// during a backoff delay; calling it again is harmless. The status keeps its last state,
    /// with `pid: None`.
    pub async fn stop(&self) {
        self.stop_tx.send_replace(true);
        let mut task = self.task.lock().await;
        if let Some(handle) = task.as_mut() {
            // A panic in the task already dropped (and so killed) the child.
            let _ = handle.await;
            *task = None;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The task kills and reaps the child; should the runtime be gone, dropping the task
        // drops the child, which is spawned with kill_on_drop.
        self.stop_tx.send_replace(true);
    }
}

/// Exponential restart delay, reset after a healthy run.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// Delay before the next start, given whether the run that just ended was healthy.
    fn delay(&mut self, healthy: bool) -> Duration {
        if healthy {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

enum RunEnd {
    Stopped,
    SpawnFailed(FfmpegError),
    Exited {
        summary: String,
        reason: String,
        ran_for: Duration,
    },
}

async fn supervise(
    cfg: SupervisorConfig,
    status: Arc<watch::Sender<ProcessStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let id = cfg.process_id.as_str();
    let mut backoff = Backoff::new(cfg.restart.initial, cfg.restart.max);
    let mut unhealthy_runs = 0u32;
    let mut restarts = 0u32;
    loop {
        let healthy = match run_once(&cfg, &status, &mut stop, restarts).await {
            RunEnd::Stopped => break,
            RunEnd::SpawnFailed(err) => {
                unhealthy_runs += 1;
                let msg = err.to_string();
                tracing::error!(process = %id, "{msg}");
                status.send_modify(|s| {
                    s.state = ProcessState::Failed;
                    s.reason = Some(msg.clone());
                    s.last_error = Some(msg);
                    s.pid = None;
                });
                false
            }
            RunEnd::Exited {
                summary,
                reason,
                ran_for,
            } => {
                let healthy =
                    status.borrow().state == ProcessState::Running || ran_for >= STABLE_RUN;
                unhealthy_runs = if healthy { 0 } else { unhealthy_runs + 1 };
                tracing::warn!(process = %id, "ffmpeg exited after {ran_for:.1?}: {summary}");
                status.send_modify(|s| {
                    s.state = if unhealthy_runs >= FAILED_AFTER_UNHEALTHY_RUNS {
                        ProcessState::Failed
                    } else {
                        ProcessState::Restarting
                    };
                    s.last_error = Some(summary);
                    s.reason = Some(reason);
                    s.pid = None;
                });
                healthy
            }
        };
        let delay = backoff.delay(healthy);
        tracing::info!(process = %id, "restarting ffmpeg in {delay:.1?}");
        tokio::select! {
            _ = stop_requested(&mut stop) => break,
            _ = tokio::time::sleep(delay) => {}
        }
        restarts = restarts.saturating_add(1);
    }
    status.send_modify(|s| s.pid = None);
}

/// One child's life, from spawn to exit (or to a stop request, which kills it).
async fn run_once(
    cfg: &SupervisorConfig,
    status: &watch::Sender<ProcessStatus>,
    stop: &mut watch::Receiver<bool>,
    restarts: u32,
) -> RunEnd {
    if *stop.borrow() {
        return RunEnd::Stopped;
    }
    let mut command = Command::new(&cfg.program);
    command
        .args(&cfg.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let spawned = command.spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            status.send_modify(|s| s.restarts = restarts);
            return RunEnd::SpawnFailed(spawn_error(&cfg.program, e));
        }
    };
    let started = Instant::now();
    let pid = child.id();
    status.send_modify(|s| {
        // Failed sticks until media flows, so a crash loop does not flap Failed/Starting.
        if s.state != ProcessState::Failed {
            s.state = ProcessState::Starting;
        }
        s.restarts = restarts;
        s.pid = pid;
    });
    tracing::info!(process = %cfg.process_id, pid, "ffmpeg started");

    let mut stderr = StderrLog::new(&cfg.process_id, child.stderr.take());
    let exit = loop {
        tokio::select! {
            _ = stop_requested(stop) => {
                // kill() also reaps, so the child is gone when stop() returns.
                let _ = child.kill().await;
                return RunEnd::Stopped;
            }
            exit = child.wait() => break exit,
            _ = stderr.read_line() => {}
        }
    };
    let ran_for = started.elapsed();
    tokio::select! {
        _ = stop_requested(stop) => return RunEnd::Stopped,
        _ = tokio::time::timeout(STDERR_DRAIN, stderr.drain()) => {}
    }

    let mut summary = match exit {
        Ok(exit) => exit.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    let reason = stderr
        .tail
        .back()
        .map_or_else(|| summary.clone(), |line| without_addresses(line));
    if !stderr.tail.is_empty() {
        summary.push_str(": ");
        summary.push_str(&Vec::from(stderr.tail).join(" | "));
    }
    RunEnd::Exited {
        summary,
        reason,
        ran_for,
    }
}

/// Resolves once stop was requested or the Supervisor dropped.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Forwards a child's stderr to the log and keeps its last lines for `last_error`.
struct StderrLog<'a> {
    process_id: &'a str,
    reader: Option<BufReader<ChildStderr>>,
    /// Persists across reads so a read cancelled by `select!` loses nothing.
    buf: Vec<u8>,
    tail: VecDeque<String>,
}

impl<'a> StderrLog<'a> {
    fn new(process_id: &'a str, stderr: Option<ChildStderr>) -> Self {
        Self {
            process_id,
            reader: stderr.map(BufReader::new),
            buf: Vec::new(),
            tail: VecDeque::with_capacity(STDERR_TAIL_LINES),
        }
    }

    /// Reads and records one line; returns false at end of stream (after which it pends
    /// forever, so it can stay in a `select!`).
    async fn read_line(&mut self) -> bool {
        let Some(reader) = self.reader.as_mut() else {
            return std::future::pending().await;
        };
        match reader.read_until(b'\n', &mut self.buf).await {
            Ok(0) | Err(_) => {
                self.reader = None;
                false
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                // FFmpeg may use \r for in-place updates.
                for line in text.split(['\r', '\n']).map(str::trim) {
                    self.record(line);
                }
                true
            }
        }
    }

    async fn drain(&mut self) {
        while self.reader.is_some() && self.read_line().await {}
    }

    fn record(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        // FFmpeg runs at -loglevel warning, so whatever it prints is a warning or an error.
        tracing::warn!(process = %self.process_id, "{line}");
        if self.tail.len() == STDERR_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail
            .push_back(truncate(line, STDERR_LINE_MAX).to_owned());
    }
}

/// `[tcp @ 0x55dab76879c0] Connection refused` → `[tcp] Connection refused`: FFmpeg names the
/// context of a message by its address, which differs on every run.
fn without_addresses(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(" @ 0x") {
        let after = &rest[at + " @ 0x".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        out.push_str(&rest[..at]);
        if digits == 0 {
            out.push_str(" @ 0x");
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// kill_on_drop does not run when this process is SIGKILLed or crashes; the kernel's
/// parent-death signal makes sure no FFmpeg outlives the egress process that started it.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lavfi(address: &str) -> Input {
        Input {
            address: address.to_owned(),
            options: strings(&["-re", "-f", "lavfi"]),
        }
    }

    fn media(video: VideoMode, audio: Option<AudioOpts>) -> ProcessMedia {
        ProcessMedia {
            inputs: vec![
                lavfi("testsrc2=size=640x360:rate=30"),
                lavfi("sine=frequency=440:sample_rate=48000"),
            ],
            video,
            audio,
        }
    }

    fn targets(audio: bool) -> RtpTargets {
        RtpTargets {
            video: vec!["127.0.0.1:5000".parse().unwrap()],
            audio: audio.then(|| "127.0.0.1:5002".parse().unwrap()),
        }
    }

    fn line(args: &[String]) -> String {
        args.join(" ")
    }

    #[test]
    fn transcode_with_audio() {
        let args = build_args(
            &media(
                VideoMode::Transcode { bitrate_kbps: 1500 },
                Some(AudioOpts { bitrate_kbps: 64 }),
            ),
            &targets(true),
        );
        assert_eq!(
            line(&args),
            "-hide_banner -nostdin -loglevel warning -nostats \
             -re -f lavfi -i testsrc2=size=640x360:rate=30 \
             -re -f lavfi -i sine=frequency=440:sample_rate=48000 \
             -an -sn -dn -c:v libx264 -profile:v baseline -level:v 3.1 -pix_fmt yuv420p \
             -preset veryfast -tune zerolatency -bf 0 -b:v 1500k -maxrate 1500k -bufsize 1500k \
             -force_key_frames expr:gte(t,n_forced*1) -x264-params repeat-headers=1 \
             -payload_type 96 -rtpflags skip_rtcp -f rtp rtp://127.0.0.1:5000?pkt_size=1200 \
             -vn -sn -dn -c:a libopus -ar 48000 -ac 2 -b:a 64k -application lowdelay \
             -frame_duration 20 -payload_type 111 -rtpflags skip_rtcp -f rtp \
             rtp://127.0.0.1:5002?pkt_size=1200"
        );
        // The lavfi expression is one argument, not split by a shell.
        assert!(args.contains(&"expr:gte(t,n_forced*1)".to_owned()));
    }

    #[test]
    fn a_ladder_is_one_keyframe_aligned_encode_per_rung_from_one_decode() {
        let rungs = vec![
            Rung {
                height: 720,
                bitrate_kbps: 2500,
            },
            Rung {
                height: 360,
                bitrate_kbps: 600,
            },
        ];
        let targets = RtpTargets {
            video: vec![
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:5004".parse().unwrap(),
            ],
            audio: None,
        };
        let args = line(&build_args(
            &media(VideoMode::Ladder(rungs), None),
            &targets,
        ));
        // Inputs appear once (one decode); each leg scales, encodes and goes to its own port.
        assert_eq!(args.matches(" -i ").count(), 2, "{args}");
        let legs: Vec<&str> = args.split("-an -sn -dn ").skip(1).collect();
        assert_eq!(legs.len(), 2, "{args}");
        for (leg, (height, rate, port)) in legs.iter().zip([(720, 2500, 5000), (360, 600, 5004)]) {
            assert!(
                leg.starts_with(&format!("-vf scale=-2:{height} -c:v libx264")),
                "{leg}"
            );
            assert!(leg.contains(&format!("-b:v {rate}k")), "{leg}");
            assert!(
                leg.contains("-force_key_frames expr:gte(t,n_forced*1)"),
                "{leg}"
            );
            assert!(leg.contains("repeat-headers=1:scenecut=0"), "{leg}");
            assert!(leg.contains(&format!("rtp://127.0.0.1:{port}?")), "{leg}");
        }
    }

    #[test]
    fn passthrough_video_only() {
        let args = build_args(&media(VideoMode::Passthrough, None), &targets(false));
        let l = line(&args);
        assert!(l.ends_with(
            "-an -sn -dn -c:v copy -bsf:v h264_mp4toannexb,dump_extra=freq=keyframe \
             -payload_type 96 -rtpflags skip_rtcp -f rtp rtp://127.0.0.1:5000?pkt_size=1200"
        ));
        assert!(!l.contains("libx264"));
        assert!(!l.contains("libopus"));
        assert_eq!(args.iter().filter(|a| *a == "-f").count(), 3); // 2 inputs + 1 output
    }

    #[test]
    fn audio_leg_needs_both_options_and_target() {
        let with_opts_no_target = build_args(
            &media(VideoMode::Passthrough, Some(AudioOpts { bitrate_kbps: 96 })),
            &targets(false),
        );
        assert!(!line(&with_opts_no_target).contains("libopus"));
        let with_target_no_opts = build_args(&media(VideoMode::Passthrough, None), &targets(true));
        assert!(!line(&with_target_no_opts).contains("5002"));
        let both = build_args(
            &media(VideoMode::Passthrough, Some(AudioOpts { bitrate_kbps: 96 })),
            &targets(true),
        );
        assert!(line(&both).contains("-b:a 96k"));
        assert!(line(&both).ends_with(
            "-payload_type 111 -rtpflags skip_rtcp -f rtp rtp://127.0.0.1:5002?pkt_size=1200"
        ));
    }

    #[test]
    fn inputs_keep_order_and_options() {
        let m = ProcessMedia {
            inputs: vec![
                Input {
                    address: "rtmp://origin/live/a".into(),
                    options: strings(&["-rw_timeout", "5000000"]),
                },
                Input {
                    address: "file.mp4".into(),
                    options: vec![],
                },
                Input {
                    address: "srt://host:9000?mode=caller".into(),
                    options: strings(&["-f", "mpegts", "-analyzeduration", "1M"]),
                },
            ],
            video: VideoMode::Passthrough,
            audio: None,
        };
        let args = build_args(&m, &targets(false));
        assert_eq!(
            args[5..20],
            strings(&[
                "-rw_timeout",
                "5000000",
                "-i",
                "rtmp://origin/live/a",
                "-i",
                "file.mp4",
                "-f",
                "mpegts",
                "-analyzeduration",
                "1M",
                "-i",
                "srt://host:9000?mode=caller",
                "-an",
                "-sn",
                "-dn",
            ])[..]
        );
    }

    #[test]
    fn ipv6_target() {
        let t = RtpTargets {
            video: vec!["[::1]:6000".parse().unwrap()],
            audio: None,
        };
        let args = build_args(&media(VideoMode::Passthrough, None), &t);
        assert_eq!(args.last().unwrap(), "rtp://[::1]:6000?pkt_size=1200");
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(3000));
        let seq: Vec<_> = (0..5).map(|_| b.delay(false)).collect();
        assert_eq!(seq, [ms(500), ms(1000), ms(2000), ms(3000), ms(3000)]);
        assert_eq!(b.delay(true), ms(500));
        assert_eq!(b.delay(false), ms(1000));
        // An initial above the cap is capped.
        assert_eq!(Backoff::new(ms(50), ms(10)).delay(false), ms(10));
    }

    #[test]
    fn state_serializes_as_name() {
        assert_eq!(ProcessState::Restarting.to_string(), "Restarting");
        let s = ProcessStatus {
            state: ProcessState::Failed,
            last_error: Some("exit status: 1: boom".into()),
            reason: Some("boom".into()),
            restarts: 2,
            pid: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"state":"Failed","lastError":"exit status: 1: boom","reason":"boom","restarts":2,"pid":null}"#
        );
    }

    #[test]
    fn supervisor_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Supervisor>();
    }

    #[test]
    fn addresses_are_taken_out_of_ffmpeg_lines() {
        assert_eq!(
            without_addresses(
                "[tcp @ 0x55dab76879c0] Connection to tcp://h:1 failed: Connection refused"
            ),
            "[tcp] Connection to tcp://h:1 failed: Connection refused"
        );
        assert_eq!(
            without_addresses("[in#0 @ 0x1] a [b @ 0xabc] c"),
            "[in#0] a [b] c"
        );
        assert_eq!(
            without_addresses("mail me @ 0xnothing"),
            "mail me @ 0xnothing"
        );
        assert_eq!(
            without_addresses("x.mp4: No such file"),
            "x.mp4: No such file"
        );
    }

    #[test]
    fn missing_binary_error_is_clear() {
        let err = check_ffmpeg("/nonexistent/ffmpeg").unwrap_err();
        assert!(matches!(err, FfmpegError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            "ffmpeg binary '/nonexistent/ffmpeg' not found: install ffmpeg or pass --ffmpeg PATH"
        );
    }
}
