//! Shared helpers for the golden interop tests: locating `/work/shared/interop`-style fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The folder of golden fixtures written by the real Go Machinery.
///
/// `MACHINERY_INTEROP_DIR` if set, else `<workspace root>/../shared/interop`. Panics with a clear
/// message when neither holds the fixtures: these tests must not pass vacuously.
pub fn interop_dir() -> PathBuf {
    let (dir, origin) = match std::env::var_os("MACHINERY_INTEROP_DIR") {
        Some(dir) => (PathBuf::from(dir), "MACHINERY_INTEROP_DIR"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/interop"),
            "the default <workspace root>/../shared/interop",
        ),
    };
    assert!(
        dir.join("args-reflect.json").is_file(),
        "golden interop fixtures not found in {} (from {origin}); set MACHINERY_INTEROP_DIR to \
         the folder holding args-reflect.json, signatures/ and states/",
        dir.display()
    );
    dir
}

/// Read a fixture file as bytes, panicking with its path on failure.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `.json` files of a fixture sub-folder, sorted by name.
pub fn json_files(sub: &str) -> Vec<PathBuf> {
    let dir = interop_dir().join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// A file's name without `.json`.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}
