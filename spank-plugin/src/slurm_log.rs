//! A `log` backend that writes into Slurm's own log: slurmstepd's and slurmd's log files, and srun's,
//! sbatch's and salloc's terminal. Levels map to Slurm's: error → `slurm_error`, warn → `slurm_info`,
//! info → `slurm_verbose` (shown by `srun -v`), debug → `slurm_debug`, trace → `slurm_debug2`.

use std::ffi::CString;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::ffi;

struct SlurmLogger;

static LOGGER: SlurmLogger = SlurmLogger;

/// Routes the `log` macros to Slurm. Safe to call in every callback; only the first call installs.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Trace);
    }
}

impl Log for SlurmLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        // one line whatever the message carries of users' text (see `user_text`)
        let line = mpiexec_docker_core::user_text::one_line(&record.args().to_string());
        let text = match record.level() {
            Level::Warn => format!("mpiexec_docker: warning: {line}"),
            _ => format!("mpiexec_docker: {line}"),
        };
        // Interior NULs cannot be passed to C; replace them rather than lose the message.
        let msg = CString::new(text.replace('\0', "\\0")).expect("NULs replaced");
        let fmt = c"%s".as_ptr();
        // SAFETY: Slurm's log functions are printf-like; "%s" with a valid C string is well-formed.
        unsafe {
            match record.level() {
                Level::Error => ffi::slurm_error(fmt, msg.as_ptr()),
                Level::Warn => ffi::slurm_info(fmt, msg.as_ptr()),
                Level::Info => ffi::slurm_verbose(fmt, msg.as_ptr()),
                Level::Debug => ffi::slurm_debug(fmt, msg.as_ptr()),
                Level::Trace => ffi::slurm_debug2(fmt, msg.as_ptr()),
            }
        }
    }

    fn flush(&self) {}
}

/// A line for the user's terminal (srun's stderr, the batch log), not Slurm's log.
pub fn to_user(line: &str) {
    let msg = CString::new(mpiexec_docker_core::user_text::one_line(line)).expect("NULs escaped");
    // SAFETY: printf-like with "%s" and a valid C string.
    unsafe { ffi::slurm_spank_log(c"%s".as_ptr(), msg.as_ptr()) };
}
