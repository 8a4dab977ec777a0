//! Shared helpers for the golden interop tests: the Go fixtures in `testdata/go/`, located by
//! `machinery_testkit::fixtures` (which panics when a file is missing).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use machinery_testkit::fixtures;

/// The folder of golden fixtures written by the real Go Machinery (`testdata/go`).
pub fn interop_dir() -> PathBuf {
    fixtures::dir()
}

/// Read a fixture file as bytes, panicking with its path on failure.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `.json` files of a fixture sub-folder (`index.json` excluded), sorted by name.
pub fn json_files(sub: &str) -> Vec<PathBuf> {
    fixtures::json_files(sub)
}

/// A file's name without `.json`.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}
