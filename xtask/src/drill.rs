//! `cargo xtask drill <name>|all [--messages N]`: the failure drills, also a step of
//! `cargo xtask e2e` ([`run_all`]).
//!
//! The drills live in the service's `drills` test binary (`service/tests/drills.rs`),
//! where the writer binary and its crates are at hand; xtask runs it one drill at a
//! time (`--test-threads=1`: they load the machine and time their faults by it) and
//! turns the `drill-row` line each drill prints into a table. Each drill starts a NATS
//! and a ClickHouse of its own, so nothing else running on the machine is disturbed;
//! it needs the tools (`cargo xtask tools`), not `cargo xtask up`.

use std::io::Write;
use std::process::Command;

use anyhow::bail;
use localenv::Layout;
use xshell::Shell;

use crate::choices::{DRILLS, DrillChoice};
use crate::flags;
use crate::steps::run_showing_output;

/// Envelopes per drill unless `--messages` says otherwise (the drills' own default).
pub const DEFAULT_MESSAGES: u64 = 10_000;

/// What each drill prints, after this prefix and a tab.
const ROW_PREFIX: &str = "drill-row";
const HEADERS: [&str; 13] = [
    "drill",
    "result",
    "published",
    "stored",
    "missing",
    "duplicates",
    "dead-lettered",
    "redeliveries",
    "NAKs",
    "retries",
    "re-inserted",
    "drain",
    "evidence",
];

impl flags::Drill {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        for (tool, path) in [
            ("goose", layout.goose()),
            ("nats-server", layout.nats_server()),
            ("the chDB virtualenv", layout.venv_python()),
        ] {
            if !path.exists() {
                bail!(
                    "{tool} is missing at {}: run `cargo xtask tools`",
                    path.display()
                );
            }
        }
        let messages = self.messages.unwrap_or(DEFAULT_MESSAGES);
        let selected: Vec<&str> = match self.name {
            DrillChoice::All => DRILLS.to_vec(),
            DrillChoice::One(name) => vec![name],
        };
        let mut env = vec![
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                layout.goose().display().to_string(),
            ),
            (
                "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
                layout.migrations_dir().display().to_string(),
            ),
        ];
        // Unset, testkit reads PONIX_TEST_BACKEND from this environment as it is.
        if let Some(backend) = self.backend {
            env.push(("PONIX_TEST_BACKEND", backend.as_str().to_owned()));
        }
        let figure = run_drills(&layout, &env, messages, &selected)?;
        println!("\ndrill: {figure}");
        Ok(())
    }
}

