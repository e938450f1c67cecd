//! Where the tool keeps its node-local state: per-user locks and per-run directories (links to the
//! helper, the relay socket), and why nobody else can squat or swap them.
//!
//! - A process running as a user (rootless Podman, the standalone helper) keeps its state in the first
//!   private directory of theirs it finds: `$XDG_RUNTIME_DIR/mpiexec-docker`, then
//!   `/run/mpiexec-docker/UID` (made by root: the SPANK plugin makes it for each job's user), then
//!   `$TMPDIR/mpiexec-docker-UID` (default `/tmp`), and when someone else made that name first,
//!   `$HOME/.cache/mpiexec-docker/HOST`. Each must be a real directory (no symlink), owned by the user
//!   and closed to everyone else (`0700`).
//! - Root (the helper acting for users with Docker, whose daemon is root's) keeps its state in
//!   `/run/mpiexec-docker/0`, which only root can write: whatever root reads there, or hands to
//!   Docker's daemon by path, no user can have put there or swap.
//! - A per-run directory has a random name ([`RuntimeDir::create`]), is made with `mkdir` (never
//!   reuses what exists) and is removed when its owner is done, or by a later sweep once no process
//!   holds its lock.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// The root-made parent of the per-user directories.
pub const ROOT_DIR: &str = "/run/mpiexec-docker";

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a private directory of uid {uid} ({why}); someone else may have made it first: \
         set XDG_RUNTIME_DIR to a private directory of yours, or have it removed"
    )]
    NotPrivate { path: PathBuf, uid: u32, why: String },
    #[error("timed out after {} s waiting for the lock {path} (another fetch of yours holds it)", .waited.as_secs())]
    LockTimeout { path: PathBuf, waited: Duration },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_path_buf(), source }
}

/// Checks that `path` is a directory (not a symlink) owned by `uid` that nobody else may write, and
/// for a non-root `uid` that nobody else may enter either.
pub fn check_private(path: &Path, uid: u32) -> Result<(), RuntimeError> {
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    let bad = |why: String| RuntimeError::NotPrivate { path: path.to_path_buf(), uid, why };
    if !meta.file_type().is_dir() {
        return Err(bad("not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(bad(format!("owned by uid {}", meta.uid())));
    }
    let closed = if uid == 0 { 0o022 } else { 0o077 };
    if meta.mode() & closed != 0 {
        return Err(bad(format!("mode {:o}", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// Makes `path` (mode `mode`, owned by whoever runs this) unless it is there, then checks it with
/// [`check_private`] for `uid`.
fn private_dir(path: &Path, mode: u32, uid: u32) -> Result<PathBuf, RuntimeError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(path)(e)),
    }
    check_private(path, uid)?;
    Ok(path.to_path_buf())
}

/// Root's own state directory, `/run/mpiexec-docker/0` (see the module docs).
pub fn root_base() -> Result<PathBuf, RuntimeError> {
    private_dir(Path::new(ROOT_DIR), 0o755, 0)?;
    private_dir(&Path::new(ROOT_DIR).join("0"), 0o700, 0)
}

/// Root only: makes `/run/mpiexec-docker/UID` for a user (theirs, `0700`) unless it is there, and
/// checks it. The SPANK plugin calls this for each job's user.
pub fn prepare_user_dir(uid: u32, gid: u32) -> Result<PathBuf, RuntimeError> {
    private_dir(Path::new(ROOT_DIR), 0o755, 0)?;
    let path = Path::new(ROOT_DIR).join(uid.to_string());
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {
            // made by root, given away: nobody but root could have touched it in between (0755 parent)
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io(&path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&path)(e)),
    }
    check_private(&path, uid)?;
    Ok(path)
}

/// This process's state directory (see the module docs): root's for root, else the user's first
/// private one.
pub fn user_base() -> Result<PathBuf, RuntimeError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == 0 {
        return root_base();
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
        if check_private(&xdg, uid).is_ok() {
            return private_dir(&xdg.join("mpiexec-docker"), 0o700, uid);
        }
    }
    let made_by_root = Path::new(ROOT_DIR).join(uid.to_string());
    if check_private(Path::new(ROOT_DIR), 0).is_ok() && check_private(&made_by_root, uid).is_ok() {
        return Ok(made_by_root);
    }
    let tmp = std::env::var_os("TMPDIR").map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or("/tmp".into());
    match private_dir(&tmp.join(format!("mpiexec-docker-{uid}")), 0o700, uid) {
        Ok(dir) => Ok(dir),
        // someone else made that name first: the user's own home, which no one else can write
        // (per host: a home directory is shared by the nodes)
        Err(squatted @ RuntimeError::NotPrivate { .. }) => home_base(uid).ok_or(squatted),
        Err(e) => Err(e),
    }
}

/// `$HOME/.cache/mpiexec-docker/HOST`, private, when it can be made.
fn home_base(uid: u32) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute())?;
    let host = nix::unistd::gethostname().ok()?.to_string_lossy().into_owned();
    let dir = home.join(".cache/mpiexec-docker").join(host);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).ok()?;
    check_private(&dir, uid).ok()?;
    Some(dir)
}

