//! Differential test against the real libpq: every input is parsed by [`ConnInfo::parse`] and by libpq's
//! `PQconninfoParse()` (through the small C program in `tests/libpq_oracle/`), and the results must
//! agree: same settings, or both errors with the same message.
//!
//! The only accepted differences are the deliberate ones: messages that would echo a password are
//! redacted here, and percent-decoded values must be UTF-8 here (libpq takes any bytes).
//!
//! Needs a C compiler and libpq's headers (Debian: `libpq-dev`); without them the test says so and
//! passes. Inputs only use keywords that libpq 10 and later all know, so any installed libpq works.

// Helpers of a test crate: a panic is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use walrelay_conninfo::{ConnInfo, ConnInfoError};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(BTreeMap<String, String>),
    Err(String),
}

fn include_dir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--includedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    from_pg_config
        .into_iter()
        .chain([PathBuf::from("/usr/include/postgresql")])
        .find(|d| d.join("libpq-fe.h").exists())
}

fn build_oracle(dir: &Path) -> Option<PathBuf> {
    let include = include_dir()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libpq_oracle/conninfo_parse.c");
    let exe = dir.join("conninfo_parse");
    let status = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .arg("-I")
        .arg(&include)
        .arg("-lpq")
        .status()
        .ok()?;
    status.success().then_some(exe)
}

fn run_oracle(exe: &Path, inputs: &[String]) -> Vec<Outcome> {
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let payload: Vec<u8> = inputs.join("\0").into_bytes();
    let writer = std::thread::spawn(move || stdin.write_all(&payload).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success());

    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    let mut outcomes = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(message) = line.strip_prefix("ERR\t") {
            outcomes.push(Outcome::Err(message.to_string()));
            continue;
        }
        assert_eq!(line, "OK");
        let mut map = BTreeMap::new();
        for line in lines.by_ref() {
            if line == "END" {
                break;
            }
            let (k, hex) = line.split_once('\t').unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            map.insert(k.to_string(), String::from_utf8_lossy(&bytes).into_owned());
        }
        outcomes.push(Outcome::Ok(map));
    }
    outcomes
}

fn ours(input: &str) -> std::result::Result<BTreeMap<String, String>, ConnInfoError> {
    ConnInfo::parse(input).map(|info| {
        info.iter()
            .map(|(k, v)| (k.name().to_string(), v.to_string()))
            .collect()
    })
}

/// A small deterministic generator (xorshift), so failures reproduce without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const KV_PIECES: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "options",
    "application_name",
    "replication",
    "hostaddr",
    "requiressl",
    "sslpassword",
    "bogus",
    "Host",
    "=",
    "=",
    "=",
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\u{0b}",
    "'",
    "'",
    "\\",
    "\\'",
    "\\\\",
    "''",
    "a",
    "b c",
    "é",
    ",",
    "1",
    "x=y",
    "/tmp",
    "ü'",
    "#",
];

const URI_PIECES: &[&str] = &[
    "u",
    ":",
    ":",
    "@",
    "@",
    "pw",
    "[",
    "]",
    "::1",
    "h",
    "h2",
    ",",
    ",",
    "/",
    "/",
    "db",
    "?",
    "?",
    "=",
    "=",
    "&",
    "%2F",
    "%",
    "%4",
    "%zz",
    "%00",
    "%C3%A9",
    "%41",
    "host",
    "port",
    "5432",
    "sslmode",
    "require",
    "ssl",
    "true",
    "requiressl",
    "1",
    "password",
    "bogus",
    "%2C",
    " ",
    "'",
];

fn generate(rng: &mut Rng, count: usize) -> Vec<String> {
    let mut inputs = Vec::with_capacity(count);
    for i in 0..count {
        let uri = i % 2 == 1;
        let mut s = String::new();
        if uri {
            s.push_str(if rng.next() & 3 == 0 {
                "postgres://"
            } else {
                "postgresql://"
            });
        }
        let pieces = if uri { URI_PIECES } else { KV_PIECES };
        for _ in 0..1 + rng.next() % 12 {
            s.push_str(rng.pick(pieces));
        }
        inputs.push(s);
    }
    inputs
}

fn fixed_cases() -> Vec<String> {
    [
        "",
        "host=localhost port=5432",
        "host = 'a b' port =1",
        r"password='it\'s' user=x\ y",
        "host='unterminated",
        "requiressl=1",
        "postgresql://",
        "postgresql://user:secret@host:5433/db?sslmode=require&application_name=x",
        "postgresql://[::1]:5432,[fe80::1]/db",
        "postgresql://[::1",
        "postgresql://[]",
        "postgresql://[::1]x",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
        "postgresql://h?ssl=true",
        "postgresql://h?ssl=false",
        "postgresql://h?a=b=c",
        "postgresql://h?x",
        "postgresql://h/%00",
        "postgresql://h1,h2:1/",
        "postgresql:///db?host=/tmp&port=5433",
        "dbname=postgresql://h",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether a difference between libpq and us is one of the deliberate ones.
fn accepted_difference(
    input: &str,
    libpq: &Outcome,
    ours: &Result<BTreeMap<String, String>, ConnInfoError>,
) -> bool {
    match (libpq, ours) {
        // libpq keeps decoded bytes that are not UTF-8; we refuse them as soon as we see them (libpq may
        // then fail later in the string for another reason, or not at all).
        (_, Err(ConnInfoError::PercentDecodedNotUtf8(_))) => input.contains('%'),
        // Redacted messages: ours hides text that may be (part of) a password.
        (Outcome::Err(_), Err(e)) => {
            let msg = e.to_string();
            msg.contains("********") || msg.contains("unquoted password")
        }
        _ => false,
    }
}

#[test]
fn parser_agrees_with_libpq() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build_oracle(dir.path()) else {
        eprintln!(
            "skipped: no C compiler or libpq headers (install libpq-dev) to build the libpq oracle"
        );
        return;
    };

    let mut inputs = fixed_cases();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    inputs.extend(generate(&mut rng, 6000));
    let expected = run_oracle(&exe, &inputs);
    assert_eq!(expected.len(), inputs.len());

    let mut accepted = 0;
    let mut failures = Vec::new();
    for (input, libpq) in inputs.iter().zip(&expected) {
        let result = ours(input);
        let same = match (&result, libpq) {
            (Ok(map), Outcome::Ok(want)) => map == want,
            (Err(e), Outcome::Err(want)) => e.to_string() == *want,
            _ => false,
        };
        if same {
            continue;
        }
        if accepted_difference(input, libpq, &result) {
            accepted += 1;
            continue;
        }
        failures.push(format!(
            "input {input:?}\n  libpq: {libpq:?}\n  ours:  {:?}",
            result.map_err(|e| e.to_string())
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs differ from libpq:\n{}",
        failures.len(),
        inputs.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    let parsed = expected
        .iter()
        .filter(|o| matches!(o, Outcome::Ok(_)))
        .count();
    eprintln!(
        "{} inputs agree with libpq ({parsed} parsed by libpq), {accepted} differ deliberately",
        inputs.len() - accepted
    );
    // Both parse paths and error paths must be well exercised.
    assert!(
        parsed > inputs.len() / 5 && parsed < inputs.len() * 4 / 5,
        "{parsed} parsed"
    );
    // The deliberate differences must stay rare, or the generator is not testing much.
    assert!(
        accepted < inputs.len() / 4,
        "{accepted} accepted differences"
    );
}
