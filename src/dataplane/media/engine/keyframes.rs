//! Each video track's packets since its latest keyframe, kept once per server (not per shard)
//! so that shards without viewers of a stream need not see its media: a new viewer starts at
//! the latest keyframe rather than waiting for the next one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::super::{MediaPacket, StreamKey, TrackKind};

/// Packets kept per track; a 2 Mbit/s GOP of one second is a few hundred.
const LIMIT: usize = 4096;

#[derive(Default)]
pub(super) struct KeyframeCache {
    tracks: Mutex<Tracks>,
}

#[derive(Default)]
struct Tracks {
    /// Per stream and rendition.
    packets: HashMap<(StreamKey, u8), Vec<Arc<MediaPacket>>>,
    /// Streams torn down: their Sources may still deliver a burst or two before they close.
    forgotten: HashSet<StreamKey>,
}

impl KeyframeCache {
    /// Notes a Source's burst; called before the burst is handed to the shards.
    pub(super) fn note(&self, stream: StreamKey, packets: &[Arc<MediaPacket>]) {
        let mut video = packets
            .iter()
            .filter(|p| p.kind == TrackKind::Video)
            .peekable();
        if video.peek().is_none() {
            return;
        }
        let mut tracks = self.tracks.lock().unwrap();
        if tracks.forgotten.contains(&stream) {
            return;
        }
        for packet in video {
            let cache = tracks
                .packets
                .entry((stream, packet.rendition))
                .or_default();
            if packet.keyframe_start {
                cache.clear();
            }
            if (!cache.is_empty() || packet.keyframe_start) && cache.len() < LIMIT {
                cache.push(packet.clone());
            }
        }
    }

    /// The packets a new viewer of `rendition` starts with.
    pub(super) fn replay(&self, stream: StreamKey, rendition: u8) -> Vec<Arc<MediaPacket>> {
        let tracks = self.tracks.lock().unwrap();
        let packets = tracks.packets.get(&(stream, rendition));
        packets.cloned().unwrap_or_default()
    }

    pub(super) fn forget(&self, stream: StreamKey) {
        let mut tracks = self.tracks.lock().unwrap();
        tracks.packets.retain(|(s, _), _| *s != stream);
        tracks.forgotten.insert(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(seq: u16, keyframe_start: bool) -> Arc<MediaPacket> {
        let mut packet = rtc::rtp::Packet::default();
        packet.header.sequence_number = seq;
        Arc::new(MediaPacket {
            kind: TrackKind::Video,
            keyframe_start,
            rendition: 0,
            packet,
        })
    }

    #[test]
    fn replay_starts_at_the_latest_keyframe() {
        let cache = KeyframeCache::default();
        let s = StreamKey(1);
        cache.note(s, &[video(1, false)]);
        assert!(cache.replay(s, 0).is_empty());
        cache.note(s, &[video(2, true), video(3, false)]);
        cache.note(s, &[video(4, false), video(5, true), video(6, false)]);
        let seqs: Vec<u16> = cache
            .replay(s, 0)
            .iter()
            .map(|p| p.packet.header.sequence_number)
            .collect();
        assert_eq!(seqs, vec![5, 6]);
        cache.forget(s);
        assert!(cache.replay(s, 0).is_empty());
        // A late burst of a torn-down stream is not kept.
        cache.note(s, &[video(7, true)]);
        assert!(cache.replay(s, 0).is_empty());
    }
}
