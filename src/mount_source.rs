//! Bind-mount sources that a root daemon (Docker's) can be given for a user without trusting the
//! user's paths.
//!
//! Docker's daemon resolves a mount source by its path, as root, when it creates the container,
//! seconds or minutes after the user's rights were checked (an image fetch lies in between). A user
//! who swaps a directory of theirs for a symlink in that time would have root bind whatever the link
//! names (another user's private files), and `/proc/self/cwd/...` names the daemon's own view.
//!
//! So each source the user names is opened once, with the user's rights ([`open_as_user`]: what the
//! user cannot reach fails there), and root then binds *that open directory* onto a fresh mount point
//! in its own state directory ([`Staging::stage`], through `/proc/self/fd/N`, which names the opened
//! object whatever happens to its path). Docker is given the mount point, a path no user can write or
//! swap. Once the container is running (its mounts are its own copies) the staging mounts go
//! ([`Staging::release`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountSourceError {
    #[error("mount source {0}: paths under /proc and /dev/fd are not accepted; give the directory's own path")]
    Proc(String),
    #[error("mount source {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot stage mount source {path} for the engine: {source}")]
    Stage { path: String, source: std::io::Error },
}

/// Opens `path` (absolute) with this process's effective ids, following links as they do: call it
/// acting as the user. The result names the object itself (`O_PATH`), not its path.
pub fn open_as_user(path: &Path) -> Result<OwnedFd, MountSourceError> {
    let text = path.display().to_string();
    let procish =
        |p: &Path| p.starts_with("/proc") || p.starts_with("/dev/fd") || p.to_string_lossy().starts_with("/dev/std");
    if procish(path) {
        return Err(MountSourceError::Proc(text));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| MountSourceError::Open { path: text.clone(), source: std::io::ErrorKind::InvalidInput.into() })?;
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(MountSourceError::Open { path: text, source: std::io::Error::last_os_error() });
    }
    // SAFETY: `fd` was just opened and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // (a link the user made into /proc resolves here, with their rights and in this process: it
    // names what they could reach anyway, and that object, not the path, is what gets bound)
    Ok(fd)
}

/// Mount points made by root for one container's sources (see the module docs). Released when
/// dropped.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    points: Vec<PathBuf>,
}

impl Staging {
    /// `dir`: a new directory in root's own state directory.
    pub fn new(dir: PathBuf) -> Result<Staging, MountSourceError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| MountSourceError::Stage { path: dir.display().to_string(), source })?;
        Ok(Staging { dir, points: Vec::new() })
    }

    /// Binds the object `fd` names (from [`open_as_user`]) onto a new mount point; returns the point,
    /// the path to give the engine. `what` names the source in errors.
    pub fn stage(&mut self, fd: &OwnedFd, what: &Path) -> Result<PathBuf, MountSourceError> {
        use nix::mount::{mount, MsFlags};
        let err = |source: std::io::Error| MountSourceError::Stage { path: what.display().to_string(), source };
        let point = self.dir.join(self.points.len().to_string());
        let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
            .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| err(e.into()))?;
        if is_dir {
            std::fs::DirBuilder::new().mode(0o700).create(&point).map_err(err)?;
        } else {
            std::fs::OpenOptions::new().write(true).create_new(true).open(&point).map_err(err)?;
        }
        self.points.push(point.clone());
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(source.as_str()), &point, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| err(e.into()))?;
        Ok(point)
    }

    /// [`Staging::stage`] for a mount the container asks to propagate (`[r]shared`, `[r]slave`):
    /// Docker wants such a source shared, so the mount point is made a peer group of its own.
    pub fn stage_shared(&mut self, fd: &OwnedFd, what: &Path) -> Result<PathBuf, MountSourceError> {
        use nix::mount::{mount, MsFlags};
        let point = self.stage(fd, what)?;
        mount(None::<&str>, &point, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| MountSourceError::Stage { path: what.display().to_string(), source: e.into() })?;
        Ok(point)
    }

    /// Takes the staging mounts down (detached: the container keeps its own copies) and removes them.
    pub fn release(&mut self) {
        for p in self.points.drain(..).rev() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_are_refused_however_named() {
        for p in ["/proc/self/cwd", "/proc/1/root/etc", "/dev/fd/3", "/dev/stdin"] {
            assert!(matches!(open_as_user(Path::new(p)), Err(MountSourceError::Proc(_))), "{p}");
        }
        assert!(open_as_user(&std::env::temp_dir()).is_ok());
        assert!(matches!(open_as_user(Path::new("/no/such/dir")), Err(MountSourceError::Open { .. })));
    }
}
