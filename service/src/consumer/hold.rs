//! Holding a batch through an outage: while ClickHouse cannot store its rows for a
//! reason that is not about them, the batch stays in memory under progress acks and
//! its INSERT is retried with backoff, spending no delivery (see "Outages" in the
//! consumer's docs). Readiness and the log say what is wrong on every attempt.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Consumer;
use super::bisect::RowOutcome;
use crate::metrics::Metrics;
use crate::row::ProcessedEnvelopeRow;

/// Counts a batch as held for as long as it lives, however its future ends (finished,
/// or dropped when shutdown abandons it).
struct Held<'a>(&'a Metrics);

impl<'a> Held<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.batch_held(true);
        Self(metrics)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.batch_held(false);
    }
}

impl Consumer {
    /// Stores the rows, holding them through an outage: while INSERTs fail for a
    /// reason that is not about the rows ([`RowOutcome::Failed`]: ClickHouse
    /// unavailable, a table or credential problem), the batch stays in memory under
    /// progress acks and the INSERT of the rows not yet stored is repeated with
    /// capped, jittered backoff, until it succeeds or shutdown is requested. The
    /// messages spend no delivery meanwhile, however long the outage lasts.
    pub(super) async fn store_holding(
        &self,
        rows: &[ProcessedEnvelopeRow],
        shutdown: &CancellationToken,
    ) -> Vec<RowOutcome> {
        let mut outcomes = self.store_rows(rows).await;
        let mut held: Option<(Held<'_>, Instant)> = None;
        let mut attempt: u32 = 0;
        loop {
            let waiting: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| matches!(o, RowOutcome::Failed(_)))
                .map(|(index, _)| index)
                .collect();
            let since = held.as_ref().map_or_else(Instant::now, |(_, since)| *since);
            self.report_store_health(&outcomes, waiting.len(), since, attempt)
                .await;
            if waiting.is_empty() || shutdown.is_cancelled() {
                return outcomes;
            }
            if held.is_none() {
                held = Some((Held::new(&self.metrics), since));
            }
            attempt = attempt.saturating_add(1);
            let pause = self.backoff(i64::from(attempt));
            tokio::select! {
                () = shutdown.cancelled() => return outcomes,
                () = tokio::time::sleep(pause) => {}
            }
            self.metrics.insert_retried();
            let retry: Vec<ProcessedEnvelopeRow> =
                waiting.iter().map(|&index| rows[index].clone()).collect();
            let retried = self.store_rows(&retry).await;
            for (index, outcome) in waiting.into_iter().zip(retried) {
                outcomes[index] = outcome;
            }
        }
    }

    /// Readiness and logs after each attempt to store a batch. `/readyz` gets the
    /// class and code of the failure, never ClickHouse's exception text (which can
    /// quote data); the log has the whole error.
    async fn report_store_health(
        &self,
        outcomes: &[RowOutcome],
        waiting: usize,
        since: Instant,
        attempt: u32,
    ) {
        let failure = outcomes.iter().find_map(|o| match o {
            RowOutcome::Failed(error) => Some(error),
            _ => None,
        });
        let Some(error) = failure else {
            if outcomes.iter().any(|o| matches!(o, RowOutcome::Committed)) {
                self.health.store_succeeded();
            }
            return;
        };
        let what = if error.is_permanent() {
            "table or credential problem"
        } else if error.is_unreachable() {
            "ClickHouse unreachable"
        } else {
            "ClickHouse refusing inserts"
        };
        let code = error
            .code()
            .map_or_else(|| "none".to_owned(), |code| code.to_string());
        self.health.store_failed(format!(
            "{what} for {}s (class {}, code {code}); holding {waiting} messages and retrying; see the log",
            since.elapsed().as_secs(),
            error.class().as_str(),
        ));
        if error.is_permanent() {
            tracing::error!(
                table = self.store.table(),
                code = error.code(),
                class = error.class().as_str(),
                attempt,
                messages = waiting,
                "permanent store error: {}; the batch is held and retried until the table is fixed \
                 (its messages spend no delivery meanwhile)",
                error.message()
            );
            // Re-read the table schema on the next attempt, so that a fix applied
            // meanwhile is used without a restart.
            self.store.clear_cached_metadata().await;
        } else {
            tracing::warn!(
                table = self.store.table(),
                code = error.code(),
                error = %error,
                attempt,
                messages = waiting,
                "insert failed; holding the batch and retrying with backoff"
            );
        }
    }
}
