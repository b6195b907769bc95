//! `serve` refuses what cannot work, at once and with a reason naming the field.

mod common;

use std::process::Command;

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
