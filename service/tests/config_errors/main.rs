//! The `ponix-writer` binary against bad configuration, bad arguments and unreachable
//! servers: it must exit non-zero with an error that names the variable (or the server),
//! never panic or print a backtrace, and never print a secret.
//!
//! The bad values come from the table of variables: every variable is tried with a
//! value that is not UTF-8, and with the bad samples of its form
//! ([`bad_values::bad_samples`] matches every form, so a new form does not compile until
//! it has samples, and a new variable is covered by its form). Rules across variables
//! are tried by name.
//!
//! No infrastructure needed: the servers that must answer are small fakes
//! ([`fakes`]). The tests are here, at the top of the target, so that their names
//! stay what they were; running the binary and judging its output is in [`binary`].

mod bad_values;
mod binary;
mod fakes;

use std::ffi::OsStr;
use std::path::Path;

use ponix_writer::config::{VARIABLES, Var, VarDefault, help_text};

#[cfg(unix)]
use bad_values::not_utf8;
use bad_values::{cross_variable_cases, form_cases};
#[cfg(unix)]
use binary::TempDir;
use binary::{
    Case, EXIT_USAGE, MARKER, assert_failed_cleanly, check_config_error, check_no_panic_or_secret,
    failure_message, run, run_config_cases, run_writer,
};
use fakes::{FakeClickHouse, FakeNats};

// ---------------------------------------------------------------------------------------
// Configuration errors

