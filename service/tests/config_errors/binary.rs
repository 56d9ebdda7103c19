//! Running the `ponix-writer` binary and judging what it printed. Every run gets a
//! cleared environment, a safety net of closed ports and a time limit, so that a bad
//! value the writer wrongly accepts fails the test at once instead of waiting for
//! servers; the checks are shared so that every case is held to the same rules
//! (exit code, the variable named, no panic, no secret).

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_ponix-writer");
/// The exit code `main` uses for a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;
/// The exit code `main` uses when the writer failed.
const EXIT_FAILURE: i32 = 1;
/// A value that must never show up in any output.
pub const MARKER: &str = "Sup3rS3cretMarker";
/// Longest a single run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);

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
pub struct Case {
    label: String,
    pub args: Vec<String>,
    pub vars: Vec<(String, OsString)>,
    /// Strings that must appear in a line of stderr that starts with `  VAR` (the error
    /// line naming the variable).
    names: Vec<String>,
    /// Set when the values include a secret: it must not appear in the output.
    pub secret: Option<String>,
    /// The error line must say `(value hidden)` instead of quoting the value.
    pub hidden: bool,
}

impl Case {
    pub fn config(label: impl Into<String>, vars: &[(&str, &OsStr)], names: &[&str]) -> Self {
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

pub fn run(args: &[String], vars: &[(String, OsString)]) -> Output {
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
pub fn check_no_panic_or_secret(output: &Output, secret: Option<&str>) -> Vec<String> {
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
pub fn run_config_cases(cases: &[Case]) -> Vec<String> {
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

pub fn check_config_error(case: &Case, output: &Output) -> Vec<String> {
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

/// Runs the writer with a valid configuration, a one-second start-up timeout, a
/// recognisable password and a goose DSN holding another secret, and JSON logs.
pub fn run_writer(
    nats_url: &str,
    clickhouse_url: &str,
    extra: &[(&str, &str)],
) -> (Output, Duration) {
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
pub fn failure_message(output: &Output) -> String {
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

pub fn assert_failed_cleanly(output: &Output, elapsed: Duration) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_FAILURE), "{stderr}");
    let problems = check_no_panic_or_secret(output, Some(MARKER));
    assert!(problems.is_empty(), "{problems:?}\n{stderr}");
    assert!(
        elapsed < STARTUP_FAILURE_LIMIT,
        "took {elapsed:?}\n{stderr}"
    );
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ponix-config-errors-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
