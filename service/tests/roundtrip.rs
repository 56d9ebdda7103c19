//! Struct → JSON round-trips through the real ClickHouse engine, with proptest
//! (an e2e step of its own). Each generated `Struct` goes through the writer's
//! own path (encode, `envelope::decode`, `ProcessedEnvelopeRow`, `Store`), is
//! read back from the JSON column, and must equal what the fidelity contract
//! (`payload::expected_after_clickhouse`) promises. PROPTEST_CASES sets the
//! case count (default 128, sized for CI).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use ponix_writer::envelope::{self, ProcessedEnvelope};
use ponix_writer::payload;
use ponix_writer::row::ProcessedEnvelopeRow;
use ponix_writer::store::Store;
use proptest::test_runner::{
    Config as ProptestConfig, FileFailurePersistence, TestCaseError, TestRunner,
};
use prost::Message as _;
use prost_types::{Struct, Timestamp};
use testkit::Endpoints;

testkit::integration_tests!(generated_structs_round_trip_through_clickhouse_under_the_contract);

const DATABASE: &str = "roundtrip_check";
const DEFAULT_CASES: u32 = 128;

async fn generated_structs_round_trip_through_clickhouse_under_the_contract(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let config = support::migrated_database(&endpoints, DATABASE).await?;
    let store = Store::new(&config.clickhouse);
    let reader = support::clickhouse(&endpoints, DATABASE);
    let runtime = tokio::runtime::Handle::current();

    // proptest drives synchronous closures; each case blocks on the async store
    // from a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(proptest_config());
        let next_case = AtomicU64::new(0);
        runner
            .run(&testkit::strategies::arb_struct(), |sent| {
                let case = next_case.fetch_add(1, Ordering::Relaxed);
                runtime.block_on(round_trip(&store, &reader, case, sent))
            })
            .map_err(|failure| anyhow::anyhow!("{failure}"))
    })
    .await?
}

async fn round_trip(
    store: &Store,
    reader: &clickhouse::Client,
    case: u64,
    sent: Struct,
) -> Result<(), TestCaseError> {
    let device = format!("case-{case}");
    let at = Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    let bytes = ProcessedEnvelope {
        organization_id: "roundtrip".into(),
        end_device_id: device.clone(),
        occurred_at: at,
        processed_at: at,
        data: Some(sent.clone()),
    }
    .encode_to_vec();
    let valid = match envelope::decode(&bytes) {
        Ok(valid) => valid,
        // The contract rejects some payloads up front (keys that collide as
        // ClickHouse paths); those never reach the table.
        Err(invalid) => {
            return Err(TestCaseError::reject(invalid.to_string()));
        }
    };
    store
        // One case, one message: the case number stands in for its stream sequence.
        .insert_batch(&[ProcessedEnvelopeRow::new(valid, case + 1)])
        .await
        .map_err(|err| TestCaseError::fail(format!("insert failed: {err}")))?;
    let stored: String = reader
        .query("SELECT data FROM processed_envelopes WHERE end_device_id = ?")
        .bind(&device)
        .fetch_one()
        .await
        .map_err(|err| TestCaseError::fail(format!("select failed: {err}")))?;
    let received = payload::json_str_to_struct(&stored)
        .map_err(|err| TestCaseError::fail(format!("stored JSON {stored:?}: {err}")))?;
    let expected = payload::expected_after_clickhouse(&sent);
    if payload::structs_identical(&received, &expected) {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "ClickHouse gave back {stored}\nthe contract promises {}",
            payload::to_json_value(&expected)
                .map(|v| v.to_string())
                .unwrap_or_default()
        )))
    }
}

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Committed, so a failing case found once is replayed on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/roundtrip.txt"
        )))),
        ..ProptestConfig::default()
    }
}
