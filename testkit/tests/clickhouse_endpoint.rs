//! The ClickHouse endpoint, as real clients use it: clickhouse-rs (validated
//! RowBinary insert with LZ4, selects with `?fields` and `.param()`, DESCRIBE),
//! goose through clickhouse-go's HTTP protocol, and plain HTTP requests.
//! Against the chDB-backed endpoint these prove it is a faithful stand-in; the
//! same tests pass against a real ClickHouse server.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeZone, Utc};
use clickhouse::{Client, Compression, Row};
use serde::{Deserialize, Serialize};
use testkit::Endpoints;
use testkit::localenv::goose::Goose;

testkit::integration_tests!(
    clickhouse_rs_validated_lz4_insert_round_trips,
    clickhouse_rs_server_side_parameters_round_trip,
    clickhouse_rs_describe_lists_the_columns,
    clickhouse_rs_reports_server_errors_with_their_code,
    goose_over_http_applies_reports_and_rolls_back,
    plain_http_queries_round_trip,
);

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Reading {
    id: u64,
    device: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    at: DateTime<Utc>,
    data: String,
}

/// A table name of this test binary's own, so tests can run side by side.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn client(endpoints: &Endpoints) -> Client {
    Client::default()
        .with_url(&endpoints.clickhouse_url)
        .with_user(&endpoints.username)
        .with_password(&endpoints.password)
        .with_database(&endpoints.database)
        .with_compression(Compression::Lz4)
        .with_setting("input_format_binary_read_json_as_string", "1")
        .with_setting("output_format_binary_write_json_as_string", "1")
        .with_setting("json_type_escape_dots_in_keys", "1")
}

async fn create_readings_table(client: &Client, table: &str) -> anyhow::Result<()> {
    client
        .query(&format!(
            "CREATE TABLE {table} (id UInt64, device String, at DateTime, data JSON) \
             ENGINE = MergeTree ORDER BY id"
        ))
        .execute()
        .await
        .context("creating the table")
}

fn readings(count: u64) -> Vec<Reading> {
    (0..count)
        .map(|id| Reading {
            id,
            device: format!("device-{id} «ünïcode» 'quoted'"),
            at: Utc.timestamp_opt(1_700_000_000 + id as i64, 0).unwrap(),
            data: format!(
                r#"{{"temperature":{},"tags":["a","b"],"nested":{{"ok":true}}}}"#,
                id as f64 + 0.5
            ),
        })
        .collect()
}

async fn clickhouse_rs_validated_lz4_insert_round_trips(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let client = client(&endpoints);
    let table = unique("endpoint_insert");
    create_readings_table(&client, &table).await?;

    let sent = readings(2_000);
    let mut insert = client.insert::<Reading>(&table).await?;
    for row in &sent {
        insert.write(row).await?;
    }
    insert
        .end()
        .await
        .context("the LZ4-compressed, schema-validated insert")?;

    let received = client
        .query(&format!("SELECT ?fields FROM {table} ORDER BY id"))
        .fetch_all::<Reading>()
        .await?;
    ensure!(
        received.len() == sent.len(),
        "{} rows back, {} sent",
        received.len(),
        sent.len()
    );
    for (got, want) in received.iter().zip(&sent) {
        ensure!(
            got.id == want.id && got.device == want.device && got.at == want.at,
            "{got:?} != {want:?}"
        );
        let got_json: serde_json::Value = serde_json::from_str(&got.data)?;
        let want_json: serde_json::Value = serde_json::from_str(&want.data)?;
        ensure!(got_json == want_json, "JSON {} != {}", got.data, want.data);
    }
    Ok(())
}

async fn clickhouse_rs_server_side_parameters_round_trip(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let client = client(&endpoints);
    let table = unique("endpoint_params");
    create_readings_table(&client, &table).await?;
    let sent = readings(5);
    let mut insert = client.insert::<Reading>(&table).await?;
    for row in &sent {
        insert.write(row).await?;
    }
    insert.end().await?;

    let wanted = &sent[3];
    let found = client
        .query(&format!(
            "SELECT ?fields FROM {table} WHERE device = {{device:String}} AND at = {{at:DateTime}}"
        ))
        .param("device", &wanted.device)
        .param("at", wanted.at.format("%Y-%m-%d %H:%M:%S").to_string())
        .fetch_all::<Reading>()
        .await?;
    ensure!(
        found.len() == 1 && found[0].id == wanted.id,
        "found {found:?}"
    );

    let tricky = "back\\slash 'single' \"double\" tab\t newline\n ✓";
    let echoed: String = client
        .query("SELECT {value:String}")
        .param("value", tricky)
        .fetch_one()
        .await?;
    ensure!(echoed == tricky, "{echoed:?} != {tricky:?}");
    Ok(())
}

