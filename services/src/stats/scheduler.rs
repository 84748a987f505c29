//! The pipeline's assembly ([`Pipeline`]), the crunch of one date across the three services,
//! the cursor logic ([`Pipeline::catch_up`]) and the interval [`Scheduler`] actor.
//!
//! The cursor (`CrunchDate` in the sample) lives in the store's `crunch_cursor` table. A tick:
//! crunch the cursor's date with the three services concurrently; if every service completed it
//! with no failed user and its rows are written, and the date is before today, advance the
//! cursor by one day (compare-and-set) and go on at once with the next date (catch-up without
//! waiting a tick per date); today is crunched on every tick and never advanced past; a date
//! that was not complete stays the cursor and is retried on the next tick. The sample advanced
//! its Redis cursor *before* crunching, losing a date on failure.

use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen_actors::{
    Actor, ActorRef, Builder, ChildSpec, Ctx, Mailbox, Policy, Reply, Strategy, Supervisor,
    SupervisorSpec,
};

use super::{
    AirtimeDelivered, BaseService, BulkSmsCost, BulkSmsFailed, DateReport, Metrics, Service,
    ServiceId, ServiceMsg, StopFlag, Writer,
};
use crate::fetch::http::Client;
use crate::store::{Date, RunRecord, Store, StoreError, CURSOR};

/// The pipeline's settings (`Debug` shows the api key as `***`).
#[derive(Clone)]
pub struct PipelineConfig {
    /// The upstream's root; the views are appended.
    pub base_url: String,
    /// The api key (sent as the `apikey` header; never logged).
    pub api_key: String,
    /// Users in flight per service.
    pub concurrency: usize,
    /// Rows per upsert flush.
    pub batch: usize,
    /// The writer's flush interval.
    pub flush_interval: Duration,
    /// The HTTP client's total timeout per request (the sample: 120 s).
    pub http_timeout: Duration,
    /// The HTTP client's retries (the sample: 5).
    pub http_retries: u32,
    /// Where the cursor starts when it is unset (default: today).
    pub start_date: Option<Date>,
    /// A fixed "today" (tests, replays); `None` is the UTC date of the system clock.
    pub today: Option<Date>,
}

impl std::fmt::Debug for PipelineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"***")
            .field("concurrency", &self.concurrency)
            .field("batch", &self.batch)
            .field("flush_interval", &self.flush_interval)
            .field("http_timeout", &self.http_timeout)
            .field("http_retries", &self.http_retries)
            .field("start_date", &self.start_date)
            .field("today", &self.today)
            .finish()
    }
}

impl PipelineConfig {
    /// Defaults for everything but the upstream.
    pub fn new(base_url: &str, api_key: &str) -> PipelineConfig {
        PipelineConfig {
            base_url: base_url.to_string(),
            api_key: api_key.to_string(),
            concurrency: 50,
            batch: 2000,
            flush_interval: Duration::from_secs(1),
            http_timeout: Duration::from_secs(120),
            http_retries: 5,
            start_date: None,
            today: None,
        }
    }
}

/// How a crunch of a date ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every service, every user, every row.
    Complete,
    /// Some users failed or rows could not be written; retried on the next tick.
    Partial,
    /// The upstream refused the api key.
    Refused,
    /// A stop request left users undone.
    Interrupted,
}

impl Outcome {
    /// `complete`, `partial`, `refused`, `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Partial => "partial",
            Outcome::Refused => "refused",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One date crunched by some services.
#[derive(Clone, Debug)]
pub struct CrunchReport {
    /// The date.
    pub date: Date,
    /// One report per service asked.
    pub services: Vec<DateReport>,
    /// Wall time.
    pub millis: u64,
}

impl CrunchReport {
    /// The outcome over all services.
    pub fn outcome(&self) -> Outcome {
        if self.services.iter().any(|s| s.refused) {
            Outcome::Refused
        } else if self.services.iter().any(|s| s.interrupted) {
            Outcome::Interrupted
        } else if self.services.iter().all(|s| s.is_complete()) {
            Outcome::Complete
        } else {
            Outcome::Partial
        }
    }

