//! Which NATS and ClickHouse images the container backends run: `PONIX_TEST_NATS_IMAGE`
//! and `PONIX_TEST_CLICKHOUSE_IMAGE` when set, otherwise the names `localenv::images`
//! gives (the local stand-ins of `.tools/docker/images.env` over pins.env's official
//! images), as for every other container path.

use anyhow::{Context, bail};
use localenv::Layout;

pub const NATS_IMAGE_VAR: &str = "PONIX_TEST_NATS_IMAGE";
pub const CLICKHOUSE_IMAGE_VAR: &str = "PONIX_TEST_CLICKHOUSE_IMAGE";

/// Full image references (`name:tag`, optionally `@sha256:…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub nats: String,
    pub clickhouse: String,
}

impl Images {
    pub fn resolve() -> anyhow::Result<Images> {
        let chosen = localenv::images::Images::load(&Layout::workspace())?;
        Images::from_sources(&chosen, |key| {
            std::env::var(key)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
    }

    fn from_sources(
        chosen: &localenv::images::Images,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Images> {
        let pick = |env_key: &str, file_key: &str| -> anyhow::Result<String> {
            if let Some(value) = env(env_key) {
                return Ok(value.trim().to_owned());
            }
            chosen.get(file_key).map(str::to_owned).with_context(|| {
                format!("no {file_key} in pins.env (or .tools/docker/images.env), and {env_key} is unset")
            })
        };
        Ok(Images {
            nats: pick(NATS_IMAGE_VAR, "NATS_IMAGE")?,
            clickhouse: pick(CLICKHOUSE_IMAGE_VAR, "CLICKHOUSE_IMAGE")?,
        })
    }
}

/// `name` and `tag` of a reference, as testcontainers wants them: the digest, if
/// any, stays with the tag (`name:tag@sha256:…` is what Docker is then asked for).
pub(super) fn split_reference(reference: &str) -> anyhow::Result<(String, String)> {
    let (named, digest) = match reference.split_once('@') {
        Some((named, digest)) => (named, Some(digest)),
        None => (reference, None),
    };
    let last_slash = named.rfind('/').map_or(0, |at| at + 1);
    let Some(colon) = named[last_slash..].rfind(':').map(|at| at + last_slash) else {
        bail!("image {reference:?} has no tag: give it as name:tag (a digest may follow)");
    };
    let (name, tag) = (&named[..colon], &named[colon + 1..]);
    if name.is_empty() || tag.is_empty() {
        bail!("image {reference:?} is not of the form name:tag");
    }
    let tag = match digest {
        Some(digest) => format!("{tag}@{digest}"),
        None => tag.to_owned(),
    };
    Ok((name.to_owned(), tag))
}

#[cfg(test)]
mod tests {
    use localenv::images::Images as Chosen;
    use localenv::pins::Pins;

    use super::*;

    const PINS: &str = "# comment\nNATS_IMAGE=nats:2.15.0-alpine\nCLICKHOUSE_IMAGE=clickhouse/clickhouse-server:25.8.3.66\n";

    fn official(text: &str) -> Chosen {
        Chosen::official(Pins::parse(text).unwrap())
    }

    #[test]
    fn images_come_from_pins_then_the_local_file_then_the_environment() {
        let none = |_: &str| None;
        let images = Images::from_sources(&official(PINS), none).unwrap();
        assert_eq!(images.nats, "nats:2.15.0-alpine");
        assert_eq!(images.clickhouse, "clickhouse/clickhouse-server:25.8.3.66");

        let local = localenv::images::parse_overrides(
            "NATS_IMAGE=ponix-local/nats:2.15.0\nCLICKHOUSE_IMAGE=ponix-local/clickhouse:chdb-26.9.0\n",
        )
        .unwrap();
        let local = Chosen::with_overrides(Pins::parse(PINS).unwrap(), local);
        let images = Images::from_sources(&local, none).unwrap();
        assert_eq!(images.nats, "ponix-local/nats:2.15.0");
        assert_eq!(images.clickhouse, "ponix-local/clickhouse:chdb-26.9.0");

        let env = |key: &str| (key == NATS_IMAGE_VAR).then(|| "mine/nats:1".to_owned());
        let images = Images::from_sources(&local, env).unwrap();
        assert_eq!(images.nats, "mine/nats:1");
        assert_eq!(images.clickhouse, "ponix-local/clickhouse:chdb-26.9.0");
    }

    #[test]
    fn a_missing_image_names_both_places_to_set_it() {
        let err = Images::from_sources(&official("NATS_IMAGE=nats:1\n"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLICKHOUSE_IMAGE"), "{err}");
        assert!(err.contains(CLICKHOUSE_IMAGE_VAR), "{err}");
    }

    #[test]
    fn references_split_into_name_and_tag() {
        let split = |r: &str| split_reference(r).unwrap();
        assert_eq!(split("nats:2.15.0"), ("nats".into(), "2.15.0".into()));
        assert_eq!(
            split("localhost:5000/ponix-local/clickhouse:chdb-26.9.0"),
            (
                "localhost:5000/ponix-local/clickhouse".into(),
                "chdb-26.9.0".into()
            )
        );
        assert_eq!(
            split("clickhouse/clickhouse-server:25.8@sha256:abc"),
            (
                "clickhouse/clickhouse-server".into(),
                "25.8@sha256:abc".into()
            )
        );
        assert!(split_reference("localhost:5000/nats").is_err());
        assert!(split_reference("nats@sha256:abc").is_err());
        assert!(split_reference("nats:").is_err());
    }
}
