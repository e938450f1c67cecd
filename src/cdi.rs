//! Container Device Interface (CDI): the node's device specs, and which of their devices a step gets.
//!
//! A vendor's generator (`nvidia-ctk cdi generate`, AMD's `amd-ctk cdi generate`, …) writes a spec file
//! under `/etc/cdi` or `/var/run/cdi`: a `kind` (`nvidia.com/gpu`), named devices (`0`, `GPU-<uuid>`,
//! `0:1` for a MIG slice, `all`), each with container edits (device nodes, mounts of the driver's
//! libraries and tools, environment, hooks), and edits common to every device of the spec. Podman
//! (≥ 4.1) and Docker (≥ 25, with CDI enabled) apply them for `--device KIND=NAME`.
//!
//! What is ours is the choice: the devices a step may use are the device nodes that [`crate::devices`]
//! found for it (the GPUs Slurm allocated on this node, narrowed by the step's device cgroup, and
//! InfiniBand). A CDI device is chosen when it names at least one of those nodes and no GPU node the
//! step may not use: the mapping from Slurm's GPU to CDI name is read from the spec's own device node
//! paths, never assumed from index equality. Of devices naming the same nodes, one is kept; a device
//! whose nodes another chosen device includes is dropped (so a MIG slice wins over its whole GPU
//! only when its capability nodes are allowed, and `all` serves a step that has every GPU).
//!
//! Specs are admin's files, applied by root when Docker acts for a user: a file or directory that
//! anyone but root may write is refused, like a file that does not parse.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Where CDI specs are, as the CDI specification and the engines look: later directories win.
pub const DEFAULT_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CdiError {
    #[error("CDI spec {path}: {why}; fix or remove the file (nvidia-ctk cdi generate writes a valid one)")]
    Broken { path: PathBuf, why: String },
    #[error(
        "CDI spec {path} may be changed by others than root ({why}); make it and its directory root's, mode 0644/0755"
    )]
    Untrusted { path: PathBuf, why: String },
}

/// The edits a CDI device (or a whole spec) makes to a container.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<SpecMount>,
    /// OCI hooks (run by the engine's runtime); kept as written: only engines apply them.
    #[serde(default)]
    pub hooks: Vec<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// The path inside the container.
    pub path: PathBuf,
    /// The host's node, when not at the same path.
    pub host_path: Option<PathBuf>,
}

impl DeviceNode {
    pub fn host(&self) -> &Path {
        self.host_path.as_deref().unwrap_or(&self.path)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpecMount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    #[serde(default)]
    pub options: Vec<String>,
}

impl SpecMount {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpecDevice {
    pub name: String,
    #[serde(default)]
    pub container_edits: Edits,
}

/// One spec file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    /// `vendor/class`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    pub devices: Vec<SpecDevice>,
    #[serde(default)]
    pub container_edits: Edits,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Spec {
    pub fn parse(path: &Path, text: &str) -> Result<Spec, CdiError> {
        let broken = |why: String| CdiError::Broken { path: path.to_path_buf(), why };
        // YAML is a superset of JSON: one parser reads both spellings
        let mut spec: Spec = serde_yaml::from_str(text).map_err(|e| broken(e.to_string()))?;
        spec.file = path.to_path_buf();
        let (vendor, class) =
            spec.kind.split_once('/').ok_or_else(|| broken(format!("kind '{}' is not VENDOR/CLASS", spec.kind)))?;
        let name_ok = |s: &str, extra: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(c))
        };
        if !name_ok(vendor, "") || !name_ok(class, "") {
            return Err(broken(format!("kind '{}' is not VENDOR/CLASS", spec.kind)));
        }
        for d in &spec.devices {
            if !name_ok(&d.name, ":") {
                return Err(broken(format!("device name '{}' is not a CDI device name", d.name)));
            }
            for n in &d.container_edits.device_nodes {
                if !n.path.is_absolute() || n.host_path.as_ref().is_some_and(|h| !h.is_absolute()) {
                    return Err(broken(format!(
                        "device '{}': node '{}' is not an absolute path",
                        d.name,
                        n.path.display()
                    )));
                }
            }
        }
        for e in spec.devices.iter().map(|d| &d.container_edits).chain([&spec.container_edits]) {
            if let Some(v) = e.env.iter().find(|v| !v.contains('=')) {
                return Err(broken(format!("environment entry '{v}' is not NAME=VALUE")));
            }
            if let Some(m) = e.mounts.iter().find(|m| !m.host_path.is_absolute() || !m.container_path.is_absolute()) {
                return Err(broken(format!("mount '{}' is not between absolute paths", m.container_path.display())));
            }
        }
        Ok(spec)
    }

