//! Helpers shared by the schema crate's integration tests.
#![allow(dead_code)]

pub mod generate;

use std::path::PathBuf;

use serde_json::Value;

/// `reference/mparticle/` at the repository root: mParticle's official spec files.
pub fn reference(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../reference/mparticle")
        .join(file)
}

pub fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

pub fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// JSON equality where numbers compare as numbers (`0` equals `0.0`), and objects by members.
/// Returns the path of the first difference.
pub fn json_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => match (x.as_u64(), y.as_u64()) {
                    (Some(x), Some(y)) => x == y,
                    _ => x.as_f64() == y.as_f64(),
                },
            };
            (!same).then(|| format!("{path}: {x} != {y}"))
        }
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = json_diff(u, v, &format!("{path}.{key}")) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{path}.{key}: {u:?} != {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: length {} != {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| json_diff(u, v, &format!("{path}[{i}]")))
        }
        _ => (a != b).then(|| format!("{path}: {a} != {b}")),
    }
}

#[track_caller]
pub fn assert_json_eq(expected: &[u8], actual: &[u8]) {
    let e: Value = serde_json::from_slice(expected).expect("expected is JSON");
    let a: Value = serde_json::from_slice(actual).expect("actual is JSON");
    if let Some(diff) = json_diff(&e, &a, "$") {
        panic!(
            "JSON differs at {diff}\nactual: {}",
            String::from_utf8_lossy(actual)
        );
    }
}
