//! Reading the writer's `/metrics` text: the tests assert on counters the operator
//! sees, so what they prove is also what production reports.

use anyhow::ensure;

/// The sum of every sample of `name` whose labels include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

pub fn expect_metric(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> anyhow::Result<()> {
    let found = metric(text, name, labels);
    ensure!(
        found == expected,
        "{name}{labels:?} is {found}, expected {expected}; /metrics:\n{text}"
    );
    Ok(())
}
