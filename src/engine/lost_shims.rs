//! Docker's container shims that the daemon lost. A Docker daemon restarted with `live-restore`
//! reconnects to the shims (`containerd-shim-runc-v2`) of the containers it left running; where it
//! fails to (seen with Docker 26 and its managed containerd, for a step container whose process
//! Slurm's cgroup holds), it reports the container exited, and the shim lives on with no one to end
//! it once the container is removed. The job's end (root's sweep) ends the shims of our step
//! containers that the daemon no longer knows.

use std::collections::HashSet;
use std::path::Path;

use nix::sys::signal::Signal;

use super::{Engine, EngineKind};
use crate::process::ProcessHandle;

/// A shim of one of our step containers: its pid (as a handle) and the container's id.
struct Shim {
    handle: ProcessHandle,
    id: String,
}

/// The container id a shim's command line names (`… -id ID …`), when `cmdline` is a containerd
/// shim's.
fn shim_container_id(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program = Path::new(std::str::from_utf8(args.first()?).ok()?);
    if !program.file_name()?.to_str()?.starts_with("containerd-shim") {
        return None;
    }
    let at = args.iter().position(|a| *a == b"-id")?;
    let id = std::str::from_utf8(args.get(at + 1)?).ok()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Whether an OCI bundle's `config.json` runs our step container's placeholder.
fn runs_our_pause(config: &[u8]) -> bool {
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(config) else { return false };
    let Some(args) = spec.pointer("/process/args").and_then(|a| a.as_array()) else { return false };
    let words: Vec<&str> = args.iter().filter_map(|a| a.as_str()).collect();
    words == [crate::layout::IN_HELPER, "in-container", "pause"]
}

/// The shims of this node's daemon that run one of our step containers (their bundle, the shim's
/// working directory, is root's and the daemon's: read by root only). A shim in another mount
/// namespace belongs to another daemon (a user's rootless one, or another node's where nodes share a
/// host's processes) and is never touched.
fn our_shims() -> Vec<Shim> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let Ok(own_mounts) = std::fs::read_link("/proc/self/ns/mnt") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some(handle) = ProcessHandle::open(pid) else { continue };
        let proc = Path::new("/proc").join(pid.to_string());
        let Some(id) = std::fs::read(proc.join("cmdline")).ok().and_then(|c| shim_container_id(&c)) else {
            continue;
        };
        if std::fs::read_link(proc.join("ns/mnt")).ok().as_ref() != Some(&own_mounts) {
            continue;
        }
        let ours = std::fs::read(proc.join("cwd/config.json")).map(|c| runs_our_pause(&c)).unwrap_or(false);
        if ours && handle.alive() {
            found.push(Shim { handle, id });
        }
    }
    found
}

impl Engine {
    /// Ends (SIGKILL) the shims of our step containers that this Docker daemon no longer lists;
    /// returns how many. The shims are found before the daemon is asked, so that a container
    /// started meanwhile (listed, or with no shim yet when the host was searched) is never touched.
    /// Nothing is done for Podman or when the daemon does not answer.
    pub fn end_lost_shims(&self) -> usize {
        if self.kind != EngineKind::Docker {
            return 0;
        }
        let shims = our_shims();
        if shims.is_empty() {
            return 0;
        }
        let Ok(listed) = self.quick(&["ps", "--all", "--quiet", "--no-trunc"]) else { return 0 };
        let known: HashSet<&str> = listed.split_whitespace().collect();
        let mut ended = 0;
        for shim in shims.iter().filter(|s| !known.contains(s.id.as_str())) {
            log::warn!("ending the shim of container {}, which the Docker daemon lost", shim.id);
            shim.handle.kill(Signal::SIGKILL);
            ended += 1;
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shims_command_line_names_its_container() {
        let line = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0-id\0ab12cd\0-address\0/run/c.sock\0";
        assert_eq!(shim_container_id(line).as_deref(), Some("ab12cd"));
        assert_eq!(shim_container_id(b"/usr/bin/sleep\0-id\0ab12\0"), None);
        assert_eq!(shim_container_id(b"/usr/bin/containerd-shim-runc-v2\0-id\0../x\0"), None);
        assert_eq!(shim_container_id(b"/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0"), None);
    }

    #[test]
    fn only_a_bundle_running_our_placeholder_is_ours() {
        let ours = br#"{"process":{"args":["/.mpiexec-docker/mpiexec_docker","in-container","pause"]}}"#;
        assert!(runs_our_pause(ours));
        assert!(!runs_our_pause(br#"{"process":{"args":["nginx","-g","daemon off;"]}}"#));
        assert!(!runs_our_pause(br#"{"process":{"args":["/.mpiexec-docker/mpiexec_docker","in-container"]}}"#));
        assert!(!runs_our_pause(b"not json"));
    }
}