async fn clickhouse_rs_describe_lists_the_columns(endpoints: Endpoints) -> anyhow::Result<()> {
    // Every column DESCRIBE returns: clickhouse-rs validates the struct against them.
    #[derive(Debug, Row, Deserialize)]
    #[allow(dead_code)]
    struct Column {
        name: String,
        r#type: String,
        default_type: String,
        default_expression: String,
        comment: String,
        codec_expression: String,
        ttl_expression: String,
    }
    let client = client(&endpoints);
    let table = unique("endpoint_describe");
    create_readings_table(&client, &table).await?;
    let columns = client
        .query(&format!("DESCRIBE TABLE {table}"))
        .fetch_all::<Column>()
        .await?;
    let described: Vec<(String, String)> =
        columns.into_iter().map(|c| (c.name, c.r#type)).collect();
    let expected = [
        ("id", "UInt64"),
        ("device", "String"),
        ("at", "DateTime"),
        ("data", "JSON"),
    ];
    ensure!(
        described
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .eq(expected),
        "{described:?}"
    );
    Ok(())
}

async fn clickhouse_rs_reports_server_errors_with_their_code(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let client = client(&endpoints);
    let missing = client
        .query("SELECT count() FROM no_such_table_here")
        .fetch_one::<u64>()
        .await;
    let message = format!("{:?}", missing.expect_err("an unknown table must fail"));
    ensure!(message.contains("Code: 60"), "unexpected error: {message}");

    let syntax = client.query("SELEKT 1").execute().await;
    let message = format!("{:?}", syntax.expect_err("a syntax error must fail"));
    ensure!(message.contains("Code: 62"), "unexpected error: {message}");

    // The endpoint keeps serving after errors.
    let one: u8 = client.query("SELECT 1").fetch_one().await?;
    ensure!(one == 1);
    Ok(())
}

async fn goose_over_http_applies_reports_and_rolls_back(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let database = unique("goose_db");
    let client = client(&endpoints);
    client
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await?;
    let client = client.with_database(&database);

    let migrations = std::env::temp_dir().join(unique("goose_migrations"));
    std::fs::create_dir_all(&migrations)?;
    std::fs::write(
        migrations.join("00001_first.sql"),
        "-- +goose Up\nCREATE TABLE first (id UInt64, data JSON) ENGINE = MergeTree ORDER BY id;\n\
         -- +goose Down\nDROP TABLE first;\n",
    )?;
    std::fs::write(
        migrations.join("00002_second.sql"),
        "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE second (at DateTime) ENGINE = MergeTree ORDER BY at;\n\
         -- +goose StatementEnd\n-- +goose Down\nDROP TABLE second;\n",
    )?;
    let dsn = Goose::local_dsn(
        endpoints.clickhouse_port()?,
        &endpoints.username,
        &endpoints.password,
        &database,
    );
    let goose = Goose::new(&endpoints.goose_binary, &migrations, dsn);
    let goose = |args: &[&str]| goose.run(args);

    goose(&["up"])?;
    ensure!(
        tables(&client).await? == ["first", "goose_db_version", "second"],
        "after up"
    );
    let status = goose(&["status"])?;
    ensure!(
        status
            .lines()
            .filter(|line| line.contains("Applied At") || line.contains(".sql"))
            .count()
            >= 2
            && !status.contains("Pending"),
        "status: {status}"
    );
    goose(&["down"])?;
    ensure!(
        tables(&client).await? == ["first", "goose_db_version"],
        "after one down"
    );
    goose(&["down-to", "0"])?;
    ensure!(
        tables(&client).await? == ["goose_db_version"],
        "after down-to 0"
    );
    std::fs::remove_dir_all(&migrations)?;
    Ok(())
}

async fn tables(client: &Client) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all::<String>()
        .await?)
}

async fn plain_http_queries_round_trip(endpoints: Endpoints) -> anyhow::Result<()> {
    use localenv::net::{http_get, http_post};
    let port = endpoints.clickhouse_port()?;
    let ping = http_get(port, "/ping")?;
    ensure!(
        ping.status == 200 && ping.body == "Ok.\n",
        "ping: {} {:?}",
        ping.status,
        ping.body
    );

    let table = unique("endpoint_plain");
    let db = &endpoints.database;
    let created = http_post(
        port,
        &format!("/?database={db}"),
        &format!("CREATE TABLE {table} (n UInt32, s String) ENGINE = MergeTree ORDER BY n"),
    )?;
    ensure!(created.status == 200, "create: {}", created.body);
    let inserted = http_post(
        port,
        &format!("/?database={db}&query=INSERT%20INTO%20{table}%20FORMAT%20TSV"),
        "1\tone\n2\ttwo\n",
    )?;
    ensure!(inserted.status == 200, "insert: {}", inserted.body);
    let selected = http_get(
        port,
        &format!(
            "/?database={db}&query=SELECT%20n%2C%20s%20FROM%20{table}%20ORDER%20BY%20n%20FORMAT%20JSONEachRow"
        ),
    )?;
    ensure!(
        selected.body == "{\"n\":1,\"s\":\"one\"}\n{\"n\":2,\"s\":\"two\"}\n",
        "select: {} {:?}",
        selected.status,
        selected.body
    );
    let error = http_post(port, "/", "SELECT * FROM no_such_table_here")?;
    ensure!(
        error.status == 404 && error.body.starts_with("Code: 60."),
        "error: {} {:?}",
        error.status,
        error.body
    );
    Ok(())
}
