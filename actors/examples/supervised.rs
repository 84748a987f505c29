//! A supervision tree that survives a crashing child: a one-for-one root with a database
//! writer and a dynamic pool of fetchers; one fetcher crashes on a bad user and is restarted
//! (after a backoff) with its reference intact. Prints the tree before and after.
//!
//! Run: `cargo run -p evergreen-actors --example supervised`

use std::time::Duration;

use evergreen::sleep;
use evergreen_actors::{
    Actor, Backoff, ChildSpec, Ctx, Reply, Strategy, Supervisor, SupervisorSpec,
};

/// Counts rows it is asked to write.
struct DbWriter {
    rows: u64,
    bytes: usize,
}

enum DbMsg {
    Write(String),
    Count(Reply<u64>),
}

impl Actor for DbWriter {
    type Msg = DbMsg;
    fn handle(&mut self, msg: DbMsg, _ctx: &mut Ctx<Self>) {
        match msg {
            DbMsg::Write(row) => {
                self.rows += 1;
                self.bytes += row.len();
            }
            DbMsg::Count(r) => r.send(self.rows),
        }
    }
}

/// Fetches a user's stats and hands them to the writer; panics on a malformed user.
struct Fetcher {
    db: evergreen_actors::ActorRef<DbWriter>,
}

impl Actor for Fetcher {
    type Msg = String;
    fn handle(&mut self, user: String, _ctx: &mut Ctx<Self>) {
        sleep(Duration::from_millis(5)); // the HTTP request
        if user.is_empty() {
            panic!("malformed user in the API response");
        }
        self.db.tell(DbMsg::Write(user)).ok();
    }
}

fn main() {
    env_logger::init();
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(3, Duration::from_secs(5))
        .child(ChildSpec::worker("db", || DbWriter { rows: 0, bytes: 0 }))
        .child(ChildSpec::supervisor(
            "fetchers",
            SupervisorSpec::new(Strategy::SimpleOneForOne)
                .intensity(5, Duration::from_secs(5))
                .backoff(Backoff::exponential(
                    Duration::from_millis(10),
                    Duration::from_secs(1),
                )),
        ))
        .spawn("stats")
        .expect("start the tree");
    let db = root.child::<DbWriter>("db").expect("db");
    let pool = root.child::<Supervisor>("fetchers").expect("fetchers");
    let fetchers: Vec<_> = (0..3)
        .map(|i| {
            let db = db.clone();
            pool.start_worker(format!("fetch-{i}"), move || Fetcher { db: db.clone() })
                .expect("start fetcher")
        })
        .collect();
    print!("{}", root.dump());
    for (i, user) in ["alice", "", "bob", "carol"].iter().enumerate() {
        fetchers[i % 3].tell(user.to_string()).ok();
    }
    fetchers[1].tell("dave".into()).ok(); // queued behind the crash: survives the restart
    sleep(Duration::from_millis(100));
    println!("rows written: {}", db.ask(DbMsg::Count).expect("count"));
    println!("after the crash:");
    print!("{}", root.dump());
    let reason = root.shutdown(Duration::from_secs(5)).expect("shutdown");
    println!("tree stopped: {reason}");
}