    /// The run record for the store.
    pub fn record(&self) -> RunRecord {
        let sum = |f: fn(&DateReport) -> u64| self.services.iter().map(f).sum();
        RunRecord {
            date: Some(self.date),
            outcome: self.outcome().as_str().into(),
            users: sum(|s| s.users),
            failed_users: sum(|s| s.failed_users),
            rows: sum(|s| s.rows),
            malformed: sum(|s| s.malformed),
            millis: self.millis,
            finished_at: String::new(),
            detail: self
                .services
                .iter()
                .find_map(|s| s.error.clone())
                .unwrap_or_default()
                .chars()
                .take(500)
                .collect(),
        }
    }
}

type Crunch = Rc<dyn Fn(Date) -> DateReport>;

/// Called by the [`Scheduler`] after each tick with the dates it crunched.
pub type OnTick = Rc<dyn Fn(&[CrunchReport])>;

/// The running pipeline: a supervisor with the writer and the three services.
pub struct Pipeline {
    sup: ActorRef<Supervisor>,
    store: Rc<dyn Store>,
    http: Client,
    services: Vec<(ServiceId, Crunch)>,
    stop: Rc<StopFlag>,
    metrics: Rc<Metrics>,
    today: Option<Date>,
    start_date: Option<Date>,
}

fn ask_service<S: Service>(sup: &ActorRef<Supervisor>) -> Crunch {
    let svc: ActorRef<BaseService<S>> = sup.child(S::ID.name()).expect("the service was started");
    Rc::new(move |date| {
        svc.ask(|reply| ServiceMsg::Crunch { date, reply })
            .unwrap_or_else(|e| DateReport {
                service: Some(S::ID),
                date: Some(date),
                error: Some(format!("the {} service failed: {e:?}", S::ID.name())),
                ..Default::default()
            })
    })
}

impl Pipeline {
    /// Starts the writer and the three services under a supervisor named `stats`.
    pub fn start(
        cfg: &PipelineConfig,
        store: Rc<dyn Store>,
        metrics: Rc<Metrics>,
    ) -> Result<Pipeline, String> {
        let http = Client::builder()
            .default_header("apikey", &cfg.api_key)
            .timeout(cfg.http_timeout)
            .max_retries(cfg.http_retries)
            .max_connections_per_host(cfg.concurrency.max(1) * 3)
            .max_idle_per_host(cfg.concurrency.max(1) * 3)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let stop = Rc::new(StopFlag::default());
        let writer_spec = {
            let (store, metrics) = (store.clone(), metrics.clone());
            let (batch, every) = (cfg.batch, cfg.flush_interval);
            ChildSpec::with_builder(
                "writer",
                Builder::new().mailbox(Mailbox::bounded(256, Policy::Block)),
                move || Writer::new(store.clone(), metrics.clone(), batch, every),
            )
        };
        // The services need the writer's reference: start the supervisor with the writer,
        // then add the services (rest_for_one keeps the order: writer first).
        let sup = SupervisorSpec::new(Strategy::RestForOne)
            .intensity(10, Duration::from_secs(60))
            .child(writer_spec)
            .spawn("stats")
            .map_err(|e| format!("starting the pipeline's supervisor: {e:?}"))?;
        let writer: ActorRef<Writer> = sup.child("writer").expect("the writer was started");
        fn spec<S: Service>(
            cfg: &PipelineConfig,
            http: &Client,
            writer: &ActorRef<Writer>,
            stop: &Rc<StopFlag>,
            metrics: &Rc<Metrics>,
        ) -> ChildSpec {
            let (base, http, writer, stop, metrics, n) = (
                cfg.base_url.clone(),
                http.clone(),
                writer.clone(),
                stop.clone(),
                metrics.clone(),
                cfg.concurrency,
            );
            ChildSpec::worker(S::ID.name(), move || {
                BaseService::<S>::new(
                    &base,
                    http.clone(),
                    writer.clone(),
                    n,
                    stop.clone(),
                    metrics.clone(),
                )
            })
        }
        for c in [
            spec::<BulkSmsCost>(cfg, &http, &writer, &stop, &metrics),
            spec::<BulkSmsFailed>(cfg, &http, &writer, &stop, &metrics),
            spec::<AirtimeDelivered>(cfg, &http, &writer, &stop, &metrics),
        ] {
            sup.start_child(c)
                .map_err(|e| format!("starting a service: {e:?}"))?;
        }
        let services = vec![
            (ServiceId::BulkSmsCost, ask_service::<BulkSmsCost>(&sup)),
            (ServiceId::BulkSmsFailed, ask_service::<BulkSmsFailed>(&sup)),
            (
                ServiceId::AirtimeDelivered,
                ask_service::<AirtimeDelivered>(&sup),
            ),
        ];
        Ok(Pipeline {
            sup,
            store,
            http,
            services,
            stop,
            metrics,
            today: cfg.today,
            start_date: cfg.start_date,
        })
    }

