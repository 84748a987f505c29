//! Waiting for several objects at once: [`wait`] and [`iwait`] (gevent's `gevent.wait` and
//! `gevent.iwait`, from `_hub_primitives.py`).
//!
//! Each object that is not ready yet gets a raw link that, when it fires (as a hub callback),
//! records the object's index and wakes the waiting greenlet. Objects come out in the order
//! they became ready; objects already ready at the call come first, in the order given.
//! Dropping the iterator removes the links that have not fired.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::hub::hub;
use crate::waiter::{LinkId, WaitList, Waitable};

struct Shared {
    ready: RefCell<VecDeque<usize>>,
    waiter: WaitList<()>,
}

/// The iterator returned by [`iwait`]: yields indices into the slice given, in readiness
/// order, and ends when all were yielded or the timeout passed.
pub struct IWait<'a> {
    objs: &'a [&'a dyn Waitable],
    shared: Rc<Shared>,
    links: Vec<Option<LinkId>>,
    remaining: usize,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for IWait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IWait(remaining={})", self.remaining)
    }
}

/// Iterates over `objs` as they become ready (gevent's `iwait`); see the
/// [module docs](self).
///
/// ```
/// use std::time::Duration;
/// let a = evergreen::spawn(|| evergreen::sleep(Duration::from_millis(20)));
/// let b = evergreen::spawn(|| ());
/// let objs: [&dyn evergreen::Waitable; 2] = [&a, &b];
/// let order: Vec<usize> = evergreen::iwait(&objs, None).collect();
/// assert_eq!(order, vec![1, 0]);
/// ```
pub fn iwait<'a>(objs: &'a [&'a dyn Waitable], timeout: Option<Duration>) -> IWait<'a> {
    let hub = hub();
    let shared = Rc::new(Shared {
        ready: RefCell::new(VecDeque::new()),
        waiter: WaitList::new(),
    });
    let mut links = Vec::with_capacity(objs.len());
    for (i, o) in objs.iter().enumerate() {
        if o.ready() {
            shared.ready.borrow_mut().push_back(i);
            links.push(None);
        } else {
            let s = shared.clone();
            links.push(Some(o.rawlink(Box::new(move || {
                s.ready.borrow_mut().push_back(i);
                s.waiter.wake_all_unit();
            }))));
        }
    }
    IWait {
        objs,
        shared,
        links,
        remaining: objs.len(),
        deadline: timeout.and_then(|t| hub.deadline(t)),
    }
}

impl Iterator for IWait<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            let next = self.shared.ready.borrow_mut().pop_front();
            if let Some(i) = next {
                self.links[i] = None;
                self.remaining -= 1;
                return Some(i);
            }
            if self
                .shared
                .waiter
                .wait(None, self.deadline, "iwait")
                .is_err()
            {
                return None;
            }
        }
    }
}

impl Drop for IWait<'_> {
    fn drop(&mut self) {
        for (i, l) in self.links.iter_mut().enumerate() {
            if let Some(id) = l.take() {
                self.objs[i].unlink(id);
            }
        }
    }
}

/// Blocks until `count` of `objs` (all of them if `None`) are ready or `timeout` passed;
/// returns the indices of the ready ones in readiness order (gevent's `wait`).
pub fn wait(objs: &[&dyn Waitable], timeout: Option<Duration>, count: Option<usize>) -> Vec<usize> {
    let n = count.unwrap_or(objs.len()).min(objs.len());
    iwait(objs, timeout).take(n).collect()
}
