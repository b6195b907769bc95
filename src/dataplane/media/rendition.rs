//! Which rendition of a ladder one viewer follows, sans-IO: it moves only at a keyframe of the
//! rendition it moves to, and rewrites sequence numbers and timestamps so the viewer sees one
//! continuous track. The choice follows what the viewer's browser reports: receiver-estimated
//! maximum bitrate (REMB) and receiver-report loss, down fast, up slowly.

use std::time::{Duration, Instant};

use super::TrackKind;
use super::codecs::clock_rate;

/// Loss in one receiver report (fraction of 256) that moves a viewer down at once: 10%.
const LOSS_DOWN: u8 = 26;
/// Loss under which a report counts as clean: 2%.
const LOSS_CLEAN: u8 = 5;
/// A REMB under this share of the current rendition's bitrate moves the viewer down.
const REMB_DOWN: f64 = 0.85;
/// A REMB over this share of the next rendition up is needed to move up.
const REMB_UP: f64 = 1.3;
/// How long reports must stay clean (and REMB high, when sent) before a step up.
const CLEAN_FOR_UP: Duration = Duration::from_secs(8);
/// No step up this soon after a step down: the link just said no.
const HOLD_AFTER_DOWN: Duration = Duration::from_secs(10);
/// Between two steps down, so the first can take effect (a keyframe, a report) before another.
const DOWN_SPACING: Duration = Duration::from_secs(1);

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
    /// Receiver-estimated maximum bitrate, bits per second.
    Remb(u64),
    /// `fraction lost` of a receiver report on the video track (0..=255).
    Loss(u8),
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
    remb: Option<u64>,
    clean_since: Option<Instant>,
    last_down: Option<Instant>,
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
            remb: None,
            clean_since: None,
            last_down: None,
        }
    }

    pub fn current(&self) -> u8 {
        self.current
    }

    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Whether a video packet of `rendition` goes to this viewer, and with which sequence
    /// number and timestamp; the switch it completes, if any.
    pub fn admit(
        &mut self,
        rendition: u8,
        keyframe_start: bool,
        seq: u16,
        ts: u32,
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
        Some((out, switched))
    }

    /// Takes one piece of feedback and moves the target: down at once on heavy loss or a low
    /// estimate, up one step only after a clean stretch with room to spare.
    pub fn on_feedback(&mut self, feedback: Feedback, now: Instant) {
        if self.ladder.pinned {
            return;
        }
        let current_kbps = self.ladder.bitrates_kbps[self.current as usize];
        let down = match feedback {
            Feedback::Remb(bps) => {
                self.remb = Some(bps);
                (bps as f64) < REMB_DOWN * f64::from(current_kbps) * 1000.0
            }
            Feedback::Loss(fraction) => {
                if fraction <= LOSS_CLEAN {
                    self.clean_since.get_or_insert(now);
                } else {
                    self.clean_since = None;
                }
                fraction >= LOSS_DOWN
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
            .is_some_and(|t| now.saturating_duration_since(t) < HOLD_AFTER_DOWN);
        let room = self.remb.is_none_or(|bps| {
            bps as f64 >= REMB_UP * f64::from(self.ladder.bitrates_kbps[higher as usize]) * 1000.0
        });
        if clean && room && !held && self.target == self.current {
            self.target = higher;
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
        assert_eq!(f.admit(0, true, 100, 9000, t0), Some(((100, 9000), None)));
        assert_eq!(f.admit(1, true, 7, 55, t0), None, "not following 1");
        f.on_feedback(Feedback::Loss(60), t0);
        // Target 1 now, but only its keyframe moves the viewer; 0 flows until then.
        assert_eq!(f.admit(1, false, 8, 56, t0), None);
        assert_eq!(f.admit(0, false, 101, 9000, t0), Some(((101, 9000), None)));
        let later = t0 + Duration::from_millis(100);
        let (out, switched) = f.admit(1, true, 9, 3000, later).unwrap();
        assert_eq!(out, (102, 9000 + 9000), "continues the sequence, 100 ms on");
        assert_eq!(switched, Some(Switched { from: 0, to: 1 }));
        assert!(!switched.unwrap().is_up(f.ladder()));
        assert_eq!(f.admit(1, false, 10, 3000, later).unwrap().0, (103, 18000));
        assert_eq!(f.admit(0, true, 102, 9100, later), None, "left 0");
    }

    #[test]
    fn down_fast_on_loss_or_a_low_estimate_up_slowly_after_a_clean_stretch() {
        let t0 = Instant::now();
        let mut f = Follower::new(ladder());
        f.on_feedback(Feedback::Remb(1_000_000), t0);
        assert_eq!(f.target, 1, "1 Mbit/s cannot carry 2500 kbit/s");
        f.admit(1, true, 1, 1, t0);
        // A second step waits for the spacing.
        f.on_feedback(Feedback::Loss(100), t0 + Duration::from_millis(500));
        assert_eq!(f.target, 1);
        f.on_feedback(Feedback::Loss(100), t0 + Duration::from_millis(1500));
        assert_eq!(f.target, 2);
        f.admit(2, true, 1, 1, t0 + Duration::from_millis(1600));

        // Clean reports and room: up one step after the hold and the clean stretch, not before.
        let mut at = t0 + Duration::from_secs(2);
        f.on_feedback(Feedback::Remb(5_000_000), at);
        while at < t0 + Duration::from_secs(11) {
            f.on_feedback(Feedback::Loss(0), at);
            at += Duration::from_secs(1);
        }
        assert_eq!(f.target, 2, "held after the last step down");
        f.on_feedback(Feedback::Loss(0), t0 + Duration::from_secs(12));
        assert_eq!(f.target, 1);
        // A low estimate keeps it from climbing further.
        f.admit(1, true, 2, 2, t0 + Duration::from_secs(12));
        f.on_feedback(Feedback::Remb(900_000), t0 + Duration::from_secs(13));
        for s in 14..40 {
            f.on_feedback(Feedback::Loss(0), t0 + Duration::from_secs(s));
        }
        assert_eq!(f.target, 1);
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
        f.on_feedback(Feedback::Remb(100), t0);
        assert_eq!((f.current(), f.target), (2, 2));
        assert!(f.admit(2, false, 5, 5, t0).is_some());
        assert!(f.admit(0, true, 5, 5, t0).is_none());
    }
}
