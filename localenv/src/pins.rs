//! The pinned versions, read from `pins.env`: the single place each one is set. xtask
//! installs and builds from them; testkit takes the container images from them.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

use crate::Layout;
use crate::env_file;

#[derive(Debug, Clone)]
pub struct Pins {
    values: BTreeMap<String, String>,
}

impl Pins {
    pub fn load(layout: &Layout) -> anyhow::Result<Pins> {
        let path = layout.pins_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the pinned versions from {}", path.display()))?;
        Pins::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// An env file (compose reads it too: see `env_file`) in which each key is
    /// pinned once.
    pub fn parse(text: &str) -> anyhow::Result<Pins> {
        let mut values = BTreeMap::new();
        for entry in env_file::parse(text)? {
            if values.insert(entry.key.clone(), entry.value).is_some() {
                bail!("line {}: {} is pinned twice", entry.line, entry.key);
            }
        }
        Ok(Pins { values })
    }

    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        match self.values.get(key).map(String::as_str) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => bail!("pins.env has no value for {key}"),
        }
    }

    /// An optional pin: present but empty means "not known for this platform".
    pub fn get_opt(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    pub fn goose_version(&self) -> anyhow::Result<&str> {
        self.get("GOOSE_VERSION")
    }

    pub fn nats_server_version(&self) -> anyhow::Result<&str> {
        self.get("NATS_SERVER_VERSION")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pins_and_comments() {
        let pins = Pins::parse("# comment\nGOOSE_VERSION=v3.30.0\n\nEMPTY=\n").unwrap();
        assert_eq!(pins.goose_version().unwrap(), "v3.30.0");
        assert_eq!(pins.get_opt("EMPTY"), None);
        assert!(pins.get("EMPTY").is_err());
        assert!(pins.get("MISSING").is_err());
    }

    #[test]
    fn rejects_a_key_pinned_twice() {
        let err = Pins::parse("A=1\nA=2\n").unwrap_err();
        assert!(err.to_string().contains("pinned twice"), "{err}");
    }

    #[test]
    fn the_repository_pins_parse() {
        let layout = Layout::workspace();
        let pins = Pins::load(&layout).unwrap();
        assert!(pins.goose_version().unwrap().starts_with("v3."));
        assert!(pins.nats_server_version().unwrap().starts_with("v2."));
    }

    #[test]
    fn the_nats_image_runs_the_pinned_nats_server() {
        let pins = Pins::load(&Layout::workspace()).unwrap();
        let version = pins.nats_server_version().unwrap().trim_start_matches('v');
        let image = pins.get("NATS_IMAGE").unwrap();
        assert!(
            image.starts_with(&format!("nats:{version}-")),
            "{image} vs {version}"
        );
    }
}
