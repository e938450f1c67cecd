//! One container run, described as data ([`ContainerSpec`]) and turned into the engine's command line
//! ([`run_args`]). Pure: nothing here starts anything, so every rule is unit-tested.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::engine::EngineKind;

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

    /// Docker's `--mount type=bind,…`: fields with a comma or a quote are quoted (its CSV syntax).
    fn mount_arg(&self) -> String {
        let field = |k: &str, v: &Path| {
            let f = format!("{k}={}", v.display());
            if f.contains([',', '"']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        };
        let mut s = format!("type=bind,{},{}", field("source", &self.src), field("target", &self.dst));
        if self.readonly {
            s.push_str(",readonly");
        }
        s
    }

    fn volume_arg(&self) -> String {
        let mut s = format!("{}:{}", self.src.display(), self.dst.display());
        if self.readonly {
            s.push_str(":ro");
        }
        s
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
    pub devices: Vec<PathBuf>,
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

/// The engine command line (without the engine binary itself) for `spec`.
pub fn run_args(engine: EngineKind, spec: &ContainerSpec) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v);
    };
    if let Some(name) = &spec.name {
        push("--name", name.clone());
    }
    for (k, v) in &spec.labels {
        push("--label", format!("{k}={v}"));
    }
    if spec.host_namespaces {
        push("--network", "host".into());
        push("--ipc", "host".into());
        push("--pid", "host".into());
    }
    match &spec.user {
        UserMode::Default => {}
        UserMode::KeepId => push("--userns", "keep-id".into()),
        UserMode::Ids { uid, gid, groups } => {
            push("--user", format!("{uid}:{gid}"));
            for g in groups {
                push("--group-add", g.to_string());
            }
        }
    }
    if spec.no_new_privileges {
        push("--security-opt", "no-new-privileges".into());
    }
    if spec.drop_capabilities {
        push("--cap-drop", "ALL".into());
    }
    if let Some(parent) = &spec.cgroup_parent {
        push("--cgroup-parent", parent.clone());
    }
    for (k, v) in &spec.ulimits {
        // an empty value is a keyword of its own (Podman's `--ulimit host`)
        push("--ulimit", if v.is_empty() { k.clone() } else { format!("{k}={v}") });
    }
    for m in &spec.mounts {
        match engine {
            // Docker's daemon creates a missing `--volume` source, as root: `--mount` never does
            EngineKind::Docker => push("--mount", m.mount_arg()),
            EngineKind::Podman => push("--volume", m.volume_arg()),
        }
    }
    for d in &spec.devices {
        push("--device", d.display().to_string());
    }
    for name in &spec.env_names {
        push("--env", name.clone());
    }
    for (k, v) in &spec.env_set {
        push("--env", format!("{k}={v}"));
    }
    if let Some(w) = &spec.workdir {
        push("--workdir", w.display().to_string());
    }
    if let Some(e) = &spec.entrypoint {
        push("--entrypoint", e.clone());
    }
    if spec.preserve_fds > 0 && engine == EngineKind::Podman {
        push("--preserve-fds", spec.preserve_fds.to_string());
    }
    // an image's HEALTHCHECK would have the engine run processes in the container from outside the
    // job (the daemon's or a timer's), beyond Slurm's cgroup, accounting and cleanup
    a.push("--no-healthcheck".into());
    if spec.remove {
        a.push("--rm".into());
    }
    if spec.detach {
        a.push("--detach".into());
    }
    if spec.read_only {
        a.push("--read-only".into());
    }
    if let (Some(p), EngineKind::Podman) = (&spec.pidfile, engine) {
        a.push("--pidfile".into());
        a.push(p.display().to_string());
    }
    if spec.interactive {
        a.push("--interactive".into());
    }
    if spec.tty {
        a.push("--tty".into());
    }
    // no engine option can follow: the image and the command are positional from here on
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    a
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

    #[test]
    fn podman_command_line() {
        let mut spec = ContainerSpec::new("localhost/md-openmpi", vec!["mpiexec".into(), "-n".into(), "2".into()]);
        spec.name = Some("md-1".into());
        spec.labels.push(("mpiexec-docker".into(), "1".into()));
        spec.user = UserMode::KeepId;
        spec.mount("/home/u/run", "/host", false);
        spec.workdir = Some("/host".into());
        spec.env_names.push("SLURM_JOB_ID".into());
        spec.env_set.push(("MPIEXEC_DOCKER_IMAGE".into(), "localhost/md-openmpi".into()));
        spec.devices.push("/dev/infiniband/uverbs0".into());
        spec.ulimits.push(("memlock".into(), "-1:-1".into()));
        spec.interactive = true;
        let a = run_args(EngineKind::Podman, &spec).join(" ");
        assert_eq!(
            a,
            "run --name md-1 --label mpiexec-docker=1 --network host --ipc host --pid host --userns keep-id \
             --ulimit memlock=-1:-1 --volume /home/u/run:/host --device /dev/infiniband/uverbs0 \
             --env SLURM_JOB_ID --env MPIEXEC_DOCKER_IMAGE=localhost/md-openmpi --workdir /host --no-healthcheck --rm \
             --interactive localhost/md-openmpi mpiexec -n 2"
        );
    }

    #[test]
    fn docker_user_ids_and_no_preserve_fds() {
        let mut spec = ContainerSpec::new("img", vec!["true".into()]);
        spec.user = UserMode::Ids { uid: 1500, gid: 1500, groups: vec![27] };
        spec.preserve_fds = 1;
        spec.host_namespaces = false;
        let a = run_args(EngineKind::Docker, &spec).join(" ");
        assert_eq!(a, "run --user 1500:1500 --group-add 27 --no-healthcheck --rm img true");
        spec.no_new_privileges = true;
        spec.drop_capabilities = true;
        spec.cgroup_parent = Some("/slurm_node1/uid_1500/job_7/step_0".into());
        let a = run_args(EngineKind::Docker, &spec).join(" ");
        assert_eq!(
            a,
            "run --user 1500:1500 --group-add 27 --security-opt no-new-privileges --cap-drop ALL \
             --cgroup-parent /slurm_node1/uid_1500/job_7/step_0 --no-healthcheck --rm img true"
        );
        assert!(run_args(EngineKind::Podman, &spec).join(" ").contains("--preserve-fds 1"));
    }
}
