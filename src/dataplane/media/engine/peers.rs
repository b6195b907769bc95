//! A shard's peers, kept in slots: a stream's fan-out walks its viewers by slot, touching each
//! one's state directly, instead of hashing every viewer's session id on every burst (at 300
//! viewers those lookups, bound by memory rather than by the hash, were 3% of the CPU).

use std::collections::HashMap;

use super::SessionId;

pub(super) struct Peers<T> {
    slots: Vec<Option<T>>,
    /// Slots emptied, for the next peers.
    free: Vec<usize>,
    by_id: HashMap<SessionId, usize>,
}

impl<T> Default for Peers<T> {
    fn default() -> Self {
        Peers {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
        }
    }
}

impl<T> Peers<T> {
    /// Holds `peer` under `id` (replacing one held under it already); returns its slot.
    pub(super) fn insert(&mut self, id: SessionId, peer: T) -> usize {
        if let Some(&slot) = self.by_id.get(&id) {
            self.slots[slot] = Some(peer);
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(peer);
                slot
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// The peer and its slot; the slot is free for another peer from now on.
    pub(super) fn remove(&mut self, id: &str) -> Option<(usize, T)> {
        let slot = self.by_id.remove(id)?;
        let peer = self.slots[slot].take()?;
        self.free.push(slot);
        Some((slot, peer))
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot].as_mut()
    }

    pub(super) fn at(&self, slot: usize) -> Option<&T> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn at_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = &SessionId> {
        self.by_id.keys()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SessionId {
        s.into()
    }

    #[test]
    fn a_freed_slot_serves_the_next_peer_and_lookups_follow_ids() {
        let mut peers = Peers::default();
        let a = peers.insert(id("a"), 1);
        let b = peers.insert(id("b"), 2);
        assert_ne!(a, b);
        assert_eq!(peers.at(b), Some(&2));
        assert_eq!(peers.remove("a"), Some((a, 1)));
        assert_eq!(peers.remove("a"), None);
        assert_eq!(peers.at(a), None);
        assert_eq!(peers.get_mut("a"), None);
        let c = peers.insert(id("c"), 3);
        assert_eq!(c, a, "the freed slot is reused");
        *peers.get_mut("c").unwrap() += 10;
        assert_eq!(peers.at(c), Some(&13));
        // The same id again replaces the peer in its slot.
        assert_eq!(peers.insert(id("b"), 20), b);
        let mut values: Vec<_> = peers.values().copied().collect();
        values.sort();
        assert_eq!(values, vec![13, 20]);
        let mut ids: Vec<_> = peers.ids().map(|i| i.to_string()).collect();
        ids.sort();
        assert_eq!(ids, vec!["b", "c"]);
        peers.remove("b");
        peers.remove("c");
        assert!(peers.is_empty());
        assert_eq!(peers.values_mut().count(), 0);
    }
}
