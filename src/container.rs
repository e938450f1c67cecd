//! One container run, described as data ([`ContainerSpec`]); the engine's command line for it is
//! [`crate::engine::run_args`]. Pure: nothing here starts anything, so every rule is unit-tested.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a mount is: a host path bound in, a fresh tmpfs, or the removal of a mount that would
/// otherwise be there (pyxis's `tmpfs` and `umount` sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Tmpfs,
    Umount,
}

/// A mount as pyxis writes it: `SRC:DST[:FLAGS]`, flags joined by `+` (or `,` in our own files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// The host path (`Bind`); empty for `Tmpfs` and `Umount`.
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
    /// Flags beyond `ro`/`rw`, as mount(8) spells them: propagation, `bind`/`rbind`, `nosuid`…
    /// for a bind; `size=`, `mode=`, `nr_inodes=`, `nosuid`… for a tmpfs.
    pub flags: Vec<String>,
    /// `nofail`: a bind whose source does not exist is left out instead of failing.
    pub nofail: bool,
}

/// Bind flags every engine applies (Docker's `--mount` only the propagation and `bind`/`rbind`).
const BIND_FLAGS: &[&str] = &[
    "bind",
    "rbind",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
    "nosuid",
    "nodev",
    "noexec",
    "suid",
    "dev",
    "exec",
];
/// Flags a tmpfs takes without a value.
const TMPFS_FLAGS: &[&str] = &["nosuid", "nodev", "noexec", "suid", "dev", "exec"];
/// Flags a tmpfs takes with a value (`size=1g`, `mode=1777`).
const TMPFS_KEYS: &[&str] = &["size", "mode", "nr_inodes"];
/// Propagation flags, which Docker's `--mount` takes as `bind-propagation=`.
pub const PROPAGATION: &[&str] = &["private", "rprivate", "shared", "rshared", "slave", "rslave"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountError {
    #[error(
        "mount '{0}': write SRC:DST[:FLAGS] (SRC an absolute or ./relative path, tmpfs or umount; flags joined by +)"
    )]
    Syntax(String),
    #[error("mount '{spec}': unknown flag '{flag}' (bind: ro, rw, [r]bind, [r]private, [r]shared, [r]slave, [r]unbindable, nosuid, nodev, noexec, nofail; tmpfs: ro, size=, mode=, nr_inodes=, nosuid, nodev, noexec)")]
    Flag { spec: String, flag: String },
    #[error("mount '{spec}': the target may not contain '..' (it would leave the container's file system)")]
    Escape { spec: String },
    #[error("mount '{spec}': {src} does not exist on this host")]
    Missing { spec: String, src: String },
    #[error("mount '{spec}': you may not read {src}; mount only what you can read")]
    Unreadable { spec: String, src: String },
    #[error("mount 'umount:{dst}': nothing is mounted at {dst} (umount removes a mount the site or mpiexec-docker adds, e.g. /tmp)")]
    NothingToUnmount { dst: String },
    #[error("mount 'umount:{dst}': {dst} is mpiexec-docker's own mount and cannot be removed")]
    Protected { dst: String },
    #[error("mount '{spec}': Docker cannot apply the flag '{flag}' (use Podman, or leave the flag out)")]
    NotWithDocker { spec: String, flag: String },
}

/// `path` made absolute against `base` (a relative path is one that starts with `.`).
fn absolute(path: &str, base: &Path) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        let mut p = base.to_path_buf();
        for c in Path::new(path).components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    p.pop();
                }
                other => p.push(other),
            }
        }
        p
    }
}

