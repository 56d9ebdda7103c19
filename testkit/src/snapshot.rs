//! insta settings shared by every snapshot test: the one redaction table for
//! values that vary from run to run.

/// Field names whose values depend on the clock, never on the code under test.
/// Redact here rather than in each test, so a new time-dependent field gets the
/// same treatment everywhere.
pub const TIME_DEPENDENT_FIELDS: &[&str] = &["published", "received_at", "inserted_at"];

/// Settings with the shared redactions applied; use with `settings().bind(|| ...)`.
pub fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    for field in TIME_DEPENDENT_FIELDS {
        settings.add_redaction(&format!(".**.{field}"), "[time]");
        settings.add_redaction(&format!("[].{field}"), "[time]");
    }
    settings.set_sort_maps(true);
    settings
}
