//! A sequence of named steps with a summary table, for `e2e` and `drill`.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Steps {
    title: &'static str,
    rows: Vec<Row>,
    failed: bool,
}

struct Row {
    name: String,
    outcome: Outcome,
    duration: Duration,
    figure: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    NotRun,
}

impl Steps {
    pub fn new(title: &'static str) -> Steps {
        Steps {
            title,
            rows: Vec::new(),
            failed: false,
        }
    }

    /// Runs `body` unless an earlier step failed. Its `Ok` value is the step's key
    /// figure for the summary table.
    pub fn run(&mut self, name: &str, body: impl FnOnce() -> anyhow::Result<String>) {
        if self.failed || (localenv::interrupt::interrupted() && name != "teardown") {
            self.rows.push(Row {
                name: name.to_owned(),
                outcome: Outcome::NotRun,
                duration: Duration::ZERO,
                figure: String::new(),
            });
            return;
        }
        eprintln!("\n==> {}: {name}", self.title);
        let started = Instant::now();
        let result = body();
        let duration = started.elapsed();
        let (outcome, figure) = match result {
            Ok(figure) => (Outcome::Passed, first_line(&figure)),
            Err(err) => {
                eprintln!("\n{name} FAILED: {err:#}");
                self.failed = true;
                (Outcome::Failed, first_line(&format!("{err:#}")))
            }
        };
        eprintln!("<== {name}: {} in {duration:.1?}", outcome.label());
        self.rows.push(Row {
            name: name.to_owned(),
            outcome,
            duration,
            figure,
        });
    }

    /// Runs `body` even after a failure or an interrupt: teardown.
    pub fn run_always(&mut self, name: &str, body: impl FnOnce() -> anyhow::Result<String>) {
        let failed_before = std::mem::replace(&mut self.failed, false);
        self.run(name, body);
        self.failed |= failed_before;
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Prints the table and the closing `N passed, N failed` line; errors if any
    /// step failed or did not run.
    pub fn finish(self) -> anyhow::Result<()> {
        let name_width = self
            .rows
            .iter()
            .map(|row| row.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        out.push_str(&format!(
            "\n{:<name_width$}  {:<7}  {:>9}  {}\n",
            "step", "result", "duration", "key figure"
        ));
        out.push_str(&format!("{}\n", "-".repeat(name_width + 40)));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<name_width$}  {:<7}  {:>8.1}s  {}\n",
                row.name,
                row.outcome.label(),
                row.duration.as_secs_f64(),
                row.figure
            ));
        }
        let passed = self
            .rows
            .iter()
            .filter(|row| row.outcome == Outcome::Passed)
            .count();
        let failed = self.rows.len() - passed;
        out.push_str(&format!(
            "\n{}: {passed} passed, {failed} failed\n",
            self.title
        ));
        print!("{out}");
        let _ = std::io::stdout().flush();
        if failed > 0 {
            bail!("{failed} {} step(s) failed or did not run", self.title);
        }
        Ok(())
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "ok",
            Outcome::Failed => "FAILED",
            Outcome::NotRun => "not run",
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(100).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

/// Runs `command` with its output shown live (stdout and stderr both) and
/// returns that output too, for counting results; fails if the command does.
pub fn run_teed(command: Command) -> anyhow::Result<String> {
    let description = format!("{command:?}");
    let (success, output) = run_showing_output(command)?;
    if !success {
        bail!("{description} failed");
    }
    Ok(output)
}

/// Like [`run_teed`], but a failing command is not an error: returns whether it
/// succeeded, with its output. Its stderr is merged into its stdout, so that the
/// lines are shown (on our stdout) in the order the command wrote them.
pub fn run_showing_output(command: Command) -> anyhow::Result<(bool, String)> {
    let description = format!("{command:?}");
    let reader = expression(&command)
        .stdin_null()
        .stderr_to_stdout()
        .unchecked()
        .reader()
        .with_context(|| format!("starting {description}"))?;
    let mut captured = String::new();
    let mut lines = BufReader::new(&reader);
    let mut line = Vec::new();
    while lines
        .read_until(b'\n', &mut line)
        .with_context(|| format!("reading the output of {description}"))?
        > 0
    {
        let text = String::from_utf8_lossy(&line);
        print!("{text}");
        let _ = std::io::stdout().flush();
        captured.push_str(&text);
        line.clear();
    }
    let status = reader
        .try_wait()
        .with_context(|| format!("waiting for {description}"))?
        .map(|output| output.status.success())
        .with_context(|| format!("{description} closed its output but did not exit"))?;
    Ok((status, captured))
}

/// The duct expression for a `Command`: its program, arguments, directory and
/// environment changes.
fn expression(command: &Command) -> duct::Expression {
    let mut expression = duct::cmd(command.get_program(), command.get_args());
    if let Some(dir) = command.get_current_dir() {
        expression = expression.dir(dir);
    }
    for (key, value) in command.get_envs() {
        expression = match value {
            Some(value) => expression.env(key, value),
            None => expression.env_remove(key),
        };
    }
    expression
}

/// Sums libtest's `test result:` lines: (passed, failed, ignored).
pub fn libtest_totals(output: &str) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    for line in output
        .lines()
        .filter(|line| line.starts_with("test result:"))
    {
        for part in line.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => totals.0 += count,
                "failed" => totals.1 += count,
                "ignored" => totals.2 += count,
                _ => {}
            }
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_result_lines() {
        let output = "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\
                      noise\n\
                      test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(libtest_totals(output), (13, 2, 3));
    }

    #[test]
    fn a_failed_step_stops_the_rest_and_fails_the_run() {
        let mut steps = Steps::new("test");
        steps.run("first", || Ok("1 thing".into()));
        steps.run("second", || bail!("broken"));
        let mut ran_third = false;
        steps.run("third", || {
            ran_third = true;
            Ok(String::new())
        });
        assert!(!ran_third);
        assert!(steps.failed());
        assert!(steps.finish().is_err());
    }

    #[test]
    fn the_tee_captures_both_streams_in_order_with_the_status() {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo \"$GREETING\"; echo err >&2; echo last; exit 3"])
            .env("GREETING", "hello")
            .current_dir("/");
        let (success, output) = run_showing_output(command).unwrap();
        assert!(!success);
        assert_eq!(output, "hello\nerr\nlast\n");
        let ok = run_teed(Command::new("true")).unwrap();
        assert_eq!(ok, "");
        assert!(run_teed(Command::new("false")).is_err());
        assert!(run_showing_output(Command::new("/nonexistent/program")).is_err());
    }
}