/// An exclusive `flock` on a file of a state directory, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// Takes the lock file `name` in `base` (made unless there; never through a symlink; it must belong
/// to whoever runs this), waiting at most `limit`.
pub fn lock(base: &Path, name: &str, limit: Duration) -> Result<Lock, RuntimeError> {
    use std::os::fd::AsRawFd;
    let path = base.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io(&path))?;
    let meta = file.metadata().map_err(io(&path))?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(RuntimeError::NotPrivate {
            path,
            uid: nix::unistd::geteuid().as_raw(),
            why: "not a file of this user".into(),
        });
    }
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Lock { _file: file });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io(&path)(err));
    }
    // held: wait for it on a thread (woken the moment it is free), at most `limit`; a waiter that
    // gives up leaves that thread blocked on a descriptor of its own, which goes with this process
    let waiter = file.try_clone().map_err(io(&path))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: flock on the cloned descriptor this thread owns.
        let rc = unsafe { libc::flock(waiter.as_raw_fd(), libc::LOCK_EX) };
        let _ = tx.send((rc, std::io::Error::last_os_error()));
    });
    match rx.recv_timeout(limit) {
        Ok((0, _)) => Ok(Lock { _file: file }),
        Ok((_, e)) => Err(io(&path)(e)),
        Err(_) => Err(RuntimeError::LockTimeout { path, waited: limit }),
    }
}

/// A private per-run directory on the host holding the links mounted at
/// [`crate::layout::IN_BIN`] and the relay's directory. Removed when dropped.
///
/// Its owner holds an exclusive `flock` on [`OWNER_LOCK`] inside it for as long as the directory is in
/// use; the lock passes to a child that inherits the descriptor (the step container's relay server).
/// A directory whose lock can be taken has no owner left and may be swept ([`sweep`]).
#[derive(Debug)]
pub struct RuntimeDir {
    pub path: PathBuf,
    owner: std::fs::File,
    keep: bool,
}

/// The lock file in every [`RuntimeDir`] (see there).
pub const OWNER_LOCK: &str = "owner.lock";
/// The name prefix of per-run directories.
pub const RUN_PREFIX: &str = "run-";

/// Whether the runtime directory at `path` still has a live owner (its lock is held).
pub fn runtime_dir_in_use(path: &Path) -> bool {
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path.join(OWNER_LOCK)) {
        // SAFETY: flock on a descriptor we own; a taken lock is released when `f` is closed.
        Ok(f) => unsafe {
            use std::os::fd::AsRawFd;
            libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0
        },
        Err(_) => false,
    }
}