    /// The supervisor (for `dump()` and tests).
    pub fn supervisor(&self) -> &ActorRef<Supervisor> {
        &self.sup
    }

    /// The store.
    pub fn store(&self) -> &Rc<dyn Store> {
        &self.store
    }

    /// The counters.
    pub fn metrics(&self) -> &Rc<Metrics> {
        &self.metrics
    }

    /// The HTTP client's counters.
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// Today (fixed by the config, or the system clock's UTC date).
    pub fn today(&self) -> Date {
        self.today.unwrap_or_else(Date::today_utc)
    }

    /// Requests a graceful stop (see [`StopFlag`]).
    pub fn request_stop(&self) {
        self.stop.set()
    }

    /// The stop flag.
    pub fn stop_flag(&self) -> &Rc<StopFlag> {
        &self.stop
    }

    /// Crunches `date` with the services in `which` (all if empty), concurrently, and records
    /// the run. Does not move the cursor.
    pub fn crunch_date(&self, date: Date, which: &[ServiceId]) -> CrunchReport {
        let t0 = Instant::now();
        *self.metrics.current_date.borrow_mut() = Some(date.to_string());
        let gs: Vec<_> = self
            .services
            .iter()
            .filter(|(id, _)| which.is_empty() || which.contains(id))
            .map(|(id, f)| {
                let f = f.clone();
                (*id, evergreen::spawn(move || f(date)))
            })
            .collect();
        // A crunch greenlet that did not return (killed) is a failed service, never a
        // complete one.
        let services: Vec<DateReport> = gs
            .into_iter()
            .map(|(id, g)| {
                g.into_result().unwrap_or_else(|e| DateReport {
                    service: Some(id),
                    date: Some(date),
                    error: Some(format!("the crunch of {} did not finish: {e:?}", id.name())),
                    ..Default::default()
                })
            })
            .collect();
        let report = CrunchReport {
            date,
            services,
            millis: t0.elapsed().as_millis() as u64,
        };
        self.metrics
            .http_retries
            .set(self.http.pool_stats().retries);
        *self.metrics.current_date.borrow_mut() = None;
        let complete = report.outcome() == Outcome::Complete;
        self.metrics.healthy.set(complete);
        Metrics::add(
            if complete {
                &self.metrics.dates_complete
            } else {
                &self.metrics.dates_incomplete
            },
            1,
        );
        if let Err(e) = self.store.record_run(&report.record()) {
            log::error!("recording the run of {date}: {e}");
        }
        log::info!(
            "{date}: {} ({} rows, {} failed users, {} malformed)",
            report.outcome().as_str(),
            report.record().rows,
            report.record().failed_users,
            report.record().malformed
        );
        report
    }