    /// The fully qualified name of one of its devices (`nvidia.com/gpu=0`).
    pub fn qualified(&self, device: &str) -> String {
        format!("{}={device}", self.kind)
    }
}

/// Reads every spec file (`*.json`, `*.yaml`, `*.yml`) of `dirs`. A spec of a later directory replaces
/// one of the same kind and file name of an earlier one. Each file that cannot be used is an error of
/// its own: the caller decides whether a step needed it.
pub fn load(dirs: &[PathBuf]) -> (Vec<Spec>, Vec<CdiError>) {
    let mut specs: Vec<Spec> = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "yaml" | "yml")))
            .collect();
        files.sort();
        for file in files {
            match read_trusted(&file).and_then(|text| Spec::parse(&file, &text)) {
                Ok(spec) => {
                    specs.retain(|s| !(s.kind == spec.kind && s.file.file_name() == spec.file.file_name()));
                    specs.push(spec);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    (specs, errors)
}

/// The file's text, when it and its directory are root's and no one else may write them.
fn read_trusted(path: &Path) -> Result<String, CdiError> {
    let untrusted = |why: String| CdiError::Untrusted { path: path.to_path_buf(), why };
    let check = |p: &Path, what: &str| -> Result<(), CdiError> {
        let m = std::fs::symlink_metadata(p).map_err(|e| untrusted(format!("{what}: {e}")))?;
        if m.uid() != 0 {
            return Err(untrusted(format!("{what} is owned by uid {}", m.uid())));
        }
        if m.mode() & 0o022 != 0 && !m.file_type().is_symlink() {
            return Err(untrusted(format!("{what} has mode {:o}", m.mode() & 0o7777)));
        }
        Ok(())
    };
    if let Some(dir) = path.parent() {
        check(dir, "its directory")?;
    }
    check(path, "the file")?;
    // a link (root's, in a root-only directory) is followed to a file that must be root's too
    let real = std::fs::metadata(path).map_err(|e| untrusted(e.to_string()))?;
    if !real.is_file() || real.uid() != 0 || real.mode() & 0o022 != 0 {
        return Err(untrusted("it is not a root-owned regular file".into()));
    }
    std::fs::read_to_string(path).map_err(|e| CdiError::Broken { path: path.to_path_buf(), why: e.to_string() })
}

/// What the step may use, for the choice of CDI devices.
#[derive(Debug, Clone, Default)]
pub struct StepDevices {
    /// The device nodes found for the step: its GPUs, their control nodes, InfiniBand.
    pub allowed: BTreeSet<PathBuf>,
    /// Every GPU node of the node, the step's or not: a CDI device naming one the step may not use is
    /// never chosen.
    pub all_gpus: BTreeSet<PathBuf>,
    /// Whether another node a CDI device names (a DRM card, MIG capabilities, a vendor's own) may be
    /// used: the step's device cgroup, when it has one.
    pub other_allowed: Option<crate::devices::DeviceCgroup>,
}

impl StepDevices {
    fn may_use(&self, node: &Path) -> bool {
        if self.allowed.contains(node) {
            return true;
        }
        if self.all_gpus.contains(node) {
            return false;
        }
        match (&self.other_allowed, crate::devices::char_device(node)) {
            (Some(cgroup), Some((major, minor))) => cgroup.allows_char(major, minor),
            (Some(_), None) => false,
            (None, found) => found.is_some(),
        }
    }
}

/// The CDI devices chosen for a step, and what they bring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Fully qualified names, for the engine's `--device`.
    pub names: Vec<String>,
    /// The host device nodes the chosen devices and their specs' common edits provide: not passed
    /// again as plain nodes.
    pub covered: BTreeSet<PathBuf>,
    /// The edits of the chosen devices, common edits first (once per spec): what an engine without
    /// CDI support is given by hand, and the environment the step's tasks get.
    pub edits: Edits,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The environment the chosen devices set, as pairs (later entries win, as in the spec).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in self.edits.env.iter().filter_map(|e| e.split_once('=')) {
            out.retain(|(n, _)| n != k);
            out.push((k.into(), v.into()));
        }
        out
    }
}

