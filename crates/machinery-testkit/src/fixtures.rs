//! The golden fixtures written by the real Go Machinery, kept in the repository under
//! `testdata/go/` (see its README for what each folder holds).
//!
//! Every accessor panics with the missing path: a test that reads Go's bytes must never pass
//! vacuously because a file is absent.

use std::path::{Path, PathBuf};

/// The folder of Go-written fixtures: `<workspace root>/testdata/go`.
pub fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/go");
    assert!(
        dir.join("README.md").is_file(),
        "the Go fixtures are missing: expected {} (part of the repository; is the checkout whole?)",
        dir.display()
    );
    dir
}

/// The path of one fixture, e.g. `path("signatures/add_int64.json")`; panics if it is absent.
pub fn path(rel: &str) -> PathBuf {
    let p = dir().join(rel);
    assert!(p.exists(), "Go fixture missing: {}", p.display());
    p
}

/// The bytes of one fixture, e.g. `read("states/success_int64.json")`.
pub fn read(rel: &str) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read Go fixture {}: {e}", p.display()))
}

/// A JSON fixture, parsed.
pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read(rel))
        .unwrap_or_else(|e| panic!("Go fixture {rel} is not JSON: {e}"))
}

/// The `.json` files of a fixture folder (`index.json` excluded), sorted by name; panics if none.
pub fn json_files(sub: &str) -> Vec<PathBuf> {
    let d = path(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "index.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no Go fixtures in {}", d.display());
    files
}
