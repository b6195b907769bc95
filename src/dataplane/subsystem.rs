//! The egress subsystem: one entry per process, owning its Sources and its FFmpeg, all under one
//! lock, with the teardown hook fired before Sources close (so the WHEP side closes its peers
//! while the stream id still resolves, never feeding them from a closed Source).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::{ProcessSpec, RenditionSpec, VideoMode};
use crate::dataplane::ffmpeg::{self, ProcessState, ProcessStatus, Supervisor, SupervisorConfig};
use crate::dataplane::media::{Engine, MediaPacket, Source, StreamKey, TrackKind};
use crate::dataplane::metrics::{Metrics, ProcessMetrics};

/// Media older than this means the process is not live (WHEP answers 409).
pub const LIVE_WINDOW: Duration = Duration::from_secs(3);
const DEFAULT_VIDEO_KBPS: u32 = 2000;
const DEFAULT_AUDIO_KBPS: u32 = 96;

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Receives `(process id, stream key)` of a stream about to lose its Sources.
pub type TeardownHook = Arc<dyn Fn(String, StreamKey) -> BoxFuture + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SubsystemError {
    #[error("process {id}: cannot open RTP port: {source}")]
    Port { id: String, source: std::io::Error },
    #[error("the subsystem is closed")]
    Closed,
}

/// What the subsystem needs besides the processes.
#[derive(Clone)]
pub struct SubsystemConfig {
    pub ffmpeg: String,
    pub restart: ffmpeg::RestartPolicy,
    /// The data plane's registry: each process gets its own series, removed with it.
    pub metrics: Metrics,
}

impl Default for SubsystemConfig {
    fn default() -> Self {
        SubsystemConfig {
            ffmpeg: "ffmpeg".into(),
            restart: ffmpeg::RestartPolicy::default(),
            metrics: Metrics::default(),
        }
    }
}

/// One running process: its Sources (one per track) and its supervised FFmpeg.
struct Stream {
    key: StreamKey,
    spec: ProcessSpec,
    /// One per video leg: the only one, or each rendition of the ladder in its order.
    video: Vec<Arc<Source>>,
    audio: Option<Arc<Source>>,
    supervisor: Arc<Supervisor>,
    metrics: ProcessMetrics,
}

/// What the WHEP handler gets from `lookup`: the stream's Sources and state.
#[derive(Clone)]
pub struct StreamHandle {
    pub id: String,
    pub key: StreamKey,
    /// The top (or only) video leg: the one liveness is read from.
    pub video: Arc<Source>,
    pub audio: Option<Arc<Source>>,
    /// The ladder in its order (index = `MediaPacket::rendition`); empty without one.
    pub renditions: Vec<RenditionSpec>,
    pub status: watch::Receiver<ProcessStatus>,
    /// `maxViewers` of the process, if it has one.
    pub max_viewers: Option<usize>,
    pub metrics: ProcessMetrics,
}

impl StreamHandle {
    pub fn is_live(&self) -> bool {
        self.video.is_live(LIVE_WINDOW)
    }
}

/// A process as `GET /api/v1/streams` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub id: String,
    pub whep_path: String,
    pub state: ProcessState,
    pub live: bool,
    pub last_error: Option<String>,
    pub restarts: u32,
    /// FFmpeg's pid while it runs.
    pub pid: Option<u32>,
    pub subscribers: usize,
    /// The ladder, if any: what `?rendition=` takes and the player shows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<RenditionSpec>,
    pub video_packets: u64,
    pub audio_packets: Option<u64>,
}

pub struct Subsystem {
    engine: Arc<Engine>,
    config: SubsystemConfig,
    streams: Mutex<HashMap<String, Stream>>,
    teardown: Mutex<Option<TeardownHook>>,
    closed: AtomicBool,
    /// Bumped whenever a process is added or removed or its FFmpeg's status changes, so that
    /// whoever reports the processes' state looks again only then (never per packet).
    changes: Arc<watch::Sender<u64>>,
}

impl Subsystem {
    pub fn new(engine: Arc<Engine>, config: SubsystemConfig) -> Arc<Subsystem> {
        Arc::new(Subsystem {
            engine,
            config,
            streams: Mutex::default(),
            teardown: Mutex::default(),
            closed: AtomicBool::new(false),
            changes: Arc::new(watch::Sender::new(0)),
        })
    }

