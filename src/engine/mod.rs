//! The container engine on this machine, and every call the project makes to it: one boundary, so that
//! one place knows Podman's and Docker's verbs, Go templates and output (pyxis routes every enroot call
//! through `enroot_exec*` the same way).
//!
//! - this file: finding the engine, whether it runs rootless, the command line of a call, errors;
//! - [`images`]: the store's images (present? pull, load, tag, inspect, list, remove);
//! - [`containers`]: containers (run, inspect, list, remove), `run`'s command line ([`run_args`]);
//! - `run`: every call bounded in time ([`output_within`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

mod command_line;
/// The label of our containers that holds their image's own entrypoint and environment, as
/// [`Engine::image_config`] gives them; an image committed from such a container has the
/// container's configuration (our entrypoint, the job's variables) and is read through it.
pub const IMAGE_CONFIG_LABEL: &str = "mpiexec-docker.image-config";

pub mod containers;
pub mod images;
mod lost_shims;
mod run;

pub use command_line::{docker_refuses, run_args};
pub use images::{squashfs_environment, RDSQUASHFS, SQFS2TAR};

pub use run::{output_into_within, output_within, output_within_feeding, Fed, QUICK_LIMIT};

/// The container engines the project drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Podman,
    Docker,
}

impl EngineKind {
    pub fn command(self) -> &'static str {
        match self {
            EngineKind::Podman => "podman",
            EngineKind::Docker => "docker",
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "podman" => Ok(EngineKind::Podman),
            "docker" => Ok(EngineKind::Docker),
            other => Err(format!("unknown engine '{other}' (use podman or docker)")),
        }
    }
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{engine} not found (looked for '{engine}' in PATH={path}); install it or choose another engine with --engine or MPIEXEC_DOCKER_ENGINE")]
    NotFound { engine: &'static str, path: String },
    #[error("image '{image}' is not available locally and pulling is disabled (pull: never); load it first with `{engine} load` or `{engine} pull {image}`")]
    NotLocal { image: String, engine: &'static str },
    #[error("cannot pull image '{image}': {reason}")]
    Pull { image: String, reason: String },
    #[error("{engine} does not work here: {reason}")]
    Unavailable { engine: &'static str, reason: String },
    #[error("you may not use this node's Docker daemon (its socket is root's: starting containers there is root's power); use --engine podman, or srun/sbatch --container-image where the site's plugin runs Docker for you")]
    NoAccess,
    #[error("cannot run {engine}: {source}")]
    Spawn { engine: &'static str, source: std::io::Error },
}

/// A container engine binary.
#[derive(Debug, Clone)]
pub struct Engine {
    pub kind: EngineKind,
    pub program: PathBuf,
    /// Cleanup after a step or job (see [`Engine::for_cleanup`]).
    cleanup: bool,
}

/// Searches `path_var` (a PATH value) for `name`.
pub fn which(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var).map(|d| d.join(name)).find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

impl Engine {
    /// Finds the engine in `$PATH`.
    pub fn find(kind: EngineKind) -> Result<Engine, EngineError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let name = kind.command();
        match which(name, &path) {
            Some(program) => Ok(Engine { kind, program, cleanup: false }),
            None => Err(EngineError::NotFound { engine: name, path: path.to_string_lossy().into_owned() }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind.command()
    }

    /// Podman run by a non-root user: the user's own store and user namespace.
    pub fn rootless(&self) -> bool {
        self.kind == EngineKind::Podman && !nix::unistd::geteuid().is_root()
    }

    /// The engine for removing what a step or job left: Podman then reads the node's `containers.conf`
    /// only, not the user's, whose programs (OCI runtime, hooks, conmon) would run at a job's end
    /// outside its cgroup; of the user's settings only those that say where their state is are kept
    /// (cgroup manager, events backend, temporary directory), as command-line flags.
    pub fn for_cleanup(mut self) -> Engine {
        self.cleanup = true;
        self
    }

    /// A command line of the engine. Podman 5 warns at every call on a cgroup v1 node (its v1 support
    /// is deprecated); that line is noise to a job's user, who can do nothing about the node, and it
    /// would hide the engine's real error line: it is turned off.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if self.kind == EngineKind::Podman {
            cmd.env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
            if self.cleanup {
                let system = ["/etc/containers/containers.conf", "/usr/share/containers/containers.conf"]
                    .into_iter()
                    .find(|p| Path::new(p).is_file())
                    .unwrap_or("/dev/null");
                cmd.env("CONTAINERS_CONF", system).env_remove("CONTAINERS_CONF_OVERRIDE");
                if !nix::unistd::geteuid().is_root() {
                    let home = std::env::var_os("HOME").map(PathBuf::from);
                    let config = std::env::var_os("XDG_CONFIG_HOME")
                        .map(PathBuf::from)
                        .or(home.map(|h| h.join(".config")))
                        .map(|c| c.join("containers/containers.conf"));
                    let text = config.and_then(|c| std::fs::read_to_string(c).ok()).unwrap_or_default();
                    cmd.args(state_flags(&text));
                }
            }
        }
        cmd
    }
}

/// The Podman flags for the settings of a user's `containers.conf` that say where their state is
/// (`[engine]` `cgroup_manager`, `events_logger`, `tmp_dir`), from its text; nothing that names a
/// program to run.
pub fn state_flags(containers_conf: &str) -> Vec<String> {
    let mut table = String::new();
    let mut flags = Vec::new();
    for line in containers_conf.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.split('#').next().unwrap_or("").trim().trim_matches('"');
        let ok = |allowed: &[&str]| allowed.contains(&value);
        match (table.as_str(), key.trim()) {
            ("engine", "cgroup_manager") if ok(&["cgroupfs", "systemd"]) => {
                flags.extend(["--cgroup-manager".to_string(), value.into()])
            }
            ("engine", "events_logger") if ok(&["file", "journald", "none"]) => {
                flags.extend(["--events-backend".to_string(), value.into()])
            }
            ("engine", "tmp_dir") if value.starts_with('/') && !value.contains('$') => {
                flags.extend(["--tmpdir".to_string(), value.into()])
            }
            _ => {}
        }
    }
    flags
}

/// The last non-empty line of an engine's (or the helper's) error output, without its "Error: "
/// prefix: where the reason is.
pub fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("Error: ").to_string())
        .unwrap_or_default()
}

