//! Where an image comes from: a registry reference or an image file on a (shared) file system.
//!
//! Accepted forms (`--container-image` and the helper's `IMAGE`):
//! - `[REGISTRY/]NAME[:TAG|@DIGEST]`, also `docker://…`, and pyxis's `REGISTRY#NAME`;
//! - a path to an image archive written by `podman save`/`docker save` (docker-archive or
//!   oci-archive, told apart by their content): it starts with `/` or `.`;
//! - the engine transports `docker-archive:FILE[:NAME]` and `oci-archive:FILE[:NAME]`.
//!
//! A file is loaded into the engine's store once and kept under a name of ours,
//! [`CACHE_REPOSITORY`]`/NAME:KEY`, where KEY comes from the archive's content (the image's config
//! digest, read from its index without unpacking the layers): a rewritten file is a new key, an
//! unchanged one is reused by every later step and job.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where images loaded from files are kept in the engine's store.
pub const CACHE_REPOSITORY: &str = "localhost/mpiexec-docker-cache";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("image '{0}' is not a valid image name (it may not be empty, start with '-' or contain spaces)")]
    BadName(String),
    #[error("image file {path}: {reason}")]
    BadFile { path: String, reason: String },
}

/// The two kinds of image archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`/`podman save` (the default format): `manifest.json` at the top.
    Docker,
    /// An OCI image layout in a tar: `oci-layout` and `index.json` at the top.
    Oci,
}

impl ArchiveFormat {
    pub fn transport(self) -> &'static str {
        match self {
            ArchiveFormat::Docker => "docker-archive",
            ArchiveFormat::Oci => "oci-archive",
        }
    }
}

/// An image as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry (or local store) reference, normalised (`REGISTRY#NAME` → `REGISTRY/NAME`).
    Registry(String),
    /// An image file; `format` when the user named the transport.
    Archive { path: PathBuf, format: Option<ArchiveFormat> },
}

impl ImageSource {
    pub fn parse(text: &str) -> Result<ImageSource, ImageError> {
        if text.is_empty() || text.starts_with('-') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageError::BadName(text.into()));
        }
        for (prefix, format) in [("docker-archive:", ArchiveFormat::Docker), ("oci-archive:", ArchiveFormat::Oci)] {
            if let Some(rest) = text.strip_prefix(prefix) {
                // FILE[:NAME], split at the first colon as the engines do; the name part only says
                // which image of a multi-image archive, and we load the file
                let file = rest.split_once(':').map(|(f, _)| f).unwrap_or(rest);
                if file.is_empty() {
                    return Err(ImageError::BadName(text.into()));
                }
                return Ok(ImageSource::Archive { path: file.into(), format: Some(format) });
            }
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(ImageSource::Archive { path: text.into(), format: None });
        }
        let reference = text.strip_prefix("docker://").unwrap_or(text);
        let reference = match reference.split_once('#') {
            // pyxis's [USER@]REGISTRY#NAME: the credentials are the engine's (its auth file), not ours
            Some((registry, name)) if !name.is_empty() => {
                let registry = registry.rsplit_once('@').map(|(_, r)| r).unwrap_or(registry);
                if registry.is_empty() {
                    return Err(ImageError::BadName(text.into()));
                }
                format!("{registry}/{name}")
            }
            Some(_) => return Err(ImageError::BadName(text.into())),
            None => reference.to_string(),
        };
        if reference.is_empty() || reference.contains("://") {
            return Err(ImageError::BadName(text.into()));
        }
        Ok(ImageSource::Registry(reference))
    }
}

/// `text` with a relative image file path made absolute from `base` (for another node or directory);
/// anything else as it is.
pub fn with_absolute_path(text: &str, base: &Path) -> String {
    for prefix in ["docker-archive:", "oci-archive:", ""] {
        if let Some(rest) = text.strip_prefix(prefix) {
            if rest.starts_with('.') {
                let rest = rest.strip_prefix("./").unwrap_or(rest);
                return format!("{prefix}{}", base.join(rest).display());
            }
        }
    }
    text.to_string()
}

/// What is known of an image file before loading it: its format and a key for its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub format: ArchiveFormat,
    /// Hex digest naming the image's content (docker-archive: the config's; oci-archive: the
    /// manifest's).
    pub digest: String,
    /// The names the archive gives its image (a load applies them to the store too).
    pub names: Vec<String>,
}

