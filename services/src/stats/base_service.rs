//! `BaseService`: the sample's base actor service, generic over the three [`Service`]s.
//!
//! The sample's `receive` got `{date}` (fetch the user list, `processResponse` sends itself one
//! message per user) or `{date, username}` (fetch that user, `processUserResponse` inserts the
//! rows), one user at a time. Here one [`ServiceMsg::Crunch`] crunches a whole date: the user
//! list, then every user through an evergreen `Pool` of `concurrency` greenlets (default 50),
//! each fetching, parsing and telling its rows to the [`Writer`]; then a `Flush` ask, and the
//! [`DateReport`] goes back to the asker. A graceful stop ([`StopFlag`]) starts no new user;
//! in-flight users finish.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Instant;

use evergreen::Pool;
use evergreen_actors::{Actor, ActorRef, Ctx, Reply};
use serde_json::Value as Json;

use super::parse::{self, Malformed};
use super::{Metrics, Service, ServiceId, StopFlag, Writer, WriterMsg};
use crate::fetch::http::{Client, Error as HttpError, ErrorKind};
use crate::store::{Date, Row};

/// What one service did with one date.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DateReport {
    /// Which service (`None` only in a default value).
    pub service: Option<ServiceId>,
    /// The date.
    pub date: Option<Date>,
    /// Users in the list.
    pub users: u64,
    /// Users fetched and parsed.
    pub done: u64,
    /// Users whose fetch or response failed.
    pub failed_users: u64,
    /// Rows handed to the writer.
    pub rows: u64,
    /// Malformed elements skipped.
    pub malformed: u64,
    /// The upstream refused the api key (401/403).
    pub refused: bool,
    /// A stop request left users undone.
    pub interrupted: bool,
    /// The first error (user list, a user, the writer), for people.
    pub error: Option<String>,
    /// Wall time.
    pub millis: u64,
}

impl DateReport {
    /// Every user done, nothing failed, rows written.
    pub fn is_complete(&self) -> bool {
        !self.refused
            && !self.interrupted
            && self.error.is_none()
            && self.failed_users == 0
            && self.done == self.users
    }
}

/// Messages of a [`BaseService`].
pub enum ServiceMsg {
    /// Crunch one date and answer the report.
    Crunch {
        /// The date.
        date: Date,
        /// Where the report goes.
        reply: Reply<DateReport>,
    },
}

/// Why a fetch failed.
#[derive(Debug)]
pub struct FetchFailure {
    /// The upstream refused the key (401/403).
    pub refused: bool,
    /// What happened (the URL redacted, no header values).
    pub message: String,
}

struct Inner {
    base_url: String,
    http: Client,
    writer: ActorRef<Writer>,
    concurrency: usize,
    stop: Rc<StopFlag>,
    metrics: Rc<Metrics>,
}

/// The base service actor (see the [module docs](self)); `S` says the view and the table.
pub struct BaseService<S: Service> {
    inner: Rc<Inner>,
    _s: PhantomData<S>,
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl<S: Service> BaseService<S> {
    /// A service fetching from `base_url` (the views are appended to it) with `http`, at most
    /// `concurrency` users in flight, rows to `writer`.
    pub fn new(
        base_url: &str,
        http: Client,
        writer: ActorRef<Writer>,
        concurrency: usize,
        stop: Rc<StopFlag>,
        metrics: Rc<Metrics>,
    ) -> BaseService<S> {
        let mut base_url = base_url.to_string();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        BaseService {
            inner: Rc::new(Inner {
                base_url,
                http,
                writer,
                concurrency: concurrency.max(1),
                stop,
                metrics,
            }),
            _s: PhantomData,
        }
    }

    /// The view's URL for `date`, with `&username=<urlencoded>` when given (the sample's
    /// `build_url`).
    pub fn build_url(&self, date: Date, username: Option<&str>) -> String {
        build_url::<S>(&self.inner.base_url, date, username)
    }

    /// GETs `url` with the api key (a default header of the client) and decodes the JSON (the
    /// sample's `fetch_`; retries and timeouts are the client's).
    pub fn fetch(&self, url: &str) -> Result<Json, FetchFailure> {
        fetch(&self.inner.http, url)
    }

    /// The user list from the view's answer without `username` (the sample's
    /// `processResponse`).
    pub fn process_response(&self, resp: &Json) -> Result<Vec<String>, String> {
        parse::user_list(resp)
    }

    /// One user's rows and malformed elements (the sample's `processUserResponse`).
    pub fn process_user_response(
        &self,
        resp: &Json,
        username: &str,
        date: Date,
    ) -> Result<(Vec<Row>, Vec<Malformed>), String> {
        parse::user_stats(resp, username, date, S::ID.table().is_money())
    }

    fn crunch(&self, date: Date) -> DateReport {
        let t0 = Instant::now();
        let id = S::ID;
        let inner = &self.inner;
        let counters = inner.metrics.service(id);
        counters.users_total.set(0);
        counters.users_done.set(0);
        let report = Rc::new(RefCell::new(DateReport {
            service: Some(id),
            date: Some(date),
            ..Default::default()
        }));
        let users = match fetch(&inner.http, &self.build_url(date, None))
            .map_err(|f| (f.refused, f.message))
            .and_then(|j| {
                self.process_response(&j).map_err(|e| {
                    (
                        false,
                        format!("the user list of {} for {date}: {e}", id.name()),
                    )
                })
            }) {
            Ok(u) => u,
            Err((refused, message)) => {
                log::error!("{}: {date}: cannot get the user list: {message}", id.name());
                let mut r = report.borrow().clone();
                r.refused = refused;
                r.error = Some(message);
                r.millis = t0.elapsed().as_millis() as u64;
                return r;
            }
        };
        report.borrow_mut().users = users.len() as u64;
        counters.users_total.set(users.len() as u64);
        log::info!("{}: {date}: {} users", id.name(), users.len());
        let pool = Pool::new(inner.concurrency);
        for username in users {
            if inner.stop.is_set() {
                report.borrow_mut().interrupted = true;
                break;
            }
            let (inner, report) = (inner.clone(), report.clone());
            pool.spawn(move || crunch_user::<S>(&inner, &report, date, username));
        }
        pool.join();
        let flushed = inner.writer.ask(|r| WriterMsg::Flush(id.table(), r));
        let mut r = report.borrow().clone();
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                r.error
                    .get_or_insert(format!("writing {}: {e}", id.table().name()));
            }
            Err(e) => {
                r.error
                    .get_or_insert(format!("the writer is unavailable: {e:?}"));
            }
        }
        r.millis = t0.elapsed().as_millis() as u64;
        r
    }
}

