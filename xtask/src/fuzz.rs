//! `cargo xtask fuzz --seconds N`: runs the `decode_envelope` fuzz target (fuzz/) for N
//! seconds with cargo-fuzz on the stable toolchain (`RUSTC_BOOTSTRAP=1`), printing
//! progress and a summary: executions, coverage, corpus size.
//!
//! New inputs go to a working corpus in `.tools/fuzz/corpus/`, which later runs start
//! from; the committed seeds in `fuzz/corpus/decode_envelope/` (the encoded fixtures)
//! are only read. On a crash the command prints the saved input, how to reproduce and
//! minimize it, and fails. A minimized crash belongs in `fuzz/regressions/decode_envelope/`,
//! where `service/tests/fuzz_regressions.rs` runs it under `cargo test`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::text::thousands;
use xshell::{Shell, cmd};

use crate::flags;
use crate::tools::fuzz as tools_fuzz;
use localenv::pins::Pins;

/// The one fuzz target, `fuzz/fuzz_targets/decode_envelope.rs`.
pub const TARGET: &str = "decode_envelope";
const DEFAULT_SECONDS: u64 = 60;
/// An input that takes longer than this is reported as a `timeout-` artifact.
const INPUT_TIMEOUT_SECS: u64 = 10;
/// How often a progress line is printed while the fuzzer runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

impl flags::Fuzz {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let seconds = self.seconds.unwrap_or(DEFAULT_SECONDS);
        let summary = fuzz(sh, &layout, seconds)?;
        println!("\n{}", summary.report());
        Ok(())
    }
}

/// A fuzz run of `seconds`, for a step of `cargo xtask e2e`: its key figure, or an
/// error naming the crashing input.
// Until e2e's step calls it, nothing else does.
pub fn short_run(sh: &Shell, layout: &Layout, seconds: u64) -> anyhow::Result<String> {
    Ok(fuzz(sh, layout, seconds)?.figure())
}

fn fuzz(sh: &Shell, layout: &Layout, seconds: u64) -> anyhow::Result<Summary> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let pins = Pins::load(layout)?;
    tools_fuzz::install_cargo_fuzz(sh, layout, &pins).context("installing cargo-fuzz")?;
    let cargo_fuzz = tools_fuzz::cargo_fuzz(layout);

    let seeds = seed_corpus(layout);
    if !seeds.is_dir() {
        bail!(
            "{} is missing: it holds the committed seed corpus; restore it with \
             `UPDATE_FUZZ_SEEDS=1 cargo test -p ponix-writer --test fuzz_regressions`",
            seeds.display()
        );
    }
    let work = working_corpus(layout);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(layout.logs_dir())
        .with_context(|| format!("creating {}", layout.logs_dir().display()))?;

    eprintln!("[fuzz] building {TARGET} (the first build takes several minutes) ...");
    let started = Instant::now();
    cmd!(sh, "{cargo_fuzz} fuzz build --fuzz-dir fuzz {TARGET}")
        .env("RUSTC_BOOTSTRAP", "1")
        .run()
        .context(
            "building the fuzz target failed: fix the compile error above \
             (fuzz/ builds ponix-writer with cargo-fuzz's instrumentation)",
        )?;
    eprintln!("[fuzz] built in {:.0?}", started.elapsed());

    let log_path = layout.logs_dir().join(format!("fuzz-{TARGET}.log"));
    let mut command = Command::new(&cargo_fuzz);
    command
        .current_dir(&layout.root)
        .env("RUSTC_BOOTSTRAP", "1")
        // The target's panics keep their backtraces; cargo-fuzz's own error does not.
        .env("RUST_LIB_BACKTRACE", "0")
        .args(["fuzz", "run", "--fuzz-dir", "fuzz", TARGET])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    eprintln!(
        "[fuzz] running {TARGET} for {seconds} s; new inputs go to {}, the full log to {}",
        relative(layout, &work),
        relative(layout, &log_path)
    );
    let (summary, status) = run_fuzzer(command, &log_path, seconds)?;

    if status.success() {
        return Ok(summary);
    }
    let Some(artifact) = summary.artifact.as_deref() else {
        bail!(
            "cargo fuzz run exited with {status} and saved no input; see {}",
            log_path.display()
        );
    };
    let kind = artifact_kind(artifact);
    let shown = relative(layout, Path::new(artifact));
    let cargo_fuzz = relative(layout, &cargo_fuzz);
    bail!(
        "fuzz {kind}: the input is saved in {shown}\n\
         \n\
         reproduce it:  RUSTC_BOOTSTRAP=1 {cargo_fuzz} fuzz run --fuzz-dir fuzz {TARGET} {shown}\n\
         minimize it:   RUSTC_BOOTSTRAP=1 {cargo_fuzz} fuzz tmin --fuzz-dir fuzz {TARGET} {shown}\n\
         then fix the bug, copy the minimized input into fuzz/regressions/{TARGET}/ and check with\n\
         `cargo test -p ponix-writer --test fuzz_regressions`. Full log: {log}",
        log = relative(layout, &log_path),
    )
}

