//! Where an image comes from: a registry reference or an image file on a (shared) file system.
//!
//! Accepted forms (`--container-image` and the helper's `IMAGE`):
//! - `[REGISTRY/]NAME[:TAG|@DIGEST]`, also `docker://…`, and pyxis's `REGISTRY#NAME`;
//! - a path to an image archive written by `podman save`/`docker save` (docker-archive or
//!   oci-archive), or to a squashfs root file system as enroot and pyxis use (`.sqsh`), told apart by
//!   their content: it starts with `/` or `.`;
//! - the engine transports `docker-archive:FILE[:NAME]` and `oci-archive:FILE[:NAME]`;
//! - enroot's `dockerd://IMAGE` and `podman://IMAGE`: an image already in the node's Docker store or
//!   the user's Podman store, for the engine that has that store (never pulled).
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
    #[error(
        "image '{image}' is not a valid image reference ({reason}); write [REGISTRY/]NAME[:TAG|@DIGEST] in lower case"
    )]
    BadReference { image: String, reason: String },
}

/// The kinds of image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`/`podman save` (the default format): `manifest.json` at the top.
    Docker,
    /// An OCI image layout in a tar: `oci-layout` and `index.json` at the top.
    Oci,
    /// A squashfs root file system (what `enroot import` writes, `.sqsh`): imported as a one-layer
    /// image, its environment from the file system's `/etc/environment`, as enroot keeps it.
    Squashfs,
}

impl ArchiveFormat {
    pub fn transport(self) -> &'static str {
        match self {
            ArchiveFormat::Docker => "docker-archive",
            ArchiveFormat::Oci => "oci-archive",
            ArchiveFormat::Squashfs => "squashfs",
        }
    }
}

/// The magic number at the start of a squashfs file system ("hsqs", little-endian 0x73717368).
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// An image as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry (or local store) reference, normalised (`REGISTRY#NAME` → `REGISTRY/NAME`).
    Registry(String),
    /// An image file; `format` when the user named the transport.
    Archive { path: PathBuf, format: Option<ArchiveFormat> },
    /// An image already in a local store, as enroot names them: `dockerd://IMAGE` (the node's Docker
    /// daemon) or `podman://IMAGE` (the user's Podman store). Never pulled: used as it is in the
    /// engine's own store, brought over from the other (see [`crate::store_import`]).
    Store { store: LocalStore, reference: String },
}

/// The local stores enroot's URIs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStore {
    Docker,
    Podman,
}

