//! Scratch directories for unit tests that leave nothing behind.
//!
//! libtest runs every test on a thread of its own, so a directory owned by a thread-local is
//! removed when its test ends, whether the test passed or panicked.

use std::path::PathBuf;

thread_local! {
    static DIR: tempfile::TempDir = tempfile::Builder::new().prefix("mdt-").tempdir().expect("a scratch directory");
}

/// This test's scratch directory (created on first use, removed when the test ends).
pub(crate) fn dir() -> PathBuf {
    DIR.with(|d| d.path().to_path_buf())
}

/// A fresh, empty subdirectory `name` of this test's scratch directory.
pub(crate) fn subdir(name: &str) -> PathBuf {
    let p = dir().join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("a scratch subdirectory");
    p
}

/// `bytes` written to `name` in this test's scratch directory.
pub(crate) fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).expect("a scratch file");
    p
}