    /// One scheduler tick: crunch the cursor's date; while complete and before today, advance
    /// and crunch the next at once; stop at today (crunched each tick), at an incomplete date
    /// (retried next tick), or on a stop request. Returns the crunches done.
    pub fn catch_up(&self) -> Result<Vec<CrunchReport>, StoreError> {
        let mut done = Vec::new();
        let today = self.today();
        self.store
            .init_cursor(CURSOR, self.start_date.unwrap_or(today))?;
        loop {
            if self.stop.is_set() {
                break;
            }
            let Some(date) = self.store.cursor(CURSOR)? else {
                break;
            };
            *self.metrics.cursor.borrow_mut() = Some(date.to_string());
            if date > today {
                log::info!("the cursor {date} is after today ({today}): nothing to crunch");
                break;
            }
            let report = self.crunch_date(date, &[]);
            let outcome = report.outcome();
            done.push(report);
            if outcome != Outcome::Complete {
                log::warn!(
                    "{date} is not complete ({}); the cursor stays, it is retried on the next tick",
                    outcome.as_str()
                );
                break;
            }
            if date == today {
                break;
            }
            if !self.store.advance_cursor(CURSOR, date, date.succ())? {
                log::warn!("the cursor moved under us (another worker?); re-reading it");
            }
            *self.metrics.cursor.borrow_mut() = Some(date.succ().to_string());
        }
        Ok(done)
    }

    /// Adds the [`Scheduler`] to the supervisor: a tick now, then every `interval`.
    pub fn start_scheduler(
        self: &Rc<Self>,
        interval: Duration,
        on_tick: OnTick,
    ) -> Result<ActorRef<Scheduler>, String> {
        let p = self.clone();
        let spec = ChildSpec::worker("scheduler", move || Scheduler {
            pipeline: p.clone(),
            interval,
            on_tick: on_tick.clone(),
        });
        self.sup
            .start_child(spec)
            .map_err(|e| format!("starting the scheduler: {e:?}"))?;
        Ok(self
            .sup
            .child("scheduler")
            .expect("the scheduler was started"))
    }

    /// Stops the actors (scheduler, services, writer: reverse order; the writer flushes).
    pub fn shutdown(&self, timeout: Duration) {
        self.stop.set();
        if let Err(e) = self.sup.shutdown(timeout) {
            log::warn!("pipeline shutdown: {e:?}");
        }
    }
}

/// Messages of the [`Scheduler`].
pub enum SchedulerMsg {
    /// The interval timer.
    Tick,
    /// Run a tick now and answer what it did.
    TickNow(Reply<Result<Vec<CrunchReport>, String>>),
}

/// The interval scheduler (the sample's APScheduler job) as an actor: a keyed `send_after`
/// timer re-armed at the end of each tick (`send_interval` needs `Clone` messages, and a
/// `Reply` is not), so the interval runs from the end of one tick to the start of the next
/// (APScheduler: start to start) and a long crunch never piles up ticks.
pub struct Scheduler {
    pipeline: Rc<Pipeline>,
    interval: Duration,
    on_tick: OnTick,
}

impl Scheduler {
    fn tick(&mut self) -> Result<Vec<CrunchReport>, String> {
        let r = self.pipeline.catch_up().map_err(|e| e.to_string());
        match &r {
            Ok(done) => (self.on_tick)(done),
            Err(e) => {
                self.pipeline.metrics.healthy.set(false);
                log::error!("scheduler tick: {e}")
            }
        }
        r
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;

    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        ctx.send_after("tick", Duration::ZERO, SchedulerMsg::Tick);
        Ok(())
    }

    fn handle(&mut self, msg: SchedulerMsg, ctx: &mut Ctx<Self>) {
        match msg {
            SchedulerMsg::Tick => {
                let _ = self.tick();
                ctx.send_after("tick", self.interval, SchedulerMsg::Tick);
            }
            SchedulerMsg::TickNow(r) => r.send(self.tick()),
        }
    }
}
