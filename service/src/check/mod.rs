//! `ponix-writer check`: a pre-flight that reports whether the writer, configured by the
//! same `PONIX_*` variables, would start and consume here, and changes nothing.
//!
//! Each item of the [`Report`] is ok or failing, and a failing one names its fix. The
//! items, in order: the configuration (one item per bad variable; nothing else can be
//! checked without a valid one, and the report says so); NATS, connected with the
//! writer's own options; the stream, the durable consumer and the dead-letter stream,
//! each present and fitting the configuration (the checks start-up applies, from
//! [`crate::streams`]) or absent, with what the writer would create; ClickHouse,
//! answering and accepting the credentials; the table, whose columns must be those
//! [`crate::row::COLUMNS`] lists; the goose binary; the pending migrations.
//!
//! Read-only by construction: NATS is only asked for stream and consumer info, and
//! ClickHouse only queried. goose's `status` creates its version table when it is
//! missing, so it only runs when that table exists; otherwise every migration file is
//! pending and listed from the directory.
//!
//! The rooms: this file holds the report, its rendering and the order of the checks;
//! `nats` the connection and the JetStream objects; `clickhouse` the server and the
//! table; `goose` the binary and the pending migrations.
//!
//! Every detail and fix is scrubbed of the configured secrets before it is shown.

mod clickhouse;
mod goose;
mod nats;

use std::fmt::Write as _;

use crate::config::{Config, ConfigError, NatsAuth};
use crate::migrate;
use crate::store::Store;

/// The fix for a table that lacks what the migrations make.
const MIGRATE: &str = "run `ponix-writer migrate` (or start a writer with \
                       PONIX_CLICKHOUSE_MIGRATIONS_ENABLED=true, which migrates at start)";

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per item, `ok` or `FAIL`, the fix indented below a failing one.
    Text,
    /// One JSON object: `{"ok": bool, "items": [{"name", "ok", "detail", "fix"}]}`.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown format {other:?}: the formats are `text` and `json`"
            )),
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Stable, for scripts: `config`, `nats`, `stream`, `consumer`,
    /// `dead_letter_stream`, `clickhouse`, `table`, `goose`, `migrations`; a bad
    /// variable is `config <VARIABLE>`.
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it; `None` when the item is ok.
    pub fix: Option<String>,
}

impl Item {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failing item for a check that could not run because `because` failed.
    fn not_checked(name: &str, because: &str) -> Self {
        Self::fail(
            name,
            format!("not checked: {because}"),
            format!("fix the {because} item first"),
        )
    }

    /// A failing item from an error whose text carries its own "Fix: ..." (a
    /// [`crate::streams::Refusal`]): the text before it is the detail, after it the fix.
    fn fail_with_own_fix(name: &str, text: &str) -> Self {
        match text.split_once(" Fix: ") {
            Some((detail, fix)) => Self::fail(name, detail, fix),
            None => Self::fail(name, text, "see the detail"),
        }
    }
}

/// Every item checked; ok when all of them are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub ok: bool,
    pub items: Vec<Item>,
}

impl Report {
    fn new(items: Vec<Item>) -> Self {
        Self {
            ok: items.iter().all(|item| item.ok),
            items,
        }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            // A report always serializes: strings and booleans only.
            Format::Json => serde_json::to_string(self).unwrap_or_default() + "\n",
            Format::Text => self.render_text(),
        }
    }

    fn render_text(&self) -> String {
        let width = self
            .items
            .iter()
            .map(|item| item.name.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for item in &self.items {
            let status = if item.ok { "ok" } else { "FAIL" };
            let _ = writeln!(out, "{status:<4}  {:<width$}  {}", item.name, item.detail);
            if let Some(fix) = &item.fix {
                let _ = writeln!(out, "      fix: {fix}");
            }
        }
        let failed = self.items.iter().filter(|item| !item.ok).count();
        if failed == 0 {
            let _ = writeln!(out, "all {} checks passed", self.items.len());
        } else {
            let _ = writeln!(
                out,
                "{failed} of {} checks failed: the writer would not run as configured",
                self.items.len()
            );
        }
        out
    }

    fn scrubbed(mut self, secrets: &[&str]) -> Self {
        for item in &mut self.items {
            item.detail = migrate::scrub(&item.detail, secrets);
            item.fix = item.fix.take().map(|fix| migrate::scrub(&fix, secrets));
        }
        self
    }
}