/// A size in bytes as people read it: `512 B`, `44 KiB`, `1.5 GiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (bytes as f64, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value < 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}

/// Why an engine call that failed did so, in one line: the last line of its error output (see
/// [`last_line`]), or, when it printed none, how it ended: `podman was killed (SIGKILL)` when a
/// signal ended it (a node's OOM killer, an admin's `kill`), else its exit status.
pub fn failure_line(engine: &str, status: std::process::ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let line = last_line(stderr);
    if !line.is_empty() {
        return line;
    }
    match (status.signal(), status.code()) {
        (Some(sig), _) => {
            let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal");
            format!("{engine} was killed ({name})")
        }
        (None, Some(code)) => format!("{engine} exited with status {code} and said nothing"),
        (None, None) => format!("{engine} ended abnormally"),
    }
}

impl Engine {
    /// [`failure_line`] of a finished call of this engine.
    pub fn why(&self, out: &std::process::Output) -> String {
        failure_line(self.name(), out.status, &String::from_utf8_lossy(&out.stderr))
    }

    /// A failure for want of space (`no space left on device`) as one line naming the disk: the
    /// store's directory and what is free there, and what to do. Any other reason is kept as it is.
    pub fn naming_the_disk(&self, reason: String) -> String {
        if !reason.contains("no space left on device") {
            return reason;
        }
        log::debug!("{} said: {reason}", self.name());
        let Ok(root) = self.store_root() else { return reason };
        let free = nix::sys::statvfs::statvfs(&root)
            .map(|s| format!("{} free", size_text(s.blocks_available() * s.fragment_size())))
            .unwrap_or_else(|_| "no room".into());
        let whose = match self.rootless() {
            true => format!("remove images you no longer use there (`{} image prune -a` on the node)", self.name()),
            false => "the node's admin can make room".to_string(),
        };
        format!(
            "no space left on device in the container store {} ({free} now, too little for this); {whose}",
            root.display()
        )
    }

