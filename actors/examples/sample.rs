//! The gevent sample's actor, in a few lines: an actor receives a job, spawns a fetch
//! greenlet, joins it, and sends itself follow-up messages (one per user), as the sample's
//! `BaseService` did. The "fetch" is simulated with a sleep so the example needs no network.
//!
//! Run: `cargo run -p evergreen-actors --example sample`

use std::time::Duration;

use evergreen::{sleep, spawn};
use evergreen_actors::{Actor, Builder, Ctx};

/// The sample's service: crunch a date by walking its users one message at a time.
struct Service {
    name: &'static str,
    left: usize,
}

enum Msg {
    /// The job: crunch this date.
    Crunch(&'static str),
    /// A follow-up the actor sends itself, one per user.
    User(&'static str, String),
}

/// Stands in for the HTTP fetch (a greenlet, as the sample's `gevent.spawn(fetch, url)`).
fn fetch(what: String) -> Vec<String> {
    sleep(Duration::from_millis(20));
    if what.starts_with("users") {
        vec!["alice".into(), "bob".into(), "carol".into()]
    } else {
        vec![format!("{what}: Kenya (Safaricom) USD 12.50")]
    }
}

impl Actor for Service {
    type Msg = Msg;
    fn handle(&mut self, msg: Msg, ctx: &mut Ctx<Self>) {
        match msg {
            Msg::Crunch(date) => {
                let users = spawn(move || fetch(format!("users {date}"))).get().unwrap();
                self.left = users.len();
                for u in users {
                    ctx.myself().tell(Msg::User(date, u)).ok();
                }
            }
            Msg::User(date, user) => {
                let rows = spawn(move || fetch(format!("{user} {date}")))
                    .get()
                    .unwrap();
                for r in rows {
                    println!("[{}] {r}", self.name);
                }
                sleep(Duration::ZERO);
                self.left -= 1;
                if self.left == 0 {
                    ctx.stop();
                }
            }
        }
    }
}

fn main() {
    let services: Vec<_> = ["bulk_sms_cost", "bulk_sms_failed", "airtime_delivered"]
        .into_iter()
        .map(|name| {
            let a = Builder::new()
                .name(name)
                .spawn(Service { name, left: 0 })
                .expect("spawn");
            a.tell(Msg::Crunch("2016-08-18")).ok();
            a
        })
        .collect();
    for s in services {
        let reason = s.join().expect("join");
        println!("{} finished: {reason}", s.name().unwrap_or("?"));
    }
}