impl ArchiveInfo {
    /// Reads the archive's index (not its layers). A file that is not a tar archive, or has no
    /// image index, or is cut short, is refused here.
    pub fn read(path: &Path, wanted: Option<ArchiveFormat>) -> Result<ArchiveInfo, ImageError> {
        let bad = |reason: String| ImageError::BadFile { path: path.display().to_string(), reason };
        // opened without blocking (a FIFO or a device would stall the open, and whoever waits on this
        // node's image lock with it), then checked to be a regular file before anything is read
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| bad(e.to_string()))?
        };
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(bad("not a regular file".into()));
        }
        let entries = tar_entries(&mut file, &["manifest.json", "index.json", "oci-layout"]).map_err(bad)?;
        let get = |name: &str| entries.iter().find(|(n, _)| n == name).map(|(_, c)| c.as_str());
        let info =
            match (get("manifest.json"), get("index.json")) {
                (Some(manifest), _) if wanted != Some(ArchiveFormat::Oci) => {
                    let (digest, names) = docker_config_digest(manifest).map_err(bad)?;
                    ArchiveInfo { format: ArchiveFormat::Docker, digest, names }
                }
                (_, Some(index)) if get("oci-layout").is_some() && wanted != Some(ArchiveFormat::Docker) => {
                    let (digest, names) = oci_manifest_digest(index).map_err(bad)?;
                    ArchiveInfo { format: ArchiveFormat::Oci, digest, names }
                }
                _ => return Err(bad(match wanted {
                    Some(f) => format!("not a {} (no image index in it)", f.transport()),
                    None => {
                        "not an image archive (neither docker-archive nor oci-archive; write one with `podman save`)"
                            .into()
                    }
                })),
            };
        Ok(info)
    }

    /// The name the loaded image is kept under: `CACHE_REPOSITORY/<file stem>:<digest prefix>`.
    pub fn cache_name(&self, path: &Path) -> String {
        let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = stem.trim_end_matches(".tar").trim_end_matches(".oci").trim_end_matches(".docker");
        let mut name = repository_component(stem);
        if name.is_empty() {
            name = "image".into();
        }
        format!("{CACHE_REPOSITORY}/{name}:{}", &self.digest[..self.digest.len().min(16)])
    }
}

