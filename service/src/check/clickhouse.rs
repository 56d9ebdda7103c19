//! The ClickHouse items of `ponix-writer check`: the server answers and accepts the
//! credentials and the database ([`Store::ping`]); the table exists with the columns
//! the writer inserts ([`crate::row::COLUMNS`]: names and types, each insertable).
//! Only `SELECT`s are sent.

use super::{Item, MIGRATE};
use crate::config::Config;
use crate::row::COLUMNS;
use crate::store::{Store, StoreError};

/// ClickHouse error codes a ping can end with that an operator fixes in the settings.
const UNKNOWN_DATABASE: u32 = 81;
const AUTHENTICATION: [u32; 7] = [192, 193, 194, 195, 497, 516, 517];

pub(super) async fn ping(store: &Store, config: &Config) -> Item {
    let ch = &config.clickhouse;
    let Err(error) = store.ping().await else {
        return Item::pass(
            "clickhouse",
            format!(
                "{} answers; user {} and database {} accepted",
                ch.url, ch.username, ch.database
            ),
        );
    };
    let fix = match error.code() {
        Some(UNKNOWN_DATABASE) => format!(
            "create the database (`CREATE DATABASE {}`), or set PONIX_CLICKHOUSE_DATABASE to \
             an existing one",
            ch.database
        ),
        Some(code) if AUTHENTICATION.contains(&code) => {
            "check PONIX_CLICKHOUSE_USERNAME and PONIX_CLICKHOUSE_PASSWORD, and that the user \
             may use the database"
                .to_owned()
        }
        _ if error.is_permanent() => {
            "check PONIX_CLICKHOUSE_USERNAME, PONIX_CLICKHOUSE_PASSWORD and \
             PONIX_CLICKHOUSE_DATABASE"
                .to_owned()
        }
        _ => "check PONIX_CLICKHOUSE_URL, and that ClickHouse runs and is reachable from here"
            .to_owned(),
    };
    Item::fail(
        "clickhouse",
        format!("{} did not accept the connection: {error}", ch.url),
        fix,
    )
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Column {
    name: String,
    column_type: String,
    default_kind: String,
}

pub(super) async fn table(store: &Store, config: &Config) -> Item {
    let ch = &config.clickhouse;
    let columns = match columns(store).await {
        Ok(columns) => columns,
        Err(error) => {
            return Item::fail(
                "table",
                format!(
                    "reading the columns of {}.{}: {error}",
                    ch.database, ch.table
                ),
                "check that the user may read system.columns",
            );
        }
    };
    if columns.is_empty() {
        return Item::fail(
            "table",
            format!("table {}.{} does not exist", ch.database, ch.table),
            format!("{MIGRATE}, or set PONIX_CLICKHOUSE_TABLE to the writer's table"),
        );
    }
    let problems = problems(&columns);
    if problems.is_empty() {
        let mut detail = format!(
            "{}.{} has the {} columns the writer inserts, with their types",
            ch.database,
            ch.table,
            COLUMNS.len()
        );
        let others = unknown_columns(&columns);
        if !others.is_empty() {
            detail.push_str(&format!(
                " (and {}, which inserts leave to their defaults)",
                others.join(", ")
            ));
        }
        return Item::pass("table", detail);
    }
    let wanted: Vec<String> = COLUMNS
        .iter()
        .map(|(name, kind)| format!("{name} {kind}"))
        .collect();
    Item::fail(
        "table",
        format!(
            "{}.{} does not fit the writer's row: {}",
            ch.database,
            ch.table,
            problems.join("; ")
        ),
        format!(
            "{MIGRATE} if migrations are pending; otherwise alter the table so that it has \
             the columns the writer inserts: {}",
            wanted.join(", ")
        ),
    )
}

async fn columns(store: &Store) -> Result<Vec<Column>, StoreError> {
    let query = store
        .client()
        .query(
            "SELECT name, type AS column_type, default_kind FROM system.columns \
             WHERE database = currentDatabase() AND table = ? ORDER BY position",
        )
        .bind(store.table())
        .fetch_all::<Column>();
    match tokio::time::timeout(store.timeout(), query).await {
        Ok(result) => result.map_err(|error| StoreError::from_client(&error)),
        Err(_) => Err(StoreError::timed_out(store.timeout())),
    }
}

/// Each way the table's `columns` keep the writer's row from being inserted.
fn problems(columns: &[Column]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, wanted) in COLUMNS {
        match columns.iter().find(|c| c.name == name) {
            None => problems.push(format!(
                "no column {name} (the writer inserts {name} {wanted})"
            )),
            Some(c) if c.column_type != wanted => problems.push(format!(
                "column {name} is {}, the writer inserts {wanted}",
                c.column_type
            )),
            // An INSERT may not name such a column (a migration half-applied leaves
            // stream_sequence MATERIALIZED on purpose: see the migrations).
            Some(c) if matches!(c.default_kind.as_str(), "MATERIALIZED" | "ALIAS") => problems
                .push(format!(
                    "column {name} is {}: an INSERT may not name it",
                    c.default_kind
                )),
            Some(_) => {}
        }
    }
    let others = unknown_columns(columns);
    if !problems.is_empty() && !others.is_empty() {
        problems.push(format!(
            "columns the writer does not know: {}",
            others.join(", ")
        ));
    }
    problems
}

/// The table's columns the writer does not insert.
fn unknown_columns(columns: &[Column]) -> Vec<&str> {
    columns
        .iter()
        .filter(|c| !COLUMNS.iter().any(|(name, _)| *name == c.name))
        .map(|c| c.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[(&str, &str, &str)]) -> Vec<Column> {
        columns
            .iter()
            .map(|(name, kind, default)| Column {
                name: (*name).to_owned(),
                column_type: (*kind).to_owned(),
                default_kind: (*default).to_owned(),
            })
            .collect()
    }

    fn writers_table() -> Vec<(&'static str, &'static str, &'static str)> {
        COLUMNS.iter().map(|(n, t)| (*n, *t, "")).collect()
    }

    #[test]
    fn the_writers_own_table_fits() {
        assert!(problems(&table(&writers_table())).is_empty());
        let mut wider = writers_table();
        wider.push(("note", "String", "DEFAULT"));
        assert!(problems(&table(&wider)).is_empty());
    }

    #[test]
    fn a_renamed_retyped_or_materialized_column_is_named() {
        let mut renamed = writers_table();
        renamed[1].0 = "device";
        assert_eq!(
            problems(&table(&renamed)),
            [
                "no column end_device_id (the writer inserts end_device_id String)",
                "columns the writer does not know: device"
            ]
        );
        let mut retyped = writers_table();
        retyped[4].1 = "String";
        assert_eq!(
            problems(&table(&retyped)),
            ["column data is String, the writer inserts JSON"]
        );
        let mut guarded = writers_table();
        guarded[5].2 = "MATERIALIZED";
        assert_eq!(
            problems(&table(&guarded)),
            ["column stream_sequence is MATERIALIZED: an INSERT may not name it"]
        );
    }
}
