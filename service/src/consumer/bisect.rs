//! Finding the rows ClickHouse rejects on their own: a refused batch is split in
//! halves, recursively, so that the good rows commit and only the bad ones are
//! singled out, within a budget of INSERT statements.

use crate::store::{ErrorClass, StoreError};

/// Upper bound on INSERT statements spent bisecting one batch. Past it, the rows not
/// yet tried are NAKed and come back in a later batch.
pub(super) const MAX_INSERTS_PER_BATCH: usize = 64;

/// What happened to one row of a batch.
#[derive(Debug, Clone)]
pub(super) enum RowOutcome {
    Committed,
    /// Rejected on its own (a data error on a single-row INSERT).
    Rejected(StoreError),
    /// Not stored, for a reason that is not about this row: ClickHouse unavailable,
    /// or a table or credential problem. The batch holds it and retries.
    Failed(StoreError),
    /// Not tried: bisecting the batch spent its INSERT budget before reaching it.
    /// NAKed, so that it comes back in a batch of its own.
    Untried(StoreError),
}
/// Inserts `rows` with one `insert` call; when that fails with a data error, splits
/// the rows in halves and inserts each separately, recursively, so that the rows
/// the destination accepts commit and those it rejects on their own are singled out.
/// At most `budget` calls. Any other error stops the process: the rows not yet
/// committed fail with it.
pub(super) async fn insert_bisecting<'a, T, F, Fut>(
    rows: &'a [T],
    budget: usize,
    mut insert: F,
) -> Vec<RowOutcome>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    // A stack of row ranges still to insert.
    let mut pending: Vec<std::ops::Range<usize>> = Vec::new();
    pending.push(0..rows.len());
    let mut calls = 0usize;
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        if calls == budget {
            let error = StoreError::bisection_budget_spent(budget);
            for r in std::iter::once(range).chain(pending.drain(..)) {
                fill(&mut outcomes, r, RowOutcome::Untried(error.clone()));
            }
            break;
        }
        calls += 1;
        match insert(&rows[range.clone()]).await {
            Ok(()) => fill(&mut outcomes, range, RowOutcome::Committed),
            Err(error) if error.class() == ErrorClass::Data && range.len() > 1 => {
                let middle = range.start + range.len() / 2;
                // Popped in order: first half first.
                pending.push(middle..range.end);
                pending.push(range.start..middle);
            }
            Err(error) if error.class() == ErrorClass::Data => {
                fill(&mut outcomes, range, RowOutcome::Rejected(error));
            }
            Err(error) => {
                // Retryable or destination: the other ranges would fail the same way.
                for r in std::iter::once(range).chain(pending.drain(..)) {
                    fill(&mut outcomes, r, RowOutcome::Failed(error.clone()));
                }
                break;
            }
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| RowOutcome::Untried(StoreError::bisection_budget_spent(budget)))
        })
        .collect();
    all_rejected_means_destination(outcomes)
}

fn fill(outcomes: &mut [Option<RowOutcome>], range: std::ops::Range<usize>, outcome: RowOutcome) {
    for slot in &mut outcomes[range] {
        *slot = Some(outcome.clone());
    }
}

