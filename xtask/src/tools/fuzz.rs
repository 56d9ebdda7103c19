//! cargo-fuzz for `cargo xtask fuzz`, pinned in pins.env (`CARGO_FUZZ_VERSION`) and
//! built with `cargo install --locked` into `.tools/cargo-fuzz/`. No-op when the pinned
//! version is already there.
//!
//! cargo-fuzz passes nightly-only flags (`-Z sanitizer`, `-C passes=sancov-module`);
//! `cargo xtask fuzz` runs it with `RUSTC_BOOTSTRAP=1`, so the stable toolchain accepts
//! them and no nightly is needed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Shell, cmd};

use super::install::{installed_version, reports};
use localenv::pins::Pins;

pub const PIN: &str = "CARGO_FUZZ_VERSION";

/// Where `cargo install --root` puts it.
pub fn cargo_fuzz_root(layout: &Layout) -> PathBuf {
    layout.tools_dir().join("cargo-fuzz")
}

pub fn cargo_fuzz(layout: &Layout) -> PathBuf {
    cargo_fuzz_root(layout).join("bin").join("cargo-fuzz")
}

/// The cargo that runs `cargo xtask`, so installs and builds use the same toolchain.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub fn install_cargo_fuzz(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.get(PIN)?;
    let binary = cargo_fuzz(layout);
    if installed_version(sh, &binary, "--version").is_some_and(|out| reports(&out, version)) {
        eprintln!("[tools] cargo-fuzz {version}: already installed");
        return Ok(());
    }
    let started = Instant::now();
    eprintln!(
        "[tools] cargo-fuzz {version}: building with `cargo install` (a few minutes, once) ..."
    );
    let root = cargo_fuzz_root(layout);
    let cargo = cargo();
    cmd!(
        sh,
        "{cargo} install cargo-fuzz --version {version} --locked --force --root {root}"
    )
    .run()
    .context("`cargo install cargo-fuzz` failed; check that crates.io is reachable")?;
    let reported = installed_version(sh, &binary, "--version").unwrap_or_default();
    if !reports(&reported, version) {
        bail!("installed cargo-fuzz reports {reported:?}, expected {version}");
    }
    eprintln!(
        "[tools] cargo-fuzz {version}: installed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_fuzz_is_pinned_exactly() {
        let pins = Pins::load(&Layout::workspace()).unwrap();
        let version = pins.get(PIN).unwrap();
        assert!(
            version.split('.').count() == 3
                && version.split('.').all(|part| part.parse::<u32>().is_ok()),
            "{PIN}={version} is not an exact x.y.z version"
        );
    }
}
