//! `webrtc-egress bench`: a WHEP load generator.
//!
//! Subscribes N cheap viewers (see [`crate::client`]) to any WHEP endpoint at a bounded rate,
//! holds them for a steady window, and reports joins, delivery, loss and — given the server's
//! pid — the server's CPU time per packet its viewers received and its memory. It prints a
//! human-readable block and one `BENCH_RESULT {json}` line for scripts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{ClientError, MediaTransport, Viewer, ViewerOptions, ViewerStats, subscribe};

/// Error reasons listed in the report.
const SHOWN_ERRORS: usize = 5;
/// How often the join phase checks whether every viewer has media.
const JOIN_POLL: Duration = Duration::from_millis(50);
/// POSTs allowed in flight at once, whatever the ramp rate.
const MAX_IN_FLIGHT: usize = 256;

/// Arguments of `webrtc-egress bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WHEP endpoint to subscribe to (this server's or any other's),
    /// e.g. http://127.0.0.1:8080/whep/cam1. Repeat it to load several streams in one window:
    /// viewers are spread over the URLs in turn.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Number of viewers to subscribe, over all URLs.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// Seconds to hold all viewers once they joined: the steady window measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Subscriptions started per second.
    #[arg(long, default_value_t = 50)]
    pub ramp: u32,
    /// Pid of the server, to report its CPU per forwarded packet and its memory (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Bearer token for the WHEP endpoint.
    #[arg(long, env = "WHEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds a viewer may take from POST to first media packet.
    #[arg(long, default_value_t = 10)]
    pub join_timeout: u64,
    /// Decrypt and inspect media in every viewer (costs the load generator far more CPU).
    #[arg(long)]
    pub inspect_media: bool,
    /// Media transport the viewers offer: `tcp` forces ICE-TCP to the server's HTTP port.
    #[arg(long, value_enum, default_value_t = MediaTransport::Udp)]
    pub transport: MediaTransport,
}

/// Runs one benchmark and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.viewers == 0 || args.ramp == 0 {
        bail!("--viewers and --ramp must be at least 1");
    }
    let clock = ClockTicks::detect();
    let own_start = read_cpu_ticks("self")?.total();
    let run_start = Instant::now();

    let ramp = subscribe_all(&args).await;
    println!(
        "subscribed {}/{} viewers in {:.1}s",
        ramp.viewers.len(),
        args.viewers,
        run_start.elapsed().as_secs_f64()
    );
    wait_for_joins(&ramp.viewers, Duration::from_secs(args.join_timeout)).await;

    let window =
        measure_steady_window(&ramp.viewers, &args, Duration::from_secs(args.duration)).await?;
    let stats: Vec<ViewerStats> = ramp.viewers.iter().map(Viewer::stats).collect();
    let own_end = read_cpu_ticks("self")?.total();
    close_all(ramp.viewers).await;

    let report = Report::build(
        &args,
        &stats,
        &ramp.errors,
        &window,
        &clock,
        own_end.saturating_sub(own_start),
    );
    report.print_human();
    println!("BENCH_RESULT {}", serde_json::to_string(&report)?);
    Ok(())
}

/// Outcome of the ramp: live viewers and the reasons of failed subscriptions.
struct Ramp {
    viewers: Vec<Viewer>,
    errors: Vec<String>,
}

/// Starts `--viewers` subscriptions at `--ramp` per second, bounding the POSTs in flight so a
/// slow server sees a steady arrival rate rather than a burst.
async fn subscribe_all(args: &BenchArgs) -> Ramp {
    let in_flight = Arc::new(Semaphore::new((args.ramp as usize).clamp(1, MAX_IN_FLIGHT)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.ramp)));
    // After a stall on a slow server, keep the rate instead of catching up in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    for url in args.url.iter().cycle().take(args.viewers) {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let opts = ViewerOptions {
            url: url.clone(),
            token: args.token.clone(),
            inspect_media: args.inspect_media,
            transport: args.transport,
            drop_video_every: None,
        };
        tasks.spawn(async move {
            let result = subscribe(opts).await;
            drop(permit);
            result
        });
    }
    let mut ramp = Ramp {
        viewers: Vec::with_capacity(args.viewers),
        errors: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(viewer)) => ramp.viewers.push(viewer),
            Ok(Err(err)) => ramp.errors.push(error_reason(&err)),
            Err(err) => ramp.errors.push(format!("subscribe task: {err}")),
        }
    }
    ramp
}