#[test]
fn every_bad_value_of_every_variable_is_refused_by_name() {
    let cases = form_cases();
    // Each variable is tried at least once (its value that is not UTF-8, at the least).
    for var in VARIABLES {
        assert!(
            cases
                .iter()
                .any(|c| c.vars.iter().any(|(k, _)| k == var.name)),
            "{} is never tried",
            var.name
        );
    }
    let failures = run_config_cases(&cases);
    assert!(
        failures.is_empty(),
        "{} of {} runs misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_rule_across_variables_is_refused_by_name() {
    let cases = cross_variable_cases();
    let failures = run_config_cases(&cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// All bad at once: every variable is named, each once, in one run.
#[cfg(unix)]
#[test]
fn every_variable_bad_at_once_is_reported_together() {
    let bad = not_utf8();
    let vars: Vec<(&str, &OsStr)> = VARIABLES
        .iter()
        .map(|v| (v.name, bad.as_os_str()))
        .collect();
    let names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
    let mut case = Case::config("every variable not UTF-8", &vars, &names);
    case.secret = Some(MARKER.to_owned());
    case.hidden = true;
    let output = run(&case.args, &case.vars);
    let problems = check_config_error(&case, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(problems.is_empty(), "{problems:?}\n{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "ponix-writer: invalid configuration ({} problems):\n",
            VARIABLES.len()
        )),
        "{stderr}"
    );
}

#[test]
fn an_unexpected_argument_is_a_usage_error() {
    for args in [
        &["--bogus"][..],
        &["run"],
        &["-x", "--help"],
        &["check", "--bogus"],
    ] {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = run(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_USAGE), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unexpected") && stderr.contains("--help"),
            "{stderr}"
        );
        assert!(
            check_no_panic_or_secret(&output, None).is_empty(),
            "{stderr}"
        );
    }
}

#[test]
fn an_unknown_check_format_is_a_usage_error() {
    let output = run(
        &["check".to_owned(), "--format".to_owned(), "xml".to_owned()],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "{stderr}");
    assert!(
        stderr.contains("\"xml\"") && stderr.contains("json") && stderr.contains("--help"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// --help and --version

#[test]
fn help_lists_every_variable_with_its_default() {
    for flag in ["--help", "-h"] {
        let output = run(&[flag.to_owned()], &[]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(output.stderr.is_empty(), "{flag}");
        let stdout = String::from_utf8(output.stdout).expect("help is UTF-8");
        // The commands first, then every variable, which configure them all alike.
        let (usage, variables) = stdout
            .split_once("Configuration comes from")
            .expect("the variables follow the usage");
        assert_eq!(format!("Configuration comes from{variables}"), help_text());
        for command in [
            "With no command it runs the writer",
            "\nponix-writer migrate\n",
            "\nponix-writer check\n",
            "\nponix-writer dead-letters summary\n",
            "\nponix-writer dead-letters show\n",
            "\nponix-writer dead-letters replay\n",
        ] {
            assert!(
                usage.contains(command),
                "{flag}: no {command:?} in\n{usage}"
            );
        }
        for var in VARIABLES {
            let block = help_block(&stdout, var);
            let default = match var.default {
                VarDefault::Value("") => "(empty)",
                VarDefault::Value(value)
                | VarDefault::Derived(value)
                | VarDefault::Unset(value) => value,
            };
            assert!(
                block.contains(&format!("\n      Default: {default}\n")),
                "{}: {block}",
                var.name
            );
            assert!(block.contains(&var.expected()), "{}: {block}", var.name);
        }
    }
}

/// The lines of `--help` about `var`.
fn help_block<'a>(help: &'a str, var: &Var) -> &'a str {
    let start = help
        .find(&format!("\n  {}\n", var.name))
        .unwrap_or_else(|| panic!("--help does not list {}", var.name));
    let rest = &help[start + 1..];
    let end = rest[2..].find("\n  P").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn version_prints_the_package_version() {
    for flag in ["--version", "-V"] {
        let output = run(&[flag.to_owned()], &[]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("ponix-writer {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert!(output.stderr.is_empty(), "{flag}");
    }
}

// ---------------------------------------------------------------------------------------
// Unreachable servers

#[test]
fn unreachable_clickhouse_fails_within_the_start_up_timeout_naming_it() {
    let nats = FakeNats::start();
    let (output, elapsed) = run_writer(&nats.url(), "http://127.0.0.1:1", &[]);
    assert_failed_cleanly(&output, elapsed);
    let message = failure_message(&output);
    assert!(message.contains("pinging ClickHouse failed"), "{message}");
    assert!(message.contains("PONIX_STARTUP_TIMEOUT_SECS"), "{message}");
}

#[test]
fn unreachable_nats_fails_within_the_start_up_timeout_naming_it() {
    let clickhouse = FakeClickHouse::start();
    let (output, elapsed) = run_writer("nats://127.0.0.1:1", &clickhouse.url(), &[]);
    assert_failed_cleanly(&output, elapsed);
    let message = failure_message(&output);
    assert!(message.contains("connecting to NATS failed"), "{message}");
    assert!(message.contains("PONIX_STARTUP_TIMEOUT_SECS"), "{message}");
}

/// `PONIX_NATS_URL` takes a comma-separated list: the writer connects to a server of it
/// that answers (and then fails on ClickHouse, which is down).
#[test]
fn a_list_of_nats_servers_is_tried_in_turn() {
    let nats = FakeNats::start();
    let list = format!("nats://127.0.0.1:1,{}", nats.url());
    let (output, elapsed) = run_writer(&list, "http://127.0.0.1:1", &[]);
    assert_failed_cleanly(&output, elapsed);
    let message = failure_message(&output);
    assert!(message.contains("pinging ClickHouse failed"), "{message}");
}

#[test]
fn both_unreachable_fails_within_the_start_up_timeout() {
    let (output, elapsed) = run_writer("nats://127.0.0.1:1", "http://127.0.0.1:1", &[]);
    assert_failed_cleanly(&output, elapsed);
    let message = failure_message(&output);
    assert!(
        message.contains("connecting to NATS failed")
            || message.contains("pinging ClickHouse failed"),
        "{message}"
    );
}

/// Past the connections, the writer needs the migration lease before goose may run: a
/// NATS without JetStream (this fake answers no request) fails start-up within the
/// start-up timeout, naming the lease and what the NATS user needs, without the
/// secrets; goose never runs. (A failing goose under the lease is in `lease.rs`, which
/// has a real JetStream.)
#[cfg(unix)]
#[test]
fn a_migration_lease_that_cannot_be_taken_is_reported_without_the_secrets() {
    let nats = FakeNats::start();
    let clickhouse = FakeClickHouse::start();
    let dir = TempDir::new("goose");
    let goose = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/failing-goose");
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    let dsn = format!("http://writer:{MARKER}2@127.0.0.1:1/ponix");
    let (output, elapsed) = run_writer(
        &nats.url(),
        &clickhouse.url(),
        &[
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                goose.to_str().unwrap(),
            ),
            (
                "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
                migrations.to_str().unwrap(),
            ),
            ("PONIX_CLICKHOUSE_GOOSE_DSN", &dsn),
        ],
    );
    assert_failed_cleanly(&output, elapsed);
    let message = failure_message(&output);
    assert!(message.contains("migrations failed"), "{message}");
    assert!(message.contains("migration lease"), "{message}");
    assert!(message.contains("JetStream access"), "{message}");
    assert!(
        !message.contains("boom"),
        "goose ran without the lease: {message}"
    );
}
