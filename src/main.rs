//! `webrtc-egress`: one binary, one subcommand per role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;

#[derive(Parser)]
#[command(
    name = "webrtc-egress",
    version,
    about = "Live video to sub-second WebRTC (WHEP) playback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the egress subsystem standalone from a WebRTCEgress manifest; edits apply live.
    Serve(serve::ServeArgs),
    /// Reconcile WebRTCEgress resources into egress pods (in-cluster config or KUBECONFIG).
    Operator(webrtc_egress::operator::OperatorArgs),
    /// Run an egress pod's data plane for one WebRTCEgress, fed through the API server.
    Agent(webrtc_egress::agent::AgentArgs),
    /// Print the WebRTCEgress CustomResourceDefinition (YAML).
    Crd,
    /// WHEP load generator: subscribe N viewers to any WHEP URL and print figures.
    Bench(webrtc_egress::bench::BenchArgs),
    /// Check a manifest the way `serve` and the API server would, without running it.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    webrtc_egress::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => {
            print!("{}", webrtc_egress::crd::crd_yaml());
            Ok(())
        }
        Command::Validate { file } => validate(&file),
        Command::Bench(args) => {
            runtime().and_then(|rt| rt.block_on(webrtc_egress::bench::run(args)))
        }
        Command::Agent(args) => {
            runtime().and_then(|rt| rt.block_on(webrtc_egress::agent::run(args)))
        }
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve::run(args))),
        Command::Operator(args) => {
            runtime().and_then(|rt| rt.block_on(webrtc_egress::operator::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `validate -f FILE`: one line per field error, so that every one can be read (and fixed)
/// at once.
fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    use webrtc_egress::crd::{ManifestError, ValidationErrors, load_manifest};
    match load_manifest(file) {
        Ok(m) => {
            println!(
                "{}: valid ({} processes)",
                file.display(),
                m.spec.processes.len()
            );
            Ok(())
        }
        Err(ManifestError::Invalid(ValidationErrors(errors))) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("\n  {e}")).collect();
            let count = match errors.len() {
                1 => "1 error".to_owned(),
                n => format!("{n} errors"),
            };
            anyhow::bail!(
                "{}: invalid WebRTCEgress ({count}):{}",
                file.display(),
                lines.concat()
            )
        }
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
