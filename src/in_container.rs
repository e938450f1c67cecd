//! The in-container side of the helper: what runs as the container's entry point.
//!
//! - `mpiexec` mode (the **mpiexec selector**): finds the image's real launcher, detects the MPI
//!   flavour from its version output, checks the program exists, adds what the flavour needs
//!   ([`crate::mpi::adjustments`]) and execs the launcher.
//! - `exec` mode (`run_in_docker`): execs the given program.
//! - `entrypoint-quiet` and `resume` modes: the image's entrypoint in front of a task with its output
//!   hidden (pyxis shows it only with `--container-entrypoint-log`): the task's own streams are kept
//!   aside while the entrypoint runs, and `resume`, which the entrypoint execs as its command, gives
//!   them back before it execs the task's program.
//!
//! Both first put [`IN_BIN`] (links to the helper as `srun`, `ssh`, …) at the front of `PATH`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::engine::{is_executable, which};
use crate::launch::{ENV_IMAGE, HOST_DIR, IN_BIN};
use crate::mpi::{self, Flavour, LaunchSite};

#[derive(Debug, Error)]
pub enum InContainerError {
    #[error("image '{image}' has no MPI launcher: no mpiexec or mpirun on its PATH ({path}); use an image with Open MPI, MPICH, MVAPICH2 or Intel MPI")]
    NoLauncher { image: String, path: String },
    #[error("program '{program}' not found: it is neither in {HOST_DIR} (your current directory) nor on the PATH of image '{image}'")]
    ProgramNotFound { program: String, image: String },
    #[error("cannot run {program}: {source}")]
    Exec { program: String, source: std::io::Error },
    #[error("nothing to run: give a program")]
    NoProgram,
}