/// A short reason that groups well: HTTP errors by status and body, the rest by message.
fn error_reason(err: &ClientError) -> String {
    match err {
        ClientError::Http { status, body } => {
            format!(
                "HTTP {status}: {}",
                body.lines().next().unwrap_or("").trim()
            )
        }
        other => other.to_string(),
    }
}

/// Waits until every viewer has media or the join timeout has passed since the last POST.
async fn wait_for_joins(viewers: &[Viewer], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if viewers.iter().all(|v| v.stats().first_packet_at.is_some()) {
            return;
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
}

/// Counters sampled at both ends of the steady window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    packets: u64,
    server_ticks: Option<CpuTicks>,
    own_ticks: u64,
}

/// The steady window: all viewers joined, nothing else changing.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Sample,
    end: Sample,
    server_mem: Option<MemoryKb>,
}

impl Window {
    fn secs(&self) -> f64 {
        (self.end.at - self.start.at).as_secs_f64()
    }

    fn packets(&self) -> u64 {
        self.end.packets.saturating_sub(self.start.packets)
    }

    fn server_ticks(&self) -> Option<CpuTicks> {
        Some(self.end.server_ticks?.since(self.start.server_ticks?))
    }

    fn own_ticks(&self) -> u64 {
        self.end.own_ticks.saturating_sub(self.start.own_ticks)
    }
}

async fn measure_steady_window(
    viewers: &[Viewer],
    args: &BenchArgs,
    duration: Duration,
) -> anyhow::Result<Window> {
    let start = sample(viewers, args.server_pid)?;
    println!(
        "steady window: {}s with {} viewers",
        duration.as_secs(),
        viewers.len()
    );
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = tokio::signal::ctrl_c() => println!("interrupted: ending the window early"),
    }
    let end = sample(viewers, args.server_pid)?;
    let server_mem = match args.server_pid {
        Some(pid) => Some(read_memory(&pid.to_string())?),
        None => None,
    };
    Ok(Window {
        start,
        end,
        server_mem,
    })
}

fn sample(viewers: &[Viewer], server_pid: Option<u32>) -> anyhow::Result<Sample> {
    let server_ticks = match server_pid {
        Some(pid) => Some(read_cpu_ticks(&pid.to_string())?),
        None => None,
    };
    Ok(Sample {
        at: Instant::now(),
        packets: viewers.iter().map(|v| v.stats().media_packets()).sum(),
        server_ticks,
        own_ticks: read_cpu_ticks("self")?.total(),
    })
}

/// Closes every viewer (DELETE, then close_notify) concurrently.
async fn close_all(viewers: Vec<Viewer>) {
    let started = Instant::now();
    let count = viewers.len();
    let mut tasks = JoinSet::new();
    for viewer in viewers {
        tasks.spawn(viewer.close());
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "closed {count} viewers in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Kernel clock ticks per second, for /proc CPU times.
#[derive(Debug, Clone, Copy, Serialize)]
struct ClockTicks {
    per_sec: u64,
    /// True when `getconf CLK_TCK` was unavailable and Linux's usual 100 is assumed.
    assumed: bool,
}

impl ClockTicks {
    fn detect() -> Self {
        let detected = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&n| n > 0);
        match detected {
            Some(per_sec) => Self {
                per_sec,
                assumed: false,
            },
            None => Self {
                per_sec: 100,
                assumed: true,
            },
        }
    }

    fn secs(&self, ticks: u64) -> f64 {
        ticks as f64 / self.per_sec as f64
    }
}

/// CPU time of a process in clock ticks, split as /proc splits it: its own code (and libc's)
/// and the kernel working for it, which on loopback includes delivering what it sends.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTicks {
    user: u64,
    system: u64,
}

