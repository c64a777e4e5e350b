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
/// next watch added: what can outlive a watch holds more than its slot (a
/// poll's [`Completion`](super::Completion) its poll's number, the ready
/// queues a [`Ticket`]); its timer is removed with it.
pub(crate) type Slot = u32;

/// A due watch as the ready queues hold it: its slot, and which of the
/// watches that slot has held. A ticket of a removed watch is void, so the
/// watch added into its slot cannot take its place in the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) slot: Slot,
    pub(crate) tenant: u32,
}

/// A slot and the count of the watches it has held.
#[derive(Default)]
struct Place {
    tenant: u32,
    /// Boxed: a slot costs a pointer and a count, and the vector's growth
    /// on a reload that adds watches moves those, not whole entries.
    entry: Option<Box<Entry>>,
}

/// The running watches, by slot and by id.
#[derive(Default)]
pub(crate) struct Entries {
    slots: Vec<Place>,
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

    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_deref_mut()
    }

    /// The ticket of the watch now in `slot` (one the engine holds).
    pub(crate) fn ticket(&self, slot: Slot) -> Ticket {
        Ticket {
            slot,
            tenant: self.slots[slot as usize].tenant,
        }
    }

    /// The watch a ticket was given to, if it still runs.
    pub(crate) fn by_ticket(&self, ticket: Ticket) -> Option<&Entry> {
        let place = self.slots.get(ticket.slot as usize)?;
        place
            .entry
            .as_deref()
            .filter(|_| place.tenant == ticket.tenant)
    }

    pub(crate) fn by_ticket_mut(&mut self, ticket: Ticket) -> Option<&mut Entry> {
        let place = self.slots.get_mut(ticket.slot as usize)?;
        place
            .entry
            .as_deref_mut()
            .filter(|_| place.tenant == ticket.tenant)
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
                self.slots[slot as usize].entry = Some(entry);
                slot
            }
            None => {
                let slot = Slot::try_from(self.slots.len())
                    .expect("more than 4 billion watches in one list");
                self.slots.push(Place {
                    tenant: 0,
                    entry: Some(entry),
                });
                slot
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// Takes a watch out; its slot goes to the next watch added, and its
    /// tickets are void.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Box<Entry>> {
        let slot = self.by_id.remove(id)?;
        let place = &mut self.slots[slot as usize];
        place.tenant = place.tenant.wrapping_add(1);
        self.free.push(slot);
        place.entry.take()
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
        Box::new(Entry::new(watch, state, Instant::now()))
    }

    #[test]
    fn a_removed_watch_slot_goes_to_the_next_watch_added() {
        let mut entries = Entries::default();
        let a = entries.insert("a".into(), entry("a"));
        let b = entries.insert("b".into(), entry("b"));
        assert_ne!(a, b);
        assert_eq!(entries.slot_of("b"), Some(b));
        assert_eq!(entries.get_mut(b).unwrap().state.id, "b");
        let a_ticket = entries.ticket(a);
        assert_eq!(entries.by_ticket(a_ticket).unwrap().state.id, "a");
        assert!(entries.remove("a").is_some());
        assert!(
            entries.get_mut(a).is_none(),
            "a removed watch's slot is empty"
        );
        assert!(entries.remove("a").is_none());
        let c = entries.insert("c".into(), entry("c"));
        assert_eq!(c, a, "the free slot is reused");
        assert_eq!(entries.get_mut(c).unwrap().state.id, "c");
        assert!(
            entries.by_ticket(a_ticket).is_none(),
            "a removed watch's ticket does not stand for the watch in its slot now"
        );
        assert_eq!(entries.by_ticket(entries.ticket(c)).unwrap().state.id, "c");
        assert_eq!(entries.len(), 2);
        let mut ids: Vec<&str> = entries.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, ["b", "c"]);
    }
}
