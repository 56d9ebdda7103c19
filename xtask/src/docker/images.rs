//! The images the compose stack, the testcontainers backend and the writer image
//! build on: the official ones where a registry answers, else local stand-ins.
//!
//! Where `docker pull` of the pinned official images fails (no registry reachable,
//! as on this project's CI machines), the stand-ins are built here and tagged under
//! `LOCAL_IMAGE_NAMESPACE`, never under an official name:
//! - `<ns>/debian:<suite>`: a debootstrap minbase of `DEBIAN_SUITE` (point release
//!   `DEBIAN_RELEASE`, from `DEBIAN_SNAPSHOT` on snapshot.debian.org where that answers),
//!   imported with `docker import`, the way moby's contrib/mkimage scripts make bases;
//! - `<ns>/nats:<version>`: the pinned nats-server `cargo xtask tools` built;
//! - `<ns>/clickhouse:chdb-<version>`: the chDB HTTP endpoint, a ClickHouse stand-in.
//!
//! The choice is written to `.tools/docker/images.env` (`NATS_IMAGE`,
//! `CLICKHOUSE_IMAGE`, `RUNTIME_IMAGE`), which overrides pins.env for every command
//! that runs containers; with the official images the file is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::find_on_path;
use xshell::{Shell, cmd};

use localenv::images::{OVERRIDDEN, images_env};

use crate::choices::ImageSource;
use localenv::pins::Pins;

const SNAPSHOT_ARCHIVE: &str = "http://snapshot.debian.org/archive/debian";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// How long `docker pull` may try before the registry counts as unreachable (it fails
/// at once here, but a filtered network can hang).
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// The names of the local stand-ins, all derived from pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImages {
    pub base: String,
    pub nats: String,
    pub clickhouse: String,
}

impl LocalImages {
    pub fn new(pins: &Pins, chdb_version: &str) -> anyhow::Result<LocalImages> {
        let namespace = pins.get("LOCAL_IMAGE_NAMESPACE")?;
        let suite = pins.get("DEBIAN_SUITE")?;
        let nats = pins.nats_server_version()?.trim_start_matches('v');
        Ok(LocalImages {
            base: format!("{namespace}/debian:{suite}"),
            nats: format!("{namespace}/nats:{nats}"),
            clickhouse: format!("{namespace}/clickhouse:chdb-{chdb_version}"),
        })
    }

    /// images.env's text.
    pub fn env_text(&self) -> String {
        format!(
            "# Written by `cargo xtask docker`: local stand-ins for the official images in\n\
             # pins.env, which no registry served here. Delete it to use the official ones.\n\
             NATS_IMAGE={}\nCLICKHOUSE_IMAGE={}\nRUNTIME_IMAGE={}\n",
            self.nats, self.clickhouse, self.base
        )
    }
}

/// The chdb-core version pinned in the endpoint's requirements.
pub fn chdb_version(requirements: &str) -> anyhow::Result<String> {
    requirements
        .lines()
        .filter_map(|line| line.split('#').next())
        .find_map(|line| {
            line.trim()
                .strip_prefix("chdb-core==")
                .map(|v| v.trim().to_owned())
        })
        .context("requirements.txt pins no chdb-core==VERSION")
}

