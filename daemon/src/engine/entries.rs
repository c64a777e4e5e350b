//! The watches the engine runs, each in a numbered slot. The timer, the
//! ready queues and the poll tasks carry the slot's number, not a copy of
//! the watch's id: finding the watch of a fired timer or a finished poll
//! is then an index, not a hash of its id and a comparison of the id's
//! bytes (cache misses among 100,000 watches, on every step of every
//! poll). The id is looked up only for what names a watch from outside:
//! the watch list, "poll now", a failed commit.

use rustc_hash::FxHashMap;

use super::Entry;

/// A watch's place in [`Entries`]. A removed watch's slot is given to the
/// next watch added, so what holds a slot across a reload checks that it
/// still means the same watch (a poll's number, a queued flag).
pub(crate) type Slot = u32;

/// The running watches, by slot and by id.
#[derive(Default)]
pub(crate) struct Entries {
    /// Boxed: a slot costs a pointer, and the vector's growth on a reload
    /// that adds watches moves pointers, not whole entries.
    slots: Vec<Option<Box<Entry>>>,
    by_id: FxHashMap<String, Slot>,
    free: Vec<Slot>,
}

impl Entries {
    /// Room for `n` watches more.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.slots.reserve(n.saturating_sub(self.free.len()));
        self.by_id.reserve(n);
    }

    /// Watches running.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&Entry> {
        self.slots.get(slot as usize)?.as_deref()
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.as_deref_mut()
    }

    pub(crate) fn slot_of(&self, id: &str) -> Option<Slot> {
        self.by_id.get(id).copied()
    }

    /// The watch of `id`, with its slot.
    pub(crate) fn find_mut(&mut self, id: &str) -> Option<(Slot, &mut Entry)> {
        let slot = self.slot_of(id)?;
        Some((slot, self.get_mut(slot)?))
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The ids of the running watches, in no order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    /// Adds a watch under `id` (not running yet) and returns its slot.
    pub(crate) fn insert(&mut self, id: String, entry: Box<Entry>) -> Slot {
        debug_assert!(!self.by_id.contains_key(&id), "watch {id} added twice");
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                let slot = Slot::try_from(self.slots.len())
                    .expect("more than 4 billion watches in one list");
                self.slots.push(Some(entry));
                slot
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// Takes a watch out; its slot goes to the next watch added.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Box<Entry>> {
        let slot = self.by_id.remove(id)?;
        let entry = self.slots[slot as usize].take();
        self.free.push(slot);
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use polld_config::Config;
    use tokio::time::Instant;

    use super::*;

    fn entry(id: &str) -> Box<Entry> {
        let text = format!("[[watch]]\nid = \"{id}\"\nurl = \"http://127.0.0.1:9/\"\n");
        let config = Config::from_str_with_env(Path::new("test.toml"), &text, |_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let watch = config.watches[0].clone();
        let state = super::super::watch::new_state(&watch, 0);
        Box::new(Entry {
            host: super::super::watch::host_of(&state.url),
            moved: None,
            watch,
            state: state.into(),
            key: None,
            due: Instant::now(),
            in_flight: None,
            queued: false,
            generation: 0,
        })
    }

    #[test]
    fn a_removed_watch_slot_goes_to_the_next_watch_added() {
        let mut entries = Entries::default();
        let a = entries.insert("a".into(), entry("a"));
        let b = entries.insert("b".into(), entry("b"));
        assert_ne!(a, b);
        assert_eq!(entries.slot_of("b"), Some(b));
        assert_eq!(entries.get(b).unwrap().state.id, "b");
        assert!(entries.remove("a").is_some());
        assert!(entries.get(a).is_none(), "a removed watch's slot is empty");
        assert!(entries.remove("a").is_none());
        let c = entries.insert("c".into(), entry("c"));
        assert_eq!(c, a, "the free slot is reused");
        assert_eq!(entries.get(c).unwrap().state.id, "c");
        assert_eq!(entries.len(), 2);
        let mut ids: Vec<&str> = entries.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, ["b", "c"]);
    }
}
