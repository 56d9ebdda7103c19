//! The `ponix-writer` binary against bad configuration, bad arguments and unreachable
//! servers: it must exit non-zero with an error that names the variable (or the server),
//! never panic or print a backtrace, and never print a secret.
//!
//! The bad values come from the table of variables: every variable is tried with a
//! value that is not UTF-8, and with the bad samples of its form ([`bad_samples`] matches
//! every form, so a new form does not compile until it has samples, and a new variable is
//! covered by its form). Rules across variables are tried by name.
//!
//! No infrastructure needed: the servers that must answer are small fakes in this file.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ponix_writer::config::{Form, VARIABLES, Var, VarDefault, help_text};

const BINARY: &str = env!("CARGO_BIN_EXE_ponix-writer");
/// The exit code `main` uses for a usage or configuration error.
const EXIT_USAGE: i32 = 2;
/// The exit code `main` uses when the writer failed.
const EXIT_FAILURE: i32 = 1;
/// A value that must never show up in any output.
const MARKER: &str = "Sup3rS3cretMarker";
/// Longest a single run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Running the binary

/// Variables every run gets unless the case sets them itself: if a "bad" value were
/// accepted, the writer fails within a second on closed ports instead of waiting 30 s
/// for servers or binding port 8080.
const SAFETY_NET: &[(&str, &str)] = &[
    ("PONIX_NATS_URL", "nats://127.0.0.1:1"),
    ("PONIX_CLICKHOUSE_URL", "http://127.0.0.1:1"),
    ("PONIX_STARTUP_TIMEOUT_SECS", "1"),
    ("PONIX_HTTP_ADDR", "127.0.0.1:0"),
];

/// One run of the binary: arguments and the environment on top of a cleared one.
#[derive(Debug, Clone)]
struct Case {
    label: String,
    args: Vec<String>,
    vars: Vec<(String, OsString)>,
    /// Strings that must appear in a line of stderr that starts with `  VAR` (the error
    /// line naming the variable).
    names: Vec<String>,
    /// Set when the values include a secret: it must not appear in the output.
    secret: Option<String>,
    /// The error line must say `(value hidden)` instead of quoting the value.
    hidden: bool,
}

impl Case {
    fn config(label: impl Into<String>, vars: &[(&str, &OsStr)], names: &[&str]) -> Self {
        Self {
            label: label.into(),
            args: Vec::new(),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            secret: None,
            hidden: false,
        }
    }
}

fn run(args: &[String], vars: &[(String, OsString)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // If anything panicked, the backtrace would be printed: the runs prove it is not.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in SAFETY_NET {
        if !vars.iter().any(|(k, _)| k == name) {
            command.env(name, value);
        }
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("starting ponix-writer");
    // Read both pipes on threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ponix-writer") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ponix-writer {args:?} with {vars:?} ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Problems with one run's output, empty when it behaved.
fn check_no_panic_or_secret(output: &Output, secret: Option<&str>) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    for text in [&stdout, &stderr] {
        for forbidden in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
            if text.contains(forbidden) {
                problems.push(format!("output contains {forbidden:?}"));
            }
        }
        if let Some(secret) = secret
            && text.contains(secret)
        {
            problems.push(format!("output contains the secret {secret:?}"));
        }
    }
    problems
}

/// Runs every case, several at a time, and returns a description of each failure.
fn run_config_cases(cases: &[Case]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let output = run(&case.args, &case.vars);
                    let problems = check_config_error(case, &output);
                    if !problems.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "{}: {}\n    exit: {:?}\n    stdout: {}\n    stderr: {}",
                            case.label,
                            problems.join("; "),
                            output.status.code(),
                            String::from_utf8_lossy(&output.stdout),
                            String::from_utf8_lossy(&output.stderr),
                        ));
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