/// Chooses the CDI devices of `specs` for a step that may use `step`'s devices.
pub fn select(specs: &[Spec], step: &StepDevices) -> Selection {
    // (spec index, device index, its host nodes)
    let mut chosen: Vec<(usize, usize, BTreeSet<PathBuf>)> = Vec::new();
    for (si, spec) in specs.iter().enumerate() {
        for (di, device) in spec.devices.iter().enumerate() {
            let nodes: BTreeSet<PathBuf> =
                device.container_edits.device_nodes.iter().map(|n| n.host().to_path_buf()).collect();
            let gives_ours = nodes.iter().any(|n| step.allowed.contains(n));
            if gives_ours && nodes.iter().all(|n| step.may_use(n)) {
                chosen.push((si, di, nodes));
            }
        }
    }
    // one device per set of nodes (the first by name: indexes before UUIDs), none inside another
    chosen.sort_by(|a, b| specs[a.0].devices[a.1].name.cmp(&specs[b.0].devices[b.1].name));
    let mut kept: Vec<(usize, usize, BTreeSet<PathBuf>)> = Vec::new();
    for c in chosen.iter() {
        let inside_another = chosen.iter().any(|o| o.2.len() > c.2.len() && c.2.is_subset(&o.2));
        let same_kept = kept.iter().any(|k| k.2 == c.2);
        if !inside_another && !same_kept {
            kept.push(c.clone());
        }
    }
    kept.sort_by_key(|k| (k.0, k.1));
    let mut out = Selection::default();
    let mut specs_used: Vec<usize> = kept.iter().map(|k| k.0).collect();
    specs_used.dedup();
    for &si in &specs_used {
        extend(&mut out.edits, &specs[si].container_edits);
    }
    for (si, di, nodes) in &kept {
        let device = &specs[*si].devices[*di];
        out.names.push(specs[*si].qualified(&device.name));
        out.covered.extend(nodes.iter().cloned());
        extend(&mut out.edits, &device.container_edits);
    }
    out.covered.extend(out.edits.device_nodes.iter().map(|n| n.host().to_path_buf()));
    out
}

fn extend(into: &mut Edits, from: &Edits) {
    into.env.extend(from.env.iter().cloned());
    for n in &from.device_nodes {
        if !into.device_nodes.contains(n) {
            into.device_nodes.push(n.clone());
        }
    }
    for m in &from.mounts {
        if !into.mounts.contains(m) {
            into.mounts.push(m.clone());
        }
    }
    into.hooks.extend(from.hooks.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `nvidia-ctk cdi generate` writes (abridged): index and UUID names, MIG slices,
    /// `all`, common edits with the control nodes, the driver's libraries and hooks.
    const NVIDIA: &str = r#"
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}, {path: /dev/dri/card1}, {path: /dev/dri/renderD128}]
- name: GPU-4c6b1b3a
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}, {path: /dev/dri/card1}, {path: /dev/dri/renderD128}]
- name: "1"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia1}]
- name: "1:0"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia1}, {path: /dev/nvidia-caps/nvidia-cap21}, {path: /dev/nvidia-caps/nvidia-cap22}]
- name: all
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0}, {path: /dev/nvidia1}, {path: /dev/dri/card1}, {path: /dev/dri/renderD128}]
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
  deviceNodes: [{path: /dev/nvidiactl}, {path: /dev/nvidia-uvm}]
  mounts:
  - {hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54, containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54, options: [ro, nosuid, nodev, bind]}
  hooks:
  - {hookName: createContainer, path: /usr/bin/nvidia-cdi-hook, args: [nvidia-cdi-hook, update-ldcache]}
