//! The goose items of `ponix-writer check`: the binary and its version
//! (`goose -version`), and the migrations not yet applied to the configured table.
//!
//! `goose status` is run the way [`crate::migrate`] runs `goose up` (same arguments,
//! DSN and table variable, timeout and scrubbing), but only when goose's version table
//! exists: `status` creates it when it is missing, and check changes nothing. Without
//! it no migration has been applied, so every file of the directory is pending.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::{Item, MIGRATE};
use crate::config::Config;
use crate::migrate::{self, MigrateError};
use crate::store::{Store, StoreError};

/// `goose -version`, bounded by the start-up timeout.
pub(super) async fn version(config: &Config) -> Item {
    let binary = &config.migrations.goose_binary;
    let fix = "install goose (cargo xtask tools) or set PONIX_CLICKHOUSE_GOOSE_BINARY_PATH";
    let child = Command::new(binary)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(source) => {
            return Item::fail(
                "goose",
                migrate::spawn_error(binary, source).to_string(),
                fix,
            );
        }
    };
    let output = match tokio::time::timeout(config.startup_timeout, child.wait_with_output()).await
    {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return Item::fail(
                "goose",
                format!("waiting for {}: {error}", binary.display()),
                fix,
            );
        }
        Err(_) => {
            return Item::fail(
                "goose",
                format!(
                    "{} -version did not answer within {:?}",
                    binary.display(),
                    config.startup_timeout
                ),
                fix,
            );
        }
    };
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    match (output.status.success(), parse_version(&text)) {
        (true, Some(version)) => {
            Item::pass("goose", format!("goose {version} at {}", binary.display()))
        }
        _ => Item::fail(
            "goose",
            format!(
                "{} -version answered {:?} ({}): not goose?",
                binary.display(),
                text.trim(),
                output.status
            ),
            fix,
        ),
    }
}

/// The version in `goose -version`'s answer (`goose version: v3.28.0`).
fn parse_version(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("goose version:"))
        .map(str::trim)
        .filter(|version| !version.is_empty())
}

/// The migrations not yet applied; `goose_ok` says whether the binary answered.
pub(super) async fn pending(store: &Store, config: &Config, goose_ok: bool) -> Item {
    let migrations = &config.migrations;
    let table = &config.clickhouse.table;
    let version_table = migrate::version_table(table);
    let files = match migration_files(&migrations.dir) {
        Ok(files) => files,
        Err(error) => {
            return Item::fail(
                "migrations",
                error.to_string(),
                "set PONIX_CLICKHOUSE_MIGRATIONS_DIR to the migrations directory of this \
                 version of the writer",
            );
        }
    };
    let tracked = match table_exists(store, &version_table).await {
        Ok(tracked) => tracked,
        Err(error) => {
            return Item::fail(
                "migrations",
                format!("looking for goose's version table {version_table}: {error}"),
                "check that the user may read system.tables",
            );
        }
    };
    let pending = if tracked {
        if !goose_ok {
            return Item::not_checked("migrations", "goose");
        }
        let dsn = migrate::goose_dsn(migrations, &config.clickhouse);
        let secrets = [config.clickhouse.password.expose()];
        match migrate::goose(migrations, table, &dsn, &secrets, "status").await {
            Ok(output) => pending_in_status(&output),
            Err(error) => return status_failed(&error),
        }
    } else {
        files.clone()
    };
    if pending.is_empty() {
        return Item::pass(
            "migrations",
            format!(
                "all {} migrations applied to {table} (version table {version_table})",
                files.len()
            ),
        );
    }
    let mut detail = format!(
        "{} of {} migrations pending for {table}: {}",
        pending.len(),
        files.len(),
        pending.join(", ")
    );
    if !tracked {
        detail.push_str(&format!(
            " (goose's version table {version_table} does not exist: none was applied)"
        ));
    }
    Item::fail("migrations", detail, MIGRATE)
}

fn status_failed(error: &MigrateError) -> Item {
    Item::fail(
        "migrations",
        format!("goose status failed: {error}"),
        "check the goose DSN (PONIX_CLICKHOUSE_GOOSE_DSN, or the ClickHouse settings it is \
         derived from) and PONIX_CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS",
    )
}

/// The migration files goose applies from `dir`, by its rule: `<version>_<name>.sql`.
fn migration_files(dir: &Path) -> Result<Vec<String>, MigrateError> {
    let entries = std::fs::read_dir(dir).map_err(|_| MigrateError::DirMissing(dir.to_owned()))?;
    let mut files: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| is_migration(name))
        .collect();
    files.sort();
    Ok(files)
}

fn is_migration(name: &str) -> bool {
    name.ends_with(".sql")
        && name.split_once('_').is_some_and(|(version, _)| {
            !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The files `goose status` lists as pending: lines like
/// `2026/12/06 08:39:39     Pending                  -- 20251026224743_init.sql`.
fn pending_in_status(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_once(" -- "))
        .filter(|(state, _)| state.trim_end().ends_with("Pending"))
        .map(|(_, file)| file.trim().to_owned())
        .collect()
}

async fn table_exists(store: &Store, name: &str) -> Result<bool, StoreError> {
    let query = store
        .client()
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?")
        .bind(name)
        .fetch_one::<u64>();
    match tokio::time::timeout(store.timeout(), query).await {
        Ok(result) => result
            .map(|count| count > 0)
            .map_err(|error| StoreError::from_client(&error)),
        Err(_) => Err(StoreError::timed_out(store.timeout())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_gooses_answer() {
        assert_eq!(parse_version("goose version: v3.28.0\n"), Some("v3.28.0"));
        assert_eq!(parse_version("usage: ...\n"), None);
        assert_eq!(parse_version("goose version:\n"), None);
    }

    #[test]
    fn pending_lines_are_read_from_gooses_status() {
        let output = "2026/12/06 08:39:39     Applied At                  Migration\n\
                      2026/12/06 08:39:39     =======================================\n\
                      2026/12/06 08:39:39     Thu Dec  3 10:00:00 2026 -- 20251026224743_init.sql\n\
                      2026/12/06 08:39:39     Pending                  -- 20251104110101_add_organization_id.sql\n\
                      2026/12/06 08:39:39     Pending                  -- 20261128040000_deduplicate_by_stream_sequence.sql\n";
        assert_eq!(
            pending_in_status(output),
            [
                "20251104110101_add_organization_id.sql",
                "20261128040000_deduplicate_by_stream_sequence.sql"
            ]
        );
        assert!(pending_in_status("no migrations\n").is_empty());
    }

    #[test]
    fn only_versioned_sql_files_are_migrations() {
        assert!(is_migration("20251026224743_init.sql"));
        assert!(!is_migration("README.md"));
        assert!(!is_migration("init.sql"));
        assert!(!is_migration("_init.sql"));
        assert!(!is_migration("v1_init.sql"));
    }
}
