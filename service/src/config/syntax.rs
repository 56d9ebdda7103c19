//! The syntax of the values that are more than words: NATS server URLs and the
//! credentials inside them, the ClickHouse HTTP URL, NATS subjects, and the user-info
//! encoding URLs need.
//!
//! The NATS credential rule is this file's own on purpose: the user-info ends at the
//! *last* `@` ([`split_userinfo`]), where standard URL parsers end the authority at the
//! first `/`, `?` or `#` and would echo such a password. Everything else that is URL
//! syntax is left to the `url` and `percent-encoding` crates.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::{NatsAuth, Secret};

/// Each comma-separated server must parse as async-nats parses it at connect time (so
/// that a bad port or scheme is a configuration error naming the variable, not a retry
/// loop until the start-up timeout), with a host, and without spaces (which the client
/// would trim).
pub(super) fn valid_nats_url(s: &str) -> bool {
    s.split(',').all(|server| {
        !server.contains(|c: char| c.is_whitespace() || c.is_control())
            && server
                .parse::<async_nats::ServerAddr>()
                .is_ok_and(|address| !address.host().is_empty())
    })
}

/// Whether a URL (or comma-separated list of them) carries credentials: any `@` does,
/// by the rule of [`split_userinfo`].
pub(super) fn has_credentials(s: &str) -> bool {
    s.contains('@')
}

/// `PONIX_NATS_URL` parsed: each comma-separated server without its user-info (it must
/// then parse as async-nats parses it, see [`valid_nats_url`]), and the one set of
/// credentials the servers carry. async-nats authenticates every connection with the
/// same options, so servers that carry credentials must carry the same ones; servers
/// without any use them too. `Err(None)` means "not of the expected form"; `Err(Some)`
/// names another problem. Neither holds the value.
pub(super) fn nats_servers(s: &str) -> Result<(Vec<String>, NatsAuth), Option<String>> {
    let mut servers = Vec::new();
    let mut auth: Option<NatsAuth> = None;
    for server in s.split(',') {
        let split = split_userinfo(server);
        if !valid_nats_url(&split.url) {
            return Err(None);
        }
        if let Some(userinfo) = split.userinfo {
            let parsed = parse_userinfo(userinfo).ok_or_else(|| {
                Some(
                    "the credentials before `@` are empty or not UTF-8 once percent-decoded \
                     (expected nats://user:password@host or nats://token@host; write `%` as \
                     %25 and `,` as %2C)"
                        .to_owned(),
                )
            })?;
            match &auth {
                Some(first) if *first != parsed => {
                    return Err(Some(
                        "gives different credentials for different servers; the client uses \
                         one set for every server: give the same on each, or on one only"
                            .to_owned(),
                    ));
                }
                _ => auth = Some(parsed),
            }
        }
        servers.push(split.url);
    }
    Ok((servers, auth.unwrap_or_default()))
}

/// One server of `PONIX_NATS_URL`, split by [`split_userinfo`].
#[derive(Debug, PartialEq, Eq)]
struct SplitServer<'a> {
    /// The URL without user-info: what async-nats is given.
    url: String,
    /// The user-info as written (still percent-encoded), if there was any.
    userinfo: Option<&'a str>,
}

/// Splits one server URL into the URL without credentials and its user-info.
///
/// The rule: **the user-info is everything between `scheme://` (or the start, without
/// a scheme) and the last `@` of the server's text.** Standard URL parsers end the
/// authority at the first `/`, `?` or `#`, so for them a literal `pa#ss` or `pa/ss`
/// in a password starts a fragment or a path, the credentials go unnoticed, and the
/// password is echoed (and handed to the client inside the URL). A NATS server URL
/// has no meaningful path, query or fragment, so every `@` is taken as the end of
/// credentials. The cost is that a path holding an `@` is read as credentials too:
/// hidden rather than shown, the safe mistake. The user-info is percent-decoded
/// afterwards (see [`parse_userinfo`]); a comma, which separates servers, must be
/// written `%2C`.
fn split_userinfo(server: &str) -> SplitServer<'_> {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let Some(at) = rest.rfind('@') else {
        return SplitServer {
            url: server.to_owned(),
            userinfo: None,
        };
    };
    let host = &rest[at + 1..];
    SplitServer {
        url: match scheme {
            Some(scheme) => format!("{scheme}://{host}"),
            None => host.to_owned(),
        },
        userinfo: Some(&rest[..at]),
    }
}