/// A random name part (16 hex digits).
pub fn random_hex() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // never the only thing between two runs: mkdir refuses a name that exists
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = (t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl RuntimeDir {
    /// Makes a new per-run directory in `base` (see [`user_base`]). With `relay_owner` (root making
    /// one for a user's container) the relay's directory can be entered by all: the user gets its
    /// socket alone ([`give_socket`]).
    pub fn create(base: &Path, relay_owner: Option<(u32, u32)>) -> Result<RuntimeDir, RuntimeError> {
        use std::os::unix::fs::symlink;
        let path = loop {
            let path = base.join(format!("{RUN_PREFIX}{}", random_hex()));
            match std::fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path)(e)),
            }
        };
        let err = io(&path);
        let owner =
            match std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path.join(OWNER_LOCK)) {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&path);
                    return Err(err(e));
                }
            };
        // from here on the directory is removed when `dir` is dropped
        let dir = RuntimeDir { path: path.clone(), owner, keep: false };
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on the descriptor just opened.
            if unsafe { libc::flock(dir.owner.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(io(&path)(std::io::Error::last_os_error()));
            }
        }
        let bin = path.join("bin");
        std::fs::DirBuilder::new().mode(0o755).create(&bin).map_err(io(&path))?;
        for name in crate::layout::LINK_NAMES {
            symlink(crate::layout::IN_HELPER, bin.join(name)).map_err(io(&path))?;
        }
        // root's for a user's container: root binds the socket there and gives the user the socket
        // alone (see `give_socket`)
        let relay = path.join("relay");
        let mode = if relay_owner.is_some() { 0o755 } else { 0o700 };
        std::fs::DirBuilder::new().mode(mode).create(&relay).map_err(io(&relay))?;
        Ok(dir)
    }

    /// Hands the directory over to another process: returns a descriptor sharing the owner lock (to
    /// be inherited by that process: it is close-on-exec until the child clears that), and this value
    /// no longer removes the directory when dropped.
    pub fn hand_over(mut self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.keep = true;
        Ok(self.owner.try_clone()?.into())
    }

    /// Adopts a directory handed over by [`RuntimeDir::hand_over`]: `owner` is the inherited lock.
    pub fn adopt(path: PathBuf, owner: std::os::fd::OwnedFd) -> RuntimeDir {
        RuntimeDir { path, owner: owner.into(), keep: false }
    }

    pub fn bin(&self) -> PathBuf {
        self.path.join("bin")
    }

    /// The directory of the relay socket, mounted at [`crate::relay::IN_RELAY_DIR`].
    pub fn relay(&self) -> PathBuf {
        self.path.join("relay")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // (a relay server running as the user cannot remove root's directory: root's sweep does)
        remove_run_dir(&self.path);
    }
}

/// Gives the socket at `path` (in a directory of root's) to `uid`:`gid`, mode `0600`.
pub fn give_socket(path: &Path, uid: u32, gid: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))
}

/// The directory of a per-run directory that holds staging mount points (see
/// [`crate::mount_source`]).
pub const STAGING: &str = "mnt";

/// Removes a per-run directory. Staging mount points a killed helper left are unmounted first and
/// removed one by one, never recursively: a recursive removal would go into the user's directory
/// still bound there. A directory whose mount points cannot all be taken down is left as it is.
/// Whether it is gone.
pub fn remove_run_dir(path: &Path) -> bool {
    let staging = path.join(STAGING);
    if let Ok(entries) = std::fs::read_dir(&staging) {
        for entry in entries.flatten() {
            let point = entry.path();
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&point).or_else(|_| std::fs::remove_file(&point));
        }
        if std::fs::remove_dir(&staging).is_err() && staging.exists() {
            return false;
        }
    }
    std::fs::remove_dir_all(path).is_ok()
}

