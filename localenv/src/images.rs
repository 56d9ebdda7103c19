//! Which images the container paths run: pins.env's names, with those of
//! `.tools/docker/images.env` over them. `cargo xtask docker` writes that file when no
//! registry serves the official images and it built local stand-ins instead; xtask
//! (compose, the image build) and testkit (testcontainers) both take their names here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::Layout;
use crate::env_file;
use crate::pins::Pins;

/// The pins.env keys images.env may override.
pub const OVERRIDDEN: &[&str] = &["NATS_IMAGE", "CLICKHOUSE_IMAGE", "RUNTIME_IMAGE"];

/// Where `cargo xtask docker` records the stand-ins it built.
pub fn images_env(layout: &Layout) -> PathBuf {
    layout.docker_dir().join("images.env")
}

/// The names images.env sets (none when the file is absent: the official images).
pub fn overrides(layout: &Layout) -> anyhow::Result<BTreeMap<String, String>> {
    let path = images_env(layout);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_overrides(&text).with_context(|| format!("parsing {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// images.env's names; an empty value overrides nothing, and a key that is no image
/// name is refused, so that the file can never change a pin that is not an image's.
pub fn parse_overrides(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut names = BTreeMap::new();
    for entry in env_file::parse(text)? {
        anyhow::ensure!(
            OVERRIDDEN.contains(&entry.key.as_str()),
            "line {}: {} is not one of the image names it may set ({}); delete the file and run \
             `cargo xtask docker` to write it again",
            entry.line,
            entry.key,
            OVERRIDDEN.join(", ")
        );
        if !entry.value.is_empty() {
            names.insert(entry.key, entry.value);
        }
    }
    Ok(names)
}

/// pins.env, with the image names of images.env over it: every command and test that
/// runs containers takes its images here.
#[derive(Debug, Clone)]
pub struct Images {
    pub pins: Pins,
    overrides: BTreeMap<String, String>,
}

impl Images {
    pub fn load(layout: &Layout) -> anyhow::Result<Images> {
        Ok(Images {
            pins: Pins::load(layout)?,
            overrides: overrides(layout)?,
        })
    }

    /// The pins alone: the official images, as where no images.env was written.
    pub fn official(pins: Pins) -> Images {
        Images {
            pins,
            overrides: BTreeMap::new(),
        }
    }

    pub fn with_overrides(pins: Pins, overrides: BTreeMap<String, String>) -> Images {
        Images { pins, overrides }
    }

    /// `key`'s image: images.env's name if it sets one, else pins.env's.
    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        match self.overrides.get(key) {
            Some(name) => Ok(name),
            None => self.pins.get(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_names_win_and_an_empty_one_leaves_the_pin() {
        let pins = Pins::parse(
            "RUNTIME_IMAGE=debian:bookworm-slim\nNATS_IMAGE=nats:2\nCLICKHOUSE_IMAGE=clickhouse:1\n",
        )
        .unwrap();
        let names = parse_overrides(
            "# written by cargo xtask docker\nRUNTIME_IMAGE=ponix-local/debian:bookworm\nCLICKHOUSE_IMAGE=\n",
        )
        .unwrap();
        let images = Images::with_overrides(pins.clone(), names);
        assert_eq!(
            images.get("RUNTIME_IMAGE").unwrap(),
            "ponix-local/debian:bookworm"
        );
        assert_eq!(images.get("CLICKHOUSE_IMAGE").unwrap(), "clickhouse:1");
        assert_eq!(images.get("NATS_IMAGE").unwrap(), "nats:2");
        assert_eq!(
            Images::official(pins).get("RUNTIME_IMAGE").unwrap(),
            "debian:bookworm-slim"
        );
    }

    #[test]
    fn a_key_that_is_no_image_name_is_refused() {
        let err = parse_overrides("NATS_IMAGE=a:1\nGOOSE_VERSION=v1\n").unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("line 2: GOOSE_VERSION"), "{err}");
        assert!(err.contains("cargo xtask docker"), "{err}");
    }

    #[test]
    fn an_absent_file_overrides_nothing() {
        let root = std::env::temp_dir().join(format!("localenv-images-{}", std::process::id()));
        let layout = Layout::new(&root);
        assert!(overrides(&layout).unwrap().is_empty());
        std::fs::create_dir_all(layout.docker_dir()).unwrap();
        std::fs::write(images_env(&layout), "NATS_IMAGE=ponix-local/nats:2.15.0\n").unwrap();
        let names = overrides(&layout);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(names.unwrap()["NATS_IMAGE"], "ponix-local/nats:2.15.0");
    }
}