    /// Classifies an engine call's failure line.
    fn failed(&self, reason: String) -> EngineError {
        match self.kind {
            EngineKind::Docker if reason.contains("permission denied") => EngineError::NoAccess,
            _ => EngineError::Unavailable { engine: self.name(), reason },
        }
    }

    /// The engine's version (Docker: its daemon's).
    pub fn version(&self) -> Result<String, EngineError> {
        let format = match self.kind {
            EngineKind::Podman => "{{.Client.Version}}",
            EngineKind::Docker => "{{.Server.Version}}",
        };
        Ok(self.quick(&["version", "--format", format]).map_err(|e| self.failed(e))?.trim().to_string())
    }

    /// Where the engine keeps its images for the caller.
    pub fn store_root(&self) -> Result<PathBuf, EngineError> {
        let format = match self.kind {
            EngineKind::Podman => "{{.Store.GraphRoot}}",
            EngineKind::Docker => "{{.DockerRootDir}}",
        };
        Ok(PathBuf::from(self.quick(&["info", "--format", format]).map_err(|e| self.failed(e))?.trim()))
    }

    /// Whether the registry serves `reference` (its manifest, without fetching layers).
    pub fn remote_manifest(&self, reference: &str) -> Result<(), String> {
        self.quick(&["manifest", "inspect", reference]).map(|_| ())
    }

    /// Whether this engine applies CDI devices (`--device KIND=NAME`) itself: Podman from 4.1; Docker
    /// when its daemon has CDI on (25 and later with `"features": {"cdi": true}`, on by default from
    /// 28), which `docker info` shows as its spec directories.
    pub fn applies_cdi(&self) -> Result<bool, EngineError> {
        match self.kind {
            EngineKind::Podman => {
                let v = self.version()?;
                let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>().unwrap_or(0));
                let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                Ok((major, minor) >= (4, 1))
            }
            EngineKind::Docker => {
                let dirs = self.quick(&["info", "--format", "{{json .CDISpecDirs}}"]).map_err(|e| self.failed(e))?;
                Ok(serde_json::from_str::<Option<Vec<String>>>(dirs.trim())
                    .ok()
                    .flatten()
                    .is_some_and(|d| !d.is_empty()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_that_printed_nothing_says_how_the_engine_ended() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::ExitStatus;
        let said = super::failure_line("podman", ExitStatus::from_raw(125 << 8), "Error: no such image\n\n");
        assert_eq!(said, "no such image");
        assert_eq!(super::size_text(512), "512 B");
        assert_eq!(super::size_text(45056), "44 KiB");
        assert_eq!(super::size_text(3 << 29), "1.5 GiB");
        assert_eq!(super::failure_line("podman", ExitStatus::from_raw(9), ""), "podman was killed (SIGKILL)");
        assert_eq!(super::failure_line("docker", ExitStatus::from_raw(15), " \n"), "docker was killed (SIGTERM)");
        assert_eq!(
            super::failure_line("podman", ExitStatus::from_raw(1 << 8), ""),
            "podman exited with status 1 and said nothing"
        );
    }

    #[test]
    fn cleanup_keeps_only_where_the_state_is() {
        let conf = r#"
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"  # no systemd here
events_logger = "file"
runtime = "/home/u/evil-runtime"
hooks_dir = ["/home/u/hooks"]
conmon_path = ["/home/u/conmon"]
tmp_dir = "/var/tmp/u"
[engine.runtimes]
crun = ["/home/u/evil"]
"#;
        assert_eq!(
            super::state_flags(conf),
            ["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--tmpdir", "/var/tmp/u"]
        );
        assert!(super::state_flags("[engine]\ncgroup_manager = \"--x\"\n").is_empty());
    }
}
