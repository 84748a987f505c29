//! The stats pipeline: three supervised service actors from HTTP to the store.
//!
//! ```text
//!            Scheduler (interval tick; the cursor, CrunchDate, in the store)
//!                │ crunch_date(D): ask the three services concurrently
//!   ┌────────────┼──────────────────────┐
//! BulkSmsCost  BulkSmsFailed  AirtimeDelivered    each a BaseService<S> actor:
//!   │ user list, then ≤ 50 users in flight (an evergreen Pool), parse, tell rows
//!   └────────────┼──────────────────────┘
//!              Writer actor: batches upserts (flush by size and by time) into the Store
//! ```
//!
//! All of them are children of one supervisor (`rest_for_one`, the writer first: a writer
//! restart restarts the services after it; a service crash restarts only that service, and its
//! date is reported failed and retried on the next tick).
//!
//! | the sample (gevent) | here | difference |
//! |---|---|---|
//! | `BaseService(Actor)`: `build_url`, `fetch_`, `receive`, `processResponse`, `processUserResponse` | [`BaseService`]: [`build_url`](BaseService::build_url), [`fetch`](BaseService::fetch), `handle`, [`process_response`](BaseService::process_response), [`process_user_response`](BaseService::process_user_response) | users fetched concurrently through a bounded pool (the sample: one at a time) |
//! | three services that say their view and table | [`Service`]: [`BulkSmsCost`], [`BulkSmsFailed`], [`AirtimeDelivered`] | |
//! | a row per `INSERT` + `commit` | [`Writer`] | batched idempotent upserts, flushed by size and by time |
//! | APScheduler interval job, `CrunchDate` in Redis | [`Scheduler`], [`Pipeline::catch_up`] | cursor in the database, advanced after a complete date only; catch-up without waiting a tick per date |
//! | no supervision | a `rest_for_one` supervisor | crashes restart the actor; the date is retried |

pub mod base_service;
pub mod metrics;
pub mod parse;
pub mod scheduler;
pub mod writer;

pub use base_service::{BaseService, DateReport, ServiceMsg};
pub use metrics::{Metrics, ServiceCounters};
pub use scheduler::{
    CrunchReport, OnTick, Outcome, Pipeline, PipelineConfig, Scheduler, SchedulerMsg,
};
pub use writer::{Writer, WriterMsg};

use std::cell::Cell;

use crate::store::Table;

/// One of the three services: what the sample's subclasses said (the view and the table).
pub trait Service: 'static {
    /// Which one.
    const ID: ServiceId;
    /// The view, relative to `BASE_URL`, without the dates (the sample's `get_view`).
    fn get_view() -> &'static str;
}

/// Bulk SMS cost (`bulkSms/sent`, metric cost) → `bulk_sms_networks_cost`.
pub struct BulkSmsCost;
/// Bulk SMS failed (`bulkSms/failed`, metric count) → `bulk_sms_networks_failed`.
pub struct BulkSmsFailed;
/// Airtime delivered (`airtime/delivered`, metric cost) → `airtime_networks_delivered`.
pub struct AirtimeDelivered;

impl Service for BulkSmsCost {
    const ID: ServiceId = ServiceId::BulkSmsCost;
    fn get_view() -> &'static str {
        "bulkSms/sent?granularity=day&metric=cost&currencyCode=USD"
    }
}

impl Service for BulkSmsFailed {
    const ID: ServiceId = ServiceId::BulkSmsFailed;
    fn get_view() -> &'static str {
        "bulkSms/failed?granularity=day&metric=count"
    }
}

impl Service for AirtimeDelivered {
    const ID: ServiceId = ServiceId::AirtimeDelivered;
    fn get_view() -> &'static str {
        "airtime/delivered?granularity=day&metric=cost&currencyCode=USD"
    }
}

/// The three services by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceId {
    /// [`BulkSmsCost`].
    BulkSmsCost,
    /// [`BulkSmsFailed`].
    BulkSmsFailed,
    /// [`AirtimeDelivered`].
    AirtimeDelivered,
}

impl ServiceId {
    /// All three.
    pub const ALL: [ServiceId; 3] = [
        ServiceId::BulkSmsCost,
        ServiceId::BulkSmsFailed,
        ServiceId::AirtimeDelivered,
    ];

    /// `bulk-sms-cost`, `bulk-sms-failed`, `airtime-delivered`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceId::BulkSmsCost => "bulk-sms-cost",
            ServiceId::BulkSmsFailed => "bulk-sms-failed",
            ServiceId::AirtimeDelivered => "airtime-delivered",
        }
    }

    /// Its table.
    pub fn table(self) -> Table {
        match self {
            ServiceId::BulkSmsCost => Table::BulkSmsNetworksCost,
            ServiceId::BulkSmsFailed => Table::BulkSmsNetworksFailed,
            ServiceId::AirtimeDelivered => Table::AirtimeNetworksDelivered,
        }
    }

    /// Position in [`ServiceId::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// By name.
    pub fn parse(s: &str) -> Result<ServiceId, String> {
        ServiceId::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            format!("unknown service {s:?}; the services are bulk-sms-cost, bulk-sms-failed, airtime-delivered")
        })
    }
}

/// A graceful-stop request shared by the pipeline's actors: once set, services start no new
/// user, in-flight users finish, the writer flushes, the cursor does not move past the date.
#[derive(Debug, Default)]
pub struct StopFlag {
    set: Cell<bool>,
    ev: evergreen::Event,
}

impl StopFlag {
    /// Requests the stop.
    pub fn set(&self) {
        self.set.set(true);
        self.ev.set();
    }

    /// Whether it was requested.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Waits up to `timeout` for the request; returns whether it came.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        self.ev.wait_timeout(timeout)
    }

    /// Waits for the request.
    pub fn wait(&self) {
        self.ev.wait()
    }
}
