//! Every input the fuzzer ever crashed on, and every seed of its corpus, through the same
//! invariants as the fuzz target (`ponix_writer::fuzz_support`).
//!
//! - `fuzz/regressions/decode_envelope/`: crashing inputs, committed after the bug is
//!   fixed (minimized with `cargo fuzz tmin`; see `cargo xtask fuzz`).
//! - `fuzz/corpus/decode_envelope/`: the seed corpus, the encoded `fixtures/`. Run with
//!   `UPDATE_FUZZ_SEEDS=1` to rewrite it after a fixture changes.

mod support;

use std::path::{Path, PathBuf};

use ponix_writer::envelope::ProcessedEnvelope;
use ponix_writer::fuzz_support::check_decode_invariants;
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use support::fixtures::{self, Fixture};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir` in name order, leaving out dotfiles (`.gitkeep`).
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    assert!(
        dir.is_dir(),
        "{} is missing; it is committed with the fuzz crate",
        dir.display()
    );
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (name, bytes)
        })
        .collect()
}

/// Runs each input, naming the file when an invariant breaks.
fn check_all(kind: &str, inputs: &[(String, Vec<u8>)]) {
    for (name, bytes) in inputs {
        let outcome = std::panic::catch_unwind(|| check_decode_invariants(bytes));
        assert!(
            outcome.is_ok(),
            "{kind} {name} ({} bytes) breaks a decode invariant (message above)",
            bytes.len()
        );
    }
}

#[test]
fn committed_crashes_no_longer_break_an_invariant() {
    let crashes = inputs(&fuzz_dir().join("regressions/decode_envelope"));
    check_all("regression", &crashes);
    // None may be committed yet; the seeds below still run through the same check.
    eprintln!("{} regression input(s) checked", crashes.len());
}

/// The seed name for a fixture: `valid-01_sensor_reading`, `invalid-undecodable`.
fn seed_name(fixture: &Fixture) -> String {
    let group = if fixture.valid { "valid" } else { "invalid" };
    format!("{group}-{}", fixture.name)
}

/// Seeds no fixture covers, so the fuzzer starts next to every rejection and limit: a
/// non-finite number, colliding keys, and nesting around the fast path's depth limit
/// (64 messages) and prost's (100).
fn extra_seeds() -> Vec<(String, Vec<u8>)> {
    fn envelope(fields: Vec<(&str, Kind)>) -> Vec<u8> {
        let time = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        let data = Struct {
            fields: fields
                .into_iter()
                .map(|(key, kind)| (key.to_owned(), Value { kind: Some(kind) }))
                .collect(),
        };
        ProcessedEnvelope {
            end_device_id: "dev".into(),
            occurred_at: time,
            data: Some(data),
            processed_at: time,
            organization_id: "org".into(),
        }
        .encode_to_vec()
    }
    let mut seeds = vec![
        (
            "extra-non_finite".to_owned(),
            envelope(vec![("x", Kind::NumberValue(f64::NAN))]),
        ),
        (
            "extra-key_collision".to_owned(),
            envelope(vec![
                ("a.b", Kind::NumberValue(1.0)),
                ("a%2Eb", Kind::NumberValue(2.0)),
            ]),
        ),
    ];
    // A level of structs is three messages (Struct, map entry, Value), of lists two.
    // prost refuses 33 levels of structs and 49 of lists.
    for depth in [20, 21, 22, 32, 33] {
        let mut inner = Kind::StructValue(Struct::default());
        for _ in 0..depth {
            let fields = [("a".to_owned(), Value { kind: Some(inner) })].into();
            inner = Kind::StructValue(Struct { fields });
        }
        seeds.push((
            format!("extra-nested_structs_{depth}"),
            envelope(vec![("s", inner)]),
        ));
    }
    for depth in [31, 32, 33, 48, 49] {
        let mut inner = Kind::NumberValue(1.0);
        for _ in 0..depth {
            let values = vec![Value { kind: Some(inner) }];
            inner = Kind::ListValue(ListValue { values });
        }
        seeds.push((
            format!("extra-nested_lists_{depth}"),
            envelope(vec![("l", inner)]),
        ));
    }
    seeds
}

#[test]
fn the_seed_corpus_is_the_encoded_fixtures_and_passes() {
    let dir = fuzz_dir().join("corpus/decode_envelope");
    let all = fixtures::load_all().expect("loading fixtures/");
    assert!(!all.is_empty(), "no fixtures found");
    let mut expected: Vec<(String, Vec<u8>)> = all
        .iter()
        .map(|fixture| (seed_name(fixture), fixture.bytes.clone()))
        .collect();
    expected.extend(extra_seeds());

    if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &expected {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    let seeds = inputs(&dir);
    for (name, bytes) in &expected {
        let seed = seeds.iter().find(|(seed, _)| seed == name);
        assert!(
            seed.is_some_and(|(_, seed)| seed == bytes),
            "fuzz/corpus/decode_envelope/{name} is missing or stale: \
             run `UPDATE_FUZZ_SEEDS=1 cargo test -p ponix-writer --test fuzz_regressions`"
        );
    }
    for fixture in &all {
        let decoded = check_decode_invariants(&fixture.bytes);
        assert_eq!(
            decoded.is_ok(),
            fixture.valid,
            "fixture {}: {decoded:?}",
            fixture.name
        );
    }
    check_all("seed", &seeds);
}
