//! Which host devices go into the container: InfiniBand (`/dev/infiniband/*`) and GPUs (NVIDIA
//! `/dev/nvidia*`, AMD `/dev/kfd` and `/dev/dri/renderD*`), limited to what the job may use.
//!
//! Two limits apply, both optional:
//! - the **allocation**: Slurm names the GPUs of a step in `SLURM_STEP_GPUS` (`SLURM_JOB_GPUS` for the
//!   batch step; `GPU_DEVICE_ORDINAL` otherwise) as indexes of the node's GPUs; only those GPUs go in.
//! - the **device cgroup** (cgroup v1 `devices.list`, written by Slurm's `ConstrainDevices=yes`): a
//!   device whose major:minor the cgroup does not allow is left out.
//!
//! Discovery takes its roots as parameters ([`DeviceRoots`]) so that tests build fake device trees.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where to look.
#[derive(Debug, Clone)]
pub struct DeviceRoots {
    /// The device directory (`/dev`).
    pub dev: PathBuf,
    /// The `devices.list` of the caller's device cgroup, when there is one.
    pub cgroup_devices_list: Option<PathBuf>,
}

impl DeviceRoots {
    /// The real system: `/dev` and this process's cgroup v1 devices controller, if any.
    pub fn system() -> Self {
        DeviceRoots {
            dev: "/dev".into(),
            cgroup_devices_list: own_devices_list(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup/devices")),
        }
    }
}

/// Finds `<mount>/<path>/devices.list` for the `devices` line of a `/proc/PID/cgroup` file.
pub fn own_devices_list(proc_cgroup: &Path, devices_mount: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(proc_cgroup).ok()?;
    let path = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers.split(',').any(|c| c == "devices").then(|| path.to_string())
    })?;
    let file = devices_mount.join(path.trim_start_matches('/')).join("devices.list");
    file.is_file().then_some(file)
}

/// What a device is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceKind {
    InfiniBand,
    /// `/dev/nvidiaN`
    NvidiaGpu(u32),
    /// `/dev/nvidiactl`, `/dev/nvidia-uvm`, … (needed by every NVIDIA GPU)
    NvidiaControl,
    /// `/dev/kfd` (needed by every AMD GPU)
    AmdKfd,
    /// `/dev/dri/renderD(128+N)`
    AmdRender(u32),
}

/// A device to pass in, at the same path inside the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub kind: DeviceKind,
    pub path: PathBuf,
}

impl Device {
    /// A GPU itself (not its control nodes, not a NIC).
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::NvidiaGpu(_) | DeviceKind::AmdRender(_))
    }
}

/// The variables with which Slurm binds each task to its GPUs: never set from elsewhere.
pub const SLURM_GPU_BINDING: &[&str] =
    &["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ZE_AFFINITY_MASK"];

/// The GPUs a job may use, as node-local indexes; `None` when no allocation says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuAllocation(pub Option<BTreeSet<u32>>);

impl GpuAllocation {
    /// From Slurm's environment: `SLURM_STEP_GPUS`, then `SLURM_JOB_GPUS`, then `GPU_DEVICE_ORDINAL`.
    /// An empty or unparsable value means "none".
    pub fn from_env<F: Fn(&str) -> Option<String>>(get: F) -> Self {
        for var in ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL"] {
            if let Some(value) = get(var) {
                return GpuAllocation(Some(parse_index_list(&value)));
            }
        }
        GpuAllocation(None)
    }

    /// What `asked` leaves of this allocation (an unconstrained one becomes `asked`).
    pub fn narrowed(&self, asked: &GpuAllocation) -> GpuAllocation {
        match (&self.0, &asked.0) {
            (Some(have), Some(want)) => GpuAllocation(Some(have.intersection(want).copied().collect())),
            (None, want) => GpuAllocation(want.clone()),
            (have, None) => GpuAllocation(have.clone()),
        }
    }

    /// `--gpus`: `all`, `none`, or a list of the node's GPU indexes (`0,2-3`).
    pub fn parse_request(text: &str) -> Result<GpuAllocation, String> {
        match text.trim() {
            "all" => Ok(GpuAllocation(None)),
            "none" | "" => Ok(GpuAllocation(Some(BTreeSet::new()))),
            list => {
                let ok = list.split(',').all(|p| {
                    let p = p.trim();
                    match p.split_once('-') {
                        Some((a, b)) => a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok(),
                        None => p.parse::<u32>().is_ok(),
                    }
                });
                match ok {
                    true => Ok(GpuAllocation(Some(parse_index_list(list)))),
                    false => Err(format!("--gpus '{text}': write all, none, or GPU indexes such as 0,2-3")),
                }
            }
        }
    }

    fn allows(&self, index: u32) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(&index))
    }

    fn allows_any(&self) -> bool {
        self.0.as_ref().is_none_or(|set| !set.is_empty())
    }
}