/// Every drill with `messages` envelopes each, as an e2e step: prints the table and
/// returns the step's key figure; fails if any drill failed.
pub fn run_all(
    layout: &Layout,
    env: &[(&'static str, String)],
    messages: u64,
) -> anyhow::Result<String> {
    run_drills(layout, env, messages, DRILLS)
}

/// The harness (libtest-mimic) takes one name filter but many `--skip`s: a subset
/// is every other drill skipped.
fn filter_args(selected: &[&str]) -> Vec<String> {
    match selected {
        [one] => vec!["--exact".into(), (*one).to_owned()],
        _ if selected == DRILLS => Vec::new(),
        _ => std::iter::once("--exact".to_owned())
            .chain(
                DRILLS
                    .iter()
                    .filter(|drill| !selected.contains(drill))
                    .flat_map(|drill| ["--skip".to_owned(), (*drill).to_owned()]),
            )
            .collect(),
    }
}

/// The drills named in `selected` only (the compose pass's), like [`run_all`].
pub fn run_some(
    layout: &Layout,
    env: &[(&'static str, String)],
    messages: u64,
    selected: &[&str],
) -> anyhow::Result<String> {
    run_drills(layout, env, messages, selected)
}

fn run_drills(
    layout: &Layout,
    env: &[(&'static str, String)],
    messages: u64,
    selected: &[&str],
) -> anyhow::Result<String> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&layout.root)
        .args([
            "test",
            "--locked",
            "-p",
            "ponix-writer",
            "--test",
            "drills",
            "--",
        ])
        .arg("--test-threads=1");
    cargo.args(filter_args(selected));
    cargo.envs(env.iter().map(|(key, value)| (*key, value)));
    cargo
        .env("PONIX_DRILLS", "1")
        .env("PONIX_DRILL_MESSAGES", messages.to_string());
    let (success, output) = run_showing_output(cargo)?;

    let rows = parse_rows(&output);
    print!("{}", table(&rows));
    let _ = std::io::stdout().flush();
    let missing: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|name| !rows.iter().any(|row| row[0] == *name))
        .collect();
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| row[1] != "ok")
        .map(|row| row[0].as_str())
        .collect();
    if !failed.is_empty() {
        bail!("drills failed: {}", failed.join(", "));
    }
    if !missing.is_empty() {
        bail!("drills that reported nothing: {}", missing.join(", "));
    }
    if !success {
        bail!("the drills binary failed (see its output above)");
    }
    Ok(key_figure(&rows, messages))
}

/// "7 drills passed (N = 2000): 0 missing, 0 duplicates, 1,234 re-inserts merged away".
fn key_figure(rows: &[Vec<String>], messages: u64) -> String {
    // By name: a column added to the table must not shift what is summed.
    let sum = |header: &str| -> u64 {
        let column = HEADERS.iter().position(|h| *h == header);
        rows.iter()
            .filter_map(|row| row.get(column?)?.parse::<u64>().ok())
            .sum()
    };
    format!(
        "{} drill(s) passed (N = {messages}): {} missing, {} duplicates, {} re-inserts merged away",
        rows.len(),
        sum("missing"),
        sum("duplicates"),
        sum("re-inserted")
    )
}

/// The `drill-row` lines of `output`, as fields (padded to the header count).
fn parse_rows(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        // libtest prints `test <name> ... ` before a drill's own output: find the
        // prefix anywhere in the line.
        .filter_map(|line| {
            let start = line.find(&format!("{ROW_PREFIX}\t"))?;
            Some(&line[start + ROW_PREFIX.len() + 1..])
        })
        .map(|fields| {
            let mut row: Vec<String> = fields.split('\t').map(str::to_owned).collect();
            row.resize(HEADERS.len(), String::new());
            row
        })
        .collect()
}

fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, field) in widths.iter_mut().zip(row) {
            *width = (*width).max(field.chars().count());
        }
    }
    let last = HEADERS.len() - 1;
    let line = |fields: &[String]| -> String {
        let mut out = String::new();
        for (index, field) in fields.iter().enumerate() {
            if index == last {
                out.push_str(field);
            } else if (2..=10).contains(&index) {
                out.push_str(&format!("{field:>width$}  ", width = widths[index]));
            } else {
                out.push_str(&format!("{field:<width$}  ", width = widths[index]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::from("\n");
    out.push_str(&line(&headers));
    out.push_str(&format!(
        "{}\n",
        "-".repeat(widths[..last].iter().map(|w| w + 2).sum::<usize>() + 8)
    ));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_of_drills_is_the_rest_skipped() {
        assert_eq!(filter_args(&["poison"]), ["--exact", "poison"]);
        assert!(filter_args(DRILLS).is_empty());
        let args = filter_args(&["clickhouse-down", "writer-kill"]);
        assert_eq!(args[0], "--exact");
        let skipped: Vec<&String> = args.iter().skip(2).step_by(2).collect();
        assert_eq!(skipped.len(), DRILLS.len() - 2);
        assert!(
            !skipped
                .iter()
                .any(|d| *d == "clickhouse-down" || *d == "writer-kill")
        );
        assert!(args.iter().skip(1).step_by(2).all(|flag| flag == "--skip"));
    }

    const OUTPUT: &str = "running 2 tests\n\
        test poison ... drill poison: 1000 messages\n\
        test poison ... drill-row\tpoison\tok\t1000\t990\t0\t0\t10/10\t0\t0\t3\t7\t0.2s\t10 invalid injected\n\
        ok\n\
        drill-row\twriter-kill\tFAILED\t\t\t\t\t\t\t\t\t\t\tno answer\n";

    #[test]
    fn rows_are_read_from_the_drill_output() {
        let rows = parse_rows(OUTPUT);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "poison");
        assert_eq!(rows[0][6], "10/10");
        assert_eq!(rows[0][9], "3");
        assert_eq!(rows[0][12], "10 invalid injected");
        assert_eq!(rows[1][1], "FAILED");
        assert_eq!(rows[1][12], "no answer");
    }

    #[test]
    fn the_table_has_a_header_and_one_line_per_drill() {
        let text = table(&parse_rows(OUTPUT));
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("drill "));
        assert!(lines[2].starts_with("poison "));
    }

    #[test]
    fn the_key_figure_sums_missing_duplicates_and_reinserts() {
        let rows = parse_rows(OUTPUT);
        assert_eq!(
            key_figure(&rows[..1], 1000),
            "1 drill(s) passed (N = 1000): 0 missing, 0 duplicates, 7 re-inserts merged away"
        );
    }
}
