//! Which rendition of a ladder one viewer follows, sans-IO: it moves only at a keyframe of the
//! rendition it moves to, and rewrites sequence numbers and timestamps so the viewer sees one
//! continuous track. The choice follows what the viewer's browser reports: the loss in its RTCP
//! receiver reports and its bandwidth estimate (REMB). Down at once on heavy loss or on an
//! estimate that falls well under what we send; up slowly.
//!
//! Going up is a probe: nothing the viewer sends vouches for a rung several times higher (a
//! receiver's REMB estimate stays near 1.5x what it receives). A viewer whose reports stay clean
//! tries the next rung up; if that brings loss or a falling estimate, it comes straight back and
//! waits twice as long before the next try (up to [`MAX_HOLD`]).

use std::time::{Duration, Instant};

use super::TrackKind;
use super::codecs::clock_rate;

/// Loss in one receiver report (fraction of 256) that moves a viewer down at once: 10%.
const LOSS_DOWN: u8 = 26;
/// Loss under which a report counts as clean: 2%.
const LOSS_CLEAN: u8 = 5;
/// How long reports must stay clean before a step up.
const CLEAN_FOR_UP: Duration = Duration::from_secs(8);
/// No step up this soon after a step down: the link just said no. Doubles after a failed probe.
const HOLD_AFTER_DOWN: Duration = Duration::from_secs(15);
const MAX_HOLD: Duration = Duration::from_secs(120);
/// A step down this soon after a step up means the probe failed.
const PROBE_WINDOW: Duration = Duration::from_secs(15);
/// Between two steps down, so the first can take effect (a keyframe, a report) before another.
const DOWN_SPACING: Duration = Duration::from_secs(1);
/// A falling estimate under this share of what we send means congestion: an estimator that
/// detects overuse drops to 0.85x the throughput it receives, so a link that carries what we
/// send stays above it, one that carries less falls below.
const ESTIMATE_DOWN: f64 = 0.75;
/// What we send a viewer is measured over windows of this length (a keyframe is a burst).
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// The ladder of one process as a viewer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    /// Bitrates in ladder order (index = `MediaPacket::rendition`).
    pub bitrates_kbps: Vec<u32>,
    /// The rendition a viewer starts on.
    pub start: u8,
    /// Set by `?rendition=NAME`: the viewer stays on `start`.
    pub pinned: bool,
}

/// What a viewer's browser told us.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Feedback {
    /// `fraction lost` of a receiver report on the video track (0..=255).
    Loss(u8),
    /// A receiver-estimated maximum bitrate naming the video track, in kbit/s.
    Estimate(u32),
}

/// A switch that took effect: from, to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switched {
    pub from: u8,
    pub to: u8,
}

impl Switched {
    pub fn is_up(&self, ladder: &Ladder) -> bool {
        ladder.bitrates_kbps[self.to as usize] > ladder.bitrates_kbps[self.from as usize]
    }
}

pub struct Follower {
    ladder: Ladder,
    current: u8,
    target: u8,
    seq_delta: u16,
    ts_delta: u32,
    /// Last sequence number and timestamp sent, and when.
    last: Option<(u16, u32, Instant)>,
    clean_since: Option<Instant>,
    last_down: Option<Instant>,
    last_up: Option<Instant>,
    hold: Duration,
    /// The previous estimate: only a falling one signals congestion (one still climbing after
    /// a step up is below what we send for a while).
    last_estimate: Option<u32>,
    sent: SentRate,
}

/// The video bitrate we send one viewer, over the last complete [`RATE_WINDOW`].
#[derive(Default)]
struct SentRate {
    bytes: usize,
    since: Option<Instant>,
    kbps: Option<u32>,
}

impl SentRate {
    fn add(&mut self, bytes: usize, now: Instant) {
        let since = *self.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= RATE_WINDOW {
            self.kbps = Some((self.bytes as f64 * 8.0 / 1000.0 / elapsed.as_secs_f64()) as u32);
            self.bytes = 0;
            self.since = Some(now);
        }
        self.bytes += bytes;
    }
}