/// Checks everything `config` (the result of reading the `PONIX_*` variables) points
/// at, changing nothing.
pub async fn run(config: Result<Config, ConfigError>) -> Report {
    let config = match config {
        Ok(config) => config,
        Err(errors) => return Report::new(config_failures(&errors)),
    };
    let mut items = vec![config_item(&config)];

    let store = Store::new(&config.clickhouse);
    let ((nats_item, client), clickhouse_item) =
        tokio::join!(nats::connect(&config), clickhouse::ping(&store, &config));
    let clickhouse_ok = clickhouse_item.ok;
    // The stream continues after the table's highest sequence: without ClickHouse that
    // comparison is left out (and the clickhouse item fails).
    let stored = if clickhouse_ok {
        crate::streams::highest_stored_sequence(&store).await.ok()
    } else {
        None
    };

    items.push(nats_item);
    match client {
        Some(client) => items.extend(nats::jetstream_items(&client, &config, stored).await),
        None => items.extend(
            ["stream", "consumer", "dead_letter_stream"]
                .map(|name| Item::not_checked(name, "nats")),
        ),
    }

    items.push(clickhouse_item);
    items.push(if clickhouse_ok {
        clickhouse::table(&store, &config).await
    } else {
        Item::not_checked("table", "clickhouse")
    });

    let goose_item = goose::version(&config).await;
    let goose_ok = goose_item.ok;
    items.push(goose_item);
    items.push(if clickhouse_ok {
        goose::pending(&store, &config, goose_ok).await
    } else {
        Item::not_checked("migrations", "clickhouse")
    });

    let dsn = migrate::goose_dsn(&config.migrations, &config.clickhouse);
    let mut secrets = vec![dsn.expose(), config.clickhouse.password.expose()];
    match &config.nats.auth {
        NatsAuth::None => {}
        NatsAuth::Token(token) => secrets.push(token.expose()),
        NatsAuth::UserPassword { password, .. } => secrets.push(password.expose()),
        NatsAuth::Nkey { seed, .. } => secrets.push(seed.expose()),
        NatsAuth::Credentials { contents, .. } => secrets.push(contents.expose()),
    }
    Report::new(items).scrubbed(&secrets)
}

fn config_item(config: &Config) -> Item {
    let mut detail = "every PONIX_* variable is valid".to_owned();
    for warning in &config.warnings {
        let _ = write!(detail, "; note: {warning}");
    }
    Item::pass("config", detail)
}

/// One failing item per bad variable, then one saying what could not be checked.
fn config_failures(errors: &ConfigError) -> Vec<Item> {
    let mut items: Vec<Item> = errors
        .errors
        .iter()
        .map(|error| {
            Item::fail(
                &format!("config {}", error.var),
                error.to_string(),
                format!(
                    "set {} to a valid value, or unset it for its default (`ponix-writer \
                     --help` shows its form and default)",
                    error.var
                ),
            )
        })
        .collect();
    items.push(Item::fail(
        "other checks",
        "not run: NATS, the streams, the consumer, ClickHouse, the table, goose and the \
         migrations are checked with a valid configuration only",
        "fix the variables above, then run `ponix-writer check` again",
    ));
    items
}

/// `d` in seconds, or "unlimited" for 0 (the variables' spelling of no limit).
fn limit_secs(d: std::time::Duration) -> String {
    if d.is_zero() {
        "unlimited".to_owned()
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// `n` bytes, or "unlimited" for 0 or less (NATS spells it -1).
fn limit_bytes(n: i64) -> String {
    if n <= 0 {
        "unlimited".to_owned()
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report::new(vec![
            Item::pass("config", "every PONIX_* variable is valid"),
            Item::fail(
                "consumer",
                "AckWait 60s",
                "set PONIX_NATS_ACK_WAIT_SECS to 60",
            ),
        ])
    }

    #[test]
    fn the_text_report_has_a_line_per_item_and_the_fix_indented() {
        let report = report();
        assert!(!report.ok);
        assert_eq!(
            report.render(Format::Text),
            "ok    config    every PONIX_* variable is valid\n\
             FAIL  consumer  AckWait 60s\n\
             \x20     fix: set PONIX_NATS_ACK_WAIT_SECS to 60\n\
             1 of 2 checks failed: the writer would not run as configured\n"
        );
    }

    #[test]
    fn the_json_report_is_the_same_report() {
        let report = report();
        let json = report.render(Format::Json);
        assert_eq!(json.lines().count(), 1, "{json}");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["ok"], false);
        assert_eq!(parsed["items"][0]["fix"], serde_json::Value::Null);
        assert_eq!(parsed["items"][1]["name"], "consumer");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn formats_parse_and_an_unknown_one_is_named() {
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert_eq!("text".parse::<Format>(), Ok(Format::Text));
        assert!("xml".parse::<Format>().unwrap_err().contains("\"xml\""));
    }

    #[tokio::test]
    async fn a_bad_variable_is_an_item_and_nothing_else_is_checked() {
        let config = Config::from_vars([
            ("PONIX_NATS_ACK_WAIT_SECS".to_owned(), "soon".to_owned()),
            ("PONIX_CLICKHOUSE_PASSWORD".to_owned(), "hunter2".to_owned()),
        ]);
        let report = run(config).await;
        assert!(!report.ok);
        let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["config PONIX_NATS_ACK_WAIT_SECS", "other checks"]);
        assert!(report.items[0].detail.contains("\"soon\""), "{report:?}");
        assert!(report.items[1].detail.contains("not run"), "{report:?}");
    }

    #[test]
    fn secrets_are_scrubbed_from_every_detail_and_fix() {
        let report = Report::new(vec![Item::fail(
            "clickhouse",
            "http://u:hunter2@h failed with hunter2",
            "not hunter2",
        )])
        .scrubbed(&["hunter2"]);
        let text = report.render(Format::Text);
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn an_own_fix_is_split_off() {
        let item = Item::fail_with_own_fix("stream", "stream s is wrong. Fix: recreate it");
        assert_eq!(item.detail, "stream s is wrong.");
        assert_eq!(item.fix.as_deref(), Some("recreate it"));
    }
}
