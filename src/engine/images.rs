//! The store's images: present? pull, load, tag, inspect, list, remove.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{last_line, output_within, Engine, EngineError, EngineKind, QUICK_LIMIT};

impl Engine {
    /// Whether the image is in the local store.
    pub fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let mut cmd = self.command();
        match self.kind {
            EngineKind::Podman => cmd.args(["image", "exists", image]),
            EngineKind::Docker => cmd.args(["image", "inspect", "--format", "{{.Id}}", image]),
        };
        cmd.stdin(Stdio::null());
        let out = output_within(&mut cmd, QUICK_LIMIT)
            .map_err(|source| EngineError::Spawn { engine: self.name(), source })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match (self.kind, out.status.code()) {
            (_, Some(0)) => Ok(true),
            // `podman image exists` answers 1 for "no such image", 125 for its own failures
            (EngineKind::Podman, Some(1)) => Ok(false),
            (EngineKind::Docker, _) if stderr.contains("No such image") => Ok(false),
            (EngineKind::Docker, _) if stderr.contains("permission denied") => Err(EngineError::NoAccess),
            _ => Err(EngineError::Unavailable { engine: self.name(), reason: last_line(&stderr) }),
        }
    }

    /// Pulls the image within `limit`; with Docker, `credentials` is the client configuration
    /// directory to log in with (`DOCKER_CONFIG`). Quiet: only the engine's last error line is
    /// reported.
    pub fn pull_with(&self, image: &str, credentials: Option<&Path>, limit: Duration) -> Result<(), EngineError> {
        let mut cmd = self.command();
        cmd.args(["pull", "--quiet", image]).stdin(Stdio::null());
        if let (EngineKind::Docker, Some(dir)) = (self.kind, credentials) {
            cmd.env("DOCKER_CONFIG", dir);
        }
        let out = output_within(&mut cmd, limit)
            .map_err(|e| EngineError::Pull { image: image.into(), reason: e.to_string() })?;
        if out.status.success() {
            return Ok(());
        }
        let mut reason = last_line(&String::from_utf8_lossy(&out.stderr));
        if reason.is_empty() {
            reason = format!("{} pull exited with {}", self.name(), out.status);
        }
        Err(EngineError::Pull { image: image.into(), reason })
    }

    /// A quick engine call (bounded by [`QUICK_LIMIT`]): its output, or its last error line.
    pub(super) fn quick(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null());
        let out = output_within(&mut cmd, QUICK_LIMIT)
            .map_err(|e| format!("{} {}: {e}", self.name(), args.first().copied().unwrap_or("")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(last_line(&String::from_utf8_lossy(&out.stderr)))
    }

    /// The image's id (hex, without `sha256:`).
    pub fn image_id(&self, image: &str) -> Result<String, String> {
        let id = self.quick(&["image", "inspect", "--format", "{{.Id}}", image])?;
        Ok(id.trim().trim_start_matches("sha256:").to_string())
    }

    /// Gives `image` (a name or id) the name `name` too.
    pub fn tag(&self, image: &str, name: &str) -> Result<(), String> {
        self.quick(&["tag", image, name]).map(|_| ())
    }

    /// Takes the name `name` off the image `image` (which keeps its other names).
    pub fn untag(&self, image: &str, name: &str) -> Result<(), String> {
        match self.kind {
            EngineKind::Podman => self.quick(&["untag", image, name]),
            // Docker's `rmi` of a name only untags while the image has another
            EngineKind::Docker => self.quick(&["rmi", name]),
        }
        .map(|_| ())
    }

    /// Removes images by name or id (an image in use is kept: the error says so).
    pub fn remove_images(&self, names: &[String]) -> Result<(), String> {
        let mut args = vec!["rmi"];
        args.extend(names.iter().map(String::as_str));
        self.quick(&args).map(|_| ())
    }

    /// `load` of an archive that `feed` writes to the engine's standard input, within `limit`;
    /// returns the loaded image's name or id.
    pub fn load(
        &self,
        limit: Duration,
        feed: impl FnOnce(&mut std::process::ChildStdin) -> Result<(), String> + Send + 'static,
    ) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.arg("load").arg("--quiet").stdin(Stdio::piped());
        let out = super::output_within_feeding(&mut cmd, limit, feed).map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.output.stdout);
        if !out.output.status.success() {
            if let Some(Err(e)) = out.fed {
                return Err(e);
            }
            return Err(shorten(&last_line(&String::from_utf8_lossy(&out.output.stderr))));
        }
        loaded_name(&stdout).ok_or_else(|| format!("{} load named no image: {}", self.name(), stdout.trim()))
    }

    /// The image's entrypoint (the engine's JSON, one line) and environment (`NAME=VALUE` lines);
    /// `None` when the image is not in the store.
    pub fn image_config(&self, image: &str) -> Result<Option<String>, String> {
        let format = "{{json .Config.Entrypoint}}\n{{range .Config.Env}}{{println .}}{{end}}";
        match self.quick(&["image", "inspect", "--format", format, image]) {
            Ok(text) => Ok(Some(text)),
            // not there, or the engine itself failing: ask the way that tells them apart
            Err(why) => match self.image_present(image).map_err(|e| e.to_string())? {
                false => Ok(None),
                true => Err(format!("cannot read image '{image}': {why}")),
            },
        }
    }

    /// The names (`REPOSITORY:TAG`) of the store's images under `repository/`.
    pub fn images_under(&self, repository: &str) -> Result<Vec<String>, EngineError> {
        let filter = format!("reference={repository}/*");
        let out = self
            .quick(&["images", "--filter", &filter, "--format", "{{.Repository}}:{{.Tag}}"])
            .map_err(|reason| EngineError::Unavailable { engine: self.name(), reason })?;
        Ok(out.lines().map(str::trim).filter(|l| l.starts_with(repository)).map(String::from).collect())
    }

    /// Id (12 hex digits), size in bytes and creation time of each image named.
    pub fn image_facts(&self, names: &[String]) -> Result<Vec<(String, u64, String)>, EngineError> {
        let mut args = vec!["image", "inspect", "--format", "{{.Id}} {{.Size}} {{.Created}}"];
        args.extend(names.iter().map(String::as_str));
        let out = self.quick(&args).map_err(|reason| EngineError::Unavailable { engine: self.name(), reason })?;
        Ok(out
            .lines()
            .map(|line| {
                let mut w = line.splitn(3, ' ');
                let id = w.next().unwrap_or("").trim_start_matches("sha256:").chars().take(12).collect();
                let size = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                (id, size, w.next().unwrap_or("").to_string())
            })
            .collect())
    }

    /// Every name the image has.
    pub fn image_names(&self, image: &str) -> Result<Vec<String>, String> {
        let out = self.quick(&["image", "inspect", "--format", "{{range .RepoTags}}{{println .}}{{end}}", image])?;
        Ok(out.lines().map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect())
    }
}

/// The first image an engine's `load` output names ("Loaded image: X", "Loaded image(s): X,Y",
/// "Loaded image ID: sha256:…").
pub fn loaded_name(output: &str) -> Option<String> {
    output
        .lines()
        .filter(|l| l.starts_with("Loaded image"))
        .find_map(|l| l.split_once(": ").map(|(_, v)| v.split(',').next().unwrap_or("").trim().to_string()))
        .filter(|n| !n.is_empty())
}

fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_of_loaded_images() {
        use super::loaded_name;
        assert_eq!(
            loaded_name("Loaded image: localhost/md-openmpi:latest\n").as_deref(),
            Some("localhost/md-openmpi:latest")
        );
        assert_eq!(loaded_name("Loaded image(s): a:1,b:2\n").as_deref(), Some("a:1"));
        assert_eq!(loaded_name("Loaded image ID: sha256:abc\n").as_deref(), Some("sha256:abc"));
        assert_eq!(loaded_name("nothing\n"), None);
    }
}
