//! The host side of a container run: from what the user asked (image, command, options) and where
//! they are (directory, environment, devices, engine) to a [`ContainerSpec`].
//!
//! Inside every container, the helper itself is mounted at [`IN_HELPER`] and a small directory of
//! links to it at [`IN_BIN`] (`mpiexec`, `mpirun`, `srun`, `ssh`, `rsh`, `run_in_docker`), which the
//! in-container side puts first on `PATH`. The current directory is mounted at `/host` and is the
//! working directory.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::Config;
use crate::container::{ContainerSpec, Mount, MountError, UserMode};
use crate::devices::{self, DeviceKind, DeviceRoots, GpuAllocation};
use crate::engine::Engine;
use crate::environment::EnvFilter;
use crate::identity::UserIds;
use crate::plugstack::EngineKind;

/// Where the helper is mounted in the container.
pub const IN_HELPER: &str = "/.mpiexec-docker/mpiexec_docker";
/// Where the directory of links to the helper is mounted in the container.
pub const IN_BIN: &str = "/.mpiexec-docker/bin";
/// Where the current directory is mounted in the container.
pub const HOST_DIR: &str = "/host";
/// The names the helper answers to inside a container.
pub const LINK_NAMES: &[&str] = &["mpiexec", "mpirun", "srun", "ssh", "rsh", "run_in_docker"];

/// Set inside our containers: the image, and a marker for the in-container side.
pub const ENV_IMAGE: &str = "MPIEXEC_DOCKER_IMAGE";
pub const ENV_IN_CONTAINER: &str = "MPIEXEC_DOCKER_IN_CONTAINER";
/// The container label every container of ours carries, and the ones naming its owner and job.
pub const LABEL: &str = "mpiexec-docker";

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("image '{0}' is not a valid image name (it may not be empty, start with '-' or contain spaces)")]
    BadImage(String),
    #[error("--env '{0}': write NAME or NAME=VALUE")]
    BadEnv(String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot prepare {path}: {source}")]
    RuntimeDir { path: PathBuf, source: std::io::Error },
}

/// Rejects image names that would be read as engine options or split into several words.
pub fn check_image_name(image: &str) -> Result<(), LaunchError> {
    if image.is_empty() || image.starts_with('-') || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LaunchError::BadImage(image.into()));
    }
    Ok(())
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub image: String,
    /// The command run inside, after the in-container entry (see [`in_container_command`]).
    pub command: Vec<String>,
    /// The host directory mounted at /host (the current directory).
    pub host_dir: PathBuf,
    /// `--env NAME[=VALUE]` from the command line.
    pub env: Vec<String>,
    /// `--mount SRC:DST[:ro]` from the command line.
    pub mounts: Vec<String>,
    pub interactive: bool,
    /// Whose container it is: the caller, or the job's user when the helper runs as root for them.
    pub user: UserIds,
}

/// The in-container command for `mode` ("mpiexec" or "exec") and its arguments.
pub fn in_container_command(mode: &str, args: &[String]) -> Vec<String> {
    let mut c = vec!["in-container".to_string(), mode.to_string()];
    c.extend(args.iter().cloned());
    c
}

/// Where per-run directories go: `$XDG_RUNTIME_DIR`, else the temporary directory.
pub fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(std::env::temp_dir)
}

/// A private per-run directory on the host (0700) holding the links mounted at [`IN_BIN`]. Removed
/// when dropped.
///
/// Its owner holds an exclusive `flock` on [`OWNER_LOCK`] inside it for as long as the directory is in
/// use; the lock passes to a child that inherits the descriptor (the step container's relay server).
/// A directory whose lock can be taken has no owner left and may be swept.
#[derive(Debug)]
pub struct RuntimeDir {
    pub path: PathBuf,
    owner: std::fs::File,
    keep: bool,
}

/// The lock file in every [`RuntimeDir`] (see there).
pub const OWNER_LOCK: &str = "owner.lock";