/// Removes the per-run directories in `base` that no live process owns (a helper or relay server
/// killed by SIGKILL cannot remove its own); returns how many. Also goes: copies of registry logins
/// older than any pull may last (a helper killed mid-pull), and remembered file hashes not used for
/// 30 days.
pub fn sweep(base: &Path) -> usize {
    let me = nix::unistd::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut removed = 0;
    let age = |m: &std::fs::Metadata| m.modified().ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.uid() != me {
            continue;
        }
        if name.starts_with("docker-config-") && meta.is_dir() && age(&meta) > Duration::from_secs(2 * 3600) {
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        if name.starts_with("sha256-") && meta.is_file() && age(&meta) > Duration::from_secs(30 * 24 * 3600) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if !name.starts_with(RUN_PREFIX) {
            continue;
        }
        let owned = entry.metadata().map(|m| m.uid() == me && m.is_dir()).unwrap_or(false);
        if owned && !runtime_dir_in_use(&entry.path()) && remove_run_dir(&entry.path()) {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = crate::test_scratch::subdir(tag);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn runtime_dir_holds_links_and_goes_away() {
        let base = scratch("links");
        let dir = RuntimeDir::create(&base, None).unwrap();
        let path = dir.path.clone();
        assert!(path.file_name().unwrap().to_string_lossy().starts_with(RUN_PREFIX));
        for name in crate::layout::LINK_NAMES {
            assert_eq!(std::fs::read_link(dir.bin().join(name)).unwrap(), PathBuf::from(crate::layout::IN_HELPER));
        }
        assert!(runtime_dir_in_use(&path));
        assert_eq!(sweep(&base), 0, "a directory in use stays");
        drop(dir);
        assert!(!path.exists());
        assert!(!runtime_dir_in_use(&path));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn an_ownerless_directory_is_swept() {
        let base = scratch("sweep");
        let dir = RuntimeDir::create(&base, None).unwrap();
        let path = dir.path.clone();
        // what a SIGKILLed owner leaves: the directory, its lock no longer held
        let _ = dir.hand_over();
        assert!(path.exists() && !runtime_dir_in_use(&path));
        assert_eq!(sweep(&base), 1);
        assert!(!path.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_sweep_never_removes_what_a_staging_mount_left_bound() {
        // what a helper killed while its container started leaves: a bind of the user's directory
        assert!(nix::unistd::geteuid().is_root(), "this test binds a directory: run it as root (tests/run.sh does)");
        let base = scratch("staging");
        let users = scratch("users-files");
        std::fs::write(users.join("data"), "keep me").unwrap();
        let dir = RuntimeDir::create(&base, None).unwrap();
        let point = dir.path.join(STAGING).join("0");
        std::fs::create_dir_all(&point).unwrap();
        nix::mount::mount(Some(&users), &point, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
        let path = dir.path.clone();
        let _ = dir.hand_over();
        assert_eq!(sweep(&base), 1);
        assert!(!path.exists());
        assert_eq!(std::fs::read_to_string(users.join("data")).unwrap(), "keep me");
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&users).unwrap();
    }

    #[test]
    fn squatted_or_open_directories_are_refused() {
        let me = nix::unistd::geteuid().as_raw();
        let base = scratch("private");
        assert!(check_private(&base, me).is_ok());
        // someone else's (checked against another uid), open to others, a symlink
        assert!(matches!(check_private(&base, me + 1), Err(RuntimeError::NotPrivate { .. })));
        let open = base.join("open");
        std::fs::DirBuilder::new().create(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o757)).unwrap();
        let err = check_private(&open, me).unwrap_err().to_string();
        assert!(err.contains("mode 757") && err.contains("XDG_RUNTIME_DIR"), "{err}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(check_private(&link, me).unwrap_err().to_string().contains("not a directory"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_lock_is_exclusive_and_waits_no_longer_than_asked() {
        let base = scratch("lock");
        let held = lock(&base, "x.lock", Duration::from_secs(1)).unwrap();
        let t0 = std::time::Instant::now();
        // flock is per open file description: a second open in the same process conflicts too
        let err = lock(&base, "x.lock", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, RuntimeError::LockTimeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(held);
        assert!(lock(&base, "x.lock", Duration::from_secs(1)).is_ok());
        // never through a symlink
        std::os::unix::fs::symlink("/etc/passwd", base.join("evil.lock")).unwrap();
        assert!(lock(&base, "evil.lock", Duration::from_secs(1)).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