    /// Installs the one teardown consumer; installing again replaces it.
    pub fn set_teardown_hook(&self, hook: TeardownHook) {
        *self.teardown.lock().unwrap() = Some(hook);
    }

    pub fn lookup(&self, id: &str) -> Option<StreamHandle> {
        let streams = self.streams.lock().unwrap();
        streams.get(id).map(|s| StreamHandle {
            id: id.to_owned(),
            key: s.key,
            video: s.video[0].clone(),
            audio: s.audio.clone(),
            renditions: s.spec.video.renditions.clone(),
            status: s.supervisor.status(),
            max_viewers: s.spec.max_viewers.map(|n| n as usize),
            metrics: s.metrics.clone(),
        })
    }

    /// Fires (the value is a counter) when [`Subsystem::statuses`] may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Each process's supervisor status, sorted by id.
    pub fn statuses(&self) -> Vec<(String, ProcessStatus)> {
        let streams = self.streams.lock().unwrap();
        let mut out: Vec<_> = streams
            .iter()
            .map(|(id, s)| (id.clone(), s.supervisor.status().borrow().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn process_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.streams.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn list(&self) -> Vec<StreamInfo> {
        let streams = self.streams.lock().unwrap();
        let mut out: Vec<StreamInfo> = streams
            .iter()
            .map(|(id, s)| {
                let status = s.supervisor.status().borrow().clone();
                StreamInfo {
                    id: id.clone(),
                    whep_path: s.spec.whep_path(),
                    state: status.state,
                    live: s.video[0].is_live(LIVE_WINDOW),
                    last_error: status.last_error,
                    restarts: status.restarts,
                    pid: status.pid,
                    subscribers: self.engine.subscribers_of(s.key),
                    renditions: s.spec.video.renditions.clone(),
                    video_packets: s.video[0].packets(),
                    audio_packets: s.audio.as_ref().map(|a| a.packets()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Brings the running processes in line with `processes`: removed or changed ones are
    /// stopped (teardown first), new ones started. Processes left unchanged are not touched, and
    /// a new `maxViewers` alone is taken in place: a capacity edit must not cut viewers.
    pub async fn apply(&self, processes: &[ProcessSpec]) -> Result<(), SubsystemError> {
        let stale: Vec<String> = {
            let mut streams = self.streams.lock().unwrap();
            let mut stale = Vec::new();
            for (id, stream) in streams.iter_mut() {
                match processes.iter().find(|p| &p.id == id) {
                    Some(p) if p.same_media(&stream.spec) => {
                        stream.spec.max_viewers = p.max_viewers;
                    }
                    _ => stale.push(id.clone()),
                }
            }
            stale
        };
        for id in stale {
            self.stop_process(&id).await;
        }
        for process in processes {
            let running = self.streams.lock().unwrap().contains_key(&process.id);
            if !running {
                self.start_process(process.clone()).await?;
            }
        }
        Ok(())
    }

    /// Allocates the process's RTP ports, one Source per track, and starts FFmpeg aimed at them.
    pub async fn start_process(&self, spec: ProcessSpec) -> Result<(), SubsystemError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubsystemError::Closed);
        }
        let key = StreamKey::next();
        let metrics = self
            .config
            .metrics
            .process(&spec.id, &rendition_names(&spec));
        let supervisor_slot: Arc<OnceLock<Arc<Supervisor>>> = Arc::default();
        let bind = |kind, rendition| {
            let engine = self.engine.clone();
            let slot = supervisor_slot.clone();
            let dropped = metrics.dropped.clone();
            Source::bind(
                kind,
                rendition,
                Arc::new(move |packet: Arc<MediaPacket>| engine.dispatch(key, packet, &dropped)),
                Arc::new(move || {
                    if let Some(supervisor) = slot.get() {
                        supervisor.mark_running();
                    }
                }),
            )
        };
        let port_error = |source| SubsystemError::Port {
            id: spec.id.clone(),
            source,
        };
        let mut video = Vec::new();
        for rendition in 0..spec.video.renditions.len().max(1) {
            let source = bind(TrackKind::Video, rendition as u8).await;
            video.push(Arc::new(source.map_err(port_error)?));
        }
        let audio = match spec.audio {
            Some(_) => Some(Arc::new(
                bind(TrackKind::Audio, 0).await.map_err(port_error)?,
            )),
            None => None,
        };
        let args = ffmpeg::build_args(
            &ffmpeg_media(&spec),
            &ffmpeg::RtpTargets {
                video: video.iter().map(|v| v.addr()).collect(),
                audio: audio.as_ref().map(|a| a.addr()),
            },
        );
        let supervisor = Arc::new(Supervisor::spawn(SupervisorConfig {
            restart: self.config.restart,
            ..SupervisorConfig::new(&self.config.ffmpeg, args, &spec.id)
        }));
        let _ = supervisor_slot.set(supervisor.clone());
        tokio::spawn(forward_changes(
            supervisor.status(),
            self.changes.clone(),
            [
                self.config.metrics.ffmpeg_restarts.clone(),
                metrics.ffmpeg_restarts.clone(),
            ],
        ));
        info!(process = %spec.id, video = %video[0].addr(), legs = video.len(), "process started");
        let replaced = self.streams.lock().unwrap().insert(
            spec.id.clone(),
            Stream {
                key,
                spec,
                video,
                audio,
                supervisor,
                metrics,
            },
        );
        self.changed();
        if let Some(old) = replaced {
            // Only reachable if two applies race on one id; the old one must still be torn down.
            warn!(process = %old.spec.id, "replaced a running process");
            self.teardown_and_close(old).await;
        }
        Ok(())
    }

    /// Stops one process: the teardown hook runs while the stream is still registered and its
    /// Sources open, so the WHEP side can close its peers before anything feeding them goes away.
    pub async fn stop_process(&self, id: &str) -> bool {
        let key = match self.streams.lock().unwrap().get(id) {
            Some(stream) => stream.key,
            None => return false,
        };
        self.fire_teardown(id, key).await;
        let removed = {
            let mut streams = self.streams.lock().unwrap();
            match streams.get(id) {
                Some(s) if s.key == key => streams.remove(id),
                _ => None,
            }
        };
        if let Some(stream) = removed {
            self.changed();
            let stream_spec = stream.spec.clone();
            close_stream(stream).await;
            self.config
                .metrics
                .forget_process(id, &rendition_names(&stream_spec));
            info!(process = %id, "process stopped");
        }
        true
    }

    async fn teardown_and_close(&self, stream: Stream) {
        self.fire_teardown(&stream.spec.id, stream.key).await;
        close_stream(stream).await;
    }

    /// Runs the installed hook, if any, outside the streams lock (it may call `lookup`).
    async fn fire_teardown(&self, id: &str, key: StreamKey) {
        let hook = self.teardown.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(id.to_owned(), key).await;
        }
    }

    /// Tears down every stream; afterwards lookups find nothing and starts are refused.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for id in self.process_ids() {
            self.stop_process(&id).await;
        }
    }
}

/// Passes each status change of one FFmpeg on to the subsystem's change counter, and its
/// restarts to the restart metrics (all processes', its own); ends with the supervisor.
async fn forward_changes(
    mut status: watch::Receiver<ProcessStatus>,
    changes: Arc<watch::Sender<u64>>,
    restarts: [prometheus_client::metrics::counter::Counter; 2],
) {
    let mut seen = status.borrow().restarts;
    while status.changed().await.is_ok() {
        let now = status.borrow_and_update().restarts;
        for counter in &restarts {
            counter.inc_by(u64::from(now.saturating_sub(seen)));
        }
        seen = now;
        changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn close_stream(stream: Stream) {
    stream.supervisor.stop().await;
    for video in &stream.video {
        video.close().await;
    }
    if let Some(audio) = &stream.audio {
        audio.close().await;
    }
}

fn rendition_names(spec: &ProcessSpec) -> Vec<String> {
    spec.video
        .renditions
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

/// Maps a process to FFmpeg's view of it.
fn ffmpeg_media(spec: &ProcessSpec) -> ffmpeg::ProcessMedia {
    ffmpeg::ProcessMedia {
        inputs: spec
            .inputs
            .iter()
            .map(|i| ffmpeg::Input {
                address: i.address.clone(),
                options: i.options.clone(),
            })
            .collect(),
        video: match spec.video.mode {
            VideoMode::Transcode if !spec.video.renditions.is_empty() => ffmpeg::VideoMode::Ladder(
                spec.video
                    .renditions
                    .iter()
                    .map(|r| ffmpeg::Rung {
                        height: r.height,
                        bitrate_kbps: r.bitrate_kbps,
                    })
                    .collect(),
            ),
            VideoMode::Transcode => ffmpeg::VideoMode::Transcode {
                bitrate_kbps: spec.video.bitrate_kbps.unwrap_or(DEFAULT_VIDEO_KBPS),
            },
            VideoMode::Passthrough => ffmpeg::VideoMode::Passthrough,
        },
        audio: spec.audio.as_ref().map(|a| ffmpeg::AudioOpts {
            bitrate_kbps: a.bitrate_kbps.unwrap_or(DEFAULT_AUDIO_KBPS),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::InputSpec;
    use crate::dataplane::media::{EngineConfig, PeerFactoryConfig};
    use crate::dataplane::metrics::Metrics;
    use std::sync::Mutex as StdMutex;

    async fn subsystem() -> Arc<Subsystem> {
        subsystem_with(SubsystemConfig {
            ffmpeg: "true".into(),
            ..Default::default()
        })
        .await
    }

    async fn subsystem_with(config: SubsystemConfig) -> Arc<Subsystem> {
        let engine = Engine::start(
            EngineConfig {
                bind: "127.0.0.1:0".parse().unwrap(),
                factory: PeerFactoryConfig {
                    advertised_ips: vec!["127.0.0.1".parse().unwrap()],
                    udp_port: 1,
                    ice_servers: vec![],
                    ice_tcp: true,
                },
                shards: 1,
                max_sessions: 10,
            },
            Metrics::default(),
        )
        .await
        .unwrap();
        // `true` exits at once: supervision restarts it, which is all these tests need.
        Subsystem::new(engine, config)
    }

    #[tokio::test]
    async fn every_restart_is_counted_in_total_and_per_process() {
        let metrics = Metrics::default();
        let subsystem = subsystem_with(SubsystemConfig {
            ffmpeg: "true".into(),
            restart: ffmpeg::RestartPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
            metrics: metrics.clone(),
        })
        .await;
        subsystem.start_process(process("a", false)).await.unwrap();
        let restarts = metrics.ffmpeg_restarts.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while restarts.get() < 3 {
            assert!(std::time::Instant::now() < deadline, "restarts not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counted = restarts.get();
        let reported = subsystem.statuses()[0].1.restarts;
        assert!(u64::from(reported) >= counted, "{reported} < {counted}");
        let own = subsystem.lookup("a").unwrap().metrics.ffmpeg_restarts.get();
        assert!(own >= 3, "per-process restarts {own}");
        let text = crate::health::RenderMetrics::render(&metrics);
        assert!(
            text.contains("webrtc_egress_process_ffmpeg_restarts_total{process=\"a\"}"),
            "{text}"
        );
        subsystem.close().await;
        let text = crate::health::RenderMetrics::render(&metrics);
        assert!(
            !text.contains("process=\"a\""),
            "series of a removed process: {text}"
        );
    }

    #[tokio::test]
    async fn a_new_max_viewers_is_taken_without_restarting_the_process() {
        let subsystem = subsystem().await;
        subsystem.apply(&[process("a", false)]).await.unwrap();
        let before = subsystem.lookup("a").unwrap();
        let capped = ProcessSpec {
            max_viewers: Some(2),
            ..process("a", false)
        };
        subsystem.apply(&[capped]).await.unwrap();
        let after = subsystem.lookup("a").unwrap();
        assert_eq!(after.key, before.key, "the process was restarted");
        assert_eq!(after.max_viewers, Some(2));
        subsystem.close().await;
    }

    fn process(id: &str, audio: bool) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            inputs: vec![InputSpec {
                address: "testsrc2".into(),
                options: vec![],
            }],
            audio: audio.then(Default::default),
            ..Default::default()
        }
    }

    /// Records what the hook could see at the moment it fired.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Seen {
        process: String,
        still_listed: bool,
        sources_open: bool,
    }

    fn record_teardowns(subsystem: &Arc<Subsystem>) -> Arc<StdMutex<Vec<Seen>>> {
        let seen: Arc<StdMutex<Vec<Seen>>> = Arc::default();
        let weak = Arc::downgrade(subsystem);
        let log = seen.clone();
        subsystem.set_teardown_hook(Arc::new(move |process: String, key: StreamKey| {
            let stream = weak.upgrade().and_then(|s| s.lookup(&process));
            let entry = Seen {
                process,
                still_listed: stream.as_ref().is_some_and(|s| s.key == key),
                sources_open: stream.as_ref().is_some_and(|s| {
                    !s.video.is_closed() && s.audio.as_ref().is_none_or(|a| !a.is_closed())
                }),
            };
            log.lock().unwrap().push(entry);
            Box::pin(async {})
        }));
        seen
    }

    #[tokio::test]
    async fn teardown_fires_before_sources_close() {
        let subsystem = subsystem().await;
        let seen = record_teardowns(&subsystem);
        subsystem
            .start_process(process("cam1", true))
            .await
            .unwrap();
        let handle = subsystem.lookup("cam1").unwrap();
        assert!(!handle.video.is_closed());

        assert!(subsystem.stop_process("cam1").await);

        assert_eq!(
            *seen.lock().unwrap(),
            vec![Seen {
                process: "cam1".into(),
                still_listed: true,
                sources_open: true
            }]
        );
        assert!(handle.video.is_closed());
        assert!(handle.audio.as_ref().unwrap().is_closed());
        assert!(subsystem.lookup("cam1").is_none());
        assert!(
            !subsystem.stop_process("cam1").await,
            "second stop finds nothing"
        );
    }

    #[tokio::test]
    async fn apply_adds_removes_and_replaces_changed_processes() {
        let subsystem = subsystem().await;
        let seen = record_teardowns(&subsystem);
        let mut processes = vec![process("a", false), process("b", true)];
        subsystem.apply(&processes).await.unwrap();
        assert_eq!(subsystem.process_ids(), vec!["a", "b"]);
        let a_key = subsystem.lookup("a").unwrap().key;

        processes.retain(|p| p.id == "a");
        processes.push(process("c", false));
        subsystem.apply(&processes).await.unwrap();
        assert_eq!(subsystem.process_ids(), vec!["a", "c"]);
        assert_eq!(
            subsystem.lookup("a").unwrap().key,
            a_key,
            "unchanged process untouched"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);

        processes[0].inputs[0].address = "smptebars".into();
        subsystem.apply(&processes).await.unwrap();
        assert_ne!(
            subsystem.lookup("a").unwrap().key,
            a_key,
            "changed process restarted"
        );
        let names: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.process.clone())
            .collect();
        assert_eq!(names, vec!["b", "a"]);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|s| s.still_listed && s.sources_open)
        );
    }

    #[tokio::test]
    async fn close_tears_down_everything_and_refuses_new_processes() {
        let subsystem = subsystem().await;
        let seen = record_teardowns(&subsystem);
        subsystem
            .apply(&[process("a", false), process("b", false)])
            .await
            .unwrap();
        subsystem.close().await;
        assert!(subsystem.lookup("a").is_none() && subsystem.lookup("b").is_none());
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(matches!(
            subsystem.start_process(process("c", false)).await,
            Err(SubsystemError::Closed)
        ));
    }

    #[tokio::test]
    async fn changes_fire_on_processes_and_their_status() {
        let subsystem = subsystem().await;
        let mut changes = subsystem.changes();
        changes.borrow_and_update();
        subsystem.start_process(process("a", false)).await.unwrap();
        assert!(
            changes.has_changed().unwrap(),
            "adding a process is a change"
        );
        // `true` exits at once, so its status moves on by itself: each move is a change.
        changes.borrow_and_update();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("a status change")
            .unwrap();
        let statuses = subsystem.statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].0, "a");
        changes.borrow_and_update();
        subsystem.stop_process("a").await;
        assert!(
            changes.has_changed().unwrap(),
            "removing a process is a change"
        );
        assert!(subsystem.statuses().is_empty());
    }

    #[tokio::test]
    async fn installing_a_hook_again_replaces_it() {
        let subsystem = subsystem().await;
        let first = record_teardowns(&subsystem);
        let second = record_teardowns(&subsystem);
        subsystem.start_process(process("a", false)).await.unwrap();
        subsystem.stop_process("a").await;
        assert!(first.lock().unwrap().is_empty());
        assert_eq!(second.lock().unwrap().len(), 1);
    }
}