impl Follower {
    pub fn new(ladder: Ladder) -> Self {
        let start = ladder.start;
        Follower {
            ladder,
            current: start,
            target: start,
            seq_delta: 0,
            ts_delta: 0,
            last: None,
            clean_since: None,
            last_down: None,
            last_up: None,
            hold: HOLD_AFTER_DOWN,
            last_estimate: None,
            sent: SentRate::default(),
        }
    }

    pub fn current(&self) -> u8 {
        self.current
    }

    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Whether a video packet of `rendition` (`bytes` of payload) goes to this viewer, and with
    /// which sequence number and timestamp; the switch it completes, if any.
    pub fn admit(
        &mut self,
        rendition: u8,
        keyframe_start: bool,
        seq: u16,
        ts: u32,
        bytes: usize,
        now: Instant,
    ) -> Option<((u16, u32), Option<Switched>)> {
        let mut switched = None;
        if rendition != self.current {
            if rendition != self.target || !keyframe_start {
                return None;
            }
            // Continue right after what was sent; the timestamp advances by the wall time
            // since then, which is what the viewer's jitter buffer expects of one stream.
            if let Some((last_seq, last_ts, at)) = self.last {
                let rate = f64::from(clock_rate(TrackKind::Video));
                let gap = (now.saturating_duration_since(at).as_secs_f64() * rate) as u32;
                self.seq_delta = last_seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_delta = last_ts.wrapping_add(gap.max(1)).wrapping_sub(ts);
            }
            switched = Some(Switched {
                from: self.current,
                to: rendition,
            });
            self.current = rendition;
        }
        let out = (
            seq.wrapping_add(self.seq_delta),
            ts.wrapping_add(self.ts_delta),
        );
        self.last = Some((out.0, out.1, now));
        self.sent.add(bytes, now);
        Some((out, switched))
    }