impl Mount {
    /// A plain bind mount.
    pub fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool) -> Mount {
        Mount { kind: MountKind::Bind, src: src.into(), dst: dst.into(), readonly, flags: Vec::new(), nofail: false }
    }

    /// Parses `SRC:DST[:FLAGS]` (pyxis's syntax; `SRC` alone mounts at the same path). `SRC` is an
    /// absolute path, a relative one starting with `.` (made absolute against `base`, the job's or
    /// the caller's directory), `tmpfs` or `umount`. `DST` is absolute, or relative to the
    /// container's `/`, and never leaves it. Flags are joined by `+` (pyxis) or `,`. Each part is a
    /// plain path: no engine option can be smuggled in.
    pub fn parse_in(spec: &str, base: &Path) -> Result<Mount, MountError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, flags) = match parts.as_slice() {
            [src] => (*src, *src, ""),
            [src, dst] => (*src, *dst, ""),
            [src, dst, flags] => (*src, *dst, *flags),
            _ => return Err(MountError::Syntax(spec.into())),
        };
        let kind = match src {
            "tmpfs" => MountKind::Tmpfs,
            "umount" => MountKind::Umount,
            s if s.starts_with('/') || s.starts_with('.') => MountKind::Bind,
            _ => return Err(MountError::Syntax(spec.into())),
        };
        if dst.is_empty() || !(dst.starts_with('/') || dst.starts_with('.')) || (kind != MountKind::Bind && src == dst)
        {
            return Err(MountError::Syntax(spec.into()));
        }
        // (a comma would end the target in the engines' `--tmpfs DST:OPTIONS`)
        if kind == MountKind::Tmpfs && dst.contains(',') {
            return Err(MountError::Syntax(spec.into()));
        }
        if Path::new(dst).components().any(|c| c == std::path::Component::ParentDir) {
            return Err(MountError::Escape { spec: spec.into() });
        }
        let dst = absolute(dst, Path::new("/"));
        let src = if kind == MountKind::Bind { absolute(src, base) } else { PathBuf::new() };
        let mut m = Mount { kind, src, dst, readonly: false, flags: Vec::new(), nofail: false };
        for flag in flags.split(['+', ',']).filter(|f| !f.is_empty()) {
            let key = flag.split_once('=').map(|(k, _)| k);
            let value_ok = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric());
            match (kind, flag) {
                (MountKind::Umount, _) => return Err(MountError::Flag { spec: spec.into(), flag: flag.into() }),
                (_, "ro") => m.readonly = true,
                (_, "rw") => m.readonly = false,
                // what enroot's own entries carry: the engines make the target themselves
                (_, f) if f.starts_with("x-create=") => {}
                (MountKind::Bind, "nofail") => m.nofail = true,
                (MountKind::Bind, f) if BIND_FLAGS.contains(&f) => m.flags.push(f.into()),
                (MountKind::Tmpfs, f) if TMPFS_FLAGS.contains(&f) => m.flags.push(f.into()),
                (MountKind::Tmpfs, f)
                    if key.is_some_and(|k| TMPFS_KEYS.contains(&k)) && value_ok(&f[key.unwrap_or("").len() + 1..]) =>
                {
                    m.flags.push(f.into())
                }
                _ => return Err(MountError::Flag { spec: spec.into(), flag: flag.into() }),
            }
        }
        Ok(m)
    }

    /// Its mount options as the engines take them: `ro` when read-only, then the flags.
    pub fn options(&self) -> Vec<&str> {
        self.readonly.then_some("ro").into_iter().chain(self.flags.iter().map(String::as_str)).collect()
    }

    /// Whether it asks for mount propagation (`[r]shared`, `[r]slave`).
    pub fn propagates(&self) -> bool {
        self.flags.iter().any(|f| f.ends_with("shared") || f.ends_with("slave"))
    }

    /// [`Mount::parse_in`] where relative sources are relative to the current directory.
    pub fn parse(spec: &str) -> Result<Mount, MountError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Mount::parse_in(spec, &base)
    }

    /// Like [`Mount::parse`], and a bind's source must exist and be readable; `None`: a `nofail`
    /// bind whose source is not there.
    pub fn parse_existing(spec: &str) -> Result<Option<Mount>, MountError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Mount::parse_existing_in(spec, &base)
    }

    /// [`Mount::parse_existing`] with relative sources relative to `base`.
    pub fn parse_existing_in(spec: &str, base: &Path) -> Result<Option<Mount>, MountError> {
        let m = Mount::parse_in(spec, base)?;
        if m.kind != MountKind::Bind {
            return Ok(Some(m));
        }
        if !m.src.exists() {
            if m.nofail {
                return Ok(None);
            }
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
        Ok(Some(m))
    }
}