/// If every row of a multi-row batch was rejected on its own, the rows are not the
/// problem: treat them as failed with a destination error (kept, not dead-lettered).
fn all_rejected_means_destination(outcomes: Vec<RowOutcome>) -> Vec<RowOutcome> {
    let all_rejected = outcomes.len() > 1
        && outcomes
            .iter()
            .all(|o| matches!(o, RowOutcome::Rejected(_)));
    if !all_rejected {
        return outcomes;
    }
    outcomes
        .into_iter()
        .map(|o| match o {
            RowOutcome::Rejected(error) => {
                RowOutcome::Failed(error.with_class(ErrorClass::Destination))
            }
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_error() -> StoreError {
        StoreError::from_client(&clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: Cannot parse JSON. (INCORRECT_DATA)".into(),
        ))
    }

    fn retryable_error() -> StoreError {
        StoreError::from_client(&clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts. (TOO_MANY_PARTS)".into(),
        ))
    }

    /// Runs the bisection over rows 0..n with an insert that rejects any chunk
    /// containing a row in `bad`; returns the outcomes and the chunks tried.
    fn bisect(n: usize, bad: &[usize], budget: usize) -> (Vec<RowOutcome>, Vec<Vec<usize>>) {
        let rows: Vec<usize> = (0..n).collect();
        let calls = std::cell::RefCell::new(Vec::new());
        let outcomes = futures::executor::block_on(insert_bisecting(&rows, budget, |chunk| {
            calls.borrow_mut().push(chunk.to_vec());
            let rejected = chunk.iter().any(|row| bad.contains(row));
            async move { if rejected { Err(data_error()) } else { Ok(()) } }
        }));
        (outcomes, calls.into_inner())
    }

    #[test]
    fn a_clean_batch_is_one_insert() {
        let (outcomes, calls) = bisect(1000, &[], 64);
        assert_eq!(calls.len(), 1);
        assert!(outcomes.iter().all(|o| matches!(o, RowOutcome::Committed)));
    }

    #[test]
    fn bisection_singles_out_rejected_rows_and_commits_the_rest() {
        let (outcomes, calls) = bisect(100, &[17, 63], 64);
        for (row, outcome) in outcomes.iter().enumerate() {
            if row == 17 || row == 63 {
                assert!(
                    matches!(outcome, RowOutcome::Rejected(_)),
                    "row {row}: {outcome:?}"
                );
            } else {
                assert!(
                    matches!(outcome, RowOutcome::Committed),
                    "row {row}: {outcome:?}"
                );
            }
        }
        // Every row committed exactly once.
        let mut committed: Vec<usize> = calls
            .iter()
            .filter(|chunk| !chunk.contains(&17) && !chunk.contains(&63))
            .flatten()
            .copied()
            .collect();
        committed.sort_unstable();
        assert_eq!(committed.len(), 98);
        committed.dedup();
        assert_eq!(committed.len(), 98);
        // Logarithmic, not linear.
        assert!(calls.len() <= 2 * 2 * 7 + 1, "{} calls", calls.len());
    }

    #[test]
    fn bisection_stops_at_its_budget_without_losing_rows() {
        let (outcomes, calls) = bisect(64, &(0..64).step_by(2).collect::<Vec<_>>(), 10);
        assert_eq!(calls.len(), 10);
        assert!(outcomes.iter().any(|o| matches!(o, RowOutcome::Untried(_))));
        // Nothing is rejected without having been tried alone.
        for (row, outcome) in outcomes.iter().enumerate() {
            if matches!(outcome, RowOutcome::Rejected(_)) {
                assert!(calls.contains(&vec![row]), "row {row} rejected untried");
            }
        }
    }

    #[test]
    fn a_retryable_error_fails_the_whole_batch_after_one_insert() {
        let rows: Vec<usize> = (0..10).collect();
        let mut calls = 0;
        let outcomes = futures::executor::block_on(insert_bisecting(&rows, 64, |_| {
            calls += 1;
            async { Err(retryable_error()) }
        }));
        assert_eq!(calls, 1);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, RowOutcome::Failed(e) if e.is_retryable()))
        );
    }

    #[test]
    fn all_rows_rejected_is_treated_as_a_destination_failure() {
        let outcomes = all_rejected_means_destination(vec![
            RowOutcome::Rejected(data_error()),
            RowOutcome::Rejected(data_error()),
        ]);
        assert!(outcomes.iter().all(|o| matches!(
            o,
            RowOutcome::Failed(e) if e.class() == ErrorClass::Destination
        )));

        // One good row proves the table works: the rejected one really is bad data.
        let outcomes = all_rejected_means_destination(vec![
            RowOutcome::Rejected(data_error()),
            RowOutcome::Committed,
        ]);
        assert!(matches!(outcomes[0], RowOutcome::Rejected(_)));

        // A single-row batch cannot tell; the classification stands.
        let outcomes = all_rejected_means_destination(vec![RowOutcome::Rejected(data_error())]);
        assert!(matches!(outcomes[0], RowOutcome::Rejected(_)));
    }
}
