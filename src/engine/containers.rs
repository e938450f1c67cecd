//! Containers: run, inspect, list, remove.

use std::process::Stdio;

use super::{output_within, Engine, EngineError, EngineKind, QUICK_LIMIT};

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
            return Err(EngineError::Unavailable { engine: self.name(), reason: self.why(&out) });
        }
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect())
    }

    /// The command line of a foreground `run` (see [`super::run_args`]), for the caller to
    /// supervise (signals forwarded, its exit status the job's).
    pub fn run_foreground(&self, args: &[String]) -> std::process::Command {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::inherit());
        cmd
    }

    /// `run` with these arguments (see [`super::run_args`]), bounded by [`QUICK_LIMIT`]
    /// (a detached run returns once the container started). A container of the same name left by an
    /// earlier attempt is removed and the run tried again. Errors: the engine's reason, one line.
    pub fn run_detached(&self, args: &[String], name: &str) -> Result<(), String> {
        let run = || {
            let mut cmd = self.command();
            cmd.args(args).stdin(Stdio::null());
            output_within(&mut cmd, QUICK_LIMIT).map_err(|e| format!("{} run: {e}", self.name()))
        };
        let mut out = run()?;
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already in use") {
            self.remove(&[name.to_string()]);
            out = run()?;
        }
        if out.status.success() {
            return Ok(());
        }
        // Docker's client ends with a "See/Run 'docker run --help'" line: the reason is above it
        let text = String::from_utf8_lossy(&out.stderr);
        let reason: Vec<&str> = text.lines().filter(|l| !l.starts_with("Run '") && !l.starts_with("See '")).collect();
        Err(self.naming_the_disk(super::failure_line(self.name(), out.status, &reason.join("\n"))))
    }

    /// The process id of a running container's main process ("0" or "" when it runs none).
    pub fn container_pid(&self, name: &str) -> Result<String, String> {
        Ok(self.quick(&["inspect", "--format", "{{.State.Pid}}", name])?.trim().to_string())
    }

    /// The value of label `key` of a container ("" when it has none).
    pub fn container_label(&self, container: &str, key: &str) -> Result<String, String> {
        let format = format!("{{{{index .Config.Labels {}}}}}", serde_json::to_string(key).expect("a string"));
        Ok(self.quick(&["inspect", "--format", &format, container])?.trim().to_string())
    }

    /// A container's state, if it exists.
    pub fn container_state(&self, name: &str) -> Result<Option<ContainerState>, String> {
        let format = match self.kind {
            EngineKind::Podman => {
                "{{.State.Running}} {{.State.Pid}} {{.ImageName}} {{index .Config.Labels \"mpiexec-docker.uid\"}}"
            }
            EngineKind::Docker => {
                "{{.State.Running}} {{.State.Pid}} {{.Config.Image}} {{index .Config.Labels \"mpiexec-docker.uid\"}}"
            }
        };
        let Ok(text) = self.quick(&["inspect", "--format", format, name]) else { return Ok(None) };
        let mut w = text.split_whitespace();
        let running = w.next() == Some("true");
        let pid = w.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let image = w.next().unwrap_or("").to_string();
        let owner = w.next().and_then(|o| o.parse().ok());
        Ok(Some(ContainerState { running: running && pid > 0, pid, image, owner }))
    }
}

/// What [`Engine::container_state`] tells of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub pid: i32,
    pub image: String,
    /// The uid its `mpiexec-docker.uid` label names.
    pub owner: Option<u32>,
}
