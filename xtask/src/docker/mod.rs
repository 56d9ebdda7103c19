//! `cargo xtask docker`: a Docker host on demand, the way a GitHub runner comes with
//! one: an engine that answers (installed and started where this is a Debian machine
//! and xtask runs as root), the pinned compose and buildx CLI plugins, and the images
//! the container paths need (official where a registry answers, local stand-ins
//! otherwise). `.ci/run` calls it before `cargo xtask e2e`, and `--stop` after.

mod engine;
pub mod images;
mod plugins;
pub mod probe;

use std::time::Instant;

use anyhow::Context;
use localenv::Layout;
use xshell::Shell;

use crate::choices::ImageSource;
use crate::flags;
use localenv::pins::Pins;

impl flags::Docker {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        if self.stop {
            println!("[docker] {}", engine::stop(sh, &layout)?);
            return Ok(());
        }
        let pins = Pins::load(&layout)?;
        let step =
            |name: &str, body: &mut dyn FnMut() -> anyhow::Result<String>| -> anyhow::Result<()> {
                let started = Instant::now();
                let figure = body().with_context(|| format!("cargo xtask docker: {name}"))?;
                println!(
                    "[docker] {name:<8} {:>6.1} s  {figure}",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            };
        step("engine", &mut || {
            Ok(engine::ensure(sh, &layout)?.to_string())
        })?;
        step("compose", &mut || {
            plugins::ensure(sh, &pins, &plugins::COMPOSE)
        })?;
        step("buildx", &mut || {
            plugins::ensure(sh, &pins, &plugins::BUILDX)
        })?;
        if !self.no_images {
            step("images", &mut || {
                crate::tools::install_runtime(sh, &layout)?;
                images::ensure(sh, &layout, &pins, self.images.unwrap_or(ImageSource::Auto))
            })?;
        }
        Ok(())
    }
}

/// What `cargo xtask docker` does with its defaults, as one step of `cargo xtask
/// e2e`: a no-op past the version checks where `.ci/run` (or a GitHub runner)
/// already prepared the host. Returns the step's figure.
pub fn ensure_host(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let pins = Pins::load(layout)?;
    let engine = engine::ensure(sh, layout).context("making sure a Docker engine answers")?;
    let compose = plugins::ensure(sh, &pins, &plugins::COMPOSE)?;
    let buildx = plugins::ensure(sh, &pins, &plugins::BUILDX)?;
    let images = images::ensure(sh, layout, &pins, ImageSource::Auto)?;
    Ok(format!("{engine}; {compose}; {buildx}; {images}"))
}
