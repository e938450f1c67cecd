//! `--container-save=PATH` (pyxis's option): when a step ends, its container's file system is saved
//! as an image file at PATH, which `--container-image=PATH` and the helper start from.
//!
//! pyxis writes a squashfs file; we write a docker-archive (what `podman save` writes), the format
//! every engine loads with the image's own configuration. PATH is taken from the job's directory;
//! only the step's first node saves (a step's containers on other nodes are from the same image).
//!
//! The file is the user's: it is created with their rights in the directory they name (no link
//! followed at its last component, never over an existing file of another name), filled by the
//! engine's `save` through that descriptor, and renamed into place only once complete, so a reader
//! never sees half an image. The image committed on the way is removed again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::engine::Engine;
use crate::identity::UserIds;
use crate::image_source::CACHE_REPOSITORY;

/// The longest a save may take (a commit and the whole image written out).
pub const SAVE_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Error)]
pub enum SaveError {
    #[error("--container-save={0}: give a file path, not a directory")]
    Directory(String),
    #[error("--container-save={path}: {reason}")]
    Failed { path: String, reason: String },
}

/// Checks the option's value as given (pyxis refuses a trailing `/` too).
pub fn check_target(value: &str) -> Result<(), SaveError> {
    if value.is_empty() || value.ends_with('/') || value.ends_with("/.") || value.ends_with("/..") {
        return Err(SaveError::Directory(value.to_string()));
    }
    Ok(())
}

/// The target made absolute against `base` (the job's directory).
pub fn target_in(value: &str, base: &Path) -> PathBuf {
    crate::image_cache::absolute(Path::new(value), base)
}

/// Saves `container` into `target` for `user` (see the module docs). `scope`: the user, where the
/// engine's store is shared by users (Docker's), so that the committed image is named as theirs.
pub fn save(
    engine: &Engine,
    container: &str,
    target: &Path,
    user: &UserIds,
    scope: Option<u32>,
) -> Result<(), SaveError> {
    let shown = target.display().to_string();
    let fail = |reason: String| SaveError::Failed { path: shown.clone(), reason };
    check_target(&shown)?;
    let (dir, file_name) = match (target.parent(), target.file_name()) {
        (Some(d), Some(f)) => (d.to_path_buf(), f.to_os_string()),
        _ => return Err(SaveError::Directory(shown.clone())),
    };
    let unique = format!("{}-{}", std::process::id(), nanos());
    let image =
        format!("{CACHE_REPOSITORY}/{}saved-{unique}:partial", scope.map(|u| format!("u{u}/")).unwrap_or_default());
    engine.commit(SAVE_LIMIT, container, &image).map_err(|e| fail(format!("cannot commit the container: {e}")))?;
    let partial = format!(".{}.partial-{unique}", file_name.to_string_lossy());
    let result = (|| {
        let (dir_fd, file) = {
            let _acting = user.act_as().map_err(|e| fail(e.to_string()))?;
            let dir_fd = open_dir(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
            let file =
                create_new(&dir_fd, &partial).map_err(|e| fail(format!("cannot write in {}: {e}", dir.display())))?;
            (dir_fd, file)
        };
        let written = engine.save_into(SAVE_LIMIT, &image, file);
        let _acting = user.act_as().map_err(|e| fail(e.to_string()))?;
        let placed = written.map_err(|e| fail(format!("cannot save the image: {e}"))).and_then(|()| {
            nix::fcntl::renameat(
                Some(dir_fd.as_raw_fd()),
                partial.as_str(),
                Some(dir_fd.as_raw_fd()),
                file_name.as_os_str(),
            )
            .map_err(|e| fail(format!("cannot put it in place: {e}")))
        });
        if placed.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(dir_fd.as_raw_fd()),
                partial.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        placed
    })();
    let _ = engine.remove_images(&[image]);
    result
}

fn nanos() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// The directory, opened with this process's rights (the user's, acting).
fn open_dir(dir: &Path) -> nix::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let fd =
        nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    // SAFETY: just opened, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new file `name` in `dir` (never an existing one, never through a link), for writing.
fn create_new(dir: &OwnedFd, name: &str) -> nix::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )?;
    // SAFETY: just opened, ours alone.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(check_target("saved.tar").is_ok());
        for bad in ["", "dir/", "dir/.", "/x/.."] {
            assert!(matches!(check_target(bad), Err(SaveError::Directory(_))), "{bad}");
        }
        assert_eq!(target_in("./a/s.tar", Path::new("/w")), PathBuf::from("/w/a/s.tar"));
        assert_eq!(target_in("/abs.tar", Path::new("/w")), PathBuf::from("/abs.tar"));
    }

    #[test]
    fn a_new_file_is_never_an_old_one_or_a_link() {
        let dir = crate::test_scratch::subdir("save");
        let fd = open_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(create_new(&fd, "link").is_err());
        std::fs::write(dir.join("old"), "x").unwrap();
        assert!(create_new(&fd, "old").is_err());
        assert!(create_new(&fd, "new").is_ok());
    }
}
