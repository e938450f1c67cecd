//! The container engine on this machine: finding its binary, whether it runs rootless, and the image
//! operations that happen before a run (present? pull).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::plugstack::EngineKind;

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
            Some(program) => Ok(Engine { kind, program }),
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

    /// A command line of the engine. Podman 5 warns at every call on a cgroup v1 node (its v1 support
    /// is deprecated); that line is noise to a job's user, who can do nothing about the node, and it
    /// would hide the engine's real error line: it is turned off.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if self.kind == EngineKind::Podman {
            cmd.env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
        }
        cmd
    }

    /// Whether the image is in the local store.
    pub fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let mut cmd = self.command();
        match self.kind {
            EngineKind::Podman => cmd.args(["image", "exists", image]),
            EngineKind::Docker => cmd.args(["image", "inspect", "--format", "{{.Id}}", image]),
        };
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| EngineError::Spawn { engine: self.name(), source })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match (self.kind, out.status.code()) {
            (_, Some(0)) => Ok(true),
            // `podman image exists` answers 1 for "no such image", 125 for its own failures
            (EngineKind::Podman, Some(1)) => Ok(false),
            (EngineKind::Docker, _) if stderr.contains("No such image") => Ok(false),
            (EngineKind::Docker, _) if stderr.contains("permission denied") => Err(EngineError::NoAccess),
            _ => Err(EngineError::Unavailable { engine: self.name(), reason: last_line(&stderr) }),
        }
    }

    /// Pulls the image. On a terminal the engine's own progress is shown; otherwise it is quiet and only
    /// its last error line is reported.
    pub fn pull(&self, image: &str, show_progress: bool) -> Result<(), EngineError> {
        let mut cmd = self.command();
        cmd.arg("pull");
        if !show_progress {
            cmd.arg("--quiet");
        }
        cmd.arg(image).stdin(Stdio::null()).stdout(if show_progress { Stdio::inherit() } else { Stdio::null() });
        cmd.stderr(if show_progress { Stdio::inherit() } else { Stdio::piped() });
        let out = cmd.output().map_err(|source| EngineError::Spawn { engine: self.name(), source })?;
        if out.status.success() {
            return Ok(());
        }
        let mut reason = last_line(&String::from_utf8_lossy(&out.stderr));
        if reason.is_empty() {
            reason = format!("{} pull exited with {}", self.name(), out.status);
        }
        Err(EngineError::Pull { image: image.into(), reason })
    }
}

/// The last non-empty line of an engine's error output, without its "Error: " prefix.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("Error: ").to_string())
        .unwrap_or_default()
}

impl Engine {
    /// Removes containers by name or id, whatever their state; errors (already gone) are ignored.
    pub fn remove(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut cmd = self.command();
        // with its anonymous volumes (an image's VOLUME): nothing of a job outlives it
        cmd.args(["rm", "--force", "--volumes"]);
        if self.kind == EngineKind::Podman {
            cmd.args(["--time", "0"]);
        }
        cmd.args(names).stdin(Stdio::null());
        // bounded: a wedged engine must not hold a step's end (slurmstepd waits for it)
        let _ = output_within(&mut cmd, std::time::Duration::from_secs(120));
    }

    /// Ids of the containers carrying every `label=value` of `labels`.
    pub fn containers_with(&self, labels: &[(String, String)]) -> Result<Vec<String>, EngineError> {
        let mut cmd = self.command();
        cmd.args(["ps", "--all", "--quiet", "--no-trunc"]);
        for (k, v) in labels {
            cmd.arg("--filter").arg(format!("label={k}={v}"));
        }
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| EngineError::Spawn { engine: self.name(), source })?;
        if !out.status.success() {
            return Err(EngineError::Unavailable {
                engine: self.name(),
                reason: last_line(&String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect())
    }
}

/// Runs `cmd` to completion, capturing its output, but kills it after `limit`: a Podman wedged on a
/// lock must not wedge Slurm's step setup with it.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // drain both pipes on threads so that a chatty child cannot block on a full pipe
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}
