//! Which shards hold a stream's viewers: a Source's burst wakes only those, and a new viewer
//! joins the shard its stream's other viewers are on until the stream is big enough to spread.
//!
//! Every shard woken per burst costs a cross-thread wake-up and a pass over the burst whether or
//! not it forwards anything, so a stream with a few viewers (the common case) is kept on one.

use std::collections::HashMap;
use std::sync::RwLock;

use super::super::StreamKey;

/// Viewers of one stream kept on one shard before new ones go to the least loaded shard.
const AFFINITY: usize = 32;

#[derive(Default)]
pub(super) struct Fanout {
    /// Per stream, its sessions held by each shard.
    held: RwLock<HashMap<StreamKey, Vec<usize>>>,
}

impl Fanout {
    /// Places a new viewer of `stream` on one of `shards` and counts it there: the shard
    /// holding most of the stream's viewers while it has fewer than [`AFFINITY`], else the
    /// least loaded. One write lock, so two joins cannot both see the same counts.
    pub(super) fn join(&self, stream: StreamKey, shards: usize) -> usize {
        let mut held = self.held.write().unwrap();
        let shard = place(&held, stream, shards);
        held.entry(stream).or_insert_with(|| vec![0; shards])[shard] += 1;
        shard
    }

    pub(super) fn leave(&self, stream: StreamKey, shard: usize) {
        let mut held = self.held.write().unwrap();
        if let Some(counts) = held.get_mut(&stream) {
            counts[shard] = counts[shard].saturating_sub(1);
            if counts.iter().all(|n| *n == 0) {
                held.remove(&stream);
            }
        }
    }

    /// Calls `to` with every shard holding a viewer of `stream`.
    pub(super) fn each_shard(&self, stream: StreamKey, mut to: impl FnMut(usize)) {
        if let Some(counts) = self.held.read().unwrap().get(&stream) {
            for (shard, n) in counts.iter().enumerate() {
                if *n > 0 {
                    to(shard);
                }
            }
        }
    }
}

fn place(held: &HashMap<StreamKey, Vec<usize>>, stream: StreamKey, shards: usize) -> usize {
    if let Some(mine) = held.get(&stream)
        && mine.iter().sum::<usize>() < AFFINITY
        && let Some((shard, _)) = mine
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
    {
        return shard;
    }
    let load = |shard: usize| -> usize { held.values().filter_map(|v| v.get(shard)).sum() };
    (0..shards).min_by_key(|s| load(*s)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards_of(f: &Fanout, stream: StreamKey) -> Vec<usize> {
        let mut v = Vec::new();
        f.each_shard(stream, |s| v.push(s));
        v
    }

    #[test]
    fn a_small_stream_stays_on_one_shard_and_a_big_one_spreads_evenly() {
        let f = Fanout::default();
        let (a, b) = (StreamKey(1), StreamKey(2));
        for _ in 0..10 {
            f.join(a, 2);
        }
        assert_eq!(shards_of(&f, a), vec![0]);
        // Another stream starts on the less loaded shard.
        assert_eq!(f.join(b, 2), 1);
        for _ in 0..289 {
            f.join(b, 2);
        }
        let held = f.held.read().unwrap();
        let load: Vec<usize> = (0..2).map(|s| held.values().map(|v| v[s]).sum()).collect();
        assert!(load[0].abs_diff(load[1]) <= 1, "{load:?}");
    }

    #[test]
    fn a_stream_without_viewers_wakes_no_shard() {
        let f = Fanout::default();
        let a = StreamKey(1);
        assert!(shards_of(&f, a).is_empty());
        let b = StreamKey(2);
        f.join(b, 2);
        // The least loaded shard is 1 now.
        assert_eq!(f.join(a, 2), 1);
        assert_eq!(shards_of(&f, a), vec![1]);
        f.leave(a, 1);
        assert!(shards_of(&f, a).is_empty());
        f.leave(b, 0);
        assert!(f.held.read().unwrap().is_empty());
    }
}
