//! What xtask relies on in docker/Dockerfile: the build args it declares (for the
//! consistency checks of `cargo xtask lint`), and the targets and paths the plan
//! and the checks use.

/// `ARG` names the Dockerfile declares (automatic platform args excluded) and those
/// that wrongly carry a default.
pub fn dockerfile_args(dockerfile: &str) -> (Vec<String>, Vec<String>) {
    const AUTOMATIC: &[&str] = &[
        "TARGETPLATFORM",
        "TARGETOS",
        "TARGETARCH",
        "TARGETVARIANT",
        "BUILDPLATFORM",
        "BUILDOS",
        "BUILDARCH",
        "BUILDVARIANT",
    ];
    let mut declared = Vec::new();
    let mut with_default = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("ARG ") else {
            continue;
        };
        let (name, default) = match rest.trim().split_once('=') {
            Some((name, _)) => (name.trim(), true),
            None => (rest.trim(), false),
        };
        if AUTOMATIC.contains(&name) {
            continue;
        }
        if default {
            with_default.push(name.to_owned());
        }
        if !declared.iter().any(|d| d == name) {
            declared.push(name.to_owned());
        }
    }
    (declared, with_default)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use localenv::Layout;

    use super::*;
    use crate::image::inputs::Origin;
    use crate::image::{
        DOCKERFILE, IMAGE_GOOSE, IMAGE_MIGRATIONS_DIR, IMAGE_USER, LABEL_BUILD_ARGS,
        PINNED_BUILD_ARGS, host,
    };

    /// `(stage, base)` of every `FROM <base> AS <stage>`, in order.
    pub fn stages(dockerfile: &str) -> Vec<(String, String)> {
        dockerfile
            .lines()
            .filter_map(|line| line.trim().strip_prefix("FROM "))
            .filter_map(|rest| {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                match words.as_slice() {
                    [base, as_kw, stage] if as_kw.eq_ignore_ascii_case("as") => {
                        Some((stage.to_string(), base.to_string()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    fn dockerfile() -> String {
        fs::read_to_string(Layout::workspace().root.join(DOCKERFILE)).unwrap()
    }

    #[test]
    fn the_dockerfile_declares_exactly_the_build_args_without_defaults() {
        let (mut declared, with_default) = dockerfile_args(&dockerfile());
        declared.sort();
        let mut expected: Vec<String> = PINNED_BUILD_ARGS
            .iter()
            .chain(LABEL_BUILD_ARGS)
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(declared, expected);
        assert!(with_default.is_empty(), "{with_default:?}");
        assert_eq!(
            dockerfile_args("ARG A=1\nARG TARGETARCH\nARG B\n"),
            (vec!["A".to_owned(), "B".to_owned()], vec!["A".to_owned()])
        );
    }

    #[test]
    fn both_targets_share_the_runtime_base_and_runtime_is_the_default() {
        let stages = stages(&dockerfile());
        let names: Vec<&str> = stages.iter().map(|(stage, _)| stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "goose",
                "builder",
                "prebuilt",
                "runtime-base",
                "runtime-prebuilt",
                "runtime"
            ]
        );
        let base_of = |name: &str| {
            stages
                .iter()
                .find(|(stage, _)| stage == name)
                .map(|(_, base)| base.as_str())
                .unwrap()
        };
        assert_eq!(base_of(Origin::Source.target()), "runtime-base");
        assert_eq!(
            base_of(
                Origin::Host {
                    named_context: false
                }
                .target()
            ),
            "runtime-base"
        );
        assert_eq!(base_of("runtime-base"), "${RUNTIME_IMAGE}");
        assert_eq!(base_of("prebuilt"), "scratch");
    }

    #[test]
    fn the_dockerfile_puts_things_where_the_checks_look() {
        let text = dockerfile();
        assert!(text.contains(&format!(" {IMAGE_GOOSE}\n")));
        assert!(text.contains(&format!("COPY migrations/ {IMAGE_MIGRATIONS_DIR}/\n")));
        assert!(text.contains(&format!("\nUSER {IMAGE_USER}\n")));
        assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/ponix-writer\"]"));
        assert!(text.contains(&format!("COPY {}/ /\n", host::STAGING_DIR)));
        assert!(
            !text.contains("# syntax="),
            "BuildKit would pull a frontend"
        );
    }

    #[test]
    fn the_build_context_lets_the_staged_binaries_in() {
        let ignore = fs::read_to_string(Layout::workspace().root.join(".dockerignore")).unwrap();
        let include = format!("!{}/", host::STAGING_DIR);
        let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
        let included_at = lines.iter().position(|l| *l == include).unwrap();
        let tools_excluded_at = lines.iter().position(|l| *l == "**/.tools/").unwrap();
        // The last matching rule wins.
        assert!(included_at > tools_excluded_at);
    }
}
