//! `cargo xtask`: the project's harness. See the README for the commands.
//!
//! `main` only parses flags, moves to the project root and dispatches: each command
//! lives in its own module with `fn run(self, sh: &Shell) -> anyhow::Result<()>`.

mod bench;
mod choices;
mod compose;
mod container_tests;
mod dev;
mod docker;
mod down;
mod drill;
mod e2e;
mod flags;
mod fuzz;
mod image;
mod lint;
mod stack;
mod steps;
#[cfg(test)]
mod tidy;
mod tools;
mod up;

use std::path::Path;

use anyhow::Context;
use xshell::Shell;

fn main() -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        // No subcommand: list the commands instead of an xflags error.
        print!("{}", flags::Xtask::HELP);
        return Ok(());
    }
    let flags = flags::Xtask::from_vec(args).unwrap_or_else(|err| err.exit());

    let sh = Shell::new().context("creating a shell")?;
    sh.change_dir(project_root());

    match flags.subcommand {
        flags::XtaskCmd::Tools(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Up(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Down(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Bench(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Drill(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Fuzz(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Dev(cmd) => cmd.run(&sh),
        flags::XtaskCmd::E2e(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Image(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Lint(cmd) => cmd.run(&sh),
        flags::XtaskCmd::Docker(cmd) => cmd.run(&sh),
        flags::XtaskCmd::TestContainers(cmd) => cmd.run(&sh),
    }
}

fn project_root() -> &'static Path {
    // xtask/ sits directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
}
