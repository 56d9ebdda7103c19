//! `cargo xtask bench`: the writer end to end against the limits of its parts.
//!
//! Builds `ponix-writer` and `ponix-bench` in release mode, starts a fresh local NATS
//! and ClickHouse, and runs `ponix-bench` (bench/src/main.rs describes the phases)
//! with the endpoints in its environment. Every other `PONIX_*` variable set by the
//! caller reaches the writer and the ceilings alike, which is how the knobs are
//! compared: `PONIX_NATS_BATCH_SIZE=5000 cargo xtask bench --quick`.
//!
//! Results: a table on stdout, `target/bench/latest.json`, and one JSON line per
//! run appended to `target/bench/history.jsonl`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{self, Engine, Running};
use xshell::{Shell, cmd};

use crate::choices::Payload;
use crate::steps::run_showing_output;
use crate::{flags, tools};

const DEFAULT_MESSAGES: u64 = 1_000_000;
const QUICK_MESSAGES: u64 = 100_000;
const DEFAULT_LATENCY_SECONDS: u64 = 30;
/// The line `ponix-bench` ends with (bench/src/main.rs).
const SUMMARY_PREFIX: &str = "bench summary:";

/// What one bench run measures.
pub struct Options {
    pub messages: u64,
    pub payload: Payload,
    pub latency_seconds: u64,
    pub engine: Engine,
}

impl flags::Bench {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let options = Options {
            messages: self.messages.unwrap_or(if self.quick {
                QUICK_MESSAGES
            } else {
                DEFAULT_MESSAGES
            }),
            payload: self.payload.unwrap_or_default(),
            latency_seconds: self.latency_seconds.unwrap_or(DEFAULT_LATENCY_SECONDS),
            engine: Engine::choose(self.clickhouse)?,
        };
        run_bench(sh, &layout, &options)?;
        Ok(())
    }
}

/// Installs the runtime tools, builds, runs one bench against a fresh local
/// environment and tears it down; returns the bench's summary line.
pub fn run_bench(sh: &Shell, layout: &Layout, options: &Options) -> anyhow::Result<String> {
    if local::running(layout)?.is_some() {
        bail!(
            "a local environment is running (`cargo xtask up`); the bench needs fresh instances of its own: stop it with `cargo xtask down`"
        );
    }
    tools::install_runtime(sh, layout)?;
    eprintln!("[bench] building ponix-writer and ponix-bench (release) ...");
    cmd!(
        sh,
        "cargo build --release --locked -p ponix-writer -p ponix-bench"
    )
    .run()
    .context("building the release binaries for the bench")?;
    let release = target_dir(layout).join("release");
    let out_dir = target_dir(layout).join("bench");
    let commit = cmd!(sh, "git rev-parse --short HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_else(|_| "unknown".to_owned());

    let mut environment = Running::start(layout, options.engine, false)?;
    let mut bench = Command::new(release.join("ponix-bench"));
    bench
        .args(["--messages", &options.messages.to_string()])
        .args(["--payload", options.payload.as_str()])
        .args(["--latency-seconds", &options.latency_seconds.to_string()])
        .arg("--writer")
        .arg(release.join("ponix-writer"))
        .arg("--out-dir")
        .arg(&out_dir)
        .args(["--commit", &commit])
        .envs(environment.endpoints.env_vars(layout));
    // So that the bench can say how much CPU each server spent in each phase.
    for (name, flag) in [
        (local::NATS, "--nats-pid"),
        (local::CLICKHOUSE, "--clickhouse-pid"),
    ] {
        if let Some(process) = local::find_process(layout, name)? {
            bench.args([flag, &process.pid.to_string()]);
        }
    }
    let (success, output) = run_showing_output(bench).context("running ponix-bench")?;
    let interrupted = localenv::interrupt::interrupted();
    if !success && !interrupted {
        local::dump_logs(layout);
    }
    eprintln!("[bench] tearing down ...");
    environment.teardown()?;
    if interrupted {
        bail!("interrupted; the environment is torn down");
    }
    if !success {
        bail!(
            "the bench failed; the writer's logs are in {}",
            out_dir.display()
        );
    }
    let summary = output
        .lines()
        .find_map(|line| line.strip_prefix(SUMMARY_PREFIX))
        .context("the bench printed no summary line")?;
    Ok(summary.trim().to_owned())
}
fn target_dir(layout: &Layout) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| layout.root.join("target"))
}