impl InContainerError {
    /// Shell-style exit code: 127 for "not found", 126 for "cannot run".
    pub fn exit_code(&self) -> i32 {
        match self {
            InContainerError::Exec { .. } => 126,
            InContainerError::NoProgram => 2,
            _ => 127,
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn image() -> String {
    std::env::var(ENV_IMAGE).unwrap_or_else(|_| "?".into())
}

/// `IN_BIN` first, then the image's PATH without it. Returns (full PATH, the image's part).
pub fn path_with_links(current: Option<OsString>) -> (String, String) {
    let current = current.map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| DEFAULT_PATH.into());
    let image_part: Vec<&str> = current.split(':').filter(|d| !d.is_empty() && *d != IN_BIN).collect();
    let image_part = image_part.join(":");
    (format!("{IN_BIN}:{image_part}"), image_part)
}

/// The image's launcher: `mpiexec`, else `mpirun`, on the image's PATH (never our own links).
pub fn find_launcher(image_path: &str) -> Option<PathBuf> {
    ["mpiexec", "mpirun", "mpiexec.hydra"].iter().find_map(|n| which(n, image_path.as_ref()))
}

/// Runs the launcher's version query (and `mpiname -a` beside it, which MVAPICH2 ships).
pub fn probe_flavour(launcher: &Path) -> Option<Flavour> {
    let mut text = String::new();
    if let Ok(out) = Command::new(launcher).arg("--version").output() {
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mpiname = launcher.with_file_name("mpiname");
    if is_executable(&mpiname) {
        if let Ok(out) = Command::new(&mpiname).arg("-a").output() {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    mpi::detect(&text)
}

/// Whether `program` resolves as the launcher would resolve it: a path (relative to the working
/// directory), or a name on PATH or in the working directory.
pub fn program_exists(program: &str, cwd: &Path, path: &str) -> bool {
    if program.contains('/') {
        let p = if program.starts_with('/') { PathBuf::from(program) } else { cwd.join(program) };
        return p.exists();
    }
    which(program, path.as_ref()).is_some() || is_executable(&cwd.join(program))
}

/// The selector: never returns on success (the launcher replaces this process).
pub fn run_mpiexec(args: &[String]) -> InContainerError {
    let (full_path, image_path) = path_with_links(std::env::var_os("PATH"));
    std::env::set_var("PATH", &full_path);
    let Some(launcher) = find_launcher(&image_path) else {
        return InContainerError::NoLauncher { image: image(), path: image_path };
    };
    let flavour = probe_flavour(&launcher);
    match &flavour {
        Some(f) => log::info!("{} is {f}", launcher.display()),
        None => log::warn!("cannot tell which MPI {} is; running it unchanged", launcher.display()),
    }
    if let Some(i) = mpi::program_index(args) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| HOST_DIR.into());
        if !program_exists(&args[i], &cwd, &full_path) {
            return InContainerError::ProgramNotFound { program: args[i].clone(), image: image() };
        }
    }
    let site = LaunchSite {
        root: nix::unistd::geteuid().is_root(),
        in_slurm: std::env::var_os("SLURM_JOB_ID").is_some(),
        infiniband: Path::new("/dev/infiniband").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false),
    };
    let adj = flavour.as_ref().map(|f| mpi::adjustments(f, &site)).unwrap_or_default();
    for (k, v) in &adj.env_defaults {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    let mut cmd = Command::new(&launcher);
    cmd.args(&adj.args).args(args);
    log::debug!("exec {:?}", cmd);
    let source = cmd.exec();
    InContainerError::Exec { program: launcher.display().to_string(), source }
}

/// The placeholder process of a step container: waits for a signal, doing nothing. Tasks join the
/// container's namespaces; this only keeps them alive.
pub fn run_pause() -> ! {
    loop {
        // SAFETY: pause() has no preconditions; it returns only when a handled signal arrives.
        unsafe { libc::pause() };
    }
}

/// `run_in_docker`'s inside: exec the program. Never returns on success.
pub fn run_exec(args: &[String]) -> InContainerError {
    let (full_path, _) = path_with_links(std::env::var_os("PATH"));
    std::env::set_var("PATH", &full_path);
    let Some(program) = args.first() else {
        return InContainerError::NoProgram;
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| HOST_DIR.into());
    if !program_exists(program, &cwd, &full_path) {
        return InContainerError::ProgramNotFound { program: program.clone(), image: image() };
    }
    let source = Command::new(program).args(&args[1..]).exec();
    InContainerError::Exec { program: program.clone(), source }
}

/// Where the task's standard output and error wait while a quiet entrypoint runs.
const SAVED_STREAMS: [i32; 2] = [198, 199];

/// `entrypoint-quiet ENTRYPOINT… [resume] TASK…`: runs the entrypoint with its output discarded.
pub fn run_entrypoint_quiet(args: &[String]) -> InContainerError {
    let Some(program) = args.first() else {
        return InContainerError::NoProgram;
    };
    // SAFETY: plain descriptor calls on our own standard streams before exec.
    unsafe {
        libc::dup2(1, SAVED_STREAMS[0]);
        libc::dup2(2, SAVED_STREAMS[1]);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    let source = Command::new(program).args(&args[1..]).exec();
    // the error is the user's to see
    // SAFETY: as above.
    unsafe {
        libc::dup2(SAVED_STREAMS[1], 2);
    }
    InContainerError::Exec { program: format!("the image's entrypoint {program}"), source }
}

/// `resume TASK…`: the task's streams back (when a quiet entrypoint kept them), then its program.
pub fn run_resume(args: &[String]) -> InContainerError {
    // SAFETY: plain descriptor calls before exec; F_GETFD only asks whether the descriptor is open.
    unsafe {
        if libc::fcntl(SAVED_STREAMS[0], libc::F_GETFD) >= 0 && libc::fcntl(SAVED_STREAMS[1], libc::F_GETFD) >= 0 {
            libc::dup2(SAVED_STREAMS[0], 1);
            libc::dup2(SAVED_STREAMS[1], 2);
            libc::close(SAVED_STREAMS[0]);
            libc::close(SAVED_STREAMS[1]);
        }
    }
    run_exec(args)
}

/// The words in front of a task's own that run the image's `entrypoint` first: the entrypoint itself
/// when its output is to be seen (`log`), else it wrapped by `entrypoint-quiet` … `resume`.
pub fn entrypoint_words(helper_inside: &str, entrypoint: &[String], log: bool) -> Vec<String> {
    if entrypoint.is_empty() || log {
        return entrypoint.to_vec();
    }
    let mode = |m: &str| [helper_inside.to_string(), "in-container".into(), m.into()];
    mode("entrypoint-quiet").into_iter().chain(entrypoint.iter().cloned()).chain(mode("resume")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_come_first_once() {
        let (full, image) = path_with_links(Some(format!("{IN_BIN}:/usr/bin:/bin").into()));
        assert_eq!(full, format!("{IN_BIN}:/usr/bin:/bin"));
        assert_eq!(image, "/usr/bin:/bin");
        let (full, _) = path_with_links(None);
        assert!(full.starts_with(IN_BIN) && full.ends_with("/bin"));
    }

    #[test]
    fn program_resolution() {
        let cwd = std::env::temp_dir();
        assert!(program_exists("sh", &cwd, "/usr/bin:/bin"));
        assert!(program_exists("/bin/sh", &cwd, ""));
        assert!(!program_exists("./definitely-not-here-mdt", &cwd, "/usr/bin"));
        assert!(!program_exists("definitely-not-here-mdt", &cwd, "/usr/bin"));
    }

    #[test]
    fn quiet_entrypoints_are_wrapped_and_logged_ones_are_not() {
        let e = vec!["/entry.sh".to_string()];
        assert_eq!(entrypoint_words("/h", &e, true), e);
        assert_eq!(
            entrypoint_words("/h", &e, false),
            ["/h", "in-container", "entrypoint-quiet", "/entry.sh", "/h", "in-container", "resume"]
        );
        assert!(entrypoint_words("/h", &[], false).is_empty());
    }
}