impl LocalStore {
    pub fn scheme(self) -> &'static str {
        match self {
            LocalStore::Docker => "dockerd://",
            LocalStore::Podman => "podman://",
        }
    }
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
        for store in [LocalStore::Docker, LocalStore::Podman] {
            if let Some(reference) = text.strip_prefix(store.scheme()) {
                if reference.is_empty() || reference.contains("://") {
                    return Err(ImageError::BadName(text.into()));
                }
                return Ok(ImageSource::Store { store, reference: reference.to_string() });
            }
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
        // the registry reference grammar (see crate::image_reference): what an engine would refuse
        // later is refused here, with the reason
        if let Some(reason) = crate::image_reference::problem(&reference) {
            return Err(ImageError::BadReference { image: text.into(), reason: reason.to_string() });
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

/// An image file opened once, by whoever may read it (the user: with Docker the root helper opens it
/// while acting as the user), and from then on used only through this descriptor: checked, hashed and
/// fed to the engine's `load` without its path being looked up again.
#[derive(Debug)]
pub struct ImageFile {
    pub path: PathBuf,
    pub file: std::fs::File,
    /// The file's identity when opened (device, inode, size, mtime, ctime): a file changed while it
    /// was loaded is refused.
    stamp: (u64, u64, u64, i64, i64, i64, i64),
}

impl ImageFile {
    /// Opens `path` without blocking (a FIFO or a device would stall the open, and whoever waits on
    /// the lock of this user's fetches with it), then checks it is a regular file.
    pub fn open(path: &Path) -> Result<ImageFile, ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |reason: String| ImageError::BadFile { path: path.display().to_string(), reason };
        if path.starts_with("/proc") || path.starts_with("/dev") {
            return Err(bad("image files under /proc or /dev are not accepted; give the file's own path".into()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| bad(e.to_string()))?;
        let stamp = stamp(&file).map_err(|e| bad(e.to_string()))?;
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(bad("not a regular file".into()));
        }
        Ok(ImageFile { path: path.to_path_buf(), file, stamp })
    }

    /// The SHA-256 of the file's bytes, read from the open descriptor.
    pub fn sha256(&mut self) -> Result<String, ImageError> {
        use sha2::Digest;
        let bad =
            |e: std::io::Error| ImageError::BadFile { path: self.path.display().to_string(), reason: e.to_string() };
        self.file.seek(SeekFrom::Start(0)).map_err(bad)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = self.file.read(&mut buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A key for the file's identity (see `stamp`): equal keys, unchanged file.
    pub fn stamp_key(&self) -> String {
        let (dev, ino, size, ms, mns, cs, cns) = self.stamp;
        format!("{dev:x}-{ino:x}-{size:x}-{ms:x}.{mns:x}-{cs:x}.{cns:x}")
    }

    /// Whether the file is still as it was when opened (nothing wrote to it since: its ctime moves
    /// with any change).
    pub fn unchanged(&self) -> bool {
        stamp(&self.file).map(|s| s == self.stamp).unwrap_or(false)
    }
}

fn stamp(file: &std::fs::File) -> std::io::Result<(u64, u64, u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

/// What is known of an image file before loading it: its format, the image it holds and the names
/// it would give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub format: ArchiveFormat,
    /// Hex digest naming the image's content (docker-archive: the config's; oci-archive: the
    /// manifest's).
    pub digest: String,
    /// The names the archive gives its image (our loads strip them, see [`copy_without_names`]).
    pub names: Vec<String>,
}

impl ArchiveInfo {
    /// Reads the archive's index (not its layers). A file that is not a tar archive, or has no
    /// image index, or is cut short, is refused here.
    pub fn read(path: &Path, wanted: Option<ArchiveFormat>) -> Result<ArchiveInfo, ImageError> {
        let mut file = ImageFile::open(path)?;
        ArchiveInfo::of(&mut file, wanted)
    }

    /// [`ArchiveInfo::read`] from an open image file.
    pub fn of(image: &mut ImageFile, wanted: Option<ArchiveFormat>) -> Result<ArchiveInfo, ImageError> {
        let bad = |reason: String| ImageError::BadFile { path: image.path.display().to_string(), reason };
        let mut magic = [0u8; 4];
        let read = image.file.seek(SeekFrom::Start(0)).and_then(|_| image.file.read_exact(&mut magic));
        if read.is_ok() && &magic == SQUASHFS_MAGIC && wanted.is_none() {
            // its content key is the file's hash (there is no image config in it)
            return Ok(ArchiveInfo { format: ArchiveFormat::Squashfs, digest: String::new(), names: Vec::new() });
        }
        let entries = tar_entries(&mut image.file, &INDEX_FILES).map_err(|e| match wanted {
            None => bad(format!("{e} (an image file is a docker-archive, an oci-archive or a squashfs file system)")),
            Some(_) => bad(e),
        })?;
        let get = |name: &str| entries.iter().find(|(n, _)| n == name).map(|(_, c)| c.as_str());
        let info = match (get("manifest.json"), get("index.json")) {
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
                    "not an image file (neither docker-archive, oci-archive nor squashfs; write one with `podman save`)"
                        .into()
                }
            })),
        };
        Ok(info)
    }

    /// The id the loaded image must have: the config digest (for an oci-archive, read from its
    /// manifest blob).
    pub fn image_id(&self, image: &mut ImageFile) -> Result<String, ImageError> {
        let bad = |reason: String| ImageError::BadFile { path: image.path.display().to_string(), reason };
        match self.format {
            ArchiveFormat::Docker => Ok(self.digest.clone()),
            ArchiveFormat::Squashfs => Err(bad("a squashfs file holds no image id".into())),
            ArchiveFormat::Oci => {
                let blob = format!("blobs/sha256/{}", self.digest);
                let entries = tar_entries(&mut image.file, &[blob.as_str()]).map_err(bad)?;
                let manifest =
                    entries.first().map(|(_, c)| c.as_str()).ok_or_else(|| bad(format!("{blob} is missing")))?;
                let v: serde_json::Value = serde_json::from_str(manifest).map_err(|e| bad(format!("{blob}: {e}")))?;
                v.pointer("/config/digest")
                    .and_then(|d| d.as_str())
                    .and_then(hex_digest)
                    .ok_or_else(|| bad(format!("{blob} names no config")))
            }
        }
    }

    /// The name the loaded image is kept under: `CACHE_REPOSITORY/[u<UID>/]<file stem>:<key>`, where
    /// the key is the start of the file's SHA-256 and the uid part is there when the store is shared
    /// by users (Docker's): one user's entries never stand for another's file.
    pub fn cache_name(path: &Path, sha256: &str, scope: Option<u32>) -> String {
        let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = stem.trim_end_matches(".tar").trim_end_matches(".oci").trim_end_matches(".docker");
        let stem = stem.trim_end_matches(".sqsh").trim_end_matches(".squashfs");
        let mut name = repository_component(stem);
        if name.is_empty() {
            name = "image".into();
        }
        let user = scope.map(|u| format!("u{u}/")).unwrap_or_default();
        format!("{CACHE_REPOSITORY}/{user}{name}:{}", &sha256[..sha256.len().min(16)])
    }
}