"#;

    fn spec(text: &str) -> Spec {
        Spec::parse(Path::new("/etc/cdi/x.yaml"), text).unwrap()
    }

    fn paths(p: &[&str]) -> BTreeSet<PathBuf> {
        p.iter().map(PathBuf::from).collect()
    }

    /// A step that may use `gpus` of the node's two, the control nodes and the DRM nodes (as if its
    /// device cgroup allowed them), and no other node.
    fn step(gpus: &[&str]) -> StepDevices {
        let mut allowed = paths(gpus);
        allowed.extend(paths(&["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/dri/card1", "/dev/dri/renderD128"]));
        StepDevices {
            allowed,
            all_gpus: paths(&["/dev/nvidia0", "/dev/nvidia1"]),
            other_allowed: Some(crate::devices::DeviceCgroup::parse("c 1:3 rwm\n")),
        }
    }

    #[test]
    fn a_step_gets_the_cdi_devices_of_its_gpus_by_their_nodes() {
        let specs = [spec(NVIDIA)];
        let one = select(&specs, &step(&["/dev/nvidia1"]));
        // the MIG slice needs capability nodes the step's cgroup does not allow
        assert_eq!(one.names, ["nvidia.com/gpu=1"]);
        assert_eq!(one.env(), [("NVIDIA_VISIBLE_DEVICES".to_string(), "void".to_string())]);
        assert!(one.covered.contains(Path::new("/dev/nvidiactl")));
        assert_eq!(one.edits.mounts.len(), 1);
        assert_eq!(one.edits.hooks.len(), 1);

        let all = select(&specs, &step(&["/dev/nvidia0", "/dev/nvidia1"]));
        assert_eq!(all.names, ["nvidia.com/gpu=all"], "every GPU: `all` (the same nodes, one name)");

        assert!(select(&specs, &step(&[])).is_empty(), "no GPU, no CDI device");
    }

    #[test]
    fn a_mig_slice_is_chosen_when_its_capabilities_are_allowed() {
        let specs = [spec(NVIDIA)];
        let mut s = step(&["/dev/nvidia1"]);
        s.allowed.extend(paths(&["/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]));
        assert_eq!(select(&specs, &s).names, ["nvidia.com/gpu=1:0"]);
    }

    #[test]
    fn the_mapping_comes_from_the_nodes_not_from_the_names() {
        // a spec whose device "0" is the node's second GPU
        let swapped = spec(
            "cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices:\n\
             - {name: '0', containerEdits: {deviceNodes: [{path: /dev/nvidia1}], env: [WHICH=second]}}\n\
             - {name: '1', containerEdits: {deviceNodes: [{path: /dev/nvidia0}], env: [WHICH=first]}}\n",
        );
        let s = select(&[swapped], &step(&["/dev/nvidia0"]));
        assert_eq!(s.names, ["example.com/gpu=1"]);
        assert_eq!(s.env(), [("WHICH".to_string(), "first".to_string())]);
    }

    #[test]
    fn broken_and_foreign_specs_are_named() {
        let bad = |text: &str| Spec::parse(Path::new("/etc/cdi/bad.yaml"), text).unwrap_err().to_string();
        assert!(bad("kind: [").contains("CDI spec /etc/cdi/bad.yaml"));
        assert!(bad("cdiVersion: 0.5.0\nkind: gpu\ndevices: []\n").contains("not VENDOR/CLASS"));
        let rel = bad(
            "cdiVersion: 0.5.0\nkind: a.com/b\ndevices: [{name: x, containerEdits: {deviceNodes: [{path: dev/x}]}}]\n",
        );
        assert!(rel.contains("not an absolute path"), "{rel}");
        // JSON is read too
        let json =
            r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["A=1"]}}]}"#;
        assert_eq!(spec(json).devices[0].name, "x");
    }

    #[test]
    fn specs_anyone_may_change_are_refused() {
        let dir = crate::test_scratch::subdir("cdi");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let good = "cdiVersion: 0.5.0\nkind: a.com/b\ndevices: [{name: x, containerEdits: {env: [A=1]}}]\n";
        std::fs::write(dir.join("good.yaml"), good).unwrap();
        std::fs::write(dir.join("open.json"), "{}").unwrap();
        std::fs::set_permissions(dir.join("open.json"), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a spec").unwrap();
        let (specs, errors) = load(&[dir.clone(), PathBuf::from("/nonexistent/cdi")]);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(specs.len(), 1, "{errors:?}");
            assert_eq!(errors.len(), 1);
            assert!(errors[0].to_string().contains("mode 666"), "{}", errors[0]);
        } else {
            assert!(specs.is_empty(), "a spec that is not root's is refused");
        }
    }
}
