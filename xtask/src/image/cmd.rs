//! One command line of `cargo xtask image` (docker or cargo) with the environment it
//! needs: what the plan is made of and prints, and what the checks, the stack and
//! the host build run.

use std::fmt;

use anyhow::Context;
use localenv::text::shell_quote;
use xshell::{Shell, cmd};

/// One command line (docker or cargo), with the environment it needs. Values that
/// must not be printed never go here: the stack passes them by name (`--env KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: &'static str,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Cmd {
    pub fn docker(args: &[&str]) -> Cmd {
        Cmd {
            program: "docker",
            env: Vec::new(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The xshell command, for the caller to add environment values to.
    pub fn to_xshell<'a>(&self, sh: &'a Shell) -> xshell::Cmd<'a> {
        let (program, args) = (self.program, &self.args);
        let mut command = cmd!(sh, "{program} {args...}");
        for (key, value) in &self.env {
            command = command.env(key, value);
        }
        command
    }

    /// Runs it with its output shown.
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        self.to_xshell(sh)
            .run()
            .with_context(|| format!("`{self}` failed"))
    }

    /// Runs it quietly and returns stdout; stderr is shown.
    pub fn read(&self, sh: &Shell) -> anyhow::Result<String> {
        self.to_xshell(sh)
            .quiet()
            .read()
            .with_context(|| format!("`{self}` failed"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            write!(f, "{key}={} ", shell_quote(value))?;
        }
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}
