//! The one way a Slurm callback runs Rust code: errors logged through Slurm, panics caught (a panic
//! must never unwind into slurmd or slurmstepd, which would abort).

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::slurm_log;

/// Runs one callback body: errors are logged through Slurm and become -1; a panic is caught, logged
/// and becomes -1 too.
pub fn guard<F>(what: &str, body: F) -> c_int
where
    F: FnOnce() -> anyhow::Result<()>,
{
    slurm_log::install();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            log::error!("{msg:#}");
            -1
        }
        Err(panic) => {
            let what_panicked = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("internal error in {what}: {what_panicked}");
            -1
        }
    }
}
