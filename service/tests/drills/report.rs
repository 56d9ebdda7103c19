//! A drill's one-line result, and the checks every drill shares.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::plan::Plan;
use crate::rig::DeadLetter;
use crate::writer::{Metrics, names};

/// The prefix of the line `cargo xtask drill` reads. The fields follow, tab-separated:
/// drill, result, published, stored, missing, duplicates, dead-lettered (of injected),
/// redeliveries, NAKs, insert retries, re-inserted, drain, evidence.
pub const ROW_PREFIX: &str = "drill-row";

#[derive(Debug)]
pub struct Report {
    pub drill: &'static str,
    pub published: u64,
    pub injected_invalid: u64,
    pub stored: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub redeliveries: u64,
    pub naks: u64,
    /// INSERTs repeated for batches held through an outage.
    pub insert_retries: u64,
    pub insert_failures: u64,
    pub ack_failures: u64,
    /// What the writer's own `dead_lettered_total` counted.
    pub metrics_dead_lettered: u64,
    /// Rows inserted more than once (counted with merges stopped), which FINAL and the
    /// final merge reduced to one: evidence that a committed batch came back.
    pub reinserted: u64,
    pub drain: Duration,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        drill: &'static str,
        plan: &Plan,
        stored: &BTreeMap<u64, u64>,
        dead_letters: &[DeadLetter],
        reinserted: u64,
        rows_after_merge: u64,
        metrics: &Metrics,
        drain: Duration,
    ) -> Report {
        let mut failures = Vec::new();
        let missing: Vec<u64> = (1..=plan.total)
            .filter(|id| plan.is_valid(*id) && !stored.contains_key(id))
            .collect();
        let duplicates: u64 = stored.values().map(|copies| copies - 1).sum();
        let unexpected: Vec<u64> = stored
            .keys()
            .copied()
            .filter(|id| !plan.is_valid(*id))
            .collect();
        let stored_valid = stored.len() as u64 - unexpected.len() as u64;
        if !missing.is_empty() {
            failures.push(format!(
                "{} valid envelopes missing, e.g. ids {:?}",
                missing.len(),
                first(&missing)
            ));
        }
        if duplicates > 0 {
            let ids: Vec<u64> = stored
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(id, _)| *id)
                .collect();
            failures.push(format!(
                "{duplicates} duplicate rows under FINAL, e.g. ids {:?}",
                first(&ids)
            ));
        }
        if !unexpected.is_empty() {
            failures.push(format!(
                "rows that should not exist (invalid or unknown ids): {:?}",
                first(&unexpected)
            ));
        }
        if rows_after_merge != stored.len() as u64 {
            failures.push(format!(
                "after OPTIMIZE FINAL the table holds {rows_after_merge} rows for {} messages",
                stored.len()
            ));
        }

        // Dead letters: exactly the injected invalid envelopes, each once, each with
        // its reason, none delivered more than twice.
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for letter in dead_letters {
            let Some(id) = letter.id else {
                failures.push(format!(
                    "a dead letter without a {} header",
                    crate::rig::HEADER_DRILL_ID
                ));
                continue;
            };
            *seen.entry(id).or_default() += 1;
            match plan.invalid.get(&id) {
                None => failures.push(format!(
                    "valid envelope {id} was dead-lettered ({})",
                    letter.reason
                )),
                Some(kind) if kind.reason() != letter.reason => failures.push(format!(
                    "envelope {id} was dead-lettered as {:?}, expected {:?}",
                    letter.reason,
                    kind.reason()
                )),
                Some(_) => {}
            }
            if letter.delivery_count > 2 {
                failures.push(format!(
                    "invalid envelope {id} was delivered {} times before it was dead-lettered",
                    letter.delivery_count
                ));
            }
        }
        let twice: Vec<u64> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        if !twice.is_empty() {
            failures.push(format!("dead-lettered more than once: {:?}", first(&twice)));
        }
        let not_dead_lettered: Vec<u64> = plan
            .invalid
            .keys()
            .copied()
            .filter(|id| !seen.contains_key(id))
            .collect();
        if !not_dead_lettered.is_empty() {
            failures.push(format!(
                "{} invalid envelopes not on the dead-letter stream, e.g. {:?}",
                not_dead_lettered.len(),
                first(&not_dead_lettered)
            ));
        }

        let inserts = metrics.sum(names::INSERTS, "");
        let inserts_ok = metrics.sum(names::INSERTS, "result=\"ok\"");
        Report {
            drill,
            published: plan.total,
            injected_invalid: plan.invalid.len() as u64,
            stored: stored_valid,
            missing: missing.len() as u64,
            duplicates,
            dead_lettered: dead_letters.len() as u64,
            redeliveries: metrics.sum(names::REDELIVERIES, ""),
            naks: metrics.sum(names::NAKS, ""),
            insert_retries: metrics.sum(names::INSERT_RETRIES, ""),
            insert_failures: inserts - inserts_ok,
            ack_failures: metrics.sum(names::ACK_FAILURES, ""),
            metrics_dead_lettered: metrics.sum(names::DEAD_LETTERED, ""),
            reinserted,
            drain,
            notes: Vec::new(),
            failures,
        }
    }

    /// Evidence that the fault happened, shown in the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A condition the drill needs; unmet, the drill fails with `what`.
    pub fn require(&mut self, holds: bool, what: impl Into<String>) {
        if !holds {
            self.failures.push(what.into());
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The tab-separated line `cargo xtask drill` turns into a table row.
    pub fn line(&self) -> String {
        let fields = [
            self.drill.to_owned(),
            if self.passed() {
                "ok".into()
            } else {
                "FAILED".into()
            },
            self.published.to_string(),
            self.stored.to_string(),
            self.missing.to_string(),
            self.duplicates.to_string(),
            format!("{}/{}", self.dead_lettered, self.injected_invalid),
            self.redeliveries.to_string(),
            self.naks.to_string(),
            self.insert_retries.to_string(),
            self.reinserted.to_string(),
            format!("{:.1}s", self.drain.as_secs_f64()),
            self.notes.join("; "),
        ];
        format!("{ROW_PREFIX}\t{}", fields.join("\t"))
    }
}

fn first(ids: &[u64]) -> &[u64] {
    &ids[..ids.len().min(10)]
}