/// The committed seeds: read, never written.
fn seed_corpus(layout: &Layout) -> PathBuf {
    layout.root.join("fuzz").join("corpus").join(TARGET)
}

/// Where libFuzzer writes the inputs it finds (the first corpus directory it is given).
fn working_corpus(layout: &Layout) -> PathBuf {
    layout.tools_dir().join("fuzz").join("corpus").join(TARGET)
}

fn relative(layout: &Layout, path: &Path) -> String {
    path.strip_prefix(&layout.root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Runs the fuzzer, filtering its output (libFuzzer prints a line per new input) down
/// to status pulses, messages and final stats, with a progress line every
/// [`PROGRESS_EVERY`]. Everything goes to `log_path`.
fn run_fuzzer(
    mut command: Command,
    log_path: &Path,
    seconds: u64,
) -> anyhow::Result<(Summary, std::process::ExitStatus)> {
    let description = format!("{command:?}");
    let mut log = File::create(log_path)
        .with_context(|| format!("creating the fuzz log {}", log_path.display()))?;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {description}"))?;
    let (sender, lines) = mpsc::channel();
    let readers = [
        forward_lines(
            child.stdout.take().context("no stdout pipe")?,
            sender.clone(),
        ),
        forward_lines(child.stderr.take().context("no stderr pipe")?, sender),
    ];

    let mut summary = Summary::new(seconds);
    let mut in_dictionary = false;
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                writeln!(log, "{line}").context("writing the fuzz log")?;
                if line.starts_with("###### Recommended dictionary") {
                    in_dictionary = true;
                } else if line.starts_with("###### End of recommended dictionary") {
                    in_dictionary = false;
                } else if !in_dictionary && summary.absorb(&line) {
                    eprintln!("{line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            if let Some(status) = &summary.last_status {
                eprintln!(
                    "[fuzz] {:>4.0} of {seconds} s: {} executions, coverage {}, corpus {} inputs",
                    started.elapsed().as_secs_f64(),
                    thousands(status.executions),
                    status.coverage,
                    status.corpus_inputs,
                );
            }
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {description}"))?;
    Ok((summary, status))
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    sender: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    })
}

/// A libFuzzer status line:
/// `#350033 DONE   cov: 2271 ft: 6321 corp: 678/115Kb lim: 1380 exec/s: 16668 rss: 481Mb`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    executions: u64,
    event: String,
    coverage: u64,
    features: u64,
    corpus_inputs: u64,
    corpus_size: String,
    exec_per_sec: u64,
}

