//! Repository-wide rules that no compiler or linter checks, run by `cargo test`
//! (and so by e2e's "workspace tests" step), as rust-analyzer's xtask does:
//!
//! - every Rust source file opens with a `//!` doc that states what it is for;
//! - no source file grows past [`CODE_LINE_BUDGET`] lines of code (blank and
//!   comment lines, and a trailing `#[cfg(test)]` module, aside) unless
//!   [`OVER_BUDGET`] names it with the reason. An entry whose file has come back
//!   under the budget (or is gone) fails too, so that the list only shrinks.

use std::fs;
use std::path::{Path, PathBuf};

use localenv::Layout;

/// Lines of code a source file may hold: about what one reader keeps in mind as
/// one concern.
const CODE_LINE_BUDGET: usize = 600;

/// Files over the budget, each with why (relative to the repository root): a debt
/// with its reason, not a permission. Empty is the goal (reached with issue #14).
const OVER_BUDGET: &[(&str, &str)] = &[];

/// Directories that hold no source of ours.
const SKIPPED_DIRS: &[&str] = &["target", ".tools", ".git", "node_modules", "__pycache__"];

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|err| panic!("listing {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) {
                rust_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn all_sources(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_sources(root, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    files
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Lines that are neither blank nor only a comment, up to a `#[cfg(test)]` that
/// opens a module (the unit tests, which sit at the end by this project's style).
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let end = lines
        .windows(2)
        .position(|pair| {
            pair[0] == "#[cfg(test)]"
                && (pair[1].starts_with("mod ") || pair[1].starts_with("pub mod "))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .count()
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let root = Layout::workspace().root;
    let undocumented: Vec<String> = all_sources(&root)
        .iter()
        .filter(|path| {
            let text = fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|path| relative(&root, path))
        .collect();
    assert!(
        undocumented.is_empty(),
        "these files do not open with a `//!` doc saying what they are for:\n  {}",
        undocumented.join("\n  ")
    );
}

#[test]
fn no_source_file_passes_the_size_budget_unexplained() {
    let root = Layout::workspace().root;
    let mut problems = Vec::new();
    let mut over = Vec::new();
    for path in all_sources(&root) {
        let name = relative(&root, &path);
        let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {name}: {err}"));
        let lines = code_lines(&text);
        if lines > CODE_LINE_BUDGET {
            over.push(name.clone());
            if !OVER_BUDGET.iter().any(|(listed, _)| *listed == name) {
                problems.push(format!(
                    "{name}: {lines} lines of code, over the budget of {CODE_LINE_BUDGET}; \
                     split it by concern, or add it to OVER_BUDGET in xtask/src/tidy.rs with why"
                ));
            }
        }
    }
    for (listed, _) in OVER_BUDGET {
        if !over.iter().any(|name| name == listed) {
            problems.push(format!(
                "{listed} is in OVER_BUDGET but is not over the budget (any more): \
                 remove its entry from xtask/src/tidy.rs"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn code_lines_leave_out_comments_blanks_and_the_test_module() {
    let text =
        "//! Doc.\n\nuse x;\n// why\nfn a() {}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
    assert_eq!(code_lines(text), 2);
    assert_eq!(
        code_lines("fn a() {}\n#[cfg(test)]\nfn only_in_tests() {}\n"),
        3
    );
}

/// A test file with its own `main` (the testkit harness, or the drills' runner)
/// compiled under libtest instead runs no test and passes: every one needs
/// `harness = false` in its package's `[[test]]` table.
#[test]
fn every_test_with_its_own_main_has_the_harness_off() {
    let root = Layout::workspace().root;
    let mut problems = Vec::new();
    for package in ["service", "testkit", "localenv", "bench", "xtask"] {
        let dir = root.join(package);
        let manifest: toml::Table = fs::read_to_string(dir.join("Cargo.toml"))
            .expect("a package manifest")
            .parse()
            .expect("valid TOML");
        let harness_off: Vec<&str> = manifest
            .get("test")
            .and_then(|tests| tests.as_array())
            .into_iter()
            .flatten()
            .filter(|test| test.get("harness").and_then(|h| h.as_bool()) == Some(false))
            .filter_map(|test| test.get("name").and_then(|n| n.as_str()))
            .collect();
        let Ok(entries) = fs::read_dir(dir.join("tests")) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let (name, file) = if path.is_dir() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                (name.into_owned(), path.join("main.rs"))
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                (stem.into_owned(), path.clone())
            } else {
                continue;
            };
            let text = fs::read_to_string(&file).unwrap_or_default();
            let own_main = text.contains("integration_tests!(") || text.contains("fn main(");
            if own_main && !harness_off.contains(&name.as_str()) {
                problems.push(format!(
                    "{}: has its own main; add `[[test]] name = \"{name}\" harness = false` to {package}/Cargo.toml",
                    relative(&root, &file)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
