//! The queries in `examples/queries.sql` run against a table the migrations made and
//! filled through the writer's own store, so that the file the README points
//! operators to stays valid as the schema changes, and each query returns rows.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use ponix_writer::envelope::{self, ProcessedEnvelope};
use ponix_writer::row::ProcessedEnvelopeRow;
use ponix_writer::store::Store;
use prost::Message;
use prost_types::Timestamp;
use testkit::Endpoints;

testkit::integration_tests!(every_example_query_runs_and_returns_rows);

const DATABASE: &str = "examples_check";
const ROWS: u64 = 20;

async fn every_example_query_runs_and_returns_rows(endpoints: Endpoints) -> anyhow::Result<()> {
    let config = support::migrated_database(&endpoints, DATABASE).await?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let rows = (0..ROWS)
        .map(|index| {
            let at = |seconds| Some(Timestamp { seconds, nanos: 0 });
            let payload = serde_json::json!({ "temperature": 20.5 + index as f64 });
            let bytes = ProcessedEnvelope {
                organization_id: format!("org-{}", index % 2),
                end_device_id: format!("device-{}", index % 5),
                occurred_at: at(now - 60 * index as i64),
                processed_at: at(now - 60 * index as i64 + 2),
                data: Some(ponix_writer::payload::json_to_struct(&payload)?),
            }
            .encode_to_vec();
            let valid = envelope::decode(&bytes).map_err(|invalid| anyhow::anyhow!("{invalid}"))?;
            anyhow::Ok(ProcessedEnvelopeRow::new(valid, index + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let store = Store::new(&config.clickhouse);
    store.insert_batch(&rows).await?;
    // One message stored twice, as a redelivery would: the copies query must see it.
    store.insert_batch(&rows[..1]).await?;

    let path = support::fixtures::fixtures_dir().join("../examples/queries.sql");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let queries = statements(&text);
    ensure!(
        queries.len() >= 6,
        "only {} queries in {}",
        queries.len(),
        path.display()
    );
    let client = support::clickhouse(&endpoints, DATABASE);
    for query in &queries {
        let answer = client
            .query(&format!("SELECT count() FROM ({query})"))
            .fetch_one::<u64>()
            .await
            .with_context(|| format!("running\n{query}"))?;
        ensure!(answer > 0, "no rows from\n{query}");
    }
    let copies: i64 = client
        .query(
            queries
                .iter()
                .find(|q| q.contains("copies_not_yet_merged"))
                .context("the copies query")?,
        )
        .fetch_one()
        .await?;
    ensure!(
        copies == 1,
        "the copies query counts {copies} copies, 1 was stored"
    );
    Ok(())
}

/// The statements of a SQL file: comment lines dropped, split at a `;` that ends a line.
fn statements(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    code.split(";\n")
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}
