//! The ClickHouse side of the bench: the raw insert ceiling, and the queries that
//! count and find rows.

use anyhow::{Context, bail};
use clickhouse::Client;
use futures::StreamExt as _;
use ponix_writer::config::ClickHouseConfig;
use ponix_writer::envelope;
use ponix_writer::row::ProcessedEnvelopeRow;
use ponix_writer::sample::{self, Payload};
use ponix_writer::store::Store;
use prost::Message as _;
use tokio::time::Instant;

use crate::measure::{CpuClocks, CpuSpent, Progress, Rate, thousands};

/// The scratch table the ceiling inserts into: `AS` the writer's table, so the same
/// engine, sorting key and column types.
const CEILING_TABLE: &str = "bench_insert_ceiling";

pub struct Tables {
    client: Client,
    config: ClickHouseConfig,
}

impl Tables {
    pub fn new(config: &ClickHouseConfig) -> Tables {
        let client = Client::default()
            .with_url(config.url.as_str())
            .with_user(config.username.as_str())
            .with_password(config.password.expose())
            .with_database(config.database.as_str());
        Tables {
            client,
            config: config.clone(),
        }
    }

    fn table(&self) -> &str {
        &self.config.table
    }

    pub async fn require_empty(&self) -> anyhow::Result<()> {
        let rows = self.count(self.table(), false).await?;
        if rows != 0 {
            bail!(
                "table {} already holds {rows} rows: the bench needs a fresh environment (`cargo xtask down`, then `cargo xtask bench`)",
                self.table()
            );
        }
        Ok(())
    }

    async fn count(&self, table: &str, final_: bool) -> anyhow::Result<u64> {
        let modifier = if final_ { " FINAL" } else { "" };
        self.client
            .query(&format!("SELECT count() FROM {table}{modifier}"))
            .fetch_one::<u64>()
            .await
            .with_context(|| format!("counting the rows of {table}"))
    }

    /// Rows of the writer's table, one per message (`FINAL` merges re-inserts).
    pub async fn count_final(&self) -> anyhow::Result<u64> {
        self.count(self.table(), true).await
    }

    pub async fn truncate(&self) -> anyhow::Result<()> {
        self.client
            .query(&format!("TRUNCATE TABLE {}", self.table()))
            .execute()
            .await
            .with_context(|| format!("truncating {}", self.table()))
    }

    /// Stream sequences above `floor` that are queryable now.
    pub async fn sequences_above(&self, floor: u64) -> anyhow::Result<Vec<u64>> {
        self.client
            .query(&format!(
                "SELECT stream_sequence FROM {} WHERE stream_sequence > ?",
                self.table()
            ))
            .bind(floor)
            .fetch_all::<u64>()
            .await
            .context("polling for new rows")
    }

    /// Inserts envelopes `0..messages` as rows (stream sequence `i + 1`, as the
    /// backlog was published) into a scratch copy of the table through the writer's
    /// [`Store`], `batch_size` rows per INSERT and as many INSERTs at once as the
    /// writer runs, and times only the inserts: the rows are decoded and converted
    /// beforehand.
    pub async fn insert_ceiling(
        &self,
        payload: Payload,
        messages: u64,
        batch_size: usize,
        clocks: &CpuClocks,
    ) -> anyhow::Result<(Rate, CpuSpent)> {
        self.client
            .query(&format!("DROP TABLE IF EXISTS {CEILING_TABLE}"))
            .execute()
            .await
            .context("dropping an old ceiling table")?;
        self.client
            .query(&format!("CREATE TABLE {CEILING_TABLE} AS {}", self.table()))
            .execute()
            .await
            .context("creating the ceiling's scratch table")?;

        let mut rows = Vec::with_capacity(usize::try_from(messages).unwrap_or(0));
        for index in 0..messages {
            let bytes = sample::envelope(payload, index).encode_to_vec();
            let valid = envelope::decode(&bytes).map_err(|invalid| {
                anyhow::anyhow!("sample envelope {index} is invalid: {}", invalid.detail)
            })?;
            rows.push(ProcessedEnvelopeRow::new(valid, index + 1));
        }

        let store = Store::new(&ClickHouseConfig {
            table: CEILING_TABLE.to_owned(),
            ..self.config.clone()
        });
        let started = Instant::now();
        let cpu_before = clocks.read();
        let mut progress = Progress::start();
        let mut inserted = 0u64;
        let mut batches = futures::stream::iter(rows.chunks(batch_size))
            .map(|chunk| {
                let store = &store;
                async move { store.insert_batch(chunk).await.map(|()| chunk.len()) }
            })
            // The writer's insert concurrency, so the ceiling is reachable by it.
            .buffered(self.config.insert_concurrency.max(1));
        while let Some(result) = batches.next().await {
            inserted += result.context("ceiling insert")? as u64;
            if progress.due() {
                println!("  inserted {}", thousands(inserted));
            }
        }
        let rate = Rate::new(inserted, started.elapsed());
        let spent = clocks.since(cpu_before);
        drop(batches);
        drop(rows);

        let stored = self.count(CEILING_TABLE, true).await?;
        if stored != messages {
            bail!("the ceiling inserted {messages} rows but {CEILING_TABLE} holds {stored}");
        }
        self.client
            .query(&format!("DROP TABLE {CEILING_TABLE}"))
            .execute()
            .await
            .context("dropping the ceiling's scratch table")?;
        Ok((rate, spent))
    }
}
