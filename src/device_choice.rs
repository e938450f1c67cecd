//! The devices of one container: the node's device nodes the job may use ([`crate::devices`]), given
//! through the node's CDI specs where those describe them ([`crate::cdi`]), as plain nodes otherwise.
//!
//! - An engine that applies CDI itself (Podman ≥ 4.1, Docker with CDI on) gets `--device KIND=NAME`
//!   and does the rest: the device nodes, the driver's files, the variables and the hooks.
//! - An engine that does not (Docker before 25, or with CDI off) gets the chosen devices' edits by
//!   hand: their nodes, mounts and variables. Hooks only an engine can run: the user is told once.
//! - GPUs no spec describes go in as nodes, with one line saying what that means for the image.
//!
//! Either way the variables the devices set are also kept for processes that join the container
//! later (a step's tasks, which get Slurm's environment, not the container's).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::cdi::{self, CdiError, StepDevices};
use crate::config::{CdiMode, Config};
use crate::container::{ContainerSpec, Mount};
use crate::devices::{self, Device, DeviceCgroup, DeviceKind, DeviceRoots, GpuAllocation};
use crate::engine::Engine;
use crate::launch::LaunchError;

/// What a user is told when GPUs go in as device nodes only.
pub const NO_CDI_NOTICE: &str =
    "GPUs are passed as device nodes only (no CDI spec on this node describes them, or CDI is off): \
     the image must carry the driver's user-space libraries, matching the node's driver, or the site \
     generates CDI specs (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)";

/// The devices found under `roots` for `gpus`, as the configuration allows.
fn found(config: &Config, roots: &DeviceRoots, gpus: &GpuAllocation) -> Vec<Device> {
    devices::discover(roots, gpus)
        .into_iter()
        .filter(|d| match d.kind {
            DeviceKind::InfiniBand => config.devices.infiniband,
            _ => config.devices.gpus,
        })
        .collect()
}

/// Sets `spec`'s devices (nodes, CDI devices, and for an engine without CDI their edits), its
/// `device_env` and its `device_notice`.
pub fn apply(
    spec: &mut ContainerSpec,
    engine: &Engine,
    config: &Config,
    roots: &DeviceRoots,
    gpus: &GpuAllocation,
) -> Result<(), LaunchError> {
    let found = found(config, roots, gpus);
    spec.devices = found.iter().map(|d| d.path.clone()).collect();
    if found.is_empty() {
        return Ok(());
    }
    if config.devices.cdi == CdiMode::Off {
        if found.iter().any(Device::is_gpu) {
            spec.device_notice = Some(NO_CDI_NOTICE.into());
        }
        return Ok(());
    }
    let (chosen, errors) = choose(config, roots, &found);
    // a spec that cannot be used fails the containers that have devices it might describe
    if let Some(e) = errors.into_iter().next() {
        return Err(e.into());
    }
    if !chosen.is_empty() {
        spec.devices.retain(|d| !chosen.covered.contains(d));
        // never over the variables with which Slurm binds each task to its GPUs
        let binding = devices::SLURM_GPU_BINDING;
        spec.device_env = chosen.env().into_iter().filter(|(k, _)| !binding.contains(&k.as_str())).collect();
        if engine.applies_cdi()? {
            spec.cdi_devices = chosen.names.clone();
        } else {
            by_hand(spec, &chosen);
            if !chosen.edits.hooks.is_empty() {
                spec.device_notice = Some(format!(
                    "{} does not apply CDI specs itself here: the devices' nodes, files and variables are passed, \
                     their hooks (such as the library cache update) are not run; Podman ≥ 4.1 or Docker ≥ 25 \
                     with CDI enabled run them",
                    engine.name()
                ));
            }
        }
    }
    let bare_gpus = found.iter().any(|d| d.is_gpu() && !chosen.covered.contains(&d.path));
    if bare_gpus && spec.device_notice.is_none() {
        spec.device_notice = Some(NO_CDI_NOTICE.into());
    }
    Ok(())
}

/// The CDI devices of the node's specs (`devices.cdi_dirs`) for a container that may use `found`
/// (devices under `roots`, limited by its cgroup there), and the spec files that could not be used.
pub fn choose(config: &Config, roots: &DeviceRoots, found: &[Device]) -> (cdi::Selection, Vec<CdiError>) {
    let (specs, errors) = cdi::load(&config.devices.cdi_dirs);
    let everything = DeviceRoots { dev: roots.dev.clone(), cgroup_devices_list: None };
    let step = StepDevices {
        allowed: found.iter().map(|d| d.path.clone()).collect(),
        all_gpus: devices::discover(&everything, &GpuAllocation(None))
            .into_iter()
            .filter(Device::is_gpu)
            .map(|d| d.path)
            .collect(),
        other_allowed: roots
            .cgroup_devices_list
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| DeviceCgroup::parse(&t)),
    };
    (cdi::select(&specs, &step), errors)
}

/// The chosen devices' edits, for an engine that does not read CDI specs.
fn by_hand(spec: &mut ContainerSpec, chosen: &cdi::Selection) {
    let mut have: BTreeSet<PathBuf> = spec.devices.iter().cloned().collect();
    for n in &chosen.edits.device_nodes {
        let arg = match &n.host_path {
            Some(host) if host != &n.path => PathBuf::from(format!("{}:{}", host.display(), n.path.display())),
            _ => n.path.clone(),
        };
        if have.insert(arg.clone()) {
            spec.devices.push(arg);
        }
    }
    for m in &chosen.edits.mounts {
        spec.mounts.push(Mount::bind(m.host_path.clone(), m.container_path.clone(), m.read_only()));
    }
    spec.env_set.extend(spec.device_env.iter().cloned());
}
