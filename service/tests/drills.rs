//! Failure drills: every published message is stored exactly once, even when
//! ClickHouse or NATS fails or the writer dies (`cargo xtask drill <name>|all`, and a
//! step of `cargo xtask e2e`).
//!
//! Each drill starts a NATS and a ClickHouse of its own, publishes N envelopes with
//! unique ids while its fault happens, waits until the consumer is drained, and
//! prints one `drill-row` line (see `drills/report.rs`): published, stored, missing,
//! duplicates, dead-lettered, redeliveries, NAKs, insert retries, re-inserted copies, time to drain
//! and the evidence that the fault really happened. It passes only if nothing is
//! missing or duplicated, exactly the injected invalid envelopes are dead-lettered,
//! and the evidence is there.
//!
//! ```text
//! PONIX_DRILLS=1 cargo test -p ponix-writer --test drills -- --test-threads=1 [--exact writer-kill]
//! ```
//!
//! They run only with `PONIX_DRILLS=1` (which `cargo xtask drill` sets); a plain
//! `cargo test` lists them as ignored, since they take minutes. `PONIX_DRILL_MESSAGES`
//! sets N (default 10,000).
//!
//! The drills are filed by what fails, one family a file under `drills/`:
//! `clickhouse_faults.rs`, `nats_faults.rs`, `writer_faults.rs`, `traffic.rs` (poison
//! and backlog) and `migration_scenarios.rs`; `common.rs` holds what they all share.

#[path = "drills/clickhouse_faults.rs"]
mod clickhouse_faults;
#[path = "drills/common.rs"]
mod common;
#[path = "drills/failover.rs"]
mod failover;
#[path = "drills/migration_scenarios.rs"]
mod migration_scenarios;
#[path = "drills/nats_faults.rs"]
mod nats_faults;
#[path = "drills/plan.rs"]
mod plan;
#[path = "drills/report.rs"]
mod report;
#[path = "drills/rig.rs"]
mod rig;
mod support;
#[path = "drills/traffic.rs"]
mod traffic;
#[path = "drills/trap.rs"]
mod trap;
#[path = "drills/writer.rs"]
mod writer;
#[path = "drills/writer_faults.rs"]
mod writer_faults;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::report::Report;

const ENABLE_VAR: &str = "PONIX_DRILLS";
const MESSAGES_VAR: &str = "PONIX_DRILL_MESSAGES";
const DEFAULT_MESSAGES: u64 = 10_000;

type DrillFuture = Pin<Box<dyn Future<Output = anyhow::Result<Report>> + Send>>;
type Drill = fn(u64) -> DrillFuture;

/// Every drill, in the order `all` runs them.
const DRILLS: &[(&str, Drill)] = &[
    ("clickhouse-down", |n| {
        Box::pin(clickhouse_faults::clickhouse_down(n))
    }),
    ("clickhouse-hang", |n| {
        Box::pin(clickhouse_faults::clickhouse_hang(n))
    }),
    ("nats-restart", |n| Box::pin(nats_faults::nats_restart(n))),
    ("nats-failover", |n| Box::pin(failover::nats_failover(n))),
    ("writer-kill", |n| Box::pin(writer_faults::writer_kill(n))),
    ("poison", |n| Box::pin(traffic::poison(n))),
    ("schema-drift", |n| {
        Box::pin(clickhouse_faults::schema_drift(n))
    }),
    ("backlog", |n| Box::pin(traffic::backlog(n))),
    ("long-outage", |n| {
        Box::pin(clickhouse_faults::long_outage(n))
    }),
    ("replicas", |n| Box::pin(writer_faults::replicas(n))),
    ("rolling-migration", |n| {
        Box::pin(migration_scenarios::rolling_migration(n))
    }),
    ("migration-crash", |n| {
        Box::pin(migration_scenarios::migration_crash(n))
    }),
];

fn main() -> ExitCode {
    let args = Arguments::from_args();
    clean_up_on_interrupt();
    let messages = match std::env::var(MESSAGES_VAR) {
        Ok(text) => match text.parse::<u64>() {
            Ok(n) if n >= 100 => n,
            _ => {
                eprintln!(
                    "error: {MESSAGES_VAR}={text:?}: expected a whole number of at least 100"
                );
                return ExitCode::FAILURE;
            }
        },
        Err(_) => DEFAULT_MESSAGES,
    };
    let enabled = std::env::var(ENABLE_VAR).is_ok_and(|value| value == "1");
    if !enabled {
        eprintln!(
            "note: the {} failure drills are ignored: they take minutes and start their own \
             NATS and ClickHouse. Run them with `cargo xtask drill all` (or {ENABLE_VAR}=1).",
            DRILLS.len()
        );
    }
    let trials = DRILLS
        .iter()
        .map(|(name, drill)| {
            let drill = *drill;
            Trial::test(*name, move || run(name, drill, messages)).with_ignored_flag(!enabled)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn run(name: &str, drill: Drill, messages: u64) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| format!("building a Tokio runtime: {err}"))?;
    eprintln!("drill {name}: {messages} messages");
    match runtime.block_on(drill(messages)) {
        Ok(report) => {
            println!("\n{}", report.line());
            if report.passed() {
                Ok(())
            } else {
                Err(format!("drill {name} failed:\n- {}", report.failures.join("\n- ")).into())
            }
        }
        Err(err) => {
            println!(
                "\n{}\t{name}\tFAILED\t\t\t\t\t\t\t\t\t\t{}",
                report::ROW_PREFIX,
                first_line(&format!("{err:#}"))
            );
            Err(format!("drill {name} could not complete: {err:#}").into())
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}

/// The private NATS and ClickHouse of a drill run in process groups of their own, so
/// a Ctrl-C meant for `cargo xtask drill` does not reach them, and the drill's drop
/// guards do not run when it is interrupted. So on SIGINT or SIGTERM, kill every
/// child process (instances and writers) and delete this run's scratch directories.
fn clean_up_on_interrupt() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        let me = std::process::id();
        for pid in children(me) {
            // SIGKILL: nothing of theirs is worth keeping.
            let _ = testkit::localenv::process::signal(pid, 9);
        }
        let scratch = testkit::localenv::Layout::workspace()
            .tools_dir()
            .join("scratch");
        if let Ok(entries) = std::fs::read_dir(&scratch) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .contains(&format!("-{me}-"))
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        eprintln!("drills interrupted: stopped their processes");
        std::process::exit(130);
    });
}

/// The pids whose parent is `parent`, from /proc.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The fields after the command name, which may contain spaces.
                    let rest = stat.rsplit_once(") ")?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
