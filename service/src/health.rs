//! Readiness: what `/readyz` reports. Start-up and the consumer record what they
//! know here; the HTTP endpoint ([`crate::http`]) only reads it, so the data path
//! never depends on the web server.
//!
//! Ready means the writer can do its job: connected to NATS, ClickHouse answered,
//! migrations done, stream and consumer set up, and no batch held through an outage
//! (see the consumer's "Outages"). Each unmet condition is one reason. A store reason
//! names the kind of failure, its class and code and how long it has lasted, never
//! ClickHouse's exception text, which can quote data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// What `/readyz` reports, updated by start-up and by the consumer.
#[derive(Debug, Default)]
pub struct Health {
    nats: OnceLock<async_nats::Client>,
    clickhouse_answered: AtomicBool,
    migrations_done: AtomicBool,
    /// What the migrations are doing while they are not done (waiting for the lease,
    /// running goose), for `/readyz`.
    migrations_status: Mutex<Option<String>>,
    /// The stream, the dead-letter stream and the durable consumer exist: only then
    /// does a message published now get consumed.
    consumer_ready: AtomicBool,
    /// Why the last insert attempt failed, while that failure means the writer is
    /// not making progress; cleared by the next successful insert.
    store_problem: Mutex<Option<String>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// The connection whose state `/readyz` checks from now on.
    pub fn set_nats(&self, client: async_nats::Client) {
        // Set once at start-up; a second call would be a wiring bug, and keeping the
        // first client is the harmless reaction.
        let _ = self.nats.set(client);
    }

    pub fn set_clickhouse_answered(&self) {
        self.clickhouse_answered.store(true, Ordering::Relaxed);
    }

    pub fn set_migrations_done(&self) {
        *lock(&self.migrations_status) = None;
        self.migrations_done.store(true, Ordering::Relaxed);
    }

    /// What the migrations are doing, until they are done.
    pub fn set_migrations_status(&self, status: String) {
        *lock(&self.migrations_status) = Some(status);
    }

    pub fn set_consumer_ready(&self) {
        self.consumer_ready.store(true, Ordering::Relaxed);
    }

    pub fn store_succeeded(&self) {
        self.clickhouse_answered.store(true, Ordering::Relaxed);
        *self.lock_problem() = None;
    }

    pub fn store_failed(&self, reason: String) {
        *self.lock_problem() = Some(reason);
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        match self.nats.get().map(async_nats::Client::connection_state) {
            Some(async_nats::connection::State::Connected) => {}
            Some(state) => reasons.push(format!("nats: {state}")),
            None => reasons.push("nats: not connected yet".to_owned()),
        }
        if !self.clickhouse_answered.load(Ordering::Relaxed) {
            reasons.push("clickhouse: has not answered yet".to_owned());
        }
        if !self.migrations_done.load(Ordering::Relaxed) {
            match lock(&self.migrations_status).as_ref() {
                Some(status) => reasons.push(format!("migrations: not done yet; {status}")),
                None => reasons.push("migrations: not done yet".to_owned()),
            }
        }
        if !self.consumer_ready.load(Ordering::Relaxed) {
            reasons.push("jetstream: stream and consumer not set up yet".to_owned());
        }
        if let Some(problem) = self.lock_problem().as_ref() {
            reasons.push(format!("store: {problem}"));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn lock_problem(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        lock(&self.store_problem)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave an Option half-written.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_what_the_migrations_are_doing() {
        let health = Health::new();
        health.set_migrations_status(
            "waiting for the migration lease, held by host-a pid 7 since 2026-12-06T05:00:00Z"
                .to_owned(),
        );
        let reasons = health.readiness().expect_err("not ready while waiting");
        assert!(
            reasons.contains(
                &"migrations: not done yet; waiting for the migration lease, held by host-a pid 7 since 2026-12-06T05:00:00Z"
                    .to_owned()
            ),
            "{reasons:?}"
        );
        health.set_migrations_done();
        let reasons = health.readiness().expect_err("other conditions unmet");
        assert!(
            reasons
                .iter()
                .all(|reason| !reason.starts_with("migrations")),
            "{reasons:?}"
        );
    }

    #[test]
    fn readiness_lists_every_missing_condition() {
        let health = Health::new();
        let reasons = health.readiness().expect_err("not ready at start");
        assert_eq!(
            reasons,
            vec![
                "nats: not connected yet",
                "clickhouse: has not answered yet",
                "migrations: not done yet",
                "jetstream: stream and consumer not set up yet"
            ]
        );
        health.set_clickhouse_answered();
        health.set_migrations_done();
        health.set_consumer_ready();
        health.store_failed("permanent store error: UNKNOWN_TABLE".to_owned());
        let reasons = health.readiness().expect_err("still not ready");
        assert_eq!(
            reasons,
            vec![
                "nats: not connected yet",
                "store: permanent store error: UNKNOWN_TABLE"
            ]
        );
        health.store_succeeded();
        assert_eq!(
            health.readiness().expect_err("no nats"),
            vec!["nats: not connected yet"]
        );
    }
}
