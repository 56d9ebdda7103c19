//! The plan of `cargo xtask image`: every command line it runs, computed before any
//! runs, so that `--dry-run` prints it without a Docker engine and the unit tests
//! check it.

use anyhow::bail;

use super::checks::{self, Verification};
use super::cmd::Cmd;
use super::inputs::{Inputs, Origin};
use super::{DOCKERFILE, host};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub origin: Origin,
    pub tags: Vec<String>,
    /// `cargo build` on the host, before the image build (from-host only).
    pub host_build: Option<Cmd>,
    pub build: Cmd,
    pub verifications: Vec<Verification>,
    /// `docker push` per tag; empty when the build pushes itself (several platforms).
    pub push: Vec<Cmd>,
    pub pushes: bool,
}

impl Plan {
    pub fn new(inputs: &Inputs) -> anyhow::Result<Plan> {
        let multi = inputs.platforms.len() > 1;
        if multi && !inputs.push {
            bail!(
                "an image for several platforms cannot be loaded into the local engine: pass one \
                 --platform, or --push with --registry"
            );
        }
        if let Origin::Host { .. } = inputs.origin
            && let Some(other) = inputs.platforms.iter().find(|p| **p != host::PLATFORM)
        {
            bail!(
                "--from-host copies binaries built for {} into the image, so it cannot build for \
                 {other}: use --from-source (it needs RUST_IMAGE)",
                host::PLATFORM
            );
        }
        let short = &inputs.revision[..12.min(inputs.revision.len())];
        let commit_tag = if inputs.dirty {
            format!("{short}-dirty")
        } else {
            short.to_owned()
        };
        let tags = vec![
            format!("{}:{}", inputs.name, inputs.version),
            format!("{}:{commit_tag}", inputs.name),
        ];

        let mut build = Cmd::docker(&["buildx", "build", "--file", DOCKERFILE])
            .arg("--target")
            .arg(inputs.origin.target());
        if let Origin::Host {
            named_context: true,
        } = inputs.origin
        {
            build = build
                .arg("--build-context")
                .arg(format!("prebuilt={}", host::STAGING_DIR));
        }
        let labels = [
            ("VERSION", inputs.version.as_str()),
            ("REVISION", inputs.revision.as_str()),
            ("SOURCE", inputs.source_url.as_str()),
        ];
        let build_args = inputs
            .build_args
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .chain(labels);
        for (key, value) in build_args {
            build = build.arg("--build-arg").arg(format!("{key}={value}"));
        }
        for tag in &tags {
            build = build.arg("--tag").arg(tag);
        }
        if !inputs.platforms.is_empty() {
            build = build.arg("--platform").arg(inputs.platforms.join(","));
        }
        build = build.arg(if multi { "--push" } else { "--load" }).arg(".");

        let host_build = match inputs.origin {
            Origin::Source => None,
            Origin::Host { .. } => Some(host::cargo_build(&inputs.revision)),
        };
        // The commit tag names exactly this build.
        let reference = &tags[1];
        let verifications = if multi {
            inputs
                .platforms
                .iter()
                .map(|platform| checks::verification(inputs, reference, Some(platform), true))
                .collect()
        } else {
            let platform = inputs.platforms.first().map(String::as_str);
            vec![checks::verification(inputs, reference, platform, false)]
        };
        let push = if inputs.push && !multi {
            tags.iter()
                .map(|tag| Cmd::docker(&["push"]).arg(tag))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Plan {
            origin: inputs.origin.clone(),
            tags,
            host_build,
            build,
            verifications,
            push,
            pushes: inputs.push,
        })
    }