/// Whether the runtime directory at `path` still has a live owner (its lock is held). Directories
/// without a lock file count as owned by the process whose id ends their name, if that process lives.
pub fn runtime_dir_in_use(path: &Path) -> bool {
    match std::fs::File::open(path.join(OWNER_LOCK)) {
        // SAFETY: flock on a descriptor we own; a taken lock is released when `f` is closed.
        Ok(f) => unsafe {
            use std::os::fd::AsRawFd;
            libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0
        },
        Err(_) => path
            .file_name()
            .and_then(|n| n.to_string_lossy().rsplit('-').next().and_then(|p| p.parse::<u32>().ok()))
            .map(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .unwrap_or(false),
    }
}

impl RuntimeDir {
    pub fn create(tag: &str) -> Result<RuntimeDir, LaunchError> {
        use std::os::unix::fs::{symlink, DirBuilderExt};
        // the effective uid: the user's also when root acts for them (see `identity`)
        let path = runtime_base().join(format!("mpiexec-docker-{}-{tag}", nix::unistd::geteuid()));
        let err = |source| LaunchError::RuntimeDir { path: path.clone(), source };
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(err)?;
        let owner = std::fs::File::create(path.join(OWNER_LOCK)).map_err(err)?;
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on the descriptor just opened.
            if unsafe { libc::flock(owner.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
        }
        let bin = path.join("bin");
        std::fs::DirBuilder::new().mode(0o755).create(&bin).map_err(err)?;
        for name in LINK_NAMES {
            symlink(IN_HELPER, bin.join(name)).map_err(err)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(path.join("relay")).map_err(err)?;
        Ok(RuntimeDir { path, owner, keep: false })
    }

    /// Hands the directory over to another process: returns a descriptor sharing the owner lock (to
    /// be inherited by that process: it is close-on-exec until the child clears that), and this value
    /// no longer removes the directory when dropped.
    pub fn hand_over(mut self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.keep = true;
        Ok(self.owner.try_clone()?.into())
    }

    /// Adopts a directory handed over by [`RuntimeDir::hand_over`]: `owner` is the inherited lock.
    pub fn adopt(path: PathBuf, owner: std::os::fd::OwnedFd) -> RuntimeDir {
        RuntimeDir { path, owner: owner.into(), keep: false }
    }

    pub fn bin(&self) -> PathBuf {
        self.path.join("bin")
    }

    /// The directory of the relay socket, mounted at [`crate::relay::IN_RELAY_DIR`].
    pub fn relay(&self) -> PathBuf {
        self.path.join("relay")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Builds the container for `req`.
pub fn container_spec(
    engine: &Engine,
    config: &Config,
    req: &Request,
    helper: &Path,
    runtime: &RuntimeDir,
    host_env: &[(String, String)],
) -> Result<ContainerSpec, LaunchError> {
    check_image_name(&req.image)?;
    let mut spec = ContainerSpec::new(req.image.clone(), req.command.clone());
    spec.entrypoint = Some(IN_HELPER.into());
    spec.interactive = req.interactive;

    let uid = req.user.uid;
    spec.user = match engine.kind {
        EngineKind::Podman if engine.rootless() => UserMode::KeepId,
        EngineKind::Podman => UserMode::Default,
        EngineKind::Docker if req.user.is_root() => UserMode::Default,
        EngineKind::Docker => UserMode::Ids { uid, gid: req.user.gid, groups: req.user.groups.clone() },
    };
    if engine.kind == EngineKind::Docker {
        // Docker's daemon is root: the container gets the user's ids and no way to more (no
        // capabilities, no setuid gains); root inside stays root's own business
        spec.no_new_privileges = true;
        spec.drop_capabilities = !req.user.is_root();
    }

    // the caller's resource limits, like a bare task (memlock matters for RDMA)
    match engine.kind {
        EngineKind::Podman => spec.ulimits.push(("host".into(), String::new())),
        EngineKind::Docker => {
            if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
                let f = |v: u64| {
                    if v == libc::RLIM_INFINITY {
                        "-1".to_string()
                    } else {
                        v.to_string()
                    }
                };
                spec.ulimits.push(("memlock".into(), format!("{}:{}", f(soft), f(hard))));
            }
        }
    }

    spec.mount(&req.host_dir, HOST_DIR, false);
    spec.workdir = Some(HOST_DIR.into());
    spec.mount(helper, IN_HELPER, true);
    spec.mount(runtime.bin(), IN_BIN, true);
    spec.mount(runtime.relay(), crate::relay::IN_RELAY_DIR, false);
    for m in config.mounts.iter().chain(&req.mounts) {
        spec.mounts.push(Mount::parse_existing(m)?);
    }

    let mut extra = config.env.clone();
    for e in &req.env {
        match e.split_once('=') {
            Some((k, v)) if valid_env_name(k) => spec.env_set.push((k.into(), v.into())),
            None if valid_env_name(e) => extra.push(e.clone()),
            _ => return Err(LaunchError::BadEnv(e.clone())),
        }
    }
    let filter = EnvFilter::new(extra);
    let set_names: Vec<&str> = spec.env_set.iter().map(|(k, _)| k.as_str()).collect();
    spec.env_names = filter
        .select(host_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .into_iter()
        .filter(|n| !set_names.contains(&n.as_str()))
        .collect();
    spec.env_set.push((ENV_IMAGE.into(), req.image.clone()));
    spec.env_set.push((ENV_IN_CONTAINER.into(), "1".into()));

    let gpus = GpuAllocation::from_env(|k| host_env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    spec.devices = devices::discover(&DeviceRoots::system(), &gpus)
        .into_iter()
        .filter(|d| match d.kind {
            DeviceKind::InfiniBand => config.devices.infiniband,
            _ => config.devices.gpus,
        })
        .map(|d| d.path)
        .collect();

    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    spec.name = Some(format!("mpiexec-docker-{host}-{}-{}", std::process::id(), unique_suffix()));
    spec.labels.push((LABEL.into(), "1".into()));
    spec.labels.push((format!("{LABEL}.uid"), uid.to_string()));
    for (var, label) in [("SLURM_JOB_ID", "job"), ("SLURM_STEP_ID", "step")] {
        if let Some((_, v)) = host_env.iter().find(|(k, _)| k == var) {
            spec.labels.push((format!("{LABEL}.{label}"), v.clone()));
        }
    }
    Ok(spec)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unique_suffix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{nanos:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!(check_image_name("localhost/md-openmpi:latest").is_ok());
        assert!(check_image_name("registry.example.org:5000/a/b@sha256:abc").is_ok());
        for bad in ["", "--privileged", "img --privileged", "img\n"] {
            assert!(check_image_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("OMP_NUM_THREADS"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
    }

    #[test]
    fn runtime_dir_holds_links_and_goes_away() {
        let dir = RuntimeDir::create("unit-test").unwrap();
        let path = dir.path.clone();
        for name in LINK_NAMES {
            assert_eq!(std::fs::read_link(dir.bin().join(name)).unwrap(), PathBuf::from(IN_HELPER));
        }
        assert!(runtime_dir_in_use(&path));
        drop(dir);
        assert!(!path.exists());
        assert!(!runtime_dir_in_use(&path));
    }
}
