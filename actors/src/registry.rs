//! Named actors (Erlang's `register`/`whereis`), per thread (per hub).
//!
//! A registered actor is found by name with its type: [`whereis::<A>`](whereis) returns an
//! [`ActorRef<A>`] only if the actor under that name is an `A`. A name is removed when its
//! actor exits for good; it survives restarts (the reference is the same across restarts),
//! where Erlang's restarted process registers its name again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::actor::{Actor, ActorHandle, ActorRef, AnyRef, CellDyn};
use crate::error::Error;

thread_local! {
    static NAMES: RefCell<HashMap<String, Rc<dyn CellDyn>>> = RefCell::new(HashMap::new());
}

/// Registers `actor` under `name`. Errors: the name is taken
/// ([`Error::AlreadyRegistered`]), the actor has exited ([`Error::Dead`]), or the actor is
/// already registered under another name ([`Error::Invalid`]).
pub fn register(name: &str, actor: &impl ActorHandle) -> Result<(), Error> {
    let a = actor.any_ref();
    let cell = a.cell();
    if let Some(r) = cell.base().final_reason() {
        return Err(Error::Dead(r, ()));
    }
    if NAMES.with(|n| n.borrow().contains_key(name)) {
        return Err(Error::AlreadyRegistered(name.to_string()));
    }
    if let Some(old) = cell.base().registered_name() {
        return Err(Error::Invalid(format!(
            "actor {} is already registered as {old:?}",
            cell.base().label()
        )));
    }
    NAMES.with(|n| n.borrow_mut().insert(name.to_string(), cell.clone()));
    cell.base().set_registered_name(Some(name.to_string()));
    Ok(())
}

/// Removes a name; `false` if it was not registered.
pub fn unregister(name: &str) -> bool {
    let removed = NAMES.with(|n| n.borrow_mut().remove(name));
    match removed {
        Some(c) => {
            c.base().set_registered_name(None);
            true
        }
        None => false,
    }
}

/// The actor registered under `name`, if it is an `A`.
pub fn whereis<A: Actor>(name: &str) -> Option<ActorRef<A>> {
    whereis_any(name).and_then(|a| a.downcast::<A>())
}

/// The actor registered under `name`, whatever its type.
pub fn whereis_any(name: &str) -> Option<AnyRef> {
    NAMES.with(|n| n.borrow().get(name).cloned().map(AnyRef::from_cell))
}

/// Every registered name, sorted.
pub fn registered() -> Vec<String> {
    let mut v: Vec<String> = NAMES.with(|n| n.borrow().keys().cloned().collect());
    v.sort();
    v
}

/// Called when an actor exits for good.
pub(crate) fn remove_exited(name: &str, id: u64) {
    let removed = NAMES.with(|n| {
        let mut n = n.borrow_mut();
        if n.get(name).is_some_and(|c| c.base().id == id) {
            n.remove(name)
        } else {
            None
        }
    });
    drop(removed);
}