/// "0,2-3" → {0, 2, 3}; anything unparsable is skipped.
pub fn parse_index_list(text: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    set.extend(a..=b.min(a.saturating_add(4096)));
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    set.insert(n);
                }
            }
        }
    }
    set
}

/// Rules of a cgroup v1 `devices.list`: `type major:minor access`, `*` as a wildcard.
#[derive(Debug, Clone)]
pub struct DeviceCgroup {
    rules: Vec<(char, Option<u64>, Option<u64>)>,
}

impl DeviceCgroup {
    pub fn parse(text: &str) -> Self {
        let num = |s: &str| if s == "*" { None } else { s.parse().ok() };
        let rules = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let kind = w.next()?.chars().next()?;
                let (maj, min) = w.next()?.split_once(':')?;
                Some((kind, num(maj), num(min)))
            })
            .collect();
        DeviceCgroup { rules }
    }

    /// Whether a character device major:minor is allowed.
    pub fn allows_char(&self, major: u64, minor: u64) -> bool {
        self.rules.iter().any(|&(kind, maj, min)| {
            (kind == 'a' || kind == 'c') && maj.is_none_or(|m| m == major) && min.is_none_or(|m| m == minor)
        })
    }
}

/// The major and minor number of a character device node (`None`: missing or not a character device).
pub fn char_device(path: &Path) -> Option<(u64, u64)> {
    let meta = fs::metadata(path).ok()?;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some((libc::major(rdev) as u64, libc::minor(rdev) as u64))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).map(|it| it.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Finds the devices to pass in under `roots`, limited by `gpus` and the device cgroup.
pub fn discover(roots: &DeviceRoots, gpus: &GpuAllocation) -> Vec<Device> {
    let cgroup =
        roots.cgroup_devices_list.as_ref().and_then(|p| fs::read_to_string(p).ok()).map(|t| DeviceCgroup::parse(&t));
    let allowed = |path: &Path| match (&cgroup, char_device(path)) {
        (Some(cg), Some((maj, min))) => cg.allows_char(maj, min),
        (Some(_), None) => false, // not a character device: nothing to pass
        (None, _) => path.exists(),
    };
    let mut found = Vec::new();

    for path in sorted_entries(&roots.dev.join("infiniband")) {
        if allowed(&path) {
            found.push(Device { kind: DeviceKind::InfiniBand, path });
        }
    }

    let mut nvidia_gpus = Vec::new();
    let mut nvidia_ctl = Vec::new();
    for path in sorted_entries(&roots.dev) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("nvidia") else {
            continue;
        };
        if let Ok(index) = rest.parse::<u32>() {
            if gpus.allows(index) && allowed(&path) {
                nvidia_gpus.push(Device { kind: DeviceKind::NvidiaGpu(index), path });
            }
        } else if matches!(rest, "ctl" | "-uvm" | "-uvm-tools" | "-modeset") && allowed(&path) {
            nvidia_ctl.push(Device { kind: DeviceKind::NvidiaControl, path });
        }
    }
    if !nvidia_gpus.is_empty() {
        found.extend(nvidia_gpus);
        found.extend(nvidia_ctl);
    }

    let mut amd = Vec::new();
    for path in sorted_entries(&roots.dev.join("dri")) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(n) = name.strip_prefix("renderD").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let index = n.saturating_sub(128);
        if gpus.allows(index) && allowed(&path) {
            amd.push(Device { kind: DeviceKind::AmdRender(index), path });
        }
    }
    let kfd = roots.dev.join("kfd");
    if !amd.is_empty() && gpus.allows_any() && allowed(&kfd) {
        found.push(Device { kind: DeviceKind::AmdKfd, path: kfd });
        found.extend(amd);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn index_lists() {
        assert_eq!(parse_index_list("0,2-3"), BTreeSet::from([0, 2, 3]));
        assert_eq!(parse_index_list(""), BTreeSet::new());
        assert_eq!(parse_index_list("x,1"), BTreeSet::from([1]));
    }

    #[test]
    fn allocation_from_slurm_environment() {
        let env = HashMap::from([("SLURM_JOB_GPUS", "0,1"), ("SLURM_STEP_GPUS", "1")]);
        let alloc = GpuAllocation::from_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(alloc, GpuAllocation(Some(BTreeSet::from([1]))));
        assert_eq!(GpuAllocation::from_env(|_| None), GpuAllocation(None));
    }

    #[test]
    fn cgroup_rules() {
        let cg = DeviceCgroup::parse("c 1:3 rwm\nc 195:* rw\nb 8:0 r\n");
        assert!(cg.allows_char(1, 3));
        assert!(cg.allows_char(195, 7));
        assert!(!cg.allows_char(8, 0), "block rules do not allow char devices");
        assert!(!cg.allows_char(231, 0));
        assert!(DeviceCgroup::parse("a *:* rwm").allows_char(231, 0));
    }

    #[test]
    fn own_cgroup_file_is_found() {
        let dir = tempdir("cgfind");
        let proc = dir.join("cgroup");
        fs::write(&proc, "12:pids:/x\n5:devices:/slurm_node1/uid_0/job_7/step_0/task_0\n").unwrap();
        let list = dir.join("devices/slurm_node1/uid_0/job_7/step_0/task_0");
        fs::create_dir_all(&list).unwrap();
        fs::write(list.join("devices.list"), "a *:* rwm\n").unwrap();
        assert_eq!(own_devices_list(&proc, &dir.join("devices")), Some(list.join("devices.list")));
        fs::write(&proc, "0::/user.slice\n").unwrap();
        assert_eq!(own_devices_list(&proc, &dir.join("devices")), None);
    }

    fn tempdir(tag: &str) -> PathBuf {
        crate::test_scratch::subdir(tag)
    }

    /// A fake /dev with real character device nodes (needs root, as the tests run) or, failing
    /// mknod, plain files (then only the no-cgroup path is meaningful, and the test says so).
    fn fake_dev(tag: &str) -> (PathBuf, bool) {
        let dev = tempdir(tag);
        fs::create_dir_all(dev.join("infiniband")).unwrap();
        fs::create_dir_all(dev.join("dri")).unwrap();
        let nodes: &[(&str, u32, u32)] = &[
            ("infiniband/uverbs0", 231, 192),
            ("infiniband/rdma_cm", 10, 58),
            ("nvidia0", 195, 0),
            ("nvidia1", 195, 1),
            ("nvidia2", 195, 2),
            ("nvidiactl", 195, 255),
            ("nvidia-uvm", 511, 0),
            ("nvidia-caps", 0, 0),
            ("kfd", 234, 0),
            ("dri/renderD128", 226, 128),
            ("dri/renderD129", 226, 129),
            ("dri/card0", 226, 0),
            ("null", 1, 3),
        ];
        let mut real = true;
        for &(name, maj, min) in nodes {
            let path = dev.join(name);
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: mknod on a path we own, in a fresh temporary directory.
            let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(maj, min)) };
            if rc != 0 {
                real = false;
                fs::write(&path, "").unwrap();
            }
        }
        (dev, real)
    }

    fn paths(devs: &[Device]) -> Vec<String> {
        devs.iter().map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn everything_without_limits() {
        let (dev, _) = fake_dev("all");
        let found = discover(&DeviceRoots { dev, cgroup_devices_list: None }, &GpuAllocation(None));
        assert_eq!(
            paths(&found),
            [
                "rdma_cm",
                "uverbs0",
                "nvidia0",
                "nvidia1",
                "nvidia2",
                "nvidia-uvm",
                "nvidiactl",
                "kfd",
                "renderD128",
                "renderD129"
            ]
        );
    }

    #[test]
    fn only_allocated_gpus() {
        let (dev, _) = fake_dev("alloc");
        let roots = DeviceRoots { dev, cgroup_devices_list: None };
        let found = discover(&roots, &GpuAllocation(Some(BTreeSet::from([1]))));
        assert_eq!(paths(&found), ["rdma_cm", "uverbs0", "nvidia1", "nvidia-uvm", "nvidiactl", "kfd", "renderD129"]);
        // a job without GPUs gets InfiniBand only: no control devices either
        let found = discover(&roots, &GpuAllocation(Some(BTreeSet::new())));
        assert_eq!(paths(&found), ["rdma_cm", "uverbs0"]);
    }

    #[test]
    fn device_cgroup_limits() {
        let (dev, real) = fake_dev("cgroup");
        assert!(real, "these tests run as root (tests/run.sh) and must create real device nodes");
        let list = dev.join("devices.list");
        // what Slurm writes for a step granted nvidia2 and the IB verbs device
        fs::write(&list, "c 195:2 rwm\nc 195:255 rwm\nc 231:* rwm\nc 1:3 rwm\n").unwrap();
        let found = discover(&DeviceRoots { dev, cgroup_devices_list: Some(list) }, &GpuAllocation(None));
        assert_eq!(paths(&found), ["uverbs0", "nvidia2", "nvidiactl"]);
    }
}
