//! The container engine on this machine: finding its binary, whether it runs rootless, and the image
//! operations that happen before a run (present? pull).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

    /// Whether the image is in the local store.
    pub fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let mut cmd = self.command();
        match self.kind {
            EngineKind::Podman => cmd.args(["image", "exists", image]),
            EngineKind::Docker => cmd.args(["image", "inspect", "--format", "{{.Id}}", image]),
        };
        cmd.stdin(Stdio::null());
        let out = output_within(&mut cmd, QUICK_LIMIT)
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

    /// Pulls the image within `limit`; with Docker, `credentials` is the client configuration
    /// directory to log in with (`DOCKER_CONFIG`). Quiet: only the engine's last error line is
    /// reported.
    pub fn pull_with(&self, image: &str, credentials: Option<&Path>, limit: Duration) -> Result<(), EngineError> {
        let mut cmd = self.command();
        cmd.args(["pull", "--quiet", image]).stdin(Stdio::null());
        if let (EngineKind::Docker, Some(dir)) = (self.kind, credentials) {
            cmd.env("DOCKER_CONFIG", dir);
        }
        let out = output_within(&mut cmd, limit)
            .map_err(|e| EngineError::Pull { image: image.into(), reason: e.to_string() })?;
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
        let _ = output_within(&mut cmd, QUICK_LIMIT);
    }

    /// Ids of the containers carrying every `label=value` of `labels`.
    pub fn containers_with(&self, labels: &[(String, String)]) -> Result<Vec<String>, EngineError> {
        let mut cmd = self.command();
        cmd.args(["ps", "--all", "--quiet", "--no-trunc"]);
        for (k, v) in labels {
            cmd.arg("--filter").arg(format!("label={k}={v}"));
        }
        cmd.stdin(Stdio::null());
        let out = output_within(&mut cmd, QUICK_LIMIT)
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

/// The longest a quick engine call (inspect, list, remove) may take.
pub const QUICK_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion, capturing its output, but kills it after `limit`: a Podman wedged on a
/// lock must not wedge Slurm's step setup with it. The command runs in a process group of its own,
/// and the whole group is killed: what it started goes too, and nothing it left holding the output
/// pipes can make this wait past the deadline.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<std::process::Output> {
    cmd.stdin(Stdio::null());
    Ok(output_within_feeding(cmd, limit, |_| Ok(()))?.output)
}

/// What [`output_within_feeding`] returns: the output, and how feeding the standard input went
/// (`None` when the command had none to feed).
pub struct Fed {
    pub output: std::process::Output,
    pub fed: Option<Result<(), String>>,
}

/// [`output_within`], with `feed` writing the command's standard input (when `cmd` has it piped) on
/// a thread of its own; the pipe is closed when `feed` returns.
pub fn output_within_feeding(
    cmd: &mut Command,
    limit: Duration,
    feed: impl FnOnce(&mut std::process::ChildStdin) -> Result<(), String> + Send + 'static,
) -> std::io::Result<Fed> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn()?;
    let pgid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    for (which, pipe) in [
        (1u8, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        (2, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            let _ = tx.send((which, v));
        });
    }
    drop(tx);
    let feeder = child.stdin.take().map(|mut stdin| {
        let (ftx, frx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = feed(&mut stdin);
            drop(stdin);
            let _ = ftx.send(r);
        });
        frx
    });
    let start = std::time::Instant::now();
    let kill = |child: &mut std::process::Child| {
        // SAFETY: kill(2) of the process group we made for the child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    };
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            kill(&mut child);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // the output pipes: until whatever else holds them lets go, within what is left of the deadline
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = limit.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        match rx.recv_timeout(left) {
            Ok((1, v)) => stdout = v,
            Ok((_, v)) => stderr = v,
            Err(_) => {
                // SAFETY: as above; whatever of the group is left goes.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                break;
            }
        }
    }
    let fed = feeder
        .map(|f| f.recv_timeout(Duration::from_secs(1)).unwrap_or_else(|_| Err("the command stopped reading".into())));
    Ok(Fed { output: std::process::Output { status, stdout, stderr }, fed })
}

#[cfg(test)]
mod tests {
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
