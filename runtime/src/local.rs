//! Greenlet-local storage (gevent's `local.py`).
//!
//! Each greenlet (and the root context) has its own value per [`Local`]; the values of a
//! greenlet are dropped when its function has returned, on its own stack while it still
//! counts as running (so a `Drop` that blocks delays its end, and a kill can interrupt it),
//! before its joiners wake. The root's values are dropped by [`hub::destroy`](crate::hub::destroy).
//!
//! Difference from gevent: gevent's `local` is an object with attributes; a `Local<T>` holds
//! one typed value per greenlet, created on first access by the initialiser given to
//! [`Local::new`].

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hub::hub;

static NEXT_KEY: AtomicUsize = AtomicUsize::new(1);

/// A value per greenlet.
///
/// ```
/// let counter = std::rc::Rc::new(evergreen::Local::new(|| 0u32));
/// let c2 = counter.clone();
/// counter.with(|v| *v += 5);
/// let g = evergreen::spawn(move || c2.with(|v| { *v += 1; *v }));
/// assert_eq!(g.get(), Ok(1)); // its own value
/// assert_eq!(counter.with(|v| *v), 5);
/// ```
pub struct Local<T: 'static> {
    key: usize,
    init: Box<dyn Fn() -> T>,
    _marker: PhantomData<*const T>,
}

impl<T: 'static> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Local(key={})", self.key)
    }
}

impl<T: 'static> Drop for Local<T> {
    /// Drops this local's value in every greenlet that has one (and in the root), as gevent
    /// frees a `local`'s values when it is collected. Costs one look-up per live greenlet;
    /// the values are dropped here, by the caller.
    fn drop(&mut self) {
        if !crate::hub::exists() {
            return;
        }
        let hub = hub();
        let mut values: Vec<Box<dyn Any>> = Vec::new();
        let mut take_from = |core: &crate::greenlet::Core| {
            let Some(extra) = core.extra_if_made() else {
                return;
            };
            if let Ok(mut m) = extra.locals.try_borrow_mut() {
                if let Some(v) = m.as_mut().and_then(|m| m.remove(&self.key)) {
                    values.push(v);
                }
            }
        };
        take_from(hub.root_core());
        for g in hub.live_greenlets() {
            take_from(g.core());
        }
        drop(values);
    }
}

impl<T: 'static> Local<T> {
    /// A local whose value is made by `init` the first time a greenlet uses it.
    pub fn new(init: impl Fn() -> T + 'static) -> Local<T> {
        Local {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            init: Box::new(init),
            _marker: PhantomData,
        }
    }

    /// Runs `f` with the current greenlet's value. (While `f` runs, the value is lent out: a
    /// nested `with` on the same `Local` from inside `f` sees a fresh value.)
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let hub = hub();
        // The closure runs with this frame still using the hub: `hub::destroy` is refused.
        let _busy = crate::hub::Busy::enter(hub);
        let core = hub.current();
        let mut slot = {
            let mut map = core.extra().locals.borrow_mut();
            let map = map.get_or_insert_with(Default::default);
            map.remove(&self.key)
        };
        let mut b: Box<dyn Any> = slot.take().unwrap_or_else(|| Box::new((self.init)()));
        let r = f(b
            .downcast_mut::<T>()
            .expect("a Local's key is unique to its type"));
        core.extra()
            .locals
            .borrow_mut()
            .get_or_insert_with(Default::default)
            .insert(self.key, b);
        r
    }

    /// Replaces the current greenlet's value.
    pub fn set(&self, v: T) {
        self.with(|x| *x = v)
    }

    /// A clone of the current greenlet's value.
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.with(|x| x.clone())
    }
}
