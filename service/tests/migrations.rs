//! Migration checks with goose against the real ClickHouse engine (`cargo xtask
//! e2e` runs this binary as its own step): `up` on an empty database, `up` again
//! is a no-op, `status` lists every file as applied, `down-to 0` then `up`
//! restores the same schema, and that schema matches the snapshot.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use clickhouse::{Client, Row};
use serde::Deserialize;
use testkit::Endpoints;

testkit::integration_tests!(
    every_migration_file_is_valid_goose_sql,
    the_goose_sql_check_rejects_broken_files,
    goose_migrations_apply_roll_back_and_match_the_schema_snapshot,
);

/// A fixed name, so that it does not vary in the snapshot; the database is
/// recreated at the start of each run.
const DATABASE: &str = "migrations_check";

async fn every_migration_file_is_valid_goose_sql(endpoints: Endpoints) -> anyhow::Result<()> {
    let files = migration_files(&endpoints.migrations_dir)?;
    ensure!(
        !files.is_empty(),
        "no migrations in {}",
        endpoints.migrations_dir.display()
    );
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        check_goose_sql(&text)
            .with_context(|| format!("{} is not valid goose SQL", file.display()))?;
    }
    Ok(())
}

async fn the_goose_sql_check_rejects_broken_files(_: Endpoints) -> anyhow::Result<()> {
    let valid =
        "-- +goose Up\nCREATE TABLE t (a UInt8) ENGINE = Memory;\n-- +goose Down\nDROP TABLE t;\n";
    check_goose_sql(valid)?;
    let broken = [
        (
            "no Down",
            "-- +goose Up\nCREATE TABLE t (a UInt8) ENGINE = Memory;\n",
        ),
        (
            "no Up",
            "CREATE TABLE t (a UInt8) ENGINE = Memory;\n-- +goose Down\nDROP TABLE t;\n",
        ),
        (
            "Down before Up",
            "-- +goose Down\nDROP TABLE t;\n-- +goose Up\nSELECT 1;\n",
        ),
        (
            "unclosed block",
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\nSELECT 1;\n",
        ),
        ("empty Down", "-- +goose Up\nSELECT 1;\n-- +goose Down\n"),
        (
            "typo",
            "-- +goose Up\nSELECT 1;\n-- +goose StatmentEnd\n-- +goose Down\nSELECT 1;\n",
        ),
    ];
    for (what, text) in broken {
        ensure!(
            check_goose_sql(text).is_err(),
            "accepted a file with {what}"
        );
    }
    Ok(())
}

fn migration_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "sql"));
    files.sort();
    Ok(files)
}

/// goose's rules: a version prefix, exactly one Up then one Down annotation,
/// balanced StatementBegin/End, and at least one statement in each direction.
fn check_goose_sql(text: &str) -> anyhow::Result<()> {
    let mut section = None;
    let mut in_statement = false;
    let mut statements = [0usize; 2];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        match line {
            "-- +goose Up" if section.is_none() => section = Some(0),
            "-- +goose Down" if section == Some(0) && !in_statement => section = Some(1),
            "-- +goose Up" | "-- +goose Down" => bail!("line {}: misplaced {line:?}", number + 1),
            "-- +goose StatementBegin" if !in_statement && section.is_some() => in_statement = true,
            "-- +goose StatementEnd" if in_statement => in_statement = false,
            _ if line.starts_with("-- +goose") => bail!("line {}: unexpected {line:?}", number + 1),
            _ if line.is_empty() || line.starts_with("--") => {}
            _ => {
                let Some(section) = section else {
                    bail!("line {}: SQL before `-- +goose Up`", number + 1);
                };
                if line.ends_with(';') {
                    statements[section] += 1;
                }
            }
        }
    }
    ensure!(!in_statement, "a StatementBegin is never ended");
    ensure!(section == Some(1), "missing `-- +goose Down` section");
    ensure!(
        statements[0] > 0 && statements[1] > 0,
        "Up and Down each need a statement"
    );
    Ok(())
}