    /// Takes one piece of feedback and moves the target: down at once on heavy loss or a
    /// falling estimate well under what we send, up one step only after a clean stretch.
    pub fn on_feedback(&mut self, feedback: Feedback, now: Instant) {
        if self.ladder.pinned {
            return;
        }
        let down = match feedback {
            Feedback::Loss(fraction) => {
                if fraction <= LOSS_CLEAN {
                    self.clean_since.get_or_insert(now);
                } else {
                    self.clean_since = None;
                }
                fraction >= LOSS_DOWN
            }
            Feedback::Estimate(kbps) => {
                let falling = self.last_estimate.is_some_and(|last| kbps < last);
                self.last_estimate = Some(kbps);
                let under = self
                    .sent
                    .kbps
                    .is_some_and(|sent| f64::from(kbps) < ESTIMATE_DOWN * f64::from(sent));
                falling && under
            }
        };
        if down {
            self.clean_since = None;
            let spaced = self
                .last_down
                .is_none_or(|t| now.saturating_duration_since(t) >= DOWN_SPACING);
            if let Some(lower) = self.next(false)
                && spaced
                && self.target == self.current
            {
                let failed_probe = self
                    .last_up
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_WINDOW);
                self.hold = if failed_probe {
                    (self.hold * 2).min(MAX_HOLD)
                } else {
                    HOLD_AFTER_DOWN
                };
                self.target = lower;
                self.last_down = Some(now);
            }
            return;
        }
        let Some(higher) = self.next(true) else {
            return;
        };
        let clean = self
            .clean_since
            .is_some_and(|t| now.saturating_duration_since(t) >= CLEAN_FOR_UP);
        let held = self
            .last_down
            .is_some_and(|t| now.saturating_duration_since(t) < self.hold);
        if clean && !held && self.target == self.current {
            self.target = higher;
            self.last_up = Some(now);
            self.clean_since = Some(now);
        }
    }

    /// The rendition one step above (`up`) or below the current one, by bitrate.
    fn next(&self, up: bool) -> Option<u8> {
        let rates = &self.ladder.bitrates_kbps;
        let current = rates[self.current as usize];
        let candidates = rates
            .iter()
            .enumerate()
            .filter(|(_, r)| if up { **r > current } else { **r < current });
        let chosen = if up {
            candidates.min_by_key(|(_, r)| **r)
        } else {
            candidates.max_by_key(|(_, r)| **r)
        };
        chosen.map(|(i, _)| i as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Ladder {
        Ladder {
            bitrates_kbps: vec![2500, 600, 200],
            start: 0,
            pinned: false,
        }
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_of_the_target_and_keeps_one_sequence() {
        let t0 = Instant::now();
        let mut f = Follower::new(ladder());
        assert_eq!(
            f.admit(0, true, 100, 9000, 1000, t0),
            Some(((100, 9000), None))
        );
        assert_eq!(f.admit(1, true, 7, 55, 1000, t0), None, "not following 1");
        f.on_feedback(Feedback::Loss(60), t0);
        // Target 1 now, but only its keyframe moves the viewer; 0 flows until then.
        assert_eq!(f.admit(1, false, 8, 56, 1000, t0), None);
        assert_eq!(
            f.admit(0, false, 101, 9000, 1000, t0),
            Some(((101, 9000), None))
        );
        let later = t0 + Duration::from_millis(100);
        let (out, switched) = f.admit(1, true, 9, 3000, 1000, later).unwrap();
        assert_eq!(out, (102, 9000 + 9000), "continues the sequence, 100 ms on");
        assert_eq!(switched, Some(Switched { from: 0, to: 1 }));
        assert!(!switched.unwrap().is_up(f.ladder()));
        assert_eq!(
            f.admit(1, false, 10, 3000, 1000, later).unwrap().0,
            (103, 18000)
        );
        assert_eq!(f.admit(0, true, 102, 9100, 1000, later), None, "left 0");
    }

    #[test]
    fn down_fast_on_loss_up_slowly_after_a_clean_stretch() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Follower::new(ladder());
        f.on_feedback(Feedback::Loss(3), t0);
        assert_eq!(f.target, 0, "2% loss is clean");
        f.on_feedback(Feedback::Loss(60), t0);
        assert_eq!(f.target, 1);
        f.admit(1, true, 1, 1, 1000, t0);
        // A second step waits for the spacing.
        f.on_feedback(Feedback::Loss(100), t0 + Duration::from_millis(500));
        assert_eq!(f.target, 1);
        f.on_feedback(Feedback::Loss(100), t0 + Duration::from_millis(1500));
        assert_eq!(f.target, 2);
        f.admit(2, true, 1, 1, 1000, t0 + Duration::from_millis(1600));

        // Clean from 2 s: up one step once 8 s clean and the hold past the last step down
        // (at 1.5 s) is over.
        let up = 2 + HOLD_AFTER_DOWN.as_secs();
        for t in 2..up {
            f.on_feedback(Feedback::Loss(0), t0 + s(t));
            assert_eq!(f.target, 2, "at {t} s");
        }
        f.on_feedback(Feedback::Loss(0), t0 + s(up));
        assert_eq!(f.target, 1);
        f.admit(1, true, 2, 2, 1000, t0 + s(up));
        // The next step up needs its own clean stretch.
        for t in up + 1..up + 8 {
            f.on_feedback(Feedback::Loss(0), t0 + s(t));
            assert_eq!(f.target, 1, "at {t} s");
        }
        f.on_feedback(Feedback::Loss(0), t0 + s(up + 8));
        assert_eq!(f.target, 0);
    }

    #[test]
    fn a_failed_probe_doubles_the_wait_before_the_next() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Follower::new(Ladder {
            start: 1,
            ..ladder()
        });
        // Down to the bottom, then clean: a probe up after the hold.
        f.on_feedback(Feedback::Loss(100), t0);
        f.admit(2, true, 1, 1, 1000, t0);
        let mut probes = Vec::new();
        for t in 1..200 {
            let now = t0 + s(t);
            // The link carries only the bottom rung: every probe brings loss.
            let loss = if f.current() == 2 { 0 } else { 100 };
            f.on_feedback(Feedback::Loss(loss), now);
            if f.target != f.current() {
                if f.target < f.current() {
                    probes.push(t);
                }
                let target = f.target;
                f.admit(target, true, 1, 1, 1000, now);
            }
        }
        let gaps: Vec<u64> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(probes[0], HOLD_AFTER_DOWN.as_secs(), "{probes:?}");
        assert!(
            gaps.windows(2).all(|g| g[1] >= g[0]),
            "waits grow: {gaps:?}"
        );
        assert!(gaps.iter().any(|g| *g >= 40), "{gaps:?}");
    }

    #[test]
    fn a_pinned_viewer_stays_put() {
        let t0 = Instant::now();
        let mut f = Follower::new(Ladder {
            start: 2,
            pinned: true,
            ..ladder()
        });
        f.on_feedback(Feedback::Loss(255), t0);
        assert_eq!((f.current(), f.target), (2, 2));
        assert!(f.admit(2, false, 5, 5, 1000, t0).is_some());
        assert!(f.admit(0, true, 5, 5, 1000, t0).is_none());
    }

    /// Sends `kbps` of video to `f` for `seconds`, 25 keyframe packets a second of the
    /// rendition it targets, from `start`.
    fn send(f: &mut Follower, kbps: usize, start: Instant, seconds: u64) -> Instant {
        let bytes = kbps * 1000 / 8 / 25;
        let mut now = start;
        for _ in 0..seconds * 25 {
            let r = f.target;
            f.admit(r, true, 1, 1, bytes, now);
            now += Duration::from_millis(40);
        }
        now
    }

    #[test]
    fn a_falling_estimate_well_under_what_is_sent_moves_down() {
        let t0 = Instant::now();
        let mut f = Follower::new(ladder());
        let now = send(&mut f, 2500, t0, 5);
        // A climbing estimate under what we send (as after a step up) is no reason to move.
        f.on_feedback(Feedback::Estimate(900), now);
        f.on_feedback(Feedback::Estimate(1000), now);
        assert_eq!(f.target, 0);
        // Overuse on a link that carries what we send: 0.85x of it, above the line.
        f.on_feedback(Feedback::Estimate(3000), now);
        f.on_feedback(Feedback::Estimate(2125), now);
        assert_eq!(f.target, 0, "a link that carries the rate");
        // Overuse on a 1 Mbit/s link: 0.85x of what it carries.
        f.on_feedback(Feedback::Estimate(850), now);
        assert_eq!(f.target, 1);
    }

    #[test]
    fn a_probe_that_drags_the_estimate_down_counts_as_failed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Follower::new(Ladder {
            start: 1,
            ..ladder()
        });
        let mut now = send(&mut f, 600, t0, 3);
        f.on_feedback(Feedback::Estimate(900), now);
        for _ in 0..HOLD_AFTER_DOWN.as_secs() {
            now = send(&mut f, 600, now, 1);
            f.on_feedback(Feedback::Loss(0), now);
        }
        assert_eq!(f.target, 0, "probes up after a clean stretch");
        now = send(&mut f, 2500, now, 3);
        assert_eq!(f.current(), 0);
        f.on_feedback(Feedback::Estimate(1000), now);
        f.on_feedback(Feedback::Estimate(850), now + s(1));
        assert_eq!(f.target, 1, "back down");
        assert_eq!(f.hold, HOLD_AFTER_DOWN * 2, "a failed probe");
    }
}