impl CpuTicks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    fn since(self, start: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(start.user),
            system: self.system.saturating_sub(start.system),
        }
    }
}

/// utime and stime of a process (`"self"` or a pid).
fn read_cpu_ticks(pid: &str) -> anyhow::Result<CpuTicks> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))
}

/// Fields 14 and 15 of /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so counting starts after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(CpuTicks {
        user: fields.get(11)?.parse().ok()?,
        system: fields.get(12)?.parse().ok()?,
    })
}

/// Peak and current resident memory of a process.
#[derive(Debug, Clone, Copy, Serialize)]
struct MemoryKb {
    vm_hwm_kb: u64,
    vm_rss_kb: u64,
}

fn read_memory(pid: &str) -> anyhow::Result<MemoryKb> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key| parse_status_kb(&status, key).with_context(|| format!("{key} in {path}"));
    Ok(MemoryKb {
        vm_hwm_kb: field("VmHWM")?,
        vm_rss_kb: field("VmRSS")?,
    })
}

/// A `Key:   1234 kB` line of /proc/PID/status.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Nearest-rank percentile of sorted values; `None` for no values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p95 and max of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
struct Distribution {
    count: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    max_ms: Option<f64>,
}

impl Distribution {
    fn of(durations: impl Iterator<Item = Duration>) -> Self {
        let mut ms: Vec<f64> = durations.map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            count: ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p95_ms: percentile(&ms, 95.0),
            max_ms: ms.last().copied(),
        }
    }
}

/// `lost / (received + lost)` in percent; 0 when nothing was expected.
fn loss_pct(received: u64, lost: u64) -> f64 {
    let expected = received + lost;
    if expected == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / expected as f64
    }
}

/// Distinct reasons, most frequent first (ties by text, so output is stable).
fn group_errors(reasons: &[String]) -> Vec<ErrorCount> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for reason in reasons {
        *counts.entry(reason).or_default() += 1;
    }
    let mut grouped: Vec<ErrorCount> = counts
        .into_iter()
        .map(|(reason, count)| ErrorCount {
            reason: reason.to_owned(),
            count,
        })
        .collect();
    grouped.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    grouped
}

#[derive(Debug, Clone, Serialize, PartialEq)]
struct ErrorCount {
    reason: String,
    count: usize,
}

/// The server's figures over the steady window.
#[derive(Debug, Clone, Serialize)]
struct ServerFigures {
    pid: u32,
    cpu_secs: f64,
    cpu_pct: f64,
    /// Server CPU time divided by media packets its viewers received.
    cpu_us_per_packet: Option<f64>,
    /// The kernel's share of it (stime), per packet: the floor no server code removes.
    kernel_us_per_packet: Option<f64>,
    memory: Option<MemoryKb>,
}

/// The load generator's own CPU, to judge whether it limited the result.
#[derive(Debug, Clone, Serialize)]
struct LoadgenFigures {
    cpu_secs_total: f64,
    cpu_secs_steady: f64,
    cpu_pct_steady: f64,
    cpu_us_per_packet: Option<f64>,
}

/// Everything one run reports; serialized as the `BENCH_RESULT` line.
#[derive(Debug, Clone, Serialize)]
struct Report {
    urls: Vec<String>,
    transport: MediaTransport,
    viewers_requested: usize,
    viewers_connected: usize,
    viewers_failed: usize,
    /// Connected but no media packet by the end of the run.
    viewers_without_media: usize,
    /// Sessions the server ended (DTLS alert, or disconnected/failed) during the run.
    viewers_closed_by_server: usize,
    errors: Vec<ErrorCount>,
    video_packets: u64,
    audio_packets: u64,
    lost_packets: u64,
    /// Packets received twice (retransmissions answered more than once); in the counts above.
    duplicate_packets: u64,
    loss_pct: f64,
    join_first_packet: Distribution,
    join_connected: Distribution,
    steady_secs: f64,
    steady_packets: u64,
    steady_packets_per_sec: f64,
    clock_ticks: ClockTicks,
    server: Option<ServerFigures>,
    loadgen: LoadgenFigures,
}