/// The top-level files of an archive that give names or say what it holds.
const INDEX_FILES: [&str; 4] = ["manifest.json", "index.json", "oci-layout", "repositories"];

/// `text` as one path component of an image repository name: lower case, `[a-z0-9._-]`, other
/// characters as `-`, starting and ending with a letter or digit (may come out empty).
pub fn repository_component(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' })
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// One member of a tar file as an engine's loader reads it: the PAX (`x`) or GNU long-name (`L`)
/// headers before it applied (the `tar` crate reads them as Go's archive/tar, which Docker and Podman
/// use, does).
#[derive(Debug)]
struct Member {
    /// Where its first header (an extended one, if any) starts: where the one before it ended.
    start: u64,
    /// Where its own header starts.
    header_at: u64,
    /// Where its data starts.
    data_at: u64,
    size: u64,
    name: String,
    /// Whether extended headers changed its name or size.
    extended: bool,
    /// Where the next member starts.
    end: u64,
}

/// The members of a tar file, read from their headers (data is skipped, not read). Errors on a file
/// that is not a tar, is cut short or is corrupt.
fn members<R: Read + Seek>(r: &mut R) -> Result<Vec<Member>, String> {
    let total = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    if total < 512 {
        return Err("not a tar archive".into());
    }
    let mut found: Vec<Member> = Vec::new();
    let mut archive = tar::Archive::new(r);
    let entries = archive.entries_with_seek().map_err(|e| e.to_string())?;
    for entry in entries {
        let bad = |e: std::io::Error| match found.is_empty() {
            true => "not a tar archive".to_string(),
            false if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the file is cut short (truncated archive)".into()
            }
            false => "the archive is corrupt".to_string(),
        };
        let entry = entry.map_err(bad)?;
        let header_at = entry.raw_header_position();
        let data_at = entry.raw_file_position();
        let size = entry.size();
        let end = data_at.checked_add(size.div_ceil(512) * 512).ok_or("the archive is corrupt")?;
        if end > total {
            return Err("the file is cut short (truncated archive)".into());
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
        let own = String::from_utf8_lossy(&entry.header().path_bytes()).trim_start_matches("./").to_string();
        let extended = name != own || entry.header().entry_size().ok() != Some(size);
        let start = found.last().map_or(0, |m| m.end);
        found.push(Member { start, header_at, data_at, size, name, extended, end });
    }
    if found.is_empty() {
        return Err("not a tar archive".into());
    }
    Ok(found)
}

/// The contents of the named members of a tar file (layers are skipped, not read). Errors on a file
/// that is not a tar or ends early, and on an index file given twice or through extended headers.
fn tar_entries<R: Read + Seek>(r: &mut R, names: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for m in members(r)? {
        if !names.contains(&m.name.as_str()) {
            continue;
        }
        if found.iter().any(|(n, _)| *n == m.name) {
            // which of the two an engine's load would apply is the engine's choice: neither is trusted
            return Err(format!("the archive holds {} twice: refused", m.name));
        }
        if m.extended && INDEX_FILES.contains(&m.name.as_str()) {
            return Err(format!("the archive names {} through an extended tar header: refused", m.name));
        }
        if m.size > 16 << 20 {
            return Err(format!("{} is over 16 MiB", m.name));
        }
        r.seek(SeekFrom::Start(m.data_at)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; m.size as usize];
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        found.push((m.name, String::from_utf8_lossy(&buf).into_owned()));
    }
    Ok(found)
}

/// Copies an image archive to `out` as an engine's `load` should see it: with no names. The names in
/// `manifest.json` (`RepoTags`) and `index.json` (annotations) are dropped and `repositories` is left
/// out, so that a load never changes what any name means in the store; every other byte is as read.
pub fn copy_without_names<R: Read + Seek, W: std::io::Write>(r: &mut R, out: &mut W) -> Result<(), String> {
    let members: Vec<(u64, u64, u64, String, u64)> =
        members(r)?.into_iter().map(|m| (m.start, m.header_at, m.size, m.name, m.end)).collect();
    let copy = |r: &mut R, out: &mut W, from: u64, to: u64| -> Result<(), String> {
        r.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
        let n = std::io::copy(&mut r.by_ref().take(to - from), out).map_err(|e| e.to_string())?;
        if n != to - from {
            return Err("the file changed while it was read".into());
        }
        Ok(())
    };
    for (start, header_at, size, name, end) in members {
        match name.as_str() {
            "repositories" => {}
            "manifest.json" | "index.json" => {
                r.seek(SeekFrom::Start(header_at)).map_err(|e| e.to_string())?;
                let mut header = [0u8; 512];
                r.read_exact(&mut header).map_err(|e| e.to_string())?;
                let mut body = vec![0u8; size as usize];
                r.read_exact(&mut body).map_err(|e| e.to_string())?;
                let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("bad {name}: {e}"))?;
                if name == "manifest.json" {
                    for entry in v.as_array_mut().into_iter().flatten() {
                        if let Some(o) = entry.as_object_mut() {
                            o.insert("RepoTags".into(), serde_json::Value::Null);
                        }
                    }
                } else {
                    for entry in v.get_mut("manifests").and_then(|m| m.as_array_mut()).into_iter().flatten() {
                        if let Some(o) = entry.as_object_mut() {
                            o.remove("annotations");
                        }
                    }
                }
                let body = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
                header[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
                header[148..156].copy_from_slice(b"        ");
                let sum: u32 = header.iter().map(|&b| b as u32).sum();
                header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                out.write_all(&header).map_err(|e| e.to_string())?;
                out.write_all(&body).map_err(|e| e.to_string())?;
                out.write_all(&vec![0u8; body.len().div_ceil(512) * 512 - body.len()]).map_err(|e| e.to_string())?;
            }
            _ => copy(r, out, start, end)?,
        }
    }
    out.write_all(&[0u8; 1024]).map_err(|e| e.to_string())
}

fn hex_digest(s: &str) -> Option<String> {
    let hex = s.trim_start_matches("sha256:");
    let hex = hex.trim_end_matches(".json");
    let hex = hex.rsplit('/').next().unwrap_or(hex);
    (hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// docker-archive `manifest.json`: `[{"Config": "<hex>.json" | "blobs/sha256/<hex>", "RepoTags": […]}]`.
fn docker_config_digest(manifest: &str) -> Result<(String, Vec<String>), String> {
    let v: serde_json::Value = serde_json::from_str(manifest).map_err(|e| format!("bad manifest.json: {e}"))?;
    match v.as_array().map(Vec::len) {
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

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|t| t.as_array())
        .map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// oci-archive `index.json`: `{"manifests": [{"digest": "sha256:<hex>", "annotations": {…}}]}`.
fn oci_manifest_digest(index: &str) -> Result<(String, Vec<String>), String> {
    let v: serde_json::Value = serde_json::from_str(index).map_err(|e| format!("bad index.json: {e}"))?;
    match v.get("manifests").and_then(|m| m.as_array()).map(Vec::len) {
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
        let path = crate::test_scratch::dir().join("fifo.tar");
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
        let digest = format!("img@sha256:{}", "ab".repeat(32));
        assert_eq!(ImageSource::parse(&digest).unwrap(), reg(&digest));
        assert_eq!(ImageSource::parse("alice@nvcr.io#nvidia/cuda:12").unwrap(), reg("nvcr.io/nvidia/cuda:12"));
        for bad in ["", "--privileged", "img --privileged", "#name", "reg#", "alice@#x", "http://x/y"] {
            assert!(ImageSource::parse(bad).is_err(), "{bad:?}");
        }
        // what no registry or engine would take, with the reason
        for bad in ["Ubuntu:22.04", "img@sha256:abcd", "a/b:tag:more", "reg:5000/x:"] {
            let err = ImageSource::parse(bad).unwrap_err().to_string();
            assert!(err.contains("not a valid image reference"), "{bad:?}: {err}");
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
        assert_eq!(
            ImageSource::parse("dockerd://ubuntu:24.04").unwrap(),
            ImageSource::Store { store: LocalStore::Docker, reference: "ubuntu:24.04".into() }
        );
        assert_eq!(
            ImageSource::parse("podman://localhost/mine").unwrap(),
            ImageSource::Store { store: LocalStore::Podman, reference: "localhost/mine".into() }
        );
        assert!(ImageSource::parse("podman://").is_err());
        assert!(ImageSource::parse("dockerd://x://y").is_err());
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
        crate::test_scratch::file(name, bytes)
    }

    const CONFIG: &str = "8f2c3e4d5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";

    #[test]
    fn docker_archives_are_keyed_by_their_config() {
        let manifest = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["md/x:1"],"Layers":["a/layer.tar"]}}]"#);
        let p = write("x.tar", &tar(&[("a/layer.tar", &[7u8; 2000]), ("manifest.json", manifest.as_bytes())]));
        let info = ArchiveInfo::read(&p, None).unwrap();
        let names = vec!["md/x:1".to_string()];
        assert_eq!(info, ArchiveInfo { format: ArchiveFormat::Docker, digest: CONFIG.into(), names });
        let sha = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(
            ArchiveInfo::cache_name(Path::new("/shared/My Image.tar"), sha, None),
            format!("{CACHE_REPOSITORY}/my-image:0011223344556677")
        );
        assert_eq!(
            ArchiveInfo::cache_name(Path::new("/shared/My Image.tar"), sha, Some(1500)),
            format!("{CACHE_REPOSITORY}/u1500/my-image:0011223344556677"),
            "a shared store keeps each user's entries apart"
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

    fn tar_with_pax(pax_path: &str, entries: &[(&str, &[u8])]) -> Vec<u8> {
        // a PAX header ('x') naming the next member differently from its own header
        let record = format!("path={pax_path}\n");
        let len = record.len() + 3;
        let body = format!("{len} {record}");
        assert_eq!(body.len(), len);
        let mut out = tar(&[("PaxHeader", body.as_bytes())]);
        out.truncate(out.len() - 1024);
        out[156] = b'x';
        out[148..156].copy_from_slice(b"        ");
        let sum: u32 = out[..512].iter().map(|&b| b as u32).sum();
        out[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&tar(entries));
        out
    }

    #[test]
    fn index_files_named_through_extended_headers_are_refused() {
        // Go's archive/tar (the engines' loaders) reads this member as manifest.json
        let evil = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["ubuntu:22.04"]}}]"#);
        let p = write("pax.tar", &tar_with_pax("manifest.json", &[("harmless.txt", evil.as_bytes())]));
        let err = ArchiveInfo::read(&p, None).unwrap_err().to_string();
        assert!(err.contains("extended tar header"), "{err}");
        // a second manifest.json that way is the index twice
        let one = format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["md/x:1"]}}]"#);
        let mut bytes = tar(&[("manifest.json", one.as_bytes())]);
        bytes.truncate(bytes.len() - 1024);
        bytes.extend_from_slice(&tar_with_pax("manifest.json", &[("other", evil.as_bytes())]));
        let p = write("pax2.tar", &bytes);
        let err = ArchiveInfo::read(&p, None).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn loads_see_no_names() {
        let manifest =
            format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["ubuntu:22.04","md/x:1"],"Layers":["a/layer.tar"]}}]"#);
        let repositories = br#"{"ubuntu":{"22.04":"abc"}}"#;
        let layer = [7u8; 2000];
        let original =
            tar(&[("a/layer.tar", &layer), ("repositories", repositories), ("manifest.json", manifest.as_bytes())]);
        let mut out = Vec::new();
        copy_without_names(&mut std::io::Cursor::new(&original), &mut out).unwrap();
        let p = write("stripped.tar", &out);
        let info = ArchiveInfo::read(&p, None).unwrap();
        assert_eq!(info.digest, CONFIG, "the same image");
        assert!(info.names.is_empty(), "{info:?}");
        let entries = tar_entries(&mut std::io::Cursor::new(&out), &["repositories", "a/layer.tar"]).unwrap();
        assert_eq!(entries.len(), 1, "repositories is left out");
        assert_eq!(entries[0].1.as_bytes(), &layer[..], "layers are copied as they are");
        let index = format!(
            r#"{{"manifests":[{{"digest":"sha256:{CONFIG}","annotations":{{"org.opencontainers.image.ref.name":"ubuntu:22.04"}}}}]}}"#
        );
        let original = tar(&[("oci-layout", b"{}"), ("index.json", index.as_bytes())]);
        let mut out = Vec::new();
        copy_without_names(&mut std::io::Cursor::new(&original), &mut out).unwrap();
        let p = write("stripped-oci.tar", &out);
        let info = ArchiveInfo::read(&p, None).unwrap();
        assert_eq!((info.format, info.names.len()), (ArchiveFormat::Oci, 0));
    }

    #[test]
    fn the_key_is_the_hash_of_the_bytes() {
        let p = write("hash.tar", b"abc");
        let mut f = ImageFile::open(&p).unwrap();
        assert_eq!(f.sha256().unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(f.unchanged());
        std::fs::write(&p, b"abcd").unwrap();
        assert!(!f.unchanged(), "a write is seen");
        assert!(ImageFile::open(Path::new("/proc/self/fd/0")).unwrap_err().to_string().contains("/proc"));
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
        assert!(err.contains("not an image file"), "{err}");
        let err = ArchiveInfo::read(Path::new("/no/such/file.tar"), None).unwrap_err().to_string();
        assert!(err.contains("/no/such/file.tar"), "{err}");
    }
}