/// Makes the images available and records the choice; returns the step figure.
pub fn ensure(
    sh: &Shell,
    layout: &Layout,
    pins: &Pins,
    source: ImageSource,
) -> anyhow::Result<String> {
    let official = OVERRIDDEN
        .iter()
        .map(|key| pins.get(key))
        .collect::<anyhow::Result<Vec<&str>>>()?;
    let use_official = match source {
        ImageSource::Official => true,
        ImageSource::Local => false,
        ImageSource::Auto => official.iter().all(|image| present_or_pulled(sh, image)),
    };
    if use_official {
        for image in &official {
            if !present_or_pulled(sh, image) {
                bail!(
                    "the official image {image} is neither here nor pullable: check the registry, or use `--images local`"
                );
            }
        }
        let _ = fs::remove_file(images_env(layout));
        // The writer image's builder too, so that `cargo xtask image` builds from
        // source here rather than from a host binary, which needs a host whose glibc
        // is no newer than the runtime image's (a GitHub runner's is newer).
        let rust = pins.get("RUST_IMAGE")?;
        let builder = if present_or_pulled(sh, rust) {
            format!("; builder {rust}")
        } else {
            format!(
                "; builder {rust} not available, so `cargo xtask image` builds from a host binary"
            )
        };
        return Ok(format!("official images: {}{builder}", official.join(", ")));
    }
    let requirements = fs::read_to_string(layout.python_requirements())
        .with_context(|| format!("reading {}", layout.python_requirements().display()))?;
    let local = LocalImages::new(pins, &chdb_version(&requirements)?)?;
    let started = Instant::now();
    build_base(sh, layout, pins, &local.base)?;
    build_nats(sh, layout, &local)?;
    build_clickhouse(sh, layout, &local)?;
    let path = images_env(layout);
    fs::create_dir_all(layout.docker_dir())
        .with_context(|| format!("creating {}", layout.docker_dir().display()))?;
    fs::write(&path, local.env_text()).with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "local stand-ins {}, {}, {} ({:.0?})",
        local.base,
        local.nats,
        local.clickhouse,
        started.elapsed()
    ))
}

