//! The floor under `scripts/bench-peer`'s figures: FFmpeg's RTP fanned out to N local sockets
//! by a relay that does the I/O and nothing else, with the server's own read and send paths
//! (`udp::Batch`, `Outbox`: one `recvmmsg` per burst, one `sendmmsg` per fan-out, GSO runs).
//! No WebRTC, no RTP parsing, one thread; with `--seal`, each datagram is also sealed with
//! AES-128-GCM under the viewer's own key, as SRTP does. Its CPU per datagram is what any
//! server pays on this machine for this traffic; ours is measured against it.
//!
//!   fanout_floor --viewers N [--secs S] [--warmup W] [--seal]
//!
//! Prints `ports VIDEO AUDIO` (aim FFmpeg's two RTP legs there), then, once the window ends,
//! `FLOOR_RESULT {json}`. Run by `scripts/bench-peer` (scenario `floor`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use webrtc_egress::dataplane::media::outbox::Outbox;
use webrtc_egress::dataplane::media::udp::{Batch, MediaSocket};

/// As a Source reads: up to 16 datagrams per call.
const BATCH: usize = 16;
/// SRTP's AES-GCM tag: the datagrams are as long as ours.
const TAG: usize = 16;

/// The relay's options.
#[derive(Parser)]
struct Args {
    /// Viewer sockets to relay to.
    #[arg(long, default_value_t = 10)]
    viewers: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Seconds relayed, from the first datagram, before the measure starts.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seal each datagram with AES-128-GCM under the viewer's own key.
    #[arg(long)]
    seal: bool,
}

/// This thread's CPU time, user and kernel, in seconds: the relay's, not the viewers'. Softirq
/// work of its sends (delivering to the viewers' sockets on loopback) is charged to it, as it
/// is to a server.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// N viewer sockets, each drained by its own task on a thread of its own, as a load generator
/// does; returns their addresses.
fn viewers(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("viewers' runtime");
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for socket in sockets {
                socket.set_nonblocking(true).expect("non-blocking");
                let socket = tokio::net::UdpSocket::from_std(socket).expect("viewer socket");
                tasks.push(tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while socket.recv(&mut buf).await.is_ok() {}
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    Ok(addrs)
}

/// Sends every datagram of a read to every viewer, a viewer's next to each other (as the
/// server's shards queue them): one message per viewer and burst when their sizes allow GSO.
struct Relay {
    viewers: Vec<(SocketAddr, Option<LessSafeKey>)>,
    outbox: Outbox,
    counter: u64,
    datagrams: u64,
    /// Refused by the kernel (a full socket buffer): not counted as sent.
    dropped: u64,
}

impl Relay {
    fn fan_out(&mut self, batch: &Batch, out: &std::net::UdpSocket) {
        for (dest, key) in &self.viewers {
            for datagram in batch.datagrams() {
                let mut buf = self.outbox.buffer();
                buf.extend_from_slice(datagram);
                match key {
                    Some(key) => {
                        self.counter += 1;
                        let mut nonce = [0u8; 12];
                        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
                        let tag = key
                            .seal_in_place_separate_tag(
                                Nonce::assume_unique_for_key(nonce),
                                Aad::from(&datagram[..datagram.len().min(12)]),
                                &mut buf[datagram.len().min(12)..],
                            )
                            .expect("seal");
                        buf.extend_from_slice(tag.as_ref());
                    }
                    None => buf.extend_from_slice(&[0; TAG]),
                }
                self.outbox.push(*dest, buf);
            }
        }
        let sent = self.outbox.send(out);
        self.datagrams += sent.sent as u64;
        self.dropped += sent.dropped as u64;
    }
}

async fn relay(args: Args) -> std::io::Result<()> {
    let video = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20)?;
    let audio = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20)?;
    let out = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 8 << 20)?;
    let viewers = viewers(args.viewers)?;
    let rng = ring::rand::SystemRandom::new();
    let viewers = viewers
        .into_iter()
        .map(|addr| {
            let key = args.seal.then(|| {
                let mut bytes = [0u8; 16];
                ring::rand::SecureRandom::fill(&rng, &mut bytes).expect("random key");
                LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &bytes).expect("key"))
            });
            (addr, key)
        })
        .collect();
    println!(
        "ports {} {}",
        video.local_addr()?.port(),
        audio.local_addr()?.port()
    );
    let mut relay = Relay {
        viewers,
        outbox: Outbox::default(),
        counter: 0,
        datagrams: 0,
        dropped: 0,
    };
    let (mut video_batch, mut audio_batch) = (Batch::new(BATCH), Batch::new(BATCH));
    // The clock starts at the first datagram, so FFmpeg's start-up is not in the window.
    let mut started: Option<Instant> = None;
    let mut window: Option<(Instant, (f64, f64), u64)> = None;
    loop {
        tokio::select! {
            read = video.recv_batch(&mut video_batch) => {
                read?;
                relay.fan_out(&video_batch, out.sender());
            }
            read = audio.recv_batch(&mut audio_batch) => {
                read?;
                relay.fan_out(&audio_batch, out.sender());
            }
        }
        let now = Instant::now();
        let first = *started.get_or_insert(now);
        match window {
            None if now >= first + Duration::from_secs(args.warmup) => {
                window = Some((now, thread_cpu(), relay.datagrams));
            }
            Some((from, cpu, datagrams)) if now >= from + Duration::from_secs(args.secs) => {
                let (user, kernel) = thread_cpu();
                let sent = (relay.datagrams - datagrams) as f64;
                let per = |secs: f64| secs * 1e6 / sent;
                println!(
                    "FLOOR_RESULT {{\"viewers\":{},\"seal\":{},\"secs\":{:.3},\"datagrams\":{},\"us_per_datagram\":{:.3},\"kernel_us_per_datagram\":{:.3},\"dropped\":{}}}",
                    args.viewers,
                    args.seal,
                    (now - from).as_secs_f64(),
                    sent,
                    per(user - cpu.0 + kernel - cpu.1),
                    per(kernel - cpu.1),
                    relay.dropped,
                );
                return Ok(());
            }
            _ => {}
        }
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(relay(args)) {
        eprintln!("fanout_floor: {e}");
        std::process::exit(1);
    }
}
