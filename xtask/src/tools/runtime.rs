//! The tools the local backend runs the pipeline with: goose, nats-server, and the
//! chDB endpoint's virtualenv (chdb-core, lz4, clickhouse-cityhash).

use std::fs;

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Shell, cmd};

use super::install::{GoTool, Venv, install_go_tool, make_executable, sha256};
use localenv::pins::Pins;

/// Build tags that leave out every goose driver except ClickHouse's.
const GOOSE_BUILD_TAGS: &str = "no_postgres no_mysql no_sqlite3 no_mssql no_vertica no_ydb \
                                no_libsql no_duckdb no_spanner no_redshift no_starrocks no_turso";

pub fn install_goose(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.goose_version()?;
    let goose = GoTool {
        name: "goose",
        version,
        package: "github.com/pressly/goose/v3/cmd/goose",
        build_tags: GOOSE_BUILD_TAGS,
        binary: &layout.goose(),
        version_flag: "--version",
    };
    install_go_tool(sh, layout, &goose, || {
        download_goose_release(sh, layout, pins, version)
    })
}

/// Without Go: the release binary for this platform, checked against the pinned sum.
fn download_goose_release(
    sh: &Shell,
    layout: &Layout,
    pins: &Pins,
    version: &str,
) -> anyhow::Result<()> {
    let (asset, sum_key) = goose_release_asset(std::env::consts::OS, std::env::consts::ARCH)?;
    let Some(expected) = pins.get_opt(sum_key) else {
        bail!(
            "Go is not installed and pins.env has no {sum_key} to verify a downloaded goose; \
             install Go (then re-run `cargo xtask tools`) or place goose {version} at {}",
            layout.goose().display()
        );
    };
    let url = format!("https://github.com/pressly/goose/releases/download/{version}/{asset}");
    let partial = layout.bin_dir().join("goose.download");
    eprintln!("[tools] goose {version}: downloading {url} ...");
    cmd!(
        sh,
        "curl --fail --silent --show-error --location --output {partial} {url}"
    )
    .run()
    .with_context(|| format!("downloading {url}; install curl, or Go to build goose instead"))?;
    let actual = sha256(sh, &partial)?;
    if actual != expected {
        let _ = fs::remove_file(&partial);
        bail!("checksum mismatch for {asset}: expected {expected}, got {actual}");
    }
    make_executable(&partial)?;
    fs::rename(&partial, layout.goose())?;
    Ok(())
}

fn goose_release_asset(os: &str, arch: &str) -> anyhow::Result<(&'static str, &'static str)> {
    Ok(match (os, arch) {
        ("linux", "x86_64") => ("goose_linux_x86_64", "GOOSE_SHA256_LINUX_X86_64"),
        ("linux", "aarch64") => ("goose_linux_arm64", "GOOSE_SHA256_LINUX_ARM64"),
        ("macos", "x86_64") => ("goose_darwin_x86_64", "GOOSE_SHA256_DARWIN_X86_64"),
        ("macos", "aarch64") => ("goose_darwin_arm64", "GOOSE_SHA256_DARWIN_ARM64"),
        _ => bail!("no goose release binary for {os}/{arch}: install Go to build it"),
    })
}

pub fn install_nats_server(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.nats_server_version()?;
    let binary = layout.nats_server();
    let nats = GoTool {
        name: "nats-server",
        version,
        package: "github.com/nats-io/nats-server/v2",
        build_tags: "",
        binary: &binary,
        version_flag: "--version",
    };
    install_go_tool(sh, layout, &nats, || {
        bail!(
            "Go is needed to build nats-server {version}: install Go, or place nats-server \
             {version} at {}",
            binary.display()
        )
    })
}

/// The chDB endpoint's virtualenv, rebuilt whenever requirements.txt differs from
/// the copy stored in it.
pub fn install_chdb_venv(sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
    let requirements_path = layout.python_requirements();
    let requirements = fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let python = layout.venv_python();
    let check = |sh: &Shell| {
        cmd!(
            sh,
            "{python} -c 'import chdb, lz4.block, clickhouse_cityhash.cityhash'"
        )
        .quiet()
        .run()
        .context("chdb, lz4 or clickhouse_cityhash does not import")
    };
    Venv {
        label: "python virtualenv (chdb-core, lz4, clickhouse-cityhash)",
        dir: layout.venv_dir(),
        stamp: "requirements.installed.txt",
        recipe: requirements,
        pip_args: vec!["--requirement".into(), requirements_path.clone().into()],
        expected: vec![layout.venv_python()],
        check: &check,
    }
    .install(sh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_assets_cover_the_supported_platforms() {
        assert_eq!(
            goose_release_asset("linux", "x86_64").unwrap().0,
            "goose_linux_x86_64"
        );
        assert_eq!(
            goose_release_asset("macos", "aarch64").unwrap().1,
            "GOOSE_SHA256_DARWIN_ARM64"
        );
        assert!(goose_release_asset("windows", "x86_64").is_err());
    }
}
