//! `cargo xtask tools`: installs the pinned tools into `.tools/`.
//!
//! Each step is a no-op when the pinned version is already there, and replaces
//! whatever other version it finds. The installer core is `install`; each tool
//! family has a file of its own (`runtime`, `lint`, `fuzz`), which uses the core
//! and nothing here.

pub mod fuzz;
pub mod install;
pub mod lint;
pub mod runtime;

use std::fs;

use anyhow::Context;
use localenv::Layout;
use xshell::Shell;

use crate::flags;
use localenv::pins::Pins;

impl flags::Tools {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        install_all(sh, &layout)
    }
}

pub fn install_all(sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
    let pins = install_runtime(sh, layout)?;
    lint::install_linters(sh, layout, &pins).context("installing the deploy-file linters")?;
    fuzz::install_cargo_fuzz(sh, layout, &pins).context("installing cargo-fuzz")?;
    eprintln!("tools ready in {}", layout.tools_dir().display());
    Ok(())
}

/// What the local backend needs to run the pipeline (goose, nats-server, the chDB
/// endpoint), without the linters and fuzzer: `cargo xtask bench` installs only these.
pub fn install_runtime(sh: &Shell, layout: &Layout) -> anyhow::Result<Pins> {
    let pins = Pins::load(layout)?;
    fs::create_dir_all(layout.bin_dir())
        .with_context(|| format!("creating {}", layout.bin_dir().display()))?;
    runtime::install_goose(sh, layout, &pins).context("installing goose")?;
    runtime::install_nats_server(sh, layout, &pins).context("installing nats-server")?;
    runtime::install_chdb_venv(sh, layout).context("installing the chDB endpoint's virtualenv")?;
    Ok(pins)
}
