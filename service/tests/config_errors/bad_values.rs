//! The bad values, derived from the table of variables: [`bad_samples`] matches every
//! form, so a new form does not compile until it has samples, and a new variable is
//! covered by its form; rules across variables are listed by name.

use std::ffi::{OsStr, OsString};

use ponix_writer::config::{Form, VARIABLES};

use crate::binary::{Case, MARKER};

/// Values of the form that the writer must refuse. Empty values are not among them: an
/// empty value counts as unset.
fn bad_samples(form: Form) -> Vec<String> {
    let strings = |samples: &[&str]| samples.iter().map(|s| (*s).to_owned()).collect();
    let long = "a".repeat(256);
    match form {
        Form::NatsUrl => strings(&[
            "http://127.0.0.1:4222",
            "nats://",
            "nats://h:x",
            "nats://h:99999",
            "nats://a, nats://b",
            "nats://a,",
            "nats://a b",
            // With credentials: the value is not echoed, even when `/`, `?` or `#` in
            // them would end a standard URL parser's authority early.
            &format!("nats://u:{MARKER}@h:x"),
            &format!("nats://us/er:pa#{MARKER}/word@host:x"),
            &format!("nats://u:p?{MARKER}@h:99999"),
            &format!("nats://:{MARKER}#x@h"),
            &format!("nats://a:{MARKER}/1@h1,nats://a:{MARKER}/2@h2"),
        ]),
        Form::HttpUrl => strings(&[
            "127.0.0.1:8123",
            "ftp://h",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h:x",
            "http://h/path",
            "http://h?x=1",
            "http://[::1",
            "http://::1:8123",
            "http://h 1",
            &format!("http://u:{MARKER}@h:8123"),
            &format!("http://u:#{MARKER}/x@h:8123"),
        ]),
        Form::NatsName => strings(&["a.b", "a b", "c*", "x>", "é", &long]),
        Form::SubjectFilter => strings(&["a..b", ".a", "a.", "a.>.b", "a b", "a*", "*x", "a.>x"]),
        Form::SubjectFilters => strings(&["a.>,,b", "a..b", ",", "a b", "a.>,b c", "a.>,"]),
        Form::Subject => strings(&["a.*", "a.>", ">", "*", "a..b", "a b", ".a"]),
        Form::Identifier => strings(&["1db", "db-x", "t; DROP TABLE x", "é", "a.b", &long]),
        Form::NonEmptyText => strings(&[" ", "\t\n"]),
        Form::AnyText => Vec::new(),
        Form::WholeNumber { min, max } | Form::Bytes { min, max } | Form::Millis { min, max } => {
            let mut samples = strings(&[
                "abc",
                "-1",
                "+5",
                "1.5",
                " 5",
                "5 ",
                "1e3",
                "0x10",
                "1_000",
                "99999999999999999999999",
            ]);
            samples.push((max + 1).to_string());
            if min > 0 {
                samples.push((min - 1).to_string());
            }
            samples
        }
        Form::Seconds { min, max } => {
            let mut samples = strings(&[
                "inf", "NaN", "1e3", "-1", "+1", ".", "1..2", "1s", " 1", "0x1",
            ]);
            samples.push(format!("{}", min / 2.0));
            samples.push(format!("{}", max + 1.0));
            samples
        }
        Form::Bool => strings(&["yes", "no", "on", "2", "truee", "t"]),
        Form::LogFilter => strings(&["info,x=notalevel", "=info", "x=infoo", "x=info=3", "[{"]),
        Form::LogFormatName => strings(&["yaml", "jsonl", "plain"]),
        Form::ListenAddr => strings(&[
            "localhost:8080",
            "8080",
            ":8080",
            "0.0.0.0",
            "0.0.0.0:99999",
            "[::]",
            "::1:8080",
        ]),
        Form::FilePath => strings(&[" ", "\t"]),
    }
}

/// Bytes that are not UTF-8, carrying the marker: every variable must refuse them
/// without echoing them.
#[cfg(unix)]
pub fn not_utf8() -> OsString {
    use std::os::unix::ffi::OsStringExt as _;
    let mut bytes = MARKER.as_bytes().to_vec();
    bytes.extend_from_slice(b"\xff\xfe");
    OsString::from_vec(bytes)
}