fn parse_status(line: &str) -> Option<Status> {
    let mut words = line.strip_prefix('#')?.split_whitespace();
    let executions = words.next()?.parse().ok()?;
    let event = words.next()?.to_owned();
    let mut fields = BTreeMap::new();
    while let Some(word) = words.next() {
        if let Some(key) = word.strip_suffix(':') {
            fields.insert(key, words.next()?);
        }
    }
    let (corpus_inputs, corpus_size) = fields.get("corp")?.split_once('/')?;
    Some(Status {
        executions,
        event,
        coverage: fields.get("cov")?.parse().ok()?,
        features: fields.get("ft")?.parse().ok()?,
        corpus_inputs: corpus_inputs.parse().ok()?,
        corpus_size: corpus_size.to_owned(),
        exec_per_sec: fields
            .get("exec/s")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// What a run reported.
#[derive(Debug, Default)]
struct Summary {
    seconds: u64,
    last_status: Option<Status>,
    /// `stat::name: value` lines of `-print_final_stats=1`.
    stats: BTreeMap<String, u64>,
    /// The input libFuzzer saved for a crash, timeout, OOM or leak.
    artifact: Option<String>,
}

impl Summary {
    fn new(seconds: u64) -> Self {
        Summary {
            seconds,
            ..Summary::default()
        }
    }

    /// Takes what it needs from one output line; true when the line is worth showing.
    fn absorb(&mut self, line: &str) -> bool {
        if let Some(status) = parse_status(line) {
            let shown = matches!(status.event.as_str(), "INITED" | "pulse" | "DONE");
            self.last_status = Some(status);
            return shown;
        }
        if let Some((name, value)) = line
            .strip_prefix("stat::")
            .and_then(|rest| rest.split_once(':'))
        {
            if let Ok(value) = value.trim().parse() {
                self.stats.insert(name.to_owned(), value);
            }
            return true;
        }
        if let Some(path) = line
            .split_once("Test unit written to ")
            .map(|(_, path)| path.trim())
        {
            if artifact_kind(path) != "slow-unit" {
                self.artifact = Some(path.to_owned());
            }
            return true;
        }
        // One line per function first reached; the status lines carry the totals.
        !line.trim_start().starts_with("NEW_FUNC")
    }

    fn stat(&self, name: &str) -> Option<u64> {
        self.stats.get(name).copied()
    }

    fn executions(&self) -> u64 {
        self.stat("number_of_executed_units")
            .or(self.last_status.as_ref().map(|s| s.executions))
            .unwrap_or(0)
    }

    fn exec_per_sec(&self) -> u64 {
        self.stat("average_exec_per_sec")
            .or(self.last_status.as_ref().map(|s| s.exec_per_sec))
            .unwrap_or(0)
    }

    /// One line, for the e2e table.
    fn figure(&self) -> String {
        let (coverage, corpus) = self
            .last_status
            .as_ref()
            .map_or((0, 0), |s| (s.coverage, s.corpus_inputs));
        format!(
            "{} execs in {} s ({}/s), cov {coverage}, corpus {corpus}, no crash",
            thousands(self.executions()),
            self.seconds,
            thousands(self.exec_per_sec()),
        )
    }

    fn report(&self) -> String {
        let mut out = format!(
            "fuzz {TARGET}: {} executions in {} s ({}/s), no crash\n",
            thousands(self.executions()),
            self.seconds,
            thousands(self.exec_per_sec())
        );
        if let Some(s) = &self.last_status {
            out.push_str(&format!(
                "  coverage:  {} edges, {} features\n  corpus:    {} inputs, {}\n",
                s.coverage, s.features, s.corpus_inputs, s.corpus_size
            ));
        }
        if let Some(new) = self.stat("new_units_added") {
            out.push_str(&format!("  new:       {new} inputs added this run\n"));
        }
        if let Some(rss) = self.stat("peak_rss_mb") {
            out.push_str(&format!("  peak RSS:  {rss} MB\n"));
        }
        out
    }
}

/// `crash`, `timeout`, `oom`, `leak` or `slow-unit`, from libFuzzer's file name prefix.
fn artifact_kind(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('-').map_or(name, |(kind, _)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = parse_status(
            "#350033\tDONE   cov: 2271 ft: 6321 corp: 678/115Kb lim: 1380 exec/s: 16668 rss: 481Mb",
        )
        .unwrap();
        assert_eq!(status.executions, 350_033);
        assert_eq!(status.event, "DONE");
        assert_eq!((status.coverage, status.features), (2271, 6321));
        assert_eq!(
            (status.corpus_inputs, status.corpus_size.as_str()),
            (678, "115Kb")
        );
        assert_eq!(status.exec_per_sec, 16668);
        assert!(
            parse_status("#20\tINITED cov: 1254 ft: 2859 corp: 19/2430b exec/s: 0 rss: 69Mb")
                .is_some()
        );
        assert_eq!(parse_status("###### Recommended dictionary. ######"), None);
        assert_eq!(parse_status("INFO: Seed: 452894394"), None);
    }

    #[test]
    fn keeps_totals_and_hides_per_input_lines() {
        let mut summary = Summary::new(20);
        assert!(!summary.absorb(
            "#21\tNEW    cov: 1266 ft: 2885 corp: 20/2654b lim: 309 exec/s: 0 rss: 69Mb L: 224/309 MS: 1 InsertByte-"
        ));
        assert!(!summary.absorb("\tNEW_FUNC[1/1]: 0x55 in core::fmt"));
        assert!(summary.absorb(
            "#262144\tpulse  cov: 2254 ft: 6249 corp: 638/107Kb lim: 940 exec/s: 17476 rss: 481Mb"
        ));
        assert!(summary.absorb("stat::number_of_executed_units: 350033"));
        assert!(summary.absorb("stat::average_exec_per_sec:     16668"));
        assert!(summary.absorb("thread '<unnamed>' panicked at service/src/fuzz_support.rs:1:1:"));
        assert_eq!(
            summary.figure(),
            "350,033 execs in 20 s (16,668/s), cov 2254, corpus 638, no crash"
        );
        assert_eq!(summary.artifact, None);
    }

    #[test]
    fn records_crashes_but_not_slow_units() {
        let mut summary = Summary::new(1);
        summary.absorb("artifact_prefix='fuzz/artifacts/decode_envelope/'; Test unit written to fuzz/artifacts/decode_envelope/slow-unit-0a1b");
        assert_eq!(summary.artifact, None);
        summary.absorb("artifact_prefix='fuzz/artifacts/decode_envelope/'; Test unit written to fuzz/artifacts/decode_envelope/crash-da39a3ee");
        let artifact = summary.artifact.as_deref().unwrap();
        assert_eq!(artifact, "fuzz/artifacts/decode_envelope/crash-da39a3ee");
        assert_eq!(artifact_kind(artifact), "crash");
        assert_eq!(artifact_kind("fuzz/artifacts/x/timeout-99"), "timeout");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
