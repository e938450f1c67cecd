//! One container run, described as data ([`ContainerSpec`]); the engine's command line for it is
//! [`crate::engine::run_args`]. Pure: nothing here starts anything, so every rule is unit-tested.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// A bind mount `SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountError {
    #[error("mount '{0}': write SRC:DST[:ro|rw] with absolute paths")]
    Syntax(String),
    #[error("mount '{spec}': unknown flag '{flag}' (use ro or rw)")]
    Flag { spec: String, flag: String },
    #[error("mount '{spec}': {src} does not exist on this host")]
    Missing { spec: String, src: String },
    #[error("mount '{spec}': you may not read {src}; mount only what you can read")]
    Unreadable { spec: String, src: String },
}

impl Mount {
    /// Parses `SRC:DST[:FLAGS]` (pyxis syntax; `SRC` alone mounts at the same path). Paths must be
    /// absolute and may not carry engine options (no `,` or `=` tricks: each part is a plain path).
    pub fn parse(spec: &str) -> Result<Mount, MountError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, flags) = match parts.as_slice() {
            [src] => (*src, *src, ""),
            [src, dst] => (*src, *dst, ""),
            [src, dst, flags] => (*src, *dst, *flags),
            _ => return Err(MountError::Syntax(spec.into())),
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(MountError::Syntax(spec.into()));
        }
        let mut readonly = false;
        for flag in flags.split(['+', ',']).filter(|f| !f.is_empty()) {
            match flag {
                "ro" => readonly = true,
                "rw" => readonly = false,
                other => return Err(MountError::Flag { spec: spec.into(), flag: other.into() }),
            }
        }
        Ok(Mount { src: src.into(), dst: dst.into(), readonly })
    }

    /// Like [`Mount::parse`], and the source must exist.
    pub fn parse_existing(spec: &str) -> Result<Mount, MountError> {
        let m = Mount::parse(spec)?;
        if !m.src.exists() {
            return Err(MountError::Missing { spec: spec.into(), src: m.src.display().to_string() });
        }
        // a mount must not give the container what its user could not read on the host (an engine
        // daemon running as root would bind anything); checked with the effective ids, which are the
        // user's also when the helper acts for them as root (see `identity`)
        let readable =
            nix::unistd::faccessat(None, &m.src, nix::unistd::AccessFlags::R_OK, nix::fcntl::AtFlags::AT_EACCESS);
        if readable.is_err() {
            return Err(MountError::Unreadable { spec: spec.into(), src: m.src.display().to_string() });
        }
        Ok(m)
    }
}

/// Who the processes run as inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserMode {
    /// The engine's default (root in the image; with rootless Podman that is the caller, mapped).
    Default,
    /// Rootless Podman: keep the caller's uid/gid inside (`--userns=keep-id`).
    KeepId,
    /// Run as this uid:gid with these supplementary groups (Docker, or rootful Podman for a user).
    Ids { uid: u32, gid: u32, groups: Vec<u32> },
}

/// Everything one container run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Variables passed by name: the engine copies their values from its own environment.
    pub env_names: Vec<String>,
    /// Variables set to a value.
    pub env_set: Vec<(String, String)>,
    /// Device nodes: `PATH` (the same path inside) or `HOST:CONTAINER`.
    pub devices: Vec<PathBuf>,
    /// CDI devices (`vendor.com/class=NAME`), which the engine applies from the node's specs.
    pub cdi_devices: Vec<String>,
    /// What the devices set in the container's environment (the CDI specs' variables, less Slurm's
    /// GPU binding ones): not a command-line item (the engine or `env_set` sets them in the
    /// container), but what processes that join the container later (a step's tasks) must be given.
    pub device_env: Vec<(String, String)>,
    /// A line for the user about the devices (GPUs passed without their driver's libraries).
    pub device_notice: Option<String>,
    pub user: UserMode,
    /// Share the host's network, IPC and PID namespaces (what MPI needs between ranks and nodes).
    pub host_namespaces: bool,
    /// `--ulimit` values, e.g. ("memlock", "-1:-1"), or ("host", "") for Podman's copy of ours.
    pub ulimits: Vec<(String, String)>,
    pub interactive: bool,
    pub tty: bool,
    pub remove: bool,
    /// Start in the background and print the container id (`--detach`).
    pub detach: bool,
    /// Read-only root file system (`--read-only`).
    pub read_only: bool,
    /// Where Podman writes the container's process id (`--pidfile`; Docker has no such option).
    pub pidfile: Option<std::path::PathBuf>,
    /// Keep this many file descriptors above stdio open in the container (Podman `--preserve-fds`).
    pub preserve_fds: u32,
    pub entrypoint: Option<String>,
    /// `--security-opt no-new-privileges`: no setuid or file capability gains privilege inside.
    pub no_new_privileges: bool,
    /// `--cap-drop ALL`: the container's processes have no capabilities at all.
    pub drop_capabilities: bool,
    /// `--cgroup-parent`: the cgroup the container's own cgroup is made under (the Slurm step's).
    pub cgroup_parent: Option<String>,
    pub command: Vec<String>,
}

impl ContainerSpec {
    pub fn new(image: impl Into<String>, command: Vec<String>) -> Self {
        ContainerSpec {
            image: image.into(),
            name: None,
            labels: Vec::new(),
            workdir: None,
            mounts: Vec::new(),
            env_names: Vec::new(),
            env_set: Vec::new(),
            devices: Vec::new(),
            cdi_devices: Vec::new(),
            device_env: Vec::new(),
            device_notice: None,
            user: UserMode::Default,
            host_namespaces: true,
            ulimits: Vec::new(),
            interactive: false,
            tty: false,
            remove: true,
            detach: false,
            pidfile: None,
            read_only: false,
            preserve_fds: 0,
            entrypoint: None,
            no_new_privileges: false,
            drop_capabilities: false,
            cgroup_parent: None,
            command,
        }
    }

    pub fn mount(&mut self, src: impl AsRef<Path>, dst: impl AsRef<Path>, readonly: bool) {
        self.mounts.push(Mount { src: src.as_ref().into(), dst: dst.as_ref().into(), readonly });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_syntax() {
        assert_eq!(
            Mount::parse("/scratch:/data:ro").unwrap(),
            Mount { src: "/scratch".into(), dst: "/data".into(), readonly: true }
        );
        assert_eq!(Mount::parse("/apps").unwrap().dst, PathBuf::from("/apps"));
        assert!(matches!(Mount::parse("scratch:/data"), Err(MountError::Syntax(_))));
        assert!(matches!(Mount::parse("/a:/b:rw:x"), Err(MountError::Syntax(_))));
        assert!(matches!(Mount::parse("/a:/b:exec"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse_existing("/nonexistent-mdt:/x"), Err(MountError::Missing { .. })));
    }
}
