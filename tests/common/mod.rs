//! Runs the real `webrtc-egress serve` binary against a manifest in a temporary directory.
#![allow(dead_code)]

pub mod cluster;

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_webrtc-egress");

pub struct Process<'a> {
    pub id: &'a str,
    pub video: &'a str,
    pub audio: bool,
}

impl<'a> Process<'a> {
    pub fn test_pattern(id: &'a str) -> Self {
        Process {
            id,
            video: "testsrc2=size=640x360:rate=30",
            audio: true,
        }
    }
}

/// A WebRTCEgress manifest with lavfi processes.
pub fn manifest(udp_port: u16, processes: &[Process<'_>]) -> String {
    let mut yaml = format!(
        "apiVersion: webrtc.dragonfork.io/v1alpha1\nkind: WebRTCEgress\nmetadata:\n  name: test\nspec:\n  webrtc:\n    udpPort: {udp_port}\n    iceServers: [{{urls: [\"stun:stun.example.org:3478\"]}}]\n  processes:\n"
    );
    for p in processes {
        yaml.push_str(&format!(
            "    - id: {}\n      inputs:\n        - address: \"{}\"\n          options: [\"-re\", \"-f\", \"lavfi\"]\n",
            p.id, p.video
        ));
        if p.audio {
            yaml.push_str(
                "        - address: \"sine=frequency=440:sample_rate=48000\"\n          options: [\"-re\", \"-f\", \"lavfi\"]\n      audio: {codec: opus}\n",
            );
        }
        yaml.push_str("      video: {codec: h264, bitrateKbps: 800}\n");
    }
    yaml
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    child: Child,
    pub base: String,
    pub manifest_path: PathBuf,
    pub udp_port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `serve` on loopback with the given processes and extra arguments.
    pub fn start(processes: &[Process<'_>], extra: &[&str]) -> Server {
        let udp_port = free_udp_port();
        Self::start_with(&manifest(udp_port, processes), udp_port, extra)
    }

    pub fn start_with(yaml: &str, udp_port: u16, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let manifest_path = dir.path().join("egress.yaml");
        std::fs::write(&manifest_path, yaml).unwrap();
        let http = free_tcp_port();
        let child = Command::new(BIN)
            .args(["serve", "-f"])
            .arg(&manifest_path)
            .args([
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--udp-bind",
                "127.0.0.1",
            ])
            .args(extra)
            .env("RUST_LOG", "info,rtc=error,rtc_ice=error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn webrtc-egress serve");
        Server {
            child,
            base: format!("http://127.0.0.1:{http}"),
            manifest_path,
            udp_port,
            _dir: dir,
        }
    }

    pub fn whep_url(&self, process: &str) -> String {
        format!("{}/whep/{process}", self.base)
    }

    pub fn write_manifest(&self, yaml: &str) {
        std::fs::write(&self.manifest_path, yaml).unwrap();
    }

    pub async fn streams(&self) -> serde_json::Value {
        let url = format!("{}/api/v1/streams", self.base);
        match reqwest::get(&url).await {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default())
                .unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    pub async fn stream(&self, id: &str) -> Option<serde_json::Value> {
        self.streams().await["streams"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
    }

    /// The value of one series on `/metrics`, named with its labels as printed
    /// (`name{process="cam1"}`); None when absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Waits until the process has media flowing (FFmpeg up, RTP arriving).
    pub async fn wait_live(&self, id: &str) -> serde_json::Value {
        wait_until(Duration::from_secs(60), &format!("{id} live"), || async {
            self.stream(id).await.filter(|s| s["live"] == true)
        })
        .await
    }

    /// SIGKILL: the server gets no chance to clean up.
    pub fn kill_hard(&mut self) {
        sigkill(&mut self.child);
    }

    /// SIGTERM, as Kubernetes stops a pod; does not wait.
    pub fn terminate(&self) {
        sigterm(&self.child);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child);
    }
}

/// SIGTERM first, so the process closes its sessions and stops its FFmpegs itself; SIGKILL
/// if it has not exited after 10 s.
pub fn stop_gracefully(child: &mut Child) {
    sigterm(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(child);
}

/// SIGTERM to a process we spawned; does not wait.
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// SIGKILL, then reap it.
pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `probe` until it yields a value, failing the test with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a viewer has seen an H.264 keyframe with its SPS, and Opus.
pub fn has_av(s: &webrtc_egress::client::ViewerStats) -> bool {
    s.idr_seen && s.sps_seen && s.opus_seen
}

/// Subscribes a viewer to `url` and waits until it plays video and audio.
pub async fn playing_viewer(url: String) -> webrtc_egress::client::Viewer {
    let viewer = webrtc_egress::client::subscribe(webrtc_egress::client::ViewerOptions::new(url))
        .await
        .expect("subscribe");
    viewer
        .wait_for(has_av, Duration::from_secs(20))
        .await
        .expect("H.264 keyframe with SPS, and Opus");
    viewer
}
