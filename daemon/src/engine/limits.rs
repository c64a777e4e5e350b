//! The queue of due watches and the two concurrency limits (all hosts, one
//! host), as owned semaphore permits moved into each poll task.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::entries::Ticket;

/// The permits a running poll holds; dropping them frees its slots.
#[derive(Debug)]
pub(crate) struct Permits {
    _global: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
}

/// Due watches waiting for a slot.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Due watches in order; `push_front` jumps the queue ("poll now").
    pub(crate) ready: VecDeque<Ticket>,
    /// Watches a finished poll let go ahead of `ready` ([`Limits::release`]),
    /// in the order they waited: the engine handles many completions before
    /// it starts polls again, and pushing each to the front of `ready`
    /// would start them last-waited first.
    released: VecDeque<Ticket>,
    /// Due watches whose host is at its limit, per host, in order.
    waiting: FxHashMap<Arc<str>, VecDeque<Ticket>>,
    global: Arc<Semaphore>,
    hosts: FxHashMap<Arc<str>, Arc<Semaphore>>,
    per_host: usize,
}

impl Limits {
    pub(crate) fn new(concurrency: usize, per_host: usize) -> Self {
        Limits {
            ready: VecDeque::new(),
            released: VecDeque::new(),
            waiting: FxHashMap::default(),
            global: Arc::new(Semaphore::new(concurrency)),
            hosts: FxHashMap::default(),
            per_host,
        }
    }

    /// The next due watch that may start now, with its permits. `host_of`
    /// returns the host of a watch that can be polled (None skips it: it
    /// was removed or is already in flight).
    pub(crate) fn next_ready(
        &mut self,
        host_of: impl Fn(Ticket) -> Option<Arc<str>>,
    ) -> Option<(Ticket, Permits)> {
        loop {
            // Before any watch is looked up: at saturation the engine asks on
            // every turn, and each lookup of a watch among 100,000 is a
            // cache miss (2 % of a poll's CPU, for nothing).
            if self.global.available_permits() == 0 {
                return None;
            }
            let (ticket, released) = match self.released.pop_front() {
                Some(ticket) => (ticket, true),
                None => (self.ready.pop_front()?, false),
            };
            let Some(host) = host_of(ticket) else {
                continue;
            };
            let Ok(global) = self.global.clone().try_acquire_owned() else {
                if released {
                    self.released.push_front(ticket);
                } else {
                    self.ready.push_front(ticket);
                }
                return None;
            };
            let per_host = self.per_host;
            let semaphore = self
                .hosts
                .entry(host.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(per_host)));
            match semaphore.clone().try_acquire_owned() {
                Ok(host_permit) => {
                    return Some((
                        ticket,
                        Permits {
                            _global: global,
                            _host: host_permit,
                        },
                    ));
                }
                Err(_) => self.waiting.entry(host).or_default().push_back(ticket),
            }
        }
    }

    /// A poll that held a permit of `host` ended (its permits are already
    /// dropped): the next watch waiting for that host is started before
    /// the ready queue (after those released before it).
    ///
    /// `host_of` is the same check as in [`Limits::next_ready`]. A waiting
    /// watch it skips (removed from the list meanwhile) is dropped here rather
    /// than taking the slot; one whose host changed (its URL was edited)
    /// goes to the ready queue to take its new host's slot, and the search
    /// goes on for a watch of this host. Otherwise the freed slot could sit
    /// unused while watches of this host wait for a release that never comes.
    pub(crate) fn release(
        &mut self,
        host: &Arc<str>,
        host_of: impl Fn(Ticket) -> Option<Arc<str>>,
    ) {
        let Some(queue) = self.waiting.get_mut(host) else {
            return;
        };
        while let Some(ticket) = queue.pop_front() {
            let Some(now) = host_of(ticket) else {
                continue;
            };
            let same = now == *host;
            self.released.push_back(ticket);
            if same {
                break;
            }
        }
        if queue.is_empty() {
            self.waiting.remove(host);
        }
    }

    /// Polls in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, concurrency: usize) -> usize {
        concurrency - self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slots 11, 12... are watches a1, a2... of host "a"; 21, 22... of "b".
    const fn ticket(slot: u32) -> Ticket {
        Ticket { slot, tenant: 0 }
    }
    const A1: Ticket = ticket(11);
    const A2: Ticket = ticket(12);
    const A3: Ticket = ticket(13);
    const A4: Ticket = ticket(14);
    const B1: Ticket = ticket(21);
    const B2: Ticket = ticket(22);

    fn host(t: Ticket) -> Option<Arc<str>> {
        Some(Arc::from(if t.slot < 20 { "a" } else { "b" }))
    }

    #[test]
    fn per_host_and_global_limits_hold_and_release_in_order() {
        let mut limits = Limits::new(3, 2);
        limits.ready.extend([A1, A2, A3, B1, B2]);
        let a1 = limits.next_ready(host).unwrap();
        let a2 = limits.next_ready(host).unwrap();
        // a3 waits for host a; b1 takes the last global slot.
        let b1 = limits.next_ready(host).unwrap();
        assert_eq!((a1.0, a2.0, b1.0), (A1, A2, B1));
        assert!(
            limits.next_ready(host).is_none(),
            "global limit of 3 reached"
        );
        assert_eq!(limits.in_flight(3), 3);
        // a1 ends: a3 (waiting for host a) goes first.
        drop(a1.1);
        limits.release(&Arc::from("a"), host);
        let next = limits.next_ready(host).unwrap();
        assert_eq!(next.0, A3);
        drop(b1.1);
        limits.release(&Arc::from("b"), host);
        assert_eq!(limits.next_ready(host).unwrap().0, B2);
    }

    #[test]
    fn watches_released_together_start_in_the_order_they_waited() {
        let mut limits = Limits::new(10, 2);
        limits.ready.extend([A1, A2, A3, A4]);
        let a1 = limits.next_ready(host).unwrap();
        let a2 = limits.next_ready(host).unwrap();
        assert!(
            limits.next_ready(host).is_none(),
            "a3 and a4 wait for host a"
        );
        // Both polls end before the engine starts polls again (it handles
        // completions in batches).
        drop((a1, a2));
        limits.release(&Arc::from("a"), host);
        limits.release(&Arc::from("a"), host);
        let order: Vec<Ticket> = std::iter::from_fn(|| limits.next_ready(host))
            .map(|(ticket, _permits)| ticket)
            .collect();
        assert_eq!(order, [A3, A4]);
    }

    #[test]
    fn no_watch_is_looked_up_while_every_slot_is_taken() {
        let mut limits = Limits::new(1, 1);
        limits.ready.extend([A1, B1]);
        let looked_up = std::cell::Cell::new(0);
        let host = |t: Ticket| {
            looked_up.set(looked_up.get() + 1);
            host(t)
        };
        let a1 = limits.next_ready(host).unwrap();
        assert_eq!(looked_up.get(), 1);
        for _ in 0..3 {
            assert!(limits.next_ready(host).is_none());
        }
        assert_eq!(looked_up.get(), 1, "asked again with no slot free");
        drop(a1);
        assert_eq!(limits.next_ready(host).unwrap().0, B1);
    }
}