/// Whether the engine has `image` (no pull).
pub fn image_exists(sh: &Shell, image: &str) -> bool {
    let format = "{{.Id}}";
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

fn present_or_pulled(sh: &Shell, image: &str) -> bool {
    if image_exists(sh, image) {
        return true;
    }
    eprintln!("[docker] trying `docker pull {image}` ...");
    let pulled =
        super::probe::run_with_timeout("docker", &["pull", "--quiet", image], PULL_TIMEOUT);
    if !pulled {
        eprintln!("[docker] {image} cannot be pulled here: building local stand-ins instead");
    }
    pulled
}

/// A label value on an image, empty when absent.
fn label(sh: &Shell, image: &str, key: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{key}\"}}}}");
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The stand-ins are rebuilt when the inputs recorded in this label change.
const RECIPE_LABEL: &str = "dev.ponix.recipe";

fn up_to_date(sh: &Shell, image: &str, recipe: &str) -> bool {
    image_exists(sh, image) && label(sh, image, RECIPE_LABEL) == recipe
}

fn build_base(sh: &Shell, layout: &Layout, pins: &Pins, image: &str) -> anyhow::Result<()> {
    let suite = pins.get("DEBIAN_SUITE")?;
    let release = pins.get("DEBIAN_RELEASE")?;
    let snapshot = pins.get("DEBIAN_SNAPSHOT")?;
    let recipe = format!("debootstrap minbase {suite} {release} {snapshot}");
    if up_to_date(sh, image, &recipe) {
        eprintln!("[docker] {image}: up to date");
        return Ok(());
    }
    if find_on_path("debootstrap").is_none() {
        eprintln!("[docker] installing debootstrap ...");
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends debootstrap"
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .context(
            "installing debootstrap with apt-get (run `apt-get update` first if it is not found)",
        )?;
    }
    let snapshot_url = format!("{SNAPSHOT_ARCHIVE}/{snapshot}");
    let mirror = if answers(sh, &format!("{snapshot_url}/dists/{suite}/Release")) {
        snapshot_url
    } else {
        eprintln!(
            "[docker] snapshot.debian.org does not answer here; using {DEBIAN_MIRROR} and checking \
             that it serves Debian {release}"
        );
        DEBIAN_MIRROR.to_owned()
    };
    let rootfs = layout.docker_dir().join(format!("rootfs-{suite}"));
    remove_dir(&rootfs)?;
    eprintln!("[docker] debootstrap {suite} from {mirror} (about a minute) ...");
    let started = Instant::now();
    // ca-certificates for TLS clients in the images, wget for the compose healthchecks
    // (the official nats and clickhouse images have it too).
    cmd!(
        sh,
        "debootstrap --variant=minbase --include=ca-certificates,wget {suite} {rootfs} {mirror}"
    )
    .run()
    .with_context(|| format!("debootstrap of Debian {suite} from {mirror}"))?;
    let served = served_release(&rootfs.join("var/lib/apt/lists"))?;
    if served != release {
        bail!(
            "the Debian mirror serves {suite} {served}, but pins.env pins DEBIAN_RELEASE={release}: \
             review the new point release and update DEBIAN_RELEASE (and DEBIAN_SNAPSHOT) in pins.env"
        );
    }
    // What an image needs no copy of: the package lists and the downloaded debs.
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let path = rootfs.join(dir);
        for entry in fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
    }
    let tar = layout.docker_dir().join(format!("rootfs-{suite}.tar"));
    cmd!(sh, "tar --numeric-owner -C {rootfs} -cf {tar} .")
        .run()
        .context("packing the debootstrap root filesystem")?;
    let recipe_change =
        format!("LABEL {RECIPE_LABEL}=\"{recipe}\" dev.ponix.debian.mirror=\"{mirror}\"");
    cmd!(
        sh,
        "docker import --change {recipe_change} --change 'CMD [\"/bin/bash\"]' {tar} {image}"
    )
    .quiet()
    .run()
    .with_context(|| format!("importing the root filesystem as {image}"))?;
    fs::remove_file(&tar).with_context(|| format!("removing {}", tar.display()))?;
    remove_dir(&rootfs)?;
    eprintln!(
        "[docker] {image}: Debian {release} built in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn answers(sh: &Shell, url: &str) -> bool {
    cmd!(sh, "curl --silent --fail --head --max-time 10 {url}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// `Version:` of the Release file debootstrap fetched.
fn served_release(lists: &Path) -> anyhow::Result<String> {
    for entry in fs::read_dir(lists).with_context(|| format!("reading {}", lists.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with("_Release") {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            if let Some(version) = release_version(&text) {
                return Ok(version);
            }
        }
    }
    bail!(
        "debootstrap left no Release file with a Version in {}",
        lists.display()
    )
}

fn release_version(release: &str) -> Option<String> {
    release
        .lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A fresh, empty build context under `.tools/docker/`.
fn context_dir(layout: &Layout, name: &str) -> anyhow::Result<PathBuf> {
    let dir = layout.docker_dir().join("context").join(name);
    remove_dir(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn docker_build(
    sh: &Shell,
    dockerfile: &Path,
    context: &Path,
    base: &str,
    image: &str,
    recipe: &str,
) -> anyhow::Result<()> {
    let base_arg = format!("BASE_IMAGE={base}");
    let label = format!("{RECIPE_LABEL}={recipe}");
    cmd!(sh, "docker build --file {dockerfile} --build-arg {base_arg} --label {label} --tag {image} {context}")
        .run()
        .with_context(|| format!("building {image} from {}", dockerfile.display()))
}

fn build_nats(sh: &Shell, layout: &Layout, local: &LocalImages) -> anyhow::Result<()> {
    let binary = layout.nats_server();
    let reported = cmd!(sh, "{binary} --version")
        .quiet()
        .read()
        .context("nats-server is not installed: run `cargo xtask tools` first")?;
    let recipe = format!("{} on {}", reported.trim(), local.base);
    if up_to_date(sh, &local.nats, &recipe) {
        eprintln!("[docker] {}: up to date", local.nats);
        return Ok(());
    }
    let context = context_dir(layout, "nats")?;
    fs::copy(&binary, context.join("nats-server"))
        .context("copying nats-server into the build context")?;
    let dockerfile = layout.root.join("docker/local/nats.Dockerfile");
    docker_build(sh, &dockerfile, &context, &local.base, &local.nats, &recipe)?;
    remove_dir(&context)
}

fn build_clickhouse(sh: &Shell, layout: &Layout, local: &LocalImages) -> anyhow::Result<()> {
    let requirements = layout.python_requirements();
    let server = layout.chdb_server_dir().join("chdb_server");
    let entrypoint = layout.root.join("docker/local/clickhouse-entrypoint.sh");
    let mut recipe_text = fs::read_to_string(&requirements).context("reading requirements.txt")?;
    recipe_text
        .push_str(&fs::read_to_string(&entrypoint).context("reading the stand-in's entrypoint")?);
    let mut files: Vec<PathBuf> = fs::read_dir(&server)
        .with_context(|| format!("reading {}", server.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    files.sort();
    for file in &files {
        recipe_text.push_str(
            &fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    let recipe = format!(
        "chdb-server {:016x} on {}",
        fnv1a(recipe_text.as_bytes()),
        local.base
    );
    if up_to_date(sh, &local.clickhouse, &recipe) {
        eprintln!("[docker] {}: up to date", local.clickhouse);
        return Ok(());
    }
    let context = context_dir(layout, "clickhouse")?;
    let wheels = context.join("wheels");
    let pip = layout.venv_dir().join("bin/pip");
    if !pip.exists() {
        bail!(
            "the chDB virtualenv is missing ({}): run `cargo xtask tools` first",
            pip.display()
        );
    }
    // Containers cannot reach PyPI here, so the wheels travel in the build context.
    cmd!(
        sh,
        "{pip} download --quiet --only-binary=:all: --requirement {requirements} --dest {wheels}"
    )
    .run()
    .context("downloading the chDB endpoint's wheels with pip")?;
    fs::copy(&requirements, wheels.join("requirements.txt")).context("copying requirements.txt")?;
    let package = context.join("chdb_server");
    fs::create_dir_all(&package)?;
    for file in &files {
        fs::copy(file, package.join(file.file_name().expect("a file name")))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    fs::copy(&entrypoint, context.join("entrypoint.sh")).context("copying the entrypoint")?;
    let dockerfile = layout.root.join("docker/local/clickhouse.Dockerfile");
    docker_build(
        sh,
        &dockerfile,
        &context,
        &local.base,
        &local.clickhouse,
        &recipe,
    )?;
    remove_dir(&context)
}

/// A content fingerprint for the rebuild label, not a security hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_live_under_the_project_namespace_never_an_official_name() {
        let pins = Pins::load(&Layout::workspace()).unwrap();
        let local = LocalImages::new(&pins, "26.9.0").unwrap();
        for image in [&local.base, &local.nats, &local.clickhouse] {
            assert!(image.starts_with("ponix-local/"), "{image}");
        }
        let official: Vec<&str> = OVERRIDDEN
            .iter()
            .map(|key| pins.get(key).unwrap())
            .collect();
        for image in [&local.base, &local.nats, &local.clickhouse] {
            assert!(
                !official.contains(&image.as_str()),
                "{image} reuses an official name"
            );
        }
        assert_eq!(local.clickhouse, "ponix-local/clickhouse:chdb-26.9.0");
        let text = local.env_text();
        for key in OVERRIDDEN {
            assert!(text.contains(&format!("\n{key}=ponix-local/")), "{text}");
        }
    }

    #[test]
    fn the_chdb_version_comes_from_the_requirements() {
        let text = "# c\nchdb-core==26.9.0            # engine\nlz4==4.4.5\n";
        assert_eq!(chdb_version(text).unwrap(), "26.9.0");
        assert!(chdb_version("lz4==4.4.5\n").is_err());
        let layout = Layout::workspace();
        let pinned = fs::read_to_string(layout.python_requirements()).unwrap();
        assert!(chdb_version(&pinned).is_ok());
    }

    #[test]
    fn the_release_version_is_read_from_the_release_file() {
        let release = "Origin: Debian\nSuite: oldstable\nVersion: 12.15\nDate: Sat, 11 Jul 2026\n";
        assert_eq!(release_version(release).as_deref(), Some("12.15"));
        assert_eq!(release_version("Origin: Debian\n"), None);
    }
}
