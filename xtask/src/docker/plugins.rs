//! The docker CLI's compose and buildx plugins at their pinned versions.
//!
//! Neither ships with Debian's `docker.io` (its `docker-compose` package is the old
//! Python 1.x), and no release download is reachable from these machines, so each is
//! built from its Go module like goose: `go mod download` gives the module's source,
//! `go build` in it makes the plugin, installed into the user's CLI plugins directory
//! (`$DOCKER_CONFIG/cli-plugins`, else `~/.docker/cli-plugins`). `go install
//! module@version` is refused for these modules: their go.mod files carry `exclude`
//! directives. A plugin that already reports the pinned version is left alone.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use localenv::local::find_on_path;
use xshell::{Shell, cmd};

use crate::tools::install::reports;
use localenv::pins::Pins;

pub struct Plugin {
    /// `docker <command>`.
    pub command: &'static str,
    pub module: &'static str,
    /// The package inside the module that builds the plugin binary.
    pub package: &'static str,
    /// The variable the module's Makefile sets with `-X` so that `version` reports it.
    pub version_variable: &'static str,
    pub pin: &'static str,
}

pub const COMPOSE: Plugin = Plugin {
    command: "compose",
    module: "github.com/docker/compose/v5",
    package: "./cmd",
    version_variable: "github.com/docker/compose/v5/internal.Version",
    pin: "DOCKER_COMPOSE_VERSION",
};

pub const BUILDX: Plugin = Plugin {
    command: "buildx",
    module: "github.com/docker/buildx",
    package: "./cmd/buildx",
    version_variable: "github.com/docker/buildx/version.Version",
    pin: "DOCKER_BUILDX_VERSION",
};

pub fn plugins_dir() -> anyhow::Result<PathBuf> {
    if let Some(config) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(config).join("cli-plugins"));
    }
    let home = std::env::var_os("HOME").context(
        "HOME is unset, so the docker CLI plugins directory is unknown: set DOCKER_CONFIG",
    )?;
    Ok(PathBuf::from(home).join(".docker").join("cli-plugins"))
}

/// Installs `plugin` unless `docker <command> version` already reports the pin.
/// Returns what was done, for the step figure.
pub fn ensure(sh: &Shell, pins: &Pins, plugin: &Plugin) -> anyhow::Result<String> {
    let version = pins.get(plugin.pin)?;
    let name = format!("docker {}", plugin.command);
    let command = plugin.command;
    let reported = cmd!(sh, "docker {command} version")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if reports(&reported, version) {
        return Ok(format!("{name} {version}"));
    }
    if find_on_path("go").is_none() {
        bail!(
            "{name} {version} is not installed and Go is not on PATH to build it: install Go \
             (GO_VERSION in pins.env), or install the {name} plugin {version} yourself"
        );
    }
    let started = Instant::now();
    eprintln!(
        "[docker] building {name} {version} from {} (one to two minutes) ...",
        plugin.module
    );
    let module = format!("{}@{version}", plugin.module);
    let json = cmd!(sh, "go mod download -json {module}")
        .quiet()
        .read()
        .with_context(|| {
            format!(
                "downloading the Go module {module}; check that the Go module proxy is reachable"
            )
        })?;
    let source =
        module_dir(&json).with_context(|| format!("reading `go mod download -json {module}`"))?;
    let dir = plugins_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join(format!("docker-{command}"));
    let ldflags = format!("-s -w -X {}={version}", plugin.version_variable);
    let package = plugin.package;
    {
        let _in_module = sh.push_dir(&source);
        // The module cache is read-only and the modules' go.sum files are complete, so
        // `-mod=mod` only lets go resolve the build list the way `go install` cannot.
        cmd!(
            sh,
            "go build -trimpath -ldflags {ldflags} -o {binary} {package}"
        )
        .env("GOFLAGS", "-mod=mod")
        .run()
        .with_context(|| format!("building {name} {version} with go build"))?;
    }
    let reported = cmd!(sh, "docker {command} version")
        .quiet()
        .read()
        .with_context(|| format!("running the freshly built {name}"))?;
    if !reports(&reported, version) {
        bail!(
            "the freshly built {name} reports {:?}, expected {version}",
            reported.trim()
        );
    }
    eprintln!(
        "[docker] {name} {version}: installed in {:.0?}",
        started.elapsed()
    );
    Ok(format!("{name} {version} (built)"))
}

fn module_dir(json: &str) -> anyhow::Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Download {
        #[serde(rename = "Dir")]
        dir: Option<PathBuf>,
        #[serde(rename = "Error")]
        error: Option<String>,
    }
    let download: Download = serde_json::from_str(json).context("parsing go's JSON")?;
    match (download.dir, download.error) {
        (_, Some(error)) => bail!("go mod download failed: {error}"),
        (Some(dir), None) => Ok(dir),
        (None, None) => bail!("go mod download named no directory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_directory_comes_from_go_json() {
        let dir = module_dir(r#"{"Path":"m","Version":"v1","Dir":"/go/pkg/mod/m@v1"}"#).unwrap();
        assert_eq!(dir, PathBuf::from("/go/pkg/mod/m@v1"));
        let err = module_dir(r#"{"Path":"m","Error":"not found"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("not found"), "{err:#}");
    }

    #[test]
    fn both_plugins_are_pinned() {
        let pins = Pins::load(&localenv::Layout::workspace()).unwrap();
        for plugin in [&COMPOSE, &BUILDX] {
            assert!(
                pins.get(plugin.pin).unwrap().starts_with('v'),
                "{}",
                plugin.pin
            );
        }
    }
}