pub fn form_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for var in VARIABLES {
        let mut samples: Vec<OsString> = bad_samples(var.form())
            .into_iter()
            .map(OsString::from)
            .collect();
        #[cfg(unix)]
        samples.push(not_utf8());
        for sample in samples {
            let mut case = Case::config(
                format!("{}={sample:?}", var.name),
                &[(var.name, &sample)],
                &[var.name],
            );
            // A secret's value is never quoted; neither is one carrying credentials, nor
            // one that is not UTF-8. The marker is in the last two.
            let text = sample.to_str();
            case.hidden = var.secret || text.is_none_or(|text| text.contains(MARKER));
            case.secret = Some(MARKER.to_owned());
            if var.secret
                && let Some(text) = text.filter(|text| !text.trim().is_empty())
            {
                case.secret = Some(text.to_owned());
            }
            cases.push(case);
        }
    }
    cases
}

/// Rules across variables; `names` is the variable the error is reported against.
pub fn cross_variable_cases() -> Vec<Case> {
    let os = |s: &str| OsString::from(s);
    let case = |label: &str, vars: &[(&str, &str)], names: &[&str]| {
        let vars: Vec<(&str, OsString)> = vars.iter().map(|(k, v)| (*k, os(v))).collect();
        let refs: Vec<(&str, &OsStr)> = vars.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        Case::config(label, &refs, names)
    };
    vec![
        case(
            "batch wait equal to the default ack wait",
            &[("PONIX_NATS_BATCH_WAIT_SECS", "30")],
            &["PONIX_NATS_BATCH_WAIT_SECS"],
        ),
        case(
            "batch wait above the ack wait",
            &[
                ("PONIX_NATS_BATCH_WAIT_SECS", "5"),
                ("PONIX_NATS_ACK_WAIT_SECS", "2"),
            ],
            &["PONIX_NATS_BATCH_WAIT_SECS"],
        ),
        case(
            "max ack pending below the batch size",
            &[
                ("PONIX_NATS_BATCH_SIZE", "500"),
                ("PONIX_NATS_MAX_ACK_PENDING", "499"),
            ],
            &["PONIX_NATS_MAX_ACK_PENDING"],
        ),
        case(
            "max ack pending below the default batch size",
            &[("PONIX_NATS_MAX_ACK_PENDING", "999")],
            &["PONIX_NATS_MAX_ACK_PENDING"],
        ),
        case(
            "backoff base above the default maximum",
            &[("PONIX_NATS_NAK_BACKOFF_BASE_MS", "60000")],
            &["PONIX_NATS_NAK_BACKOFF_MAX_MS"],
        ),
        case(
            "backoff maximum below the default base",
            &[("PONIX_NATS_NAK_BACKOFF_MAX_MS", "499")],
            &["PONIX_NATS_NAK_BACKOFF_MAX_MS"],
        ),
        case(
            "dead-letter stream equal to the stream",
            &[("PONIX_NATS_DEAD_LETTER_STREAM", "processed_envelopes")],
            &["PONIX_NATS_DEAD_LETTER_STREAM"],
        ),
        case(
            "dead-letter subject inside the default stream subjects",
            &[("PONIX_NATS_DEAD_LETTER_SUBJECT", "processed_envelopes.dead")],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "stream subjects that capture the default dead-letter subject",
            &[
                ("PONIX_NATS_STREAM_SUBJECTS", ">"),
                ("PONIX_NATS_SUBJECT", "processed_envelopes.>"),
            ],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "stream subjects with a wildcard over the dead-letter subject",
            &[
                (
                    "PONIX_NATS_STREAM_SUBJECTS",
                    "processed_envelopes.>,ponix.*.*",
                ),
                ("PONIX_NATS_SUBJECT", "processed_envelopes.>"),
            ],
            &["PONIX_NATS_DEAD_LETTER_SUBJECT"],
        ),
        case(
            "consumer subject outside the stream subjects",
            &[("PONIX_NATS_STREAM_SUBJECTS", "other.>")],
            &["PONIX_NATS_SUBJECT"],
        ),
        case(
            "consumer subject wider than the stream subjects",
            &[
                ("PONIX_NATS_STREAM_SUBJECTS", "a.*"),
                ("PONIX_NATS_SUBJECT", "a.>"),
            ],
            &["PONIX_NATS_SUBJECT"],
        ),
    ]
}