/// Written back in the syntax [`Mount::parse`] reads (relative paths already made absolute).
impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            MountKind::Bind => write!(f, "{}:{}", self.src.display(), self.dst.display())?,
            MountKind::Tmpfs => write!(f, "tmpfs:{}", self.dst.display())?,
            MountKind::Umount => return write!(f, "umount:{}", self.dst.display()),
        }
        let mut flags = self.options();
        if self.nofail {
            flags.push("nofail");
        }
        if !flags.is_empty() {
            write!(f, ":{}", flags.join("+"))?;
        }
        Ok(())
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
    /// Namespaces the container has of its own nonetheless (`--container-unshare`): `net` (only
    /// loopback), `ipc`, `uts` (its own host name).
    pub unshare: Vec<String>,
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
            unshare: Vec::new(),
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
        self.mounts.push(Mount::bind(src.as_ref(), dst.as_ref(), readonly));
    }

    /// Carries out the `umount:DST` entries among the mounts: each removes the other mounts at DST
    /// (the site's, ours such as `/tmp`); one that removes nothing, or would remove one of
    /// `protected` (what mpiexec-docker itself needs), is an error.
    pub fn apply_unmounts(&mut self, protected: &[&Path]) -> Result<(), MountError> {
        while let Some(i) = self.mounts.iter().position(|m| m.kind == MountKind::Umount) {
            let dst = self.mounts.remove(i).dst;
            let shown = dst.display().to_string();
            if protected.iter().any(|p| *p == dst) {
                return Err(MountError::Protected { dst: shown });
            }
            let before = self.mounts.len();
            self.mounts.retain(|m| m.dst != dst);
            if self.mounts.len() == before {
                return Err(MountError::NothingToUnmount { dst: shown });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_syntax() {
        assert_eq!(Mount::parse("/scratch:/data:ro").unwrap(), Mount::bind("/scratch", "/data", true));
        assert_eq!(Mount::parse("/apps").unwrap().dst, PathBuf::from("/apps"));
        assert!(matches!(Mount::parse("scratch:/data"), Err(MountError::Syntax(_))));
        assert!(matches!(Mount::parse("/a:/b:rw:x"), Err(MountError::Syntax(_))));
        assert!(matches!(Mount::parse("/a:/b:exec=1"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse("/a:/b:ro,--privileged"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse_existing("/nonexistent-mdt:/x"), Err(MountError::Missing { .. })));
        assert_eq!(Mount::parse_existing("/nonexistent-mdt:/x:nofail").unwrap(), None);
    }

    #[test]
    fn pyxis_flags_relative_paths_tmpfs_and_umount() {
        let m = Mount::parse_in("./data:/d:ro+rprivate+nosuid", Path::new("/home/u/job")).unwrap();
        assert_eq!(
            (m.src.as_path(), m.dst.as_path(), m.readonly),
            (Path::new("/home/u/job/data"), Path::new("/d"), true)
        );
        assert_eq!(m.flags, ["rprivate", "nosuid"]);
        assert_eq!(m.to_string(), "/home/u/job/data:/d:ro+rprivate+nosuid");
        assert_eq!(Mount::parse(&m.to_string()).unwrap(), m);
        let up = Mount::parse_in("../shared:/s", Path::new("/home/u/job")).unwrap();
        assert_eq!(up.src, PathBuf::from("/home/u/shared"));
        assert_eq!(Mount::parse_in(".", Path::new("/w")).unwrap().src, PathBuf::from("/w"));
        assert_eq!(Mount::parse("/a:./b").unwrap().dst, PathBuf::from("/b"));
        assert!(matches!(Mount::parse("/home:../home"), Err(MountError::Escape { .. })));
        assert!(matches!(Mount::parse("/a:/b/../../etc"), Err(MountError::Escape { .. })));
        let t = Mount::parse("tmpfs:/scratch:size=64m+mode=1777+noexec").unwrap();
        assert_eq!((t.kind, t.flags.len()), (MountKind::Tmpfs, 3));
        assert_eq!(t.to_string(), "tmpfs:/scratch:size=64m+mode=1777+noexec");
        assert!(matches!(Mount::parse("tmpfs:/s:size=1g;x"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse("tmpfs:/s:rprivate"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse("tmpfs"), Err(MountError::Syntax(_))));
        assert!(matches!(Mount::parse("umount:/tmp:ro"), Err(MountError::Flag { .. })));
        assert!(matches!(Mount::parse("data:/x"), Err(MountError::Syntax(_))));
    }

    #[test]
    fn unmounts_remove_earlier_mounts_and_never_ours() {
        let mut spec = ContainerSpec::new("img", vec![]);
        spec.mount("/usr/local/bin/mpiexec_docker", "/.md/helper", true);
        spec.mount("/apps", "/apps", true);
        spec.mounts.push(Mount::parse("umount:/apps").unwrap());
        spec.mount("/tmp", "/tmp", false);
        spec.apply_unmounts(&[Path::new("/.md/helper")]).unwrap();
        assert_eq!(spec.mounts.iter().map(|m| m.dst.to_str().unwrap()).collect::<Vec<_>>(), ["/.md/helper", "/tmp"]);
        spec.mounts.push(Mount::parse("umount:/tmp").unwrap());
        spec.apply_unmounts(&[]).unwrap();
        assert_eq!(spec.mounts.len(), 1);
        spec.mounts.push(Mount::parse("umount:/nothing").unwrap());
        assert!(matches!(spec.apply_unmounts(&[]), Err(MountError::NothingToUnmount { .. })));
        spec.mounts.push(Mount::parse("umount:/.md/helper").unwrap());
        assert!(matches!(spec.apply_unmounts(&[Path::new("/.md/helper")]), Err(MountError::Protected { .. })));
    }
}