/// Credentials from a user-info: `user:password` (split at the first `:`, so a
/// password may hold `:`), or a token without `:`. Each part is percent-decoded
/// (`%40` is `@`; write a literal `%` as `%25`). `None` when the user or token is
/// empty, or a decoded part is not UTF-8.
fn parse_userinfo(userinfo: &str) -> Option<NatsAuth> {
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .ok()
            .map(Secret::new)
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !user.is_empty() => Some(NatsAuth::UserPassword {
            user: decode(user)?,
            password: decode(password)?,
        }),
        None if !userinfo.is_empty() => Some(NatsAuth::Token(decode(userinfo)?)),
        _ => None,
    }
}

/// `http(s)://host[:port][/]`: the client appends its own path and query, and credentials
/// belong in their own variables so they can be kept secret. The `url` crate parses the
/// host and port; the checks around it keep what its WHATWG rules would repair quietly
/// (spaces and tabs dropped, a bare `http:h`, a trailing `:`, a path of `.`) a mistake
/// to report.
pub(super) fn valid_http_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.ends_with(':')
        || authority.contains(['/', '?', '#', '@'])
        || authority.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    url::Url::parse(s).is_ok_and(|url| {
        url.host().is_some() && url.port() != Some(0) && url.path() == "/" && url.query().is_none()
    })
}

/// Subject tokens, if `subject` is well formed. `*` and a final `>` are wildcards.
pub(super) fn subject_tokens(subject: &str, wildcards: bool) -> Option<Vec<&str>> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens
        .iter()
        .enumerate()
        .all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c.is_control())
                && match *token {
                    "*" => wildcards,
                    ">" => wildcards && i == last,
                    _ => !token.contains(['*', '>']),
                }
        })
        .then_some(tokens)
}

/// Whether every subject `filter` matches is also matched by `pattern` (a concrete subject
/// is a filter that matches itself).
pub(crate) fn subject_covers(pattern: &str, filter: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut filter = filter.split('.');
    loop {
        match (pattern.next(), filter.next()) {
            (None, None) => return true,
            // `>` needs at least one more token, which `filter` has.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(f)) if f != ">" => {}
            (Some(p), Some(f)) if p == f => {}
            _ => return false,
        }
    }
}

/// RFC 3986's unreserved characters: all a URL's user-info may hold unencoded.
const USERINFO_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters, as a URL's user-info
/// needs for a password containing `@`, `:` or `/`.
pub(crate) fn percent_encode_userinfo(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, USERINFO_ENCODE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_cover_rules() {
        assert!(subject_covers("a.>", "a.b.c"));
        assert!(subject_covers("a.>", "a.*"));
        assert!(subject_covers("a.>", "a.>"));
        assert!(!subject_covers("a.>", "a"));
        assert!(subject_covers("a.*", "a.b"));
        assert!(subject_covers("a.*", "a.*"));
        assert!(!subject_covers("a.*", "a.>"));
        assert!(!subject_covers("a.*", "a.b.c"));
        assert!(!subject_covers("a.b", "a.*"));
        assert!(subject_covers(">", "x"));
    }

    #[test]
    fn percent_encoding_matches_userinfo_rules() {
        assert_eq!(percent_encode_userinfo("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(
            percent_encode_userinfo("p@ss:w/rd é"),
            "p%40ss%3Aw%2Frd%20%C3%A9"
        );
    }
}
