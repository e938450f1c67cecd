//! The store's images: present? pull, load, tag, inspect, list, remove.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{output_within, Engine, EngineError, EngineKind, QUICK_LIMIT};

/// squashfs-tools-ng's converter of a squashfs file system to a tar stream.
pub const SQFS2TAR: &str = "sqfs2tar";
/// squashfs-tools-ng's reader, which prints one file of a squashfs file system (`-c PATH`).
pub const RDSQUASHFS: &str = "rdsquashfs";

/// The environment a squashfs root file system carries in `/etc/environment` (where enroot keeps an
/// image's): `NAME=VALUE` lines (`export` and quotes allowed); `None` when it has none or the file
/// system cannot be read.
pub fn squashfs_environment(file: &std::fs::File) -> Option<Vec<(String, String)>> {
    let out = std::process::Command::new(RDSQUASHFS)
        .args(["-c", "/etc/environment", "/dev/stdin"])
        .stdin(file.try_clone().ok()?)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| parse_environment(&String::from_utf8_lossy(&out.stdout)))
}

/// `NAME=VALUE` lines of an environment file; names must be variable names, and values that the
/// engines' `--change ENV` could not carry as they are (spaces, quotes, `$`) are left out.
pub fn parse_environment(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim();
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            let name_ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let value_ok = !v.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'$`\\".contains(c));
            (name_ok && value_ok && !line.starts_with('#')).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

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
            _ => Err(EngineError::Unavailable { engine: self.name(), reason: self.why(&out) }),
        }
    }

    /// Pulls the image within `limit`; `credentials` is a client configuration directory to log in
    /// with (Docker's `DOCKER_CONFIG`; its `config.json` is Podman's `--authfile`). Quiet: only the engine's last error line is
    /// reported.
    pub fn pull_with(&self, image: &str, credentials: Option<&Path>, limit: Duration) -> Result<(), EngineError> {
        let mut cmd = self.command();
        cmd.args(["pull", "--quiet"]).stdin(Stdio::null());
        match (self.kind, credentials) {
            (EngineKind::Docker, Some(dir)) => {
                cmd.env("DOCKER_CONFIG", dir);
            }
            (EngineKind::Podman, Some(dir)) => {
                cmd.arg("--authfile").arg(dir.join("config.json"));
            }
            _ => {}
        }
        cmd.arg(image);
        let out = output_within(&mut cmd, limit)
            .map_err(|e| EngineError::Pull { image: image.into(), reason: e.to_string() })?;
        if out.status.success() {
            return Ok(());
        }
        Err(EngineError::Pull { image: image.into(), reason: self.naming_the_disk(self.why(&out)) })
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
        Err(self.why(&out))
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
            return Err(self.naming_the_disk(shorten(&self.why(&out.output))));
        }
        loaded_name(&stdout).ok_or_else(|| format!("{} load named no image: {}", self.name(), stdout.trim()))
    }

    /// Imports a squashfs root file system as image `name` (one layer), within `limit`: `file` (the
    /// descriptor the user opened) is streamed as tar by `sqfs2tar` (squashfs-tools-ng) into the
    /// engine's `import`; `env` (`NAME=VALUE`) becomes the image's environment.
    pub fn import_squashfs(
        &self,
        limit: Duration,
        file: &std::fs::File,
        name: &str,
        env: &[(String, String)],
    ) -> Result<(), String> {
        // `/dev/stdin` reopens the descriptor given as its standard input: the object opened, not a path
        let mut convert = std::process::Command::new(SQFS2TAR);
        convert
            .arg("/dev/stdin")
            .stdin(file.try_clone().map_err(|e| e.to_string())?)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut converter = convert.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("squashfs images need {SQFS2TAR} on the node (Debian and Ubuntu: package squashfs-tools-ng)")
            }
            _ => format!("cannot run {SQFS2TAR}: {e}"),
        })?;
        let mut tar = converter.stdout.take().ok_or("no output from sqfs2tar")?;
        let mut cmd = self.command();
        cmd.arg("import");
        for (k, v) in env {
            cmd.arg("--change").arg(format!("ENV {k}={v}"));
        }
        cmd.arg("-").arg(name).stdin(Stdio::piped());
        let out = super::output_within_feeding(&mut cmd, limit, move |stdin| {
            std::io::copy(&mut tar, stdin).map(|_| ()).map_err(|e| format!("streaming the squashfs file: {e}"))
        });
        // the converter ends with its output read (or its reader gone)
        let converted = match converter.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                std::thread::sleep(Duration::from_millis(200));
                let _ = converter.kill();
                converter.wait().ok()
            }
        };
        let out = out.map_err(|e| e.to_string())?;
        if !out.output.status.success() {
            return Err(self.naming_the_disk(shorten(&self.why(&out.output))));
        }
        match converted {
            Some(status) if status.success() => Ok(()),
            _ => Err(format!("{SQFS2TAR} could not read it as a squashfs file system")),
        }
    }

    /// Commits container `container` as image `name`, within `limit`.
    pub fn commit(&self, limit: Duration, container: &str, name: &str) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("commit");
        if self.kind == EngineKind::Docker {
            // (the container's tasks have ended: nothing to pause, and pausing needs its cgroup)
            cmd.arg("--pause=false");
        }
        cmd.args([container, name]).stdin(Stdio::null());
        let out = output_within(&mut cmd, limit).map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        Err(self.naming_the_disk(shorten(&self.why(&out))))
    }

    /// Writes image `name` as a docker-archive into `into` (an open file), within `limit`.
    pub fn save_into(&self, limit: Duration, name: &str, into: std::fs::File) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("save");
        if self.kind == EngineKind::Podman {
            cmd.args(["--format", "docker-archive"]);
        }
        cmd.arg(name);
        let out = super::run::output_into_within(&mut cmd, limit, into).map_err(|e| e.to_string())?.output;
        if out.status.success() {
            return Ok(());
        }
        Err(shorten(&self.why(&out)))
    }

    /// The image's entrypoint (the engine's JSON, one line) and environment (`NAME=VALUE` lines);
    /// `None` when the image is not in the store. An image committed from one of our containers is
    /// read through its [`super::IMAGE_CONFIG_LABEL`].
    pub fn image_config(&self, image: &str) -> Result<Option<String>, String> {
        // an image committed from one of our containers has the image's own in a label (see
        // `IMAGE_CONFIG_LABEL`)
        let format = image_config_format();
        match self.quick(&["image", "inspect", "--format", &format, image]) {
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

    /// The tags of the store's images of `repository` itself.
    pub fn tags_of(&self, repository: &str) -> Result<Vec<String>, EngineError> {
        let filter = format!("reference={repository}");
        let out = self
            .quick(&["images", "--filter", &filter, "--format", "{{.Repository}} {{.Tag}}"])
            .map_err(|reason| EngineError::Unavailable { engine: self.name(), reason })?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().split_once(' '))
            .filter(|(r, t)| *r == repository && *t != "<none>")
            .map(|(_, t)| t.to_string())
            .collect())
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

/// The template of [`Engine::image_config`]: the label [`super::IMAGE_CONFIG_LABEL`] where an image
/// has it, else its entrypoint (JSON) and environment (one `NAME=VALUE` a line).
fn image_config_format() -> String {
    format!(
        "{{{{with index .Config.Labels {:?}}}}}{{{{.}}}}{{{{else}}}}\
         {{{{json .Config.Entrypoint}}}}\n{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}{{{{end}}}}",
        super::IMAGE_CONFIG_LABEL
    )
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

#[cfg(test)]
mod squashfs_tests {
    use super::*;

    #[test]
    fn image_config_reads_our_label_first() {
        assert_eq!(
            image_config_format(),
            "{{with index .Config.Labels \"mpiexec-docker.image-config\"}}{{.}}{{else}}\
             {{json .Config.Entrypoint}}\n{{range .Config.Env}}{{println .}}{{end}}{{end}}"
        );
    }

    #[test]
    fn environment_files_as_enroot_writes_them() {
        let text =
            "PATH=/usr/local/cuda/bin:/usr/bin\nexport CUDA_VERSION=\"12.4\"\n# note\nBAD NAME=x\nSPACED=a b\nEMPTY=\n";
        assert_eq!(
            parse_environment(text),
            [
                ("PATH".to_string(), "/usr/local/cuda/bin:/usr/bin".to_string()),
                ("CUDA_VERSION".into(), "12.4".into()),
                ("EMPTY".into(), "".into())
            ]
        );
    }
}