/// `text` as one path component of an image repository name: lower case, `[a-z0-9._-]`, other
/// characters as `-`, starting and ending with a letter or digit (may come out empty).
pub fn repository_component(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' })
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The contents of the named top-level entries of a tar file, read by walking its headers (layers
/// are skipped, not read). Errors on a file that is not a tar or ends early.
fn tar_entries<R: Read + Seek>(r: &mut R, names: &[&str]) -> Result<Vec<(String, String)>, String> {
    let total = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; 512];
    let mut seen_any = false;
    loop {
        if pos + 512 > total {
            return Err(if seen_any {
                "the file is cut short (truncated archive)".into()
            } else {
                "not a tar archive".into()
            });
        }
        r.read_exact(&mut header).map_err(|e| e.to_string())?;
        if header.iter().all(|&b| b == 0) {
            // end of archive
            return if seen_any { Ok(found) } else { Err("not a tar archive".into()) };
        }
        if &header[257..262] != b"ustar" && !checksum_ok(&header) {
            return Err(if seen_any { "the archive is corrupt".into() } else { "not a tar archive".into() });
        }
        seen_any = true;
        let field = |a: usize, b: usize| {
            let raw = &header[a..b];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size = u64::from_str_radix(field(124, 136).trim(), 8).map_err(|_| "the archive is corrupt".to_string())?;
        let name = field(0, 100);
        let name = name.trim_start_matches("./").to_string();
        let data = pos + 512;
        let next = data + size.div_ceil(512) * 512;
        if next > total {
            return Err("the file is cut short (truncated archive)".into());
        }
        if names.contains(&name.as_str()) && found.iter().any(|(n, _)| *n == name) {
            // which of the two an engine's load would apply is the engine's choice: neither is trusted
            return Err(format!("the archive holds {name} twice: refused"));
        }
        if names.contains(&name.as_str()) && size <= 16 << 20 {
            let mut buf = vec![0u8; size as usize];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            found.push((name, String::from_utf8_lossy(&buf).into_owned()));
        }
        r.seek(SeekFrom::Start(next)).map_err(|e| e.to_string())?;
        pos = next;
    }
}

fn checksum_ok(h: &[u8; 512]) -> bool {
    let stored = String::from_utf8_lossy(&h[148..156]);
    let Ok(stored) = u32::from_str_radix(stored.trim_matches(|c: char| c == '\0' || c == ' '), 8) else {
        return false;
    };
    let sum: u32 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
    sum == stored
}

fn hex_digest(s: &str) -> Option<String> {
    let hex = s.trim_start_matches("sha256:");
    let hex = hex.trim_end_matches(".json");
    let hex = hex.rsplit('/').next().unwrap_or(hex);
    (hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// docker-archive `manifest.json`: `[{"Config": "<hex>.json" | "blobs/sha256/<hex>", "RepoTags": […]}]`.
fn docker_config_digest(manifest: &str) -> Result<(String, Vec<String>), String> {
    let v: serde_yaml::Value = serde_yaml::from_str(manifest).map_err(|e| format!("bad manifest.json: {e}"))?;
    match v.as_sequence().map(Vec::len) {
        Some(1) => {}
        Some(0) | None => return Err("manifest.json names no image".into()),
        // a load applies every entry's names: one image per file, whose names we know
        Some(n) => return Err(format!("manifest.json names {n} images: one image per file")),
    }
    let first = v.get(0).ok_or("manifest.json names no image")?;
    let config = first.get("Config").and_then(|c| c.as_str()).ok_or("manifest.json names no image")?;
    let digest = hex_digest(config).ok_or_else(|| format!("manifest.json: unexpected config name '{config}'"))?;
    Ok((digest, strings(first.get("RepoTags"))))
}

fn strings(v: Option<&serde_yaml::Value>) -> Vec<String> {
    v.and_then(|t| t.as_sequence())
        .map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// oci-archive `index.json`: `{"manifests": [{"digest": "sha256:<hex>", "annotations": {…}}]}`.
fn oci_manifest_digest(index: &str) -> Result<(String, Vec<String>), String> {
    let v: serde_yaml::Value = serde_yaml::from_str(index).map_err(|e| format!("bad index.json: {e}"))?;
    match v.get("manifests").and_then(|m| m.as_sequence()).map(Vec::len) {
        Some(1) => {}
        Some(0) | None => return Err("index.json names no image".into()),
        Some(n) => return Err(format!("index.json names {n} images: one image per file")),
    }
    let first = v.get("manifests").and_then(|m| m.get(0)).ok_or("index.json names no image")?;
    let digest = first.get("digest").and_then(|d| d.as_str()).ok_or("index.json names no image")?;
    let hex = hex_digest(digest).ok_or_else(|| format!("index.json: unexpected digest '{digest}'"))?;
    let names = first
        .get("annotations")
        .and_then(|a| a.get("org.opencontainers.image.ref.name"))
        .and_then(|n| n.as_str())
        .map(|n| vec![n.to_string()])
        .unwrap_or_default();
    Ok((hex, names))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_fifo_is_refused_at_once() {
        let path = std::env::temp_dir().join(format!("mdt-fifo-{}.tar", std::process::id()));
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = super::ArchiveInfo::read(&path, None).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("not a regular file"), "{err}");
    }

    use super::*;

    #[test]
    fn registry_forms() {
        let reg = |s: &str| ImageSource::Registry(s.into());
        assert_eq!(ImageSource::parse("ubuntu:22.04").unwrap(), reg("ubuntu:22.04"));
        assert_eq!(ImageSource::parse("127.0.0.1:5000/md/openmpi:1").unwrap(), reg("127.0.0.1:5000/md/openmpi:1"));
        assert_eq!(ImageSource::parse("127.0.0.1:5000#md/openmpi").unwrap(), reg("127.0.0.1:5000/md/openmpi"));
        assert_eq!(
            ImageSource::parse("docker://nvcr.io#nvidia/pytorch:24.01").unwrap(),
            reg("nvcr.io/nvidia/pytorch:24.01")
        );
        assert_eq!(ImageSource::parse("img@sha256:abcd").unwrap(), reg("img@sha256:abcd"));
        assert_eq!(ImageSource::parse("alice@nvcr.io#nvidia/cuda:12").unwrap(), reg("nvcr.io/nvidia/cuda:12"));
        for bad in ["", "--privileged", "img --privileged", "#name", "reg#", "alice@#x", "http://x/y"] {
            assert!(ImageSource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_files_for_other_nodes() {
        let base = Path::new("/shared/run");
        assert_eq!(with_absolute_path("./img.tar", base), "/shared/run/img.tar");
        assert_eq!(with_absolute_path("docker-archive:./i.tar:x", base), "docker-archive:/shared/run/i.tar:x");
        assert_eq!(with_absolute_path("/abs/i.tar", base), "/abs/i.tar");
        assert_eq!(with_absolute_path("reg:5000/a/b:1", base), "reg:5000/a/b:1");
    }

    #[test]
    fn file_forms() {
        let file = |p: &str, f| ImageSource::Archive { path: p.into(), format: f };
        assert_eq!(ImageSource::parse("/shared/img.tar").unwrap(), file("/shared/img.tar", None));
        assert_eq!(ImageSource::parse("./img.tar").unwrap(), file("./img.tar", None));
        assert_eq!(
            ImageSource::parse("docker-archive:/s/img.tar").unwrap(),
            file("/s/img.tar", Some(ArchiveFormat::Docker))
        );
        assert_eq!(
            ImageSource::parse("docker-archive:/s/img.tar:md/openmpi:latest").unwrap(),
            file("/s/img.tar", Some(ArchiveFormat::Docker))
        );
        assert_eq!(ImageSource::parse("oci-archive:/s/img.oci").unwrap(), file("/s/img.oci", Some(ArchiveFormat::Oci)));
    }

    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("md-image-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    const CONFIG: &str = "8f2c3e4d5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";

    #[test]
    fn docker_archives_are_keyed_by_their_config() {
        let manifest = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["md/x:1"],"Layers":["a/layer.tar"]}}]"#);
        let p = write("x.tar", &tar(&[("a/layer.tar", &[7u8; 2000]), ("manifest.json", manifest.as_bytes())]));
        let info = ArchiveInfo::read(&p, None).unwrap();
        let names = vec!["md/x:1".to_string()];
        assert_eq!(info, ArchiveInfo { format: ArchiveFormat::Docker, digest: CONFIG.into(), names });
        assert_eq!(
            info.cache_name(Path::new("/shared/My Image.tar")),
            format!("{CACHE_REPOSITORY}/my-image:8f2c3e4d5a6b7c8d")
        );
        assert!(ArchiveInfo::read(&p, Some(ArchiveFormat::Oci)).is_err(), "not an oci-archive");
    }

    #[test]
    fn oci_archives_are_keyed_by_their_manifest() {
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{CONFIG}","size":5}}]}}"#);
        let p = write(
            "y.tar",
            &tar(&[("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#), ("index.json", index.as_bytes())]),
        );
        assert_eq!(ArchiveInfo::read(&p, None).unwrap().format, ArchiveFormat::Oci);
    }

    #[test]
    fn archives_that_could_rename_other_images_are_refused() {
        // two entries (a load applies both entries' names), or the index twice (which one a load
        // applies is the engine's choice)
        let two = format!(
            r#"[{{"Config":"{CONFIG}.json","RepoTags":["md/x:1"]}},{{"Config":"{CONFIG}.json","RepoTags":["ubuntu:22.04"]}}]"#
        );
        let p = write("two.tar", &tar(&[("manifest.json", two.as_bytes())]));
        let err = ArchiveInfo::read(&p, None).unwrap_err().to_string();
        assert!(err.contains("names 2 images"), "{err}");
        let one = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["md/x:1"]}}]"#);
        let evil = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["ubuntu:22.04"]}}]"#);
        let p = write("twice.tar", &tar(&[("manifest.json", one.as_bytes()), ("./manifest.json", evil.as_bytes())]));
        let err = ArchiveInfo::read(&p, None).unwrap_err().to_string();
        assert!(err.contains("manifest.json twice"), "{err}");
        let index = format!(r#"{{"manifests":[{{"digest":"sha256:{CONFIG}"}},{{"digest":"sha256:{CONFIG}"}}]}}"#);
        let p = write("twooci.tar", &tar(&[("oci-layout", b"{}"), ("index.json", index.as_bytes())]));
        let err = ArchiveInfo::read(&p, None).unwrap_err().to_string();
        assert!(err.contains("names 2 images"), "{err}");
    }

    #[test]
    fn broken_files_are_refused_with_the_reason() {
        let manifest = format!(r#"[{{"Config":"{CONFIG}.json"}}]"#);
        let whole = tar(&[("big", &[1u8; 4096]), ("manifest.json", manifest.as_bytes())]);
        let cut = write("cut.tar", &whole[..3000]);
        let err = ArchiveInfo::read(&cut, None).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let junk = write("junk.tar", b"this is not an image at all, just some text that is long enough..");
        let err = ArchiveInfo::read(&junk, None).unwrap_err().to_string();
        assert!(err.contains("not a tar archive"), "{err}");
        let plain = write("plain.tar", &tar(&[("hello.txt", b"hi")]));
        let err = ArchiveInfo::read(&plain, None).unwrap_err().to_string();
        assert!(err.contains("not an image archive"), "{err}");
        let err = ArchiveInfo::read(Path::new("/no/such/file.tar"), None).unwrap_err().to_string();
        assert!(err.contains("/no/such/file.tar"), "{err}");
    }
}