fn check_config_error(case: &Case, output: &Output) -> Vec<String> {
    let mut problems = check_no_panic_or_secret(output, case.secret.as_deref());
    if output.status.code() != Some(EXIT_USAGE) {
        problems.push(format!("expected exit code {EXIT_USAGE}"));
    }
    if !output.stdout.is_empty() {
        problems.push("expected nothing on stdout".to_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.starts_with("ponix-writer: invalid configuration (") {
        problems.push("stderr does not start with the configuration error".to_owned());
    }
    for name in &case.names {
        // One line per problem: `  NAME="value": ...` or `  NAME (value hidden): ...`.
        let named = stderr.lines().any(|line| {
            line.strip_prefix("  ")
                .and_then(|rest| rest.strip_prefix(name.as_str()))
                .is_some_and(|rest| {
                    rest.starts_with(" (value hidden): ") || (!case.hidden && rest.starts_with('='))
                })
        });
        if !named {
            problems.push(format!("no error line names {name}"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// Bad values

/// Values of the form that the writer must refuse. Empty values are not among them: an
/// empty value counts as unset.
fn bad_samples(form: Form) -> Vec<String> {
    let strings = |samples: &[&str]| samples.iter().map(|s| (*s).to_owned()).collect();
    let long = "a".repeat(256);
    match form {
        Form::NatsUrl => strings(&[
            "http://127.0.0.1:4222",
            "nats://",
            "nats://h:x",
            "nats://h:99999",
            "nats://a, nats://b",
            "nats://a,",
            "nats://a b",
            // With credentials: the value is not echoed, even when `/`, `?` or `#` in
            // them would end a standard URL parser's authority early.
            &format!("nats://u:{MARKER}@h:x"),
            &format!("nats://us/er:pa#{MARKER}/word@host:x"),
            &format!("nats://u:p?{MARKER}@h:99999"),
            &format!("nats://:{MARKER}#x@h"),
            &format!("nats://a:{MARKER}/1@h1,nats://a:{MARKER}/2@h2"),
        ]),
        Form::HttpUrl => strings(&[
            "127.0.0.1:8123",
            "ftp://h",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h:x",
            "http://h/path",
            "http://h?x=1",
            "http://[::1",
            "http://::1:8123",
            "http://h 1",
            &format!("http://u:{MARKER}@h:8123"),
            &format!("http://u:#{MARKER}/x@h:8123"),
        ]),
        Form::NatsName => strings(&["a.b", "a b", "c*", "x>", "é", &long]),
        Form::SubjectFilter => strings(&["a..b", ".a", "a.", "a.>.b", "a b", "a*", "*x", "a.>x"]),
        Form::SubjectFilters => strings(&["a.>,,b", "a..b", ",", "a b", "a.>,b c", "a.>,"]),
        Form::Subject => strings(&["a.*", "a.>", ">", "*", "a..b", "a b", ".a"]),
        Form::Identifier => strings(&["1db", "db-x", "t; DROP TABLE x", "é", "a.b", &long]),
        Form::NonEmptyText => strings(&[" ", "\t\n"]),
        Form::AnyText => Vec::new(),
        Form::WholeNumber { min, max } | Form::Bytes { min, max } | Form::Millis { min, max } => {
            let mut samples = strings(&[
                "abc",
                "-1",
                "+5",
                "1.5",
                " 5",
                "5 ",
                "1e3",
                "0x10",
                "1_000",
                "99999999999999999999999",
            ]);
            samples.push((max + 1).to_string());
            if min > 0 {
                samples.push((min - 1).to_string());
            }
            samples
        }
        Form::Seconds { min, max } => {
            let mut samples = strings(&[
                "inf", "NaN", "1e3", "-1", "+1", ".", "1..2", "1s", " 1", "0x1",
            ]);
            samples.push(format!("{}", min / 2.0));
            samples.push(format!("{}", max + 1.0));
            samples
        }
        Form::Bool => strings(&["yes", "no", "on", "2", "truee", "t"]),
        Form::LogFilter => strings(&["info,x=notalevel", "=info", "x=infoo", "x=info=3", "[{"]),
        Form::LogFormatName => strings(&["yaml", "jsonl", "plain"]),
        Form::ListenAddr => strings(&[
            "localhost:8080",
            "8080",
            ":8080",
            "0.0.0.0",
            "0.0.0.0:99999",
            "[::]",
            "::1:8080",
        ]),
        Form::FilePath => strings(&[" ", "\t"]),
    }
}

/// Bytes that are not UTF-8, carrying the marker: every variable must refuse them
/// without echoing them.
#[cfg(unix)]
fn not_utf8() -> OsString {
    use std::os::unix::ffi::OsStringExt as _;
    let mut bytes = MARKER.as_bytes().to_vec();
    bytes.extend_from_slice(b"\xff\xfe");
    OsString::from_vec(bytes)
}

fn form_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for var in VARIABLES {
        let mut samples: Vec<OsString> = bad_samples(var.form())
            .into_iter()
            .map(OsString::from)
            .collect();
        #[cfg(unix)]
        samples.push(not_utf8());
        for sample in samples {
            let mut case = Case::config(
                format!("{}={sample:?}", var.name),
                &[(var.name, &sample)],
                &[var.name],
            );
            // A secret's value is never quoted; neither is one carrying credentials, nor
            // one that is not UTF-8. The marker is in the last two.
            let text = sample.to_str();
            case.hidden = var.secret || text.is_none_or(|text| text.contains(MARKER));
            case.secret = Some(MARKER.to_owned());
            if var.secret
                && let Some(text) = text.filter(|text| !text.trim().is_empty())
            {
                case.secret = Some(text.to_owned());
            }
            cases.push(case);
        }
    }
    cases
}

/// Rules across variables; `names` is the variable the error is reported against.
fn cross_variable_cases() -> Vec<Case> {
    let os = |s: &str| OsString::from(s);
    let case = |label: &str, vars: &[(&str, &str)], names: &[&str]| {
        let vars: Vec<(&str, OsString)> = vars.iter().map(|(k, v)| (*k, os(v))).collect();
        let refs: Vec<(&str, &OsStr)> = vars.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        Case::config(label, &refs, names)
    };
    vec![
        case(
            "batch wait equal to the default ack wait",
            &[("PONIX_NATS_BATCH_WAIT_SECS", "30")],
            &["PONIX_NATS_BATCH_WAIT_SECS"],
        ),
        case(
            "batch wait above the ack wait",
            &[
                ("PONIX_NATS_BATCH_WAIT_SECS", "5"),
                ("PONIX_NATS_ACK_WAIT_SECS", "2"),
            ],
            &["PONIX_NATS_BATCH_WAIT_SECS"],
        ),
        case(
            "max ack pending below the batch size",
            &[
                ("PONIX_NATS_BATCH_SIZE", "500"),
                ("PONIX_NATS_MAX_ACK_PENDING", "499"),
            ],
            &["PONIX_NATS_MAX_ACK_PENDING"],
        ),
        case(
            "max ack pending below the default batch size",
            &[("PONIX_NATS_MAX_ACK_PENDING", "999")],
            &["PONIX_NATS_MAX_ACK_PENDING"],
        ),
        case(
            "backoff base above the default maximum",
            &[("PONIX_NATS_NAK_BACKOFF_BASE_MS", "60000")],
            &["PONIX_NATS_NAK_BACKOFF_MAX_MS"],
        ),
        case(
            "backoff maximum below the default base",
            &[("PONIX_NATS_NAK_BACKOFF_MAX_MS", "499")],
            &["PONIX_NATS_NAK_BACKOFF_MAX_MS"],
        ),
        case(
            "dead-letter stream equal to the stream",
            &[("PONIX_NATS_DEAD_LETTER_STREAM", "processed_envelopes")],
            &["PONIX_NATS_DEAD_LETTER_STREAM"],
        ),
        case(
            "dead-letter subject inside the default stream subjects",
            &[("PONIX_NATS_DEAD_LETTER_SUBJECT", "processed_envelopes.dead")],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "stream subjects that capture the default dead-letter subject",
            &[
                ("PONIX_NATS_STREAM_SUBJECTS", ">"),
                ("PONIX_NATS_SUBJECT", "processed_envelopes.>"),
            ],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "stream subjects with a wildcard over the dead-letter subject",
            &[
                (
                    "PONIX_NATS_STREAM_SUBJECTS",
                    "processed_envelopes.>,ponix.*.*",
                ),
                ("PONIX_NATS_SUBJECT", "processed_envelopes.>"),
            ],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "consumer subject outside the stream subjects",
            &[("PONIX_NATS_STREAM_SUBJECTS", "other.>")],
            &["PONIX_NATS_SUBJECT"],
        ),
        case(
            "consumer subject wider than the stream subjects",
            &[
                ("PONIX_NATS_STREAM_SUBJECTS", "a.*"),
                ("PONIX_NATS_SUBJECT", "a.>"),
            ],
            &["PONIX_NATS_SUBJECT"],
        ),
    ]
}

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
    for args in [&["--bogus"][..], &["run"], &["-x", "--help"]] {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = run(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_USAGE), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unexpected argument") && stderr.contains("--help"),
            "{stderr}"
        );
        assert!(
            check_no_panic_or_secret(&output, None).is_empty(),
            "{stderr}"
        );
    }
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
        assert_eq!(stdout, help_text(), "{flag}");
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

/// Runs the writer with a valid configuration, a one-second start-up timeout, a
/// recognisable password and a goose DSN holding another secret, and JSON logs.
fn run_writer(nats_url: &str, clickhouse_url: &str, extra: &[(&str, &str)]) -> (Output, Duration) {
    let vars: Vec<(String, OsString)> = [
        ("PONIX_NATS_URL", nats_url),
        ("PONIX_CLICKHOUSE_URL", clickhouse_url),
        ("PONIX_CLICKHOUSE_PASSWORD", MARKER),
        ("PONIX_STARTUP_TIMEOUT_SECS", "1"),
        ("PONIX_HTTP_ADDR", "127.0.0.1:0"),
        ("PONIX_LOG_FORMAT", "json"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
    .collect();
    let started = Instant::now();
    let output = run(&[], &vars);
    (output, started.elapsed())
}

/// The `error` field of the final `ponix-writer failed` log event.
fn failure_message(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "ponix-writer failed")
        .and_then(|event| event["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no `ponix-writer failed` event in:\n{stderr}"))
}

/// Well above the 1 s start-up timeout the cases set, for a machine busy with the
/// other tests' writers, and well below the 30 s default it must not fall back to.
const STARTUP_FAILURE_LIMIT: Duration = Duration::from_secs(15);

fn assert_failed_cleanly(output: &Output, elapsed: Duration) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_FAILURE), "{stderr}");
    let problems = check_no_panic_or_secret(output, Some(MARKER));
    assert!(problems.is_empty(), "{problems:?}\n{stderr}");
    assert!(
        elapsed < STARTUP_FAILURE_LIMIT,
        "took {elapsed:?}\n{stderr}"
    );
}

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

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ponix-config-errors-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Fake servers: just enough protocol for the writer's start-up to get past them.

/// Answers the NATS client protocol's handshake: INFO, then PONG to every PING.
struct FakeNats {
    port: u16,
}

impl FakeNats {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_nats(stream));
            }
        });
        Self { port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn serve_nats(mut stream: TcpStream) {
    let info = r#"INFO {"server_id":"fake","server_name":"fake","version":"2.10.0","proto":1,"host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"jetstream":true}"#;
    if stream.write_all(format!("{info}\r\n").as_bytes()).is_err() {
        return;
    }
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.trim().eq_ignore_ascii_case("PING") && stream.write_all(b"PONG\r\n").is_err() {
            return;
        }
    }
}

/// Answers every HTTP request with one row of one `UInt8` column in
/// RowBinaryWithNamesAndTypes: what `SELECT 1` returns.
struct FakeClickHouse {
    port: u16,
}

impl FakeClickHouse {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_clickhouse(stream));
            }
        });
        Self { port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve_clickhouse(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // Requests on one keep-alive connection, one after another.
    while read_http_request(&mut reader).is_some() {
        // 1 column named "1" of type UInt8, then the row: 1.
        let body = b"\x01\x011\x05UInt8\x01";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Reads one request (head and body, by Content-Length or chunked); `None` at the end of
/// the connection.
fn read_http_request(reader: &mut BufReader<TcpStream>) -> Option<()> {
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(());
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(())
}
