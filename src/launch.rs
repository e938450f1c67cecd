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
use crate::devices::{DeviceRoots, GpuAllocation};
use crate::engine::Engine;
use crate::engine::EngineKind;
use crate::environment::EnvFilter;
use crate::identity::UserIds;
use crate::runtime_dir::RuntimeDir;

pub use crate::layout::{ENV_IMAGE, ENV_IN_CONTAINER, HOST_DIR, IN_BIN, IN_HELPER, LABEL, LINK_NAMES};

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("image '{0}' is not a valid image name (it may not be empty, start with '-' or contain spaces)")]
    BadImage(String),
    #[error("--env '{0}': write NAME or NAME=VALUE")]
    BadEnv(String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::CdiError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
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
    /// `--mount SRC:DST[:FLAGS]` from the command line (relative sources already made absolute).
    pub mounts: Vec<String>,
    pub interactive: bool,
    /// Whose container it is: the caller, or the job's user when the helper runs as root for them.
    pub user: UserIds,
    /// The `devices.list` of the step's device cgroup (Slurm's record of what the step may open),
    /// when the helper is not in it itself (root acting for a user); else this process's own.
    pub devices_list: Option<PathBuf>,
    /// The GPUs asked for (`--gpus`), within what Slurm allocated; `None`: all of those.
    pub gpus: Option<GpuAllocation>,
}

/// The in-container command for `mode` ("mpiexec" or "exec") and its arguments.
pub fn in_container_command(mode: &str, args: &[String]) -> Vec<String> {
    let mut c = vec!["in-container".to_string(), mode.to_string()];
    c.extend(args.iter().cloned());
    c
}

/// Builds the container for `req` (the helper's own runs: the current directory at [`HOST_DIR`]).
pub fn container_spec(
    engine: &Engine,
    config: &Config,
    req: &Request,
    helper: &Path,
    runtime: &RuntimeDir,
    host_env: &[(String, String)],
) -> Result<ContainerSpec, LaunchError> {
    let mut spec = base_spec(engine, config, req, helper, runtime, host_env)?;
    spec.interactive = req.interactive;
    spec.mounts.insert(0, Mount::bind(req.host_dir.clone(), HOST_DIR, false));
    spec.apply_unmounts(&[
        Path::new(HOST_DIR),
        Path::new(IN_HELPER),
        Path::new(IN_BIN),
        Path::new(crate::layout::IN_RELAY_DIR),
    ])?;
    spec.workdir = Some(HOST_DIR.into());
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    spec.name = Some(format!("mpiexec-docker-{host}-{}-{}", std::process::id(), unique_suffix()));
    for (var, label) in [("SLURM_JOB_ID", "job"), ("SLURM_STEP_ID", "step")] {
        if let Some((_, v)) = host_env.iter().find(|(k, _)| k == var) {
            spec.labels.push((format!("{LABEL}.{label}"), v.clone()));
        }
    }
    Ok(spec)
}

/// What every container of ours has, whatever runs it (the helper's own runs, a step's container):
/// the helper as entry point with its links and relay directory, the user's ids and no way to more,
/// the caller's limits, the mounts asked for (`req.mounts`, after the config's), the environment
/// passed in, the devices of the allocation, and our labels. `req.host_dir`, `req.interactive` and
/// the name are the caller's to apply.
pub fn base_spec(
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

    spec.mount(helper, IN_HELPER, true);
    spec.mount(runtime.bin(), IN_BIN, true);
    spec.mount(runtime.relay(), crate::layout::IN_RELAY_DIR, false);
    for m in config.mounts.iter().chain(&req.mounts) {
        let Some(m) = Mount::parse_existing(m)? else { continue };
        if engine.kind == EngineKind::Docker {
            if let Some(flag) = crate::engine::docker_refuses(&m) {
                return Err(MountError::NotWithDocker { spec: m.to_string(), flag: flag.into() }.into());
            }
        }
        spec.mounts.push(m);
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

    let mut gpus = GpuAllocation::from_env(|k| host_env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    if let Some(asked) = &req.gpus {
        gpus = gpus.narrowed(asked);
    }
    // the GPU list from the job's environment is only ever narrowed by the device cgroup
    let mut roots = DeviceRoots::system();
    if let Some(list) = &req.devices_list {
        roots.cgroup_devices_list = Some(list.clone());
    }
    crate::device_choice::apply(&mut spec, engine, config, &roots, &gpus)?;

    spec.labels.push((LABEL.into(), "1".into()));
    spec.labels.push((format!("{LABEL}.uid"), uid.to_string()));
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
}