    /// The plan as text: tags, then every command in the order it runs.
    pub fn describe(&self, dry_run: bool) -> String {
        let mut out = String::new();
        let mode = if dry_run {
            " (dry run: nothing is executed)"
        } else {
            ""
        };
        let origin = match self.origin {
            Origin::Source => "built inside RUST_IMAGE (target runtime)",
            Origin::Host {
                named_context: true,
            } => {
                "built on this machine, staged as the named context `prebuilt` (target runtime-prebuilt)"
            }
            Origin::Host {
                named_context: false,
            } => "built on this machine, staged in the main context (target runtime-prebuilt)",
        };
        out.push_str(&format!(
            "image plan{mode}\n  the writer: {origin}\n  tags:\n"
        ));
        for tag in &self.tags {
            out.push_str(&format!("    {tag}\n"));
        }
        out.push_str("  commands:\n");
        if let Some(cargo) = &self.host_build {
            out.push_str(&format!(
                "    {cargo}\n      # then target/release/ponix-writer and .tools/bin/goose are copied to {}/\n",
                host::STAGING_DIR
            ));
        }
        out.push_str(&format!("    {}\n", self.build));
        if self.pushes && self.push.is_empty() {
            out.push_str("      (pushes every platform and tag)\n");
        }
        for verification in &self.verifications {
            for check in &verification.checks {
                out.push_str(&check.describe());
            }
            out.push_str(&format!("    {}\n      # image size\n", verification.size));
        }
        for push in &self.push {
            out.push_str(&format!("    {push}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::image_name;
    use crate::image::inputs::tests::inputs;

    fn line(command: &Cmd) -> String {
        command.to_string()
    }

    #[test]
    fn tags_are_version_and_commit() {
        let plan = Plan::new(&inputs()).unwrap();
        assert_eq!(
            plan.tags,
            ["ponix-writer:0.1.0", "ponix-writer:ba160c674e59"]
        );
        let dirty = Plan::new(&Inputs {
            dirty: true,
            ..inputs()
        })
        .unwrap();
        assert_eq!(dirty.tags[1], "ponix-writer:ba160c674e59-dirty");
    }

    #[test]
    fn from_source_builds_the_runtime_target_with_every_build_arg() {
        let plan = Plan::new(&inputs()).unwrap();
        assert_eq!(
            line(&plan.build),
            "docker buildx build --file docker/Dockerfile --target runtime \
             --build-arg RUST_IMAGE=rust:1.95.0-bookworm --build-arg GOOSE_VERSION=v3.28.0 \
             --build-arg VERSION=0.1.0 \
             --build-arg REVISION=ba160c674e59aa8c3a5a7c2e8f3e6d1f00112233 \
             --build-arg SOURCE=https://github.com/acme/ponix-writer \
             --tag ponix-writer:0.1.0 --tag ponix-writer:ba160c674e59 --load ."
        );
        assert_eq!(plan.host_build, None);
        assert!(plan.push.is_empty());
    }

    #[test]
    fn from_host_builds_with_cargo_then_the_prebuilt_target() {
        let plan = Plan::new(&Inputs {
            origin: Origin::Host {
                named_context: false,
            },
            ..inputs()
        })
        .unwrap();
        assert_eq!(
            line(plan.host_build.as_ref().unwrap()),
            "PONIX_BUILD_COMMIT=ba160c674e59aa8c3a5a7c2e8f3e6d1f00112233 \
             cargo build --release --locked --package ponix-writer"
        );
        let build = line(&plan.build);
        assert!(
            build.starts_with(
                "docker buildx build --file docker/Dockerfile --target runtime-prebuilt --build-arg "
            ),
            "{build}"
        );
        let text = plan.describe(true);
        assert!(text.find("cargo build").unwrap() < text.find("buildx build").unwrap());

        let named = Plan::new(&Inputs {
            origin: Origin::Host {
                named_context: true,
            },
            ..inputs()
        })
        .unwrap();
        assert!(line(&named.build).contains(
            " --target runtime-prebuilt --build-context prebuilt=.tools/docker/prebuilt --build-arg "
        ));
    }

    #[test]
    fn from_host_cannot_build_for_another_platform() {
        let foreign = if host::PLATFORM == "linux/arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        let err = Plan::new(&Inputs {
            origin: Origin::Host {
                named_context: false,
            },
            platforms: vec![foreign.into()],
            ..inputs()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--from-source"), "{err}");
    }

    #[test]
    fn an_empty_source_is_quoted() {
        let plan = Plan::new(&Inputs {
            source_url: String::new(),
            ..inputs()
        })
        .unwrap();
        assert!(line(&plan.build).contains(" --build-arg SOURCE= "));
    }

    #[test]
    fn push_goes_to_the_registry_after_the_checks() {
        let plan = Plan::new(&Inputs {
            name: image_name(Some("ghcr.io/acme"), None).unwrap(),
            push: true,
            ..inputs()
        })
        .unwrap();
        assert!(line(&plan.build).ends_with(" --load ."));
        let pushes: Vec<String> = plan.push.iter().map(line).collect();
        assert_eq!(
            pushes,
            [
                "docker push ghcr.io/acme/ponix-writer:0.1.0",
                "docker push ghcr.io/acme/ponix-writer:ba160c674e59",
            ]
        );
        let text = plan.describe(true);
        let build_at = text.find("buildx build").unwrap();
        let check_at = text.find("docker run").unwrap();
        let push_at = text.find("docker push").unwrap();
        assert!(build_at < check_at && check_at < push_at, "{text}");
    }

    #[test]
    fn several_platforms_push_from_the_build_and_check_each_one() {
        let plan = Plan::new(&Inputs {
            name: "ghcr.io/acme/ponix-writer".into(),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            push: true,
            ..inputs()
        })
        .unwrap();
        let build = line(&plan.build);
        assert!(
            build.ends_with(" --platform linux/amd64,linux/arm64 --push ."),
            "{build}"
        );
        assert!(plan.push.is_empty());
        assert_eq!(plan.verifications.len(), 2);
        let text = plan.describe(true);
        assert!(
            text.contains(
                "docker run --rm --pull always --platform linux/arm64 --entrypoint \
                 /usr/local/bin/goose ghcr.io/acme/ponix-writer:ba160c674e59 --version"
            ),
            "{text}"
        );
    }

    #[test]
    fn several_platforms_need_push() {
        let multi = Inputs {
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            ..inputs()
        };
        assert!(Plan::new(&multi).is_err());
        assert!(
            Plan::new(&Inputs {
                push: true,
                ..multi
            })
            .is_ok()
        );
    }

    #[test]
    fn the_dry_run_names_every_tag_and_the_writer_origin() {
        let text = Plan::new(&inputs()).unwrap().describe(true);
        assert!(text.starts_with("image plan (dry run: nothing is executed)\n"));
        assert!(text.contains("the writer: built inside RUST_IMAGE (target runtime)"));
        assert!(text.contains("    ponix-writer:0.1.0\n"));
        assert!(text.contains("    ponix-writer:ba160c674e59\n"));
    }
}
