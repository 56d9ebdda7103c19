//! The goose migration files, as tests and drills replay them statement by statement.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The `.sql` files in `dir`, in version order.
pub fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "sql"));
    files.sort();
    Ok(files)
}

/// The goose version of a migration file: the digits before the first `_`.
pub fn version_of(file: &Path) -> anyhow::Result<String> {
    file.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.split_once('_'))
        .map(|(version, _)| version.to_owned())
        .with_context(|| format!("no version in {}", file.display()))
}

/// What goose's `ENVSUB` makes of the table name when `PONIX_CLICKHOUSE_TABLE` is
/// not set.
pub fn with_default_table(text: &str) -> String {
    text.replace(
        "${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}",
        ponix_writer::migrate::DEFAULT_TABLE,
    )
}

/// The Up section's statements, each without its goose annotations, as goose runs
/// them for the default table.
pub fn up_statements(text: &str) -> Vec<String> {
    let text = with_default_table(text);
    let up = text.split_once("-- +goose Up").map_or("", |(_, rest)| rest);
    let up = up.split_once("-- +goose Down").map_or(up, |(up, _)| up);
    up.split("-- +goose StatementBegin")
        .skip(1)
        .filter_map(|block| block.split_once("-- +goose StatementEnd"))
        .map(|(statement, _)| statement.trim().trim_end_matches(';').to_owned())
        .collect()
}

/// A migration that rebuilds the table (copy, EXCHANGE, drop).
#[derive(Debug, Clone)]
pub struct Rebuild {
    pub file: PathBuf,
    pub version: String,
    /// The version before it, where a table it has not touched yet stands.
    pub previous: String,
    pub statements: Vec<String>,
}

impl Rebuild {
    /// The 1-based number of the statement that swaps the rebuilt table in.
    pub fn exchange(&self) -> usize {
        self.statements
            .iter()
            .position(|s| s.starts_with("EXCHANGE TABLES"))
            .map_or(0, |index| index + 1)
    }
}

/// Every rebuild migration in `dir`, in version order.
pub fn rebuilds(dir: &Path) -> anyhow::Result<Vec<Rebuild>> {
    let files = files(dir)?;
    let mut rebuilds = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let statements = up_statements(&text);
        if index == 0 || !statements.iter().any(|s| s.starts_with("EXCHANGE TABLES")) {
            continue;
        }
        rebuilds.push(Rebuild {
            file: file.clone(),
            version: version_of(file)?,
            previous: version_of(&files[index - 1])?,
            statements,
        });
    }
    Ok(rebuilds)
}