impl Report {
    fn build(
        args: &BenchArgs,
        stats: &[ViewerStats],
        subscribe_errors: &[String],
        window: &Window,
        clock: &ClockTicks,
        own_ticks_total: u64,
    ) -> Self {
        let connected = stats.iter().filter(|s| s.connected_at.is_some()).count();
        let mut reasons = subscribe_errors.to_vec();
        reasons.extend(
            stats
                .iter()
                .filter(|s| s.connected_at.is_none())
                .map(|s| format!("not connected (state {})", s.state)),
        );
        let received: u64 = stats.iter().map(ViewerStats::media_packets).sum();
        let lost: u64 = stats.iter().map(|s| s.lost).sum();
        let steady_secs = window.secs();
        let per_packet =
            |secs: f64| (window.packets() > 0).then(|| secs * 1e6 / window.packets() as f64);
        let server = args
            .server_pid
            .zip(window.server_ticks())
            .map(|(pid, ticks)| {
                let cpu_secs = clock.secs(ticks.total());
                ServerFigures {
                    pid,
                    cpu_secs,
                    cpu_pct: pct_of(cpu_secs, steady_secs),
                    cpu_us_per_packet: per_packet(cpu_secs),
                    kernel_us_per_packet: per_packet(clock.secs(ticks.system)),
                    memory: window.server_mem,
                }
            });
        let own_steady = clock.secs(window.own_ticks());
        Self {
            urls: args.url.clone(),
            transport: args.transport,
            viewers_requested: args.viewers,
            viewers_connected: connected,
            viewers_failed: args.viewers - connected,
            viewers_without_media: stats
                .iter()
                .filter(|s| s.connected_at.is_some() && s.first_packet_at.is_none())
                .count(),
            viewers_closed_by_server: stats.iter().filter(|s| s.closed_by_server).count(),
            errors: group_errors(&reasons),
            video_packets: stats.iter().map(|s| s.video_packets).sum(),
            audio_packets: stats.iter().map(|s| s.audio_packets).sum(),
            lost_packets: lost,
            duplicate_packets: stats.iter().map(|s| s.duplicate_packets).sum(),
            loss_pct: loss_pct(received, lost),
            join_first_packet: Distribution::of(
                stats.iter().filter_map(ViewerStats::time_to_first_packet),
            ),
            join_connected: Distribution::of(
                stats.iter().filter_map(ViewerStats::time_to_connected),
            ),
            steady_secs,
            steady_packets: window.packets(),
            steady_packets_per_sec: rate(window.packets(), steady_secs),
            clock_ticks: *clock,
            server,
            loadgen: LoadgenFigures {
                cpu_secs_total: clock.secs(own_ticks_total),
                cpu_secs_steady: own_steady,
                cpu_pct_steady: pct_of(own_steady, steady_secs),
                cpu_us_per_packet: per_packet(own_steady),
            },
        }
    }

    fn print_human(&self) {
        println!(
            "== WHEP bench: {} (media over {:?})",
            self.urls.join(" "),
            self.transport
        );
        println!(
            "viewers    requested {}  connected {}  failed {}  without media {}  closed by server {}",
            self.viewers_requested,
            self.viewers_connected,
            self.viewers_failed,
            self.viewers_without_media,
            self.viewers_closed_by_server
        );
        for e in self.errors.iter().take(SHOWN_ERRORS) {
            println!("  {:>5} x {}", e.count, e.reason);
        }
        println!(
            "packets    video {}  audio {}  lost {} ({:.3}% loss)  duplicates {}",
            self.video_packets,
            self.audio_packets,
            self.lost_packets,
            self.loss_pct,
            self.duplicate_packets
        );
        println!(
            "join       POST->first packet {}",
            fmt_dist(&self.join_first_packet)
        );
        println!(
            "           POST->connected    {}",
            fmt_dist(&self.join_connected)
        );
        println!(
            "steady     {:.1}s, {} packets, {:.0} packets/s",
            self.steady_secs, self.steady_packets, self.steady_packets_per_sec
        );
        let assumed = if self.clock_ticks.assumed {
            " (assumed)"
        } else {
            ""
        };
        match &self.server {
            Some(s) => {
                println!(
                    "server     pid {}  CPU {:.2}s ({:.1}%)  {} per packet, {} of it in the kernel  [CLK_TCK {}{assumed}]",
                    s.pid,
                    s.cpu_secs,
                    s.cpu_pct,
                    fmt_us(s.cpu_us_per_packet),
                    fmt_us(s.kernel_us_per_packet),
                    self.clock_ticks.per_sec
                );
                if let Some(m) = s.memory {
                    println!(
                        "           peak RSS (VmHWM) {:.1} MiB  current RSS {:.1} MiB",
                        m.vm_hwm_kb as f64 / 1024.0,
                        m.vm_rss_kb as f64 / 1024.0
                    );
                }
            }
            None => println!("server     (no --server-pid: CPU and memory not measured)"),
        }
        println!(
            "loadgen    CPU {:.2}s total, {:.2}s steady ({:.1}%)  {} per packet",
            self.loadgen.cpu_secs_total,
            self.loadgen.cpu_secs_steady,
            self.loadgen.cpu_pct_steady,
            fmt_us(self.loadgen.cpu_us_per_packet)
        );
    }
}

