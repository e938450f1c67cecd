//! One fetch per job (issue 16): with the site's `job_fetch_dir` (a directory of the cluster's shared
//! file system that every node sees, made by the admin like `/tmp`: world-writable and sticky), the
//! first node of a job that needs a registry image pulls it and hands it on there as an image file;
//! the job's other nodes load that file instead of asking the registry. The registry serves each layer
//! once per job, however many nodes the job spans.
//!
//! - **Whose.** Everything is under `DIR/u<UID>/job-<JOB>/`, made with the user's rights (by their
//!   own helper, or by root's acting as them for Docker's shared store), mode 0700, checked (a
//!   directory, not a link, the user's, closed to others) before use: nobody else can put a file where
//!   the user's nodes read one. Without the directory, or when a check fails, each
//!   node pulls for itself, as without the setting, and says why once.
//! - **Who fetches.** Whoever creates `KEY.lease` first (`O_CREAT|O_EXCL`, which NFS honours, unlike
//!   `flock`). The fetcher touches the lease every [`LEASE_BEAT`] while it works. A waiter that sees
//!   the lease unchanged for [`LEASE_STALE`] by its own clock (no clock of another node is compared)
//!   takes it as a crashed fetcher's: it renames the lease away (one rename wins) and fetches itself.
//! - **What is handed on.** `KEY.tar` (a docker-archive), written as `KEY.tar.partial-HOST-PID`,
//!   synced, and renamed once complete: a half-written file never has the name others wait for.
//! - **Failures.** A fetcher whose pull fails gives the lease up and says why; a waiter then takes
//!   the lease and asks the registry itself, so each node fails with its own one line, never waits on
//!   a dead fetcher past [`LEASE_STALE`], and nothing half-fetched is loaded.
//! - **The job's end.** The epilog's sweep (as the user, on each node) removes the job's directory:
//!   where the site's setting names it, and where this node's helper noted it when it opened it
//!   ([`JobFetch::note`]), so a setting changed or removed while the job ran leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a fetcher touches its lease.
pub const LEASE_BEAT: Duration = Duration::from_secs(2);
/// How long a lease may stay untouched before a waiter takes it as a dead fetcher's.
pub const LEASE_STALE: Duration = Duration::from_secs(15);
/// How often a waiter looks.
const POLL: Duration = Duration::from_millis(100);

/// The job's hand-on directory of one user, checked.
#[derive(Debug, Clone)]
pub struct JobFetch {
    dir: PathBuf,
}

/// What a node does for an image, as [`JobFetch::claim`] decides.
#[derive(Debug)]
pub enum Turn {
    /// This node fetches: it holds the lease until the [`Lease`] is dropped or handed on.
    Fetch(Lease),
    /// Another node fetched: load this complete file.
    Load(PathBuf),
}

/// Why the job's directory cannot be used (each node then pulls for itself).
#[derive(Debug, thiserror::Error)]
pub enum JobFetchError {
    #[error("job_fetch_dir {0}: not there (the site makes it on the shared file system)")]
    NoSiteDir(PathBuf),
    #[error("job_fetch_dir: {0} is not a directory of yours closed to others")]
    NotYours(PathBuf),
    #[error("job_fetch_dir: {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("job_fetch_dir: waited {0:?} for another node's fetch")]
    TimedOut(Duration),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JobFetchError {
    let path = path.to_path_buf();
    move |source| JobFetchError::Io { what, path, source }
}

/// Makes `dir` (mode 0700) unless there, then checks it is a directory (not a link), `uid`'s, and
/// closed to others.
fn own_dir(dir: &Path, uid: u32) -> Result<(), JobFetchError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("cannot make", dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io("cannot read", dir))?;
    if !meta.file_type().is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(JobFetchError::NotYours(dir.to_path_buf()));
    }
    Ok(())
}

