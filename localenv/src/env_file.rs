//! Env files (`KEY=VALUE` lines): pins.env, docker/.env.example, docker/.env and
//! .tools/docker/images.env, all of which docker compose reads too, so the harness
//! reads them by compose's rules (its `--env-file` and `env_file:` syntax), here and
//! nowhere else:
//!
//! - blank lines and lines starting with `#` are skipped; `export ` before a key
//!   is allowed;
//! - a key is letters, digits, `_`, `.` and `-`; spaces around `=` are dropped;
//! - an unquoted value runs to the end of the line, less a ` #` comment and
//!   trailing spaces;
//! - a single-quoted value is literal (`\'` is a quote);
//! - a double-quoted value takes `\n`, `\t`, `\r`, `\\`, `\"` and `\$` escapes;
//! - unquoted and double-quoted values are interpolated like compose.yaml
//!   ([`interpolate`]), from the keys set above them in the same file only: the
//!   process environment is left out, so a file means the same on every machine.
//!
//! Stricter than compose where compose guesses: a key without `=` (compose would
//! take its value from the environment), a quoted value spanning lines, and text
//! after a closing quote are errors. What a repeated key means is the caller's
//! rule: pins forbid it, settings files let a later value win.

use anyhow::{Context, bail};

/// One `KEY=VALUE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based, for messages.
    pub line: usize,
}

/// The entries of an env file, in file order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let statement = raw.trim();
        if statement.is_empty() || statement.starts_with('#') {
            continue;
        }
        let statement = statement
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(statement, str::trim_start);
        let Some((key, value)) = statement.split_once('=') else {
            bail!(
                "line {line}: {statement:?} has no `=`; compose would take its value from the \
                 environment, write KEY=VALUE instead"
            );
        };
        let key = key.trim_end();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            bail!("line {line}: {key:?} is not a variable name (letters, digits, `_`, `.`, `-`)");
        }
        let value = read_value(value.trim_start(), &entries)
            .with_context(|| format!("line {line}: the value of {key}"))?;
        entries.push(Entry {
            key: key.to_owned(),
            value,
            line,
        });
    }
    Ok(entries)
}

fn read_value(raw: &str, earlier: &[Entry]) -> anyhow::Result<String> {
    let lookup = |name: &str| {
        earlier
            .iter()
            .rev()
            .find(|entry| entry.key == name)
            .map(|entry| entry.value.clone())
    };
    let expand = |text: &str| {
        interpolate(text, lookup).map_err(|problems| anyhow::anyhow!(problems.join("; ")))
    };
    let Some(quote) = raw.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        let value = raw.split_once(" #").map_or(raw, |(value, _)| value);
        return expand(value.trim_end());
    };
    let mut value = String::new();
    let mut chars = raw[1..].char_indices();
    let rest = loop {
        let Some((at, c)) = chars.next() else {
            bail!(
                "the {quote} quote is not closed on its line (values spanning lines are not supported)"
            );
        };
        match c {
            '\\' => {
                let Some((_, escaped)) = chars.next() else {
                    bail!("a `\\` ends the line");
                };
                match (quote, escaped) {
                    (_, c) if c == quote => value.push(c),
                    ('"', 'n') => value.push('\n'),
                    ('"', 't') => value.push('\t'),
                    ('"', 'r') => value.push('\r'),
                    ('"', '\\') => value.push('\\'),
                    // `$$` is what interpolation turns into a literal `$`.
                    ('"', '$') => value.push_str("$$"),
                    (_, other) => {
                        value.push('\\');
                        value.push(other);
                    }
                }
            }
            c if c == quote => break &raw[1 + at + 1..],
            c => value.push(c),
        }
    };
    let rest = rest.trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        bail!("{rest:?} follows the closing quote");
    }
    if quote == '"' {
        expand(&value)
    } else {
        Ok(value)
    }
}

/// Compose-style interpolation: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?message}`, `${NAME?message}`, `${NAME:+alt}`,
/// `${NAME+alt}`. A variable that is unset with no default is a problem, as is a
/// `?` form whose variable is unset.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                problems.push(format!("unclosed `${{` in {:?}", first_line(after)));
                break;
            };
            match substitute(&body[..end], &lookup) {
                Ok(value) => out.push_str(&value),
                Err(problem) => problems.push(problem),
            }
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                match substitute(&after[..len], &lookup) {
                    Ok(value) => out.push_str(&value),
                    Err(problem) => problems.push(problem),
                }
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn substitute(expr: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() {
        return Err(format!("`${{{expr}}}` names no variable"));
    }
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let value = value.unwrap_or_default();
    let (arg, needs_non_empty) = match op.strip_prefix(':') {
        Some(rest) => (rest, true),
        None => (op, false),
    };
    let present = if needs_non_empty { non_empty } else { set };
    match arg.chars().next() {
        None if op.is_empty() => {
            if set {
                Ok(value)
            } else {
                Err(format!("{name} is not set and has no default"))
            }
        }
        Some('-') => Ok(if present { value } else { arg[1..].to_owned() }),
        Some('?') => {
            if present {
                Ok(value)
            } else {
                Err(format!("{name} is required: {}", &arg[1..]))
            }
        }
        Some('+') => Ok(if present {
            arg[1..].to_owned()
        } else {
            String::new()
        }),
        _ => Err(format!("unsupported interpolation `${{{expr}}}`")),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn values(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect()
    }

    #[test]
    fn reads_values_the_way_compose_does() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC=x=y#not a comment\n\
                    D=\nE='single $A \\' kept' # note\nF=\"tab\\there \\\"q\\\" \\$A $A\"\nG=${A}/${H:-h}\n";
        let pairs = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x=y#not a comment"),
            ("D", ""),
            ("E", "single $A ' kept"),
            ("F", "tab\there \"q\" $A 1"),
            ("G", "1/h"),
        ];
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(values(text), expected);
        assert_eq!(parse("A=1\n\nB=2\n").unwrap()[1].line, 3);
    }

    #[test]
    fn rejects_what_compose_would_guess_at() {
        for (text, problem) in [
            ("oops\n", "has no `=`"),
            ("A B=1\n", "not a variable name"),
            ("=1\n", "not a variable name"),
            ("A='open\n", "not closed"),
            ("A=\"x\" y\n", "follows the closing quote"),
            ("A=$UNSET\n", "UNSET is not set"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(problem), "{text:?}: {err}");
        }
    }

    #[test]
    fn interpolation_follows_compose() {
        let lookup = vars(&[("A", "1"), ("EMPTY", "")]);
        let cases = [
            ("x ${A} y", "x 1 y"),
            ("$A/$A", "1/1"),
            ("${B:-dflt}", "dflt"),
            ("${EMPTY:-dflt}", "dflt"),
            ("${EMPTY-dflt}", ""),
            ("${A:?must}", "1"),
            ("${A:+alt}", "alt"),
            ("${B:+alt}", ""),
            ("$$(hostname)", "$(hostname)"),
            ("cost: 5$", "cost: 5$"),
        ];
        for (input, expected) in cases {
            assert_eq!(interpolate(input, &lookup).unwrap(), expected, "{input}");
        }
        let problems = interpolate("${B:?set B} ${C} ${EMPTY:?x}", &lookup).unwrap_err();
        assert_eq!(
            problems,
            [
                "B is required: set B",
                "C is not set and has no default",
                "EMPTY is required: x"
            ]
        );
    }
}