fn pct_of(cpu_secs: f64, wall_secs: f64) -> f64 {
    if wall_secs > 0.0 {
        cpu_secs * 100.0 / wall_secs
    } else {
        0.0
    }
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn fmt_dist(d: &Distribution) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}ms"));
    format!(
        "p50 {}  p95 {}  max {}  (n={})",
        ms(d.p50_ms),
        ms(d.p95_ms),
        ms(d.max_ms),
        d.count
    )
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn distribution_sorts_and_converts_to_ms() {
        let d = Distribution::of([30, 10, 20].into_iter().map(Duration::from_millis));
        assert_eq!(d.count, 3);
        assert_eq!(d.p50_ms, Some(20.0));
        assert_eq!(d.p95_ms, Some(30.0));
        assert_eq!(d.max_ms, Some(30.0));
        assert_eq!(
            Distribution::of(std::iter::empty()),
            Distribution::default()
        );
    }

    #[test]
    fn parses_proc_stat_with_awkward_command_name() {
        // comm with spaces and a parenthesis; utime 1234, stime 56.
        let stat = "4242 (web (rtc) egress) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 56 0 0 \
                    20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(
            parse_cpu_ticks(stat),
            Some(CpuTicks {
                user: 1234,
                system: 56
            })
        );
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_proc_stat() {
        assert!(read_cpu_ticks("self").is_ok());
        let mem = read_memory("self").unwrap();
        assert!(mem.vm_hwm_kb >= mem.vm_rss_kb && mem.vm_rss_kb > 0);
    }

    #[test]
    fn parses_proc_status_kb() {
        let status = "Name:\twebrtc-egress\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\n\
                      VmRSS:\t   40960 kB\nVmRSSX:\t 1 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(51200));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(40960));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn loss_percentage() {
        assert_eq!(loss_pct(0, 0), 0.0);
        assert_eq!(loss_pct(99, 1), 1.0);
        assert_eq!(loss_pct(0, 5), 100.0);
    }

    #[test]
    fn groups_errors_by_frequency() {
        let reasons: Vec<String> = ["HTTP 503: full", "HTTP 409: not live", "HTTP 503: full"]
            .map(str::to_owned)
            .to_vec();
        let grouped = group_errors(&reasons);
        assert_eq!(
            grouped,
            vec![
                ErrorCount {
                    reason: "HTTP 503: full".into(),
                    count: 2
                },
                ErrorCount {
                    reason: "HTTP 409: not live".into(),
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn http_error_reason_uses_first_body_line() {
        let err = ClientError::Http {
            status: 503,
            body: "too many viewers\nretry later".into(),
        };
        assert_eq!(error_reason(&err), "HTTP 503: too many viewers");
    }

    #[test]
    fn clock_ticks_are_positive() {
        let clock = ClockTicks::detect();
        assert!(clock.per_sec > 0);
        assert_eq!(
            ClockTicks {
                per_sec: 100,
                assumed: true
            }
            .secs(250),
            2.5
        );
    }
}