impl JobFetch {
    /// The directory of `uid`'s job `job` under the site's `site_dir`, made and checked.
    pub fn open(site_dir: &Path, uid: u32, job: &str) -> Result<JobFetch, JobFetchError> {
        if !crate::step_contract::is_job_id(job) {
            return Err(JobFetchError::NotYours(site_dir.join(job)));
        }
        let site = std::fs::metadata(site_dir).map_err(|_| JobFetchError::NoSiteDir(site_dir.to_path_buf()))?;
        if !site.is_dir() {
            return Err(JobFetchError::NoSiteDir(site_dir.to_path_buf()));
        }
        let user = site_dir.join(format!("u{uid}"));
        own_dir(&user, uid)?;
        let dir = user.join(format!("job-{job}"));
        own_dir(&dir, uid)?;
        Ok(JobFetch { dir })
    }

    /// The directory (for messages and tests).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the complete file of `key` is.
    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.tar"))
    }

    fn lease_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lease"))
    }

    /// Waits for this node's turn for image `key` (a file-name-safe key of the image's reference):
    /// the file another node completed, or the lease to fetch it. `deadline` bounds the wait.
    pub fn claim(&self, key: &str, deadline: Duration) -> Result<Turn, JobFetchError> {
        let (file, lease) = (self.file(key), self.lease_path(key));
        let start = Instant::now();
        // the lease as last seen (its modification time) and since when, by this node's clock
        let mut seen: Option<(SystemTime, Instant)> = None;
        loop {
            if file.is_file() {
                return Ok(Turn::Load(file));
            }
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&lease)
            {
                Ok(mut handle) => {
                    // (the file may have been completed between the look and the lease)
                    if file.is_file() {
                        let _ = std::fs::remove_file(&lease);
                        return Ok(Turn::Load(file));
                    }
                    let holder = format!("{} {}\n", hostname(), std::process::id());
                    let _ = handle.write_all(holder.as_bytes());
                    return Ok(Turn::Fetch(Lease::hold(lease, handle, holder, self.dir.join(format!("{key}.tar")))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("cannot make", &lease)(e)),
            }
            // another node fetches: is it alive?
            if let Ok(modified) = std::fs::symlink_metadata(&lease).and_then(|m| m.modified()) {
                match seen {
                    Some((at, since)) if at == modified => {
                        if since.elapsed() >= LEASE_STALE {
                            // its fetcher is gone: one waiter's rename wins, and that one fetches next
                            let away =
                                self.dir.join(format!("{key}.lease.stale-{}-{}", hostname(), std::process::id()));
                            if std::fs::rename(&lease, &away).is_ok() {
                                log::info!("{}: the fetching node stopped; this node fetches", lease.display());
                                let _ = std::fs::remove_file(&away);
                            }
                            seen = None;
                            continue;
                        }
                    }
                    _ => seen = Some((modified, Instant::now())),
                }
            }
            if start.elapsed() >= deadline {
                return Err(JobFetchError::TimedOut(deadline));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Notes in the user's node-local `state` directory that job `job` used `site_dir` (see
    /// [`JobFetch::noted`]). Best effort: without the note the job's end finds the directory through
    /// the site's setting alone.
    pub fn note(state: &Path, site_dir: &Path, job: &str) {
        let note = state.join(format!("job-fetch-{job}"));
        if let Err(e) = std::fs::write(&note, site_dir.as_os_str().as_encoded_bytes()) {
            log::debug!("cannot note {}: {e}", note.display());
        }
    }

    /// [`JobFetch::note`] of root's helper acting for user `uid` (Docker's shared store): in root's
    /// own `state`, naming the user, for root's sweep ([`JobFetch::noted_for_users`]).
    pub fn note_for(state: &Path, site_dir: &Path, job: &str, uid: u32) {
        let note = state.join(format!("job-fetch-{job}-u{uid}"));
        if let Err(e) = std::fs::write(&note, site_dir.as_os_str().as_encoded_bytes()) {
            log::debug!("cannot note {}: {e}", note.display());
        }
    }

    /// The notes of job `job` that root's helper wrote in root's `state` ([`JobFetch::note_for`]):
    /// each user and site directory, forgetting the notes.
    pub fn noted_for_users(state: &Path, job: &str) -> Vec<(u32, PathBuf)> {
        let prefix = format!("job-fetch-{job}-u");
        let Ok(entries) = std::fs::read_dir(state) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let uid = name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
                Some((uid, read_note(&e.path())?))
            })
            .collect()
    }

    /// The site directory noted for job `job` in `state`, if any, forgetting the note. (The note is
    /// the user's own file: a forged one can only make the user's own sweep remove the user's own
    /// directories, which [`JobFetch::remove_job`] checks.)
    pub fn noted(state: &Path, job: &str) -> Option<PathBuf> {
        read_note(&state.join(format!("job-fetch-{job}")))
    }

    /// Removes a job's directory of `uid` (the job's end).
    pub fn remove_job(site_dir: &Path, uid: u32, job: &str) {
        let user = site_dir.join(format!("u{uid}"));
        let dir = user.join(format!("job-{job}"));
        // only the user's own directory, never through a link
        let ours = |p: &Path| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
        };
        if ours(&user) && ours(&dir) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                log::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// This node's fetch of an image for the job: the lease, touched every [`LEASE_BEAT`] until
/// [`Lease::complete`] hands the file on or the lease is dropped (the fetch failed: another node may
/// take it).
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    file: PathBuf,
    inode: u64,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// `holder`: the lease's text, written again at each beat. (A write, not a set time: it needs
    /// only the descriptor, opened with the user's rights, which NFS checks, also while root's helper
    /// fetches for them with root's own, which a root-squashed mount refuses.)
    fn hold(path: PathBuf, handle: File, holder: String, file: PathBuf) -> Lease {
        let inode = handle.metadata().map(|m| m.ino()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let beating = stop.clone();
        let beat = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !beating.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= LEASE_BEAT {
                    use std::os::unix::fs::FileExt;
                    let _ = handle.write_all_at(holder.as_bytes(), 0);
                    last = Instant::now();
                }
            }
        });
        Lease { path, file, inode, stop, beat: Some(beat) }
    }

    /// Where the fetcher writes the file: a name of its own, until [`Lease::complete`].
    pub fn partial(&self) -> PathBuf {
        let mut name = self.file.clone().into_os_string();
        name.push(format!(".partial-{}-{}", hostname(), std::process::id()));
        PathBuf::from(name)
    }

    /// Hands the written file on: `partial` (complete, written through `written`) is synced and
    /// renamed to the name the other nodes wait for; the lease goes.
    pub fn complete(self, written: &File, partial: &Path) -> Result<(), JobFetchError> {
        written.sync_all().map_err(io("cannot sync", partial))?;
        std::fs::rename(partial, &self.file).map_err(io("cannot hand on", &self.file))?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(beat) = self.beat.take() {
            let _ = beat.join();
        }
        // the lease goes only while it is still ours (a waiter may have taken a slow one over)
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The directory a note names (an absolute path), forgetting the note; a note that is not a plain
/// file is forgotten unread.
fn read_note(note: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(note).ok()?;
    let text = meta.file_type().is_file().then(|| std::fs::read(note).ok()).flatten();
    let _ = std::fs::remove_file(note);
    let dir = PathBuf::from(std::ffi::OsString::from_vec(text?));
    dir.is_absolute().then_some(dir)
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        dir
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn a_noted_directory_is_found_once_by_the_jobs_end() {
        let (site, state) = (site(), tempfile::tempdir().unwrap());
        let job = JobFetch::open(site.path(), me(), "7").unwrap();
        JobFetch::note(state.path(), site.path(), "7");
        assert_eq!(JobFetch::noted(state.path(), "8"), None, "another job's note is not this one's");
        assert_eq!(JobFetch::noted(state.path(), "7").as_deref(), Some(site.path()));
        assert_eq!(JobFetch::noted(state.path(), "7"), None, "the note is gone once read");
        JobFetch::remove_job(site.path(), me(), "7");
        assert!(!job.dir().exists());
        // a note that is a link is not followed
        std::os::unix::fs::symlink(site.path(), state.path().join("job-fetch-9")).unwrap();
        assert_eq!(JobFetch::noted(state.path(), "9"), None);
    }

    #[test]
    fn roots_notes_name_each_user_and_are_found_once() {
        let state = tempfile::tempdir().unwrap();
        JobFetch::note_for(state.path(), Path::new("/shared/fetch"), "7", 1500);
        JobFetch::note_for(state.path(), Path::new("/shared/other"), "70", 1501);
        JobFetch::note(state.path(), Path::new("/shared/own"), "7");
        // job 7's notes for users only: not job 70's, not root's own
        assert_eq!(JobFetch::noted_for_users(state.path(), "7"), [(1500, PathBuf::from("/shared/fetch"))]);
        assert_eq!(JobFetch::noted_for_users(state.path(), "7"), [], "the note is gone once read");
        assert_eq!(JobFetch::noted_for_users(state.path(), "70"), [(1501, PathBuf::from("/shared/other"))]);
        // a name that does not end in a uid is not a note
        std::fs::write(state.path().join("job-fetch-8-ux"), "/shared/fetch").unwrap();
        assert_eq!(JobFetch::noted_for_users(state.path(), "8"), []);
    }

    #[test]
    fn the_first_claim_fetches_and_the_others_load_what_it_completed() {
        let site = site();
        let one = JobFetch::open(site.path(), me(), "42").unwrap();
        let Turn::Fetch(lease) = one.claim("k", Duration::from_secs(5)).unwrap() else { panic!("first fetches") };
        let other = JobFetch::open(site.path(), me(), "42").unwrap();
        // a second claim waits while the lease is alive
        let waiter = std::thread::spawn(move || other.claim("k", Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(300));
        let partial = lease.partial();
        let mut written = File::create(&partial).unwrap();
        written.write_all(b"image").unwrap();
        assert!(!one.file("k").exists(), "nothing under the waited-for name while it is written");
        lease.complete(&written, &partial).unwrap();
        match waiter.join().unwrap().unwrap() {
            Turn::Load(path) => assert_eq!(std::fs::read(path).unwrap(), b"image"),
            other => panic!("{other:?}"),
        }
        assert!(!one.lease_path("k").exists(), "the lease went");
        JobFetch::remove_job(site.path(), me(), "42");
        assert!(!one.dir().exists());
    }

    #[test]
    fn a_failed_fetch_gives_the_lease_to_the_next() {
        let site = site();
        let one = JobFetch::open(site.path(), me(), "7").unwrap();
        let Turn::Fetch(lease) = one.claim("k", Duration::from_secs(5)).unwrap() else { panic!() };
        drop(lease);
        assert!(matches!(one.claim("k", Duration::from_secs(5)).unwrap(), Turn::Fetch(_)));
    }

    #[test]
    fn a_dead_fetchers_lease_is_taken_over_once_stale() {
        let site = site();
        let one = JobFetch::open(site.path(), me(), "9").unwrap();
        // a lease nobody touches (its fetcher was killed)
        std::fs::write(one.lease_path("k"), "node1 1\n").unwrap();
        let start = Instant::now();
        let turn = one.claim("k", Duration::from_secs(60)).unwrap();
        assert!(matches!(turn, Turn::Fetch(_)), "{turn:?}");
        assert!(start.elapsed() >= LEASE_STALE && start.elapsed() < LEASE_STALE + Duration::from_secs(5));
    }

    #[test]
    fn a_directory_not_the_users_is_refused() {
        let site = site();
        let user = site.path().join(format!("u{}", me()));
        std::os::unix::fs::symlink("/tmp", &user).unwrap();
        assert!(matches!(JobFetch::open(site.path(), me(), "1"), Err(JobFetchError::NotYours(_))));
        std::fs::remove_file(&user).unwrap();
        std::fs::create_dir(&user).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&user, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(JobFetch::open(site.path(), me(), "1"), Err(JobFetchError::NotYours(_))));
        assert!(matches!(JobFetch::open(&site.path().join("none"), me(), "1"), Err(JobFetchError::NoSiteDir(_))));
        assert!(JobFetch::open(site.path(), me(), "../x").is_err());
    }
}