fn build_url<S: Service>(base: &str, date: Date, username: Option<&str>) -> String {
    let mut u = format!("{base}{}&startDate={date}&endDate={date}", S::get_view());
    if let Some(name) = username {
        u.push_str("&username=");
        u.push_str(&urlencode(name));
    }
    u
}

fn fetch(http: &Client, url: &str) -> Result<Json, FetchFailure> {
    let to_failure = |e: HttpError| FetchFailure {
        refused: e.kind() == ErrorKind::Status && matches!(e.status(), Some(401 | 403)),
        message: e.to_string(),
    };
    let resp = http.get(url).send().map_err(to_failure)?;
    let resp = resp.error_for_status().map_err(to_failure)?;
    resp.json::<Json>().map_err(to_failure)
}

fn crunch_user<S: Service>(
    inner: &Inner,
    report: &RefCell<DateReport>,
    date: Date,
    username: String,
) {
    let id = S::ID;
    let counters = inner.metrics.service(id);
    let url = build_url::<S>(&inner.base_url, date, Some(&username));
    let outcome = fetch(&inner.http, &url).and_then(|j| {
        parse::user_stats(&j, &username, date, id.table().is_money()).map_err(|e| FetchFailure {
            refused: false,
            message: format!("user {username:?}: {e}"),
        })
    });
    counters.users_done.set(counters.users_done.get() + 1);
    match outcome {
        Ok((rows, bad)) => {
            for m in &bad {
                log::warn!(
                    "{}: {date}: user {username:?}: malformed element {} ({})",
                    id.name(),
                    m.raw,
                    m.reason
                );
            }
            let n = rows.len() as u64;
            let told = if rows.is_empty() {
                Ok(())
            } else {
                inner.writer.tell(WriterMsg::Rows(id.table(), rows))
            };
            let mut r = report.borrow_mut();
            r.malformed += bad.len() as u64;
            Metrics::add(&counters.malformed, bad.len() as u64);
            match told {
                Ok(()) => {
                    r.done += 1;
                    r.rows += n;
                    Metrics::add(&counters.rows, n);
                    Metrics::add(&counters.users_fetched, 1);
                }
                Err(e) => {
                    r.failed_users += 1;
                    Metrics::add(&counters.users_failed, 1);
                    r.error
                        .get_or_insert(format!("the writer refused rows: {:?}", e.discard()));
                }
            }
        }
        Err(f) => {
            log::warn!(
                "{}: {date}: user {username:?} failed: {}",
                id.name(),
                f.message
            );
            let mut r = report.borrow_mut();
            r.failed_users += 1;
            r.refused |= f.refused;
            Metrics::add(&counters.users_failed, 1);
            if r.error.is_none() {
                r.error = Some(f.message);
            }
        }
    }
}

impl<S: Service> Actor for BaseService<S> {
    type Msg = ServiceMsg;

    fn handle(&mut self, msg: ServiceMsg, _ctx: &mut Ctx<Self>) {
        match msg {
            ServiceMsg::Crunch { date, reply } => {
                let r = self.crunch(date);
                reply.send(r);
            }
        }
    }
}