async fn goose_migrations_apply_roll_back_and_match_the_schema_snapshot(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let admin = client(&endpoints);
    admin
        .query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .execute()
        .await?;
    admin
        .query(&format!("CREATE DATABASE {DATABASE}"))
        .execute()
        .await?;
    let client = admin.with_database(DATABASE);
    let goose = Goose::new(&endpoints)?;
    let file_count = migration_files(&endpoints.migrations_dir)?.len();

    goose.run(&["up"])?;
    let first = schema(&client).await?;

    let again = goose.run(&["up"])?;
    ensure!(
        again.contains("no migrations to run"),
        "second `up` was not a no-op:\n{again}"
    );
    ensure!(
        schema(&client).await? == first,
        "second `up` changed the schema"
    );

    let status = goose.run(&["status"])?;
    let applied = status
        .lines()
        .filter(|line| line.contains(".sql") && !line.contains("Pending"))
        .count();
    ensure!(
        applied == file_count,
        "status lists {applied} of {file_count} files as applied:\n{status}"
    );

    goose.run(&["down-to", "0"])?;
    let tables = client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all::<String>()
        .await?;
    ensure!(
        tables == ["goose_db_version"],
        "down-to 0 left tables behind: {tables:?}"
    );

    goose.run(&["up"])?;
    let restored = schema(&client).await?;
    ensure!(
        restored == first,
        "down-to 0 then up changed the schema:\n{first}\nvs\n{restored}"
    );

    insta::assert_snapshot!("schema", restored);
    Ok(())
}

fn client(endpoints: &Endpoints) -> Client {
    Client::default()
        .with_url(&endpoints.clickhouse_url)
        .with_user(&endpoints.username)
        .with_password(&endpoints.password)
}

/// `SHOW CREATE TABLE`, the table's engine and keys, and its columns: everything
/// that makes up the schema, as stable text.
async fn schema(client: &Client) -> anyhow::Result<String> {
    #[derive(Row, Deserialize)]
    struct Table {
        name: String,
        engine: String,
        partition_key: String,
        sorting_key: String,
        primary_key: String,
    }
    #[derive(Row, Deserialize)]
    struct Column {
        name: String,
        r#type: String,
        default_kind: String,
        is_in_partition_key: u8,
        is_in_sorting_key: u8,
        is_in_primary_key: u8,
    }
    let tables = client
        .query(
            "SELECT name, engine, partition_key, sorting_key, primary_key FROM system.tables \
             WHERE database = currentDatabase() AND name != 'goose_db_version' ORDER BY name",
        )
        .fetch_all::<Table>()
        .await?;
    let mut text = String::new();
    for table in tables {
        let create: String = client
            .query(&format!("SHOW CREATE TABLE {}", table.name))
            .fetch_one()
            .await?;
        text.push_str(&format!(
            "{create}\n\ntable {}: engine={} partition_key={} sorting_key={} primary_key={}\n",
            table.name, table.engine, table.partition_key, table.sorting_key, table.primary_key
        ));
        let columns = client
            .query(
                "SELECT name, type, default_kind, is_in_partition_key, is_in_sorting_key, is_in_primary_key \
                 FROM system.columns WHERE database = currentDatabase() AND table = ? ORDER BY position",
            )
            .bind(&table.name)
            .fetch_all::<Column>()
            .await?;
        for column in columns {
            text.push_str(&format!(
                "  {:<16} {:<16} default={:<8} partition={} sorting={} primary={}\n",
                column.name,
                column.r#type,
                column.default_kind,
                column.is_in_partition_key,
                column.is_in_sorting_key,
                column.is_in_primary_key
            ));
        }
    }
    Ok(text)
}

struct Goose {
    binary: PathBuf,
    dir: PathBuf,
    dsn: String,
}

impl Goose {
    fn new(endpoints: &Endpoints) -> anyhow::Result<Goose> {
        let port = endpoints.clickhouse_port()?;
        Ok(Goose {
            binary: endpoints.goose_binary.clone(),
            dir: endpoints.migrations_dir.clone(),
            dsn: format!(
                "http://{}:{}@127.0.0.1:{port}/{DATABASE}",
                endpoints.username, endpoints.password
            ),
        })
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .arg("-dir")
            .arg(&self.dir)
            .args(["clickhouse", &self.dsn])
            .args(args)
            .output()
            .with_context(|| {
                format!("running {}: run `cargo xtask tools`", self.binary.display())
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(output.status.success(), "goose {args:?} failed:\n{text}");
        Ok(text)
    }
}
