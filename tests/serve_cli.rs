//! `serve` refuses what cannot work, at once and with a reason naming the field.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn run_serve(yaml: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "-f"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_nat_ip_exits_naming_the_field() {
    let yaml = common::manifest(
        common::free_udp_port(),
        &[common::Process::test_pattern("cam1")],
    )
    .replace("udpPort:", "nat1To1IPs: [\"300.1.2.3\"]\n    udpPort:");
    let (ok, stderr) = run_serve(&yaml, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("spec.webrtc.nat1To1IPs[0]: 300.1.2.3 is not an IP address"),
        "{stderr}"
    );
}

#[test]
fn duplicate_process_ids_are_refused() {
    let yaml = common::manifest(
        common::free_udp_port(),
        &[
            common::Process::test_pattern("cam1"),
            common::Process::test_pattern("cam1"),
        ],
    );
    let (ok, stderr) = run_serve(&yaml, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(r#"spec.processes[1]: duplicate process id "cam1""#),
        "{stderr}"
    );
}

#[test]
fn missing_ffmpeg_is_a_clear_startup_error() {
    let yaml = common::manifest(
        common::free_udp_port(),
        &[common::Process::test_pattern("cam1")],
    );
    let (ok, stderr) = run_serve(&yaml, &["--ffmpeg", "/nonexistent/ffmpeg"]);
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/ffmpeg") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn crd_subcommand_matches_checked_in_crd() {
    let out = Command::new(common::BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/webrtcegress.yaml"
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        checked_in,
        "run `webrtc-egress crd > crds/webrtcegress.yaml`"
    );
}

#[test]
fn validate_names_unknown_fields_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    let yaml = common::manifest(8189, &[common::Process::test_pattern("cam1")])
        .replace("udpPort:", "nat1to1IPs: [203.0.113.10]\n    udpPort:")
        .replace("      video:", "      videos: {}\n      video:");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(common::BIN)
        .args(["validate", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid WebRTCEgress (2 errors):"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n  spec.webrtc.nat1to1IPs: unknown field; did you mean nat1To1IPs?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n  spec.processes[0].videos: unknown field; did you mean video?"),
        "{stderr}"
    );
}

/// GET on loopback without an async runtime: the body, or None while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

#[test]
fn a_reloaded_file_with_an_unknown_field_is_refused_and_what_runs_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    let log_path = dir.path().join("serve.log");
    let udp_port = common::free_udp_port();
    let one = common::manifest(udp_port, &[common::Process::test_pattern("cam1")]);
    let two = common::manifest(
        udp_port,
        &[
            common::Process::test_pattern("cam1"),
            common::Process::test_pattern("cam2"),
        ],
    );
    std::fs::write(&path, &one).unwrap();
    let http = common::free_tcp_port();
    // serve logs to stdout.
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(common::BIN)
        .args(["serve", "-f"])
        .arg(&path)
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--udp-bind", "127.0.0.1"])
        .env("RUST_LOG", "info,rtc=error,rtc_ice=error")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let ids = || -> Option<Vec<String>> {
        let body: serde_json::Value =
            serde_json::from_str(&http_get(http, "/api/v1/streams")?).ok()?;
        let streams = body["streams"].as_array()?;
        Some(
            streams
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect(),
        )
    };
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("cam1 served", &|| ids() == Some(vec!["cam1".into()]));

    // cam2 added, but with a typo in spec.webrtc: the whole edit is refused and logged.
    let typo = two.replace("udpPort:", "nat1to1IPs: [203.0.113.10]\n    udpPort:");
    std::fs::write(&path, &typo).unwrap();
    wait("the refusal logged", &|| {
        log().contains("manifest edit refused")
    });
    let refusal = log();
    assert!(
        refusal.contains("spec.webrtc.nat1to1IPs: unknown field; did you mean nat1To1IPs?"),
        "{refusal}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        ids(),
        Some(vec!["cam1".to_owned()]),
        "what runs is unchanged"
    );
    assert!(child.try_wait().unwrap().is_none(), "serve keeps running");

    // The same edit without the typo applies.
    std::fs::write(&path, &two).unwrap();
    wait("cam2 added", &|| {
        ids().is_some_and(|ids| ids.contains(&"cam1".into()) && ids.contains(&"cam2".into()))
    });
    common::stop_gracefully(&mut child);
}
