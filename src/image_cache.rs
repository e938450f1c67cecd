//! Getting an image into the engine's store: once per node and user, however many steps and tasks ask
//! at the same moment, and what the tool keeps there.
//!
//! - Every fetch (registry pull or file load) happens under the user's fetch lock ([`fetch_lock`]:
//!   one per user and node, in the state directory of [`crate::runtime_dir`]). Whoever waits finds
//!   the image there afterwards and reuses it. One user's fetch never waits for another's.
//! - A registry image is pulled by the engine, which commits it only when complete; a file is loaded
//!   and then tagged [`crate::image_source::CACHE_REPOSITORY`]`/NAME:KEY`, KEY being the start of the
//!   SHA-256 of the bytes loaded. A half-finished fetch therefore never counts as cached.
//! - A file is opened once, by the user ([`name_image`]), and from then on only that descriptor is
//!   read: hashed, checked and fed to the engine's `load` on its standard input, without the names the
//!   archive gives its image ([`crate::image_source::copy_without_names`]). The loaded image must have
//!   the id the archive claims, and the file must not have changed meanwhile.
//! - In a store shared by users (Docker's, which root drives for everyone), what the tool fetches for
//!   a user carries that user's name (`CACHE_REPOSITORY/u<UID>/…`): a user runs a file's image only
//!   after reading the file themselves, and a registry image only after pulling it with their own
//!   credentials (or one the node's admin put in the store). Image ids and the tool's own names are
//!   not accepted from users there.
//! - What the tool fetched carries a name under `CACHE_REPOSITORY` (registry pulls too, as
//!   `…/REFERENCE:pulled`): `mpiexec_docker images` lists those, `images prune` removes them, and the
//!   config's `cache_max_size` removes the oldest when the cache grows past it (under the store lock,
//!   [`store_lock`], the only lock users share).
//! - Every engine call has a deadline: [`ENGINE_LIMIT`] for quick ones, [`FETCH_LIMIT`] for pulls and
//!   loads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::PullPolicy;
use crate::engine::{Engine, EngineError};
use crate::image_source::{
    copy_without_names, repository_component, ArchiveInfo, ImageError, ImageFile, ImageSource, CACHE_REPOSITORY,
};
use crate::job_fetch::{JobFetch, Turn};
use crate::runtime_dir::{self, Lock, RuntimeError};

#[derive(Debug, Error)]
pub enum CacheError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot load image file {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("image '{0}': {1}")]
    NotYours(String, &'static str),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("image '{image}': {reason}")]
    FromStore { image: String, reason: String },
    #[error("image '{image}': the job's fetch: {reason}")]
    HandOn { image: String, reason: String },
    #[error("image '{image}' is not in {engine}'s images on this node (these are never pulled: load or pull it there first)")]
    NotInStore { image: String, engine: &'static str },
}

/// The longest a quick engine call (inspect, tag, remove) may take.
pub const ENGINE_LIMIT: Duration = Duration::from_secs(120);
/// The longest a pull or a load may take.
pub const FETCH_LIMIT: Duration = Duration::from_secs(1800);

/// The lock of one user's fetches on this node (root keeps one per user it acts for). Held until
/// dropped; waited for at most [`FETCH_LIMIT`].
pub fn fetch_lock(uid: u32) -> Result<Lock, CacheError> {
    let base = runtime_dir::user_base()?;
    let name = match nix::unistd::geteuid().is_root() {
        true => format!("fetch-{uid}.lock"),
        false => "fetch.lock".into(),
    };
    Ok(runtime_dir::lock(&base, &name, FETCH_LIMIT)?)
}

/// The lock around removals from the store (prune, the cache cap): the only one users share, and
/// only for those short changes.
pub fn store_lock() -> Result<Lock, CacheError> {
    Ok(runtime_dir::lock(&runtime_dir::user_base()?, "store.lock", ENGINE_LIMIT)?)
}

/// Where progress of a long fetch goes: a terminal gets the engine's own progress display; otherwise
/// (batch logs, the plugin) a line every [`PROGRESS_EVERY`].
/// `MPIEXEC_DOCKER_PROGRESS_INTERVAL` (seconds) changes it.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The shortest and longest progress interval: the variable comes from a job's environment, and
/// reaches a helper that may run as root for the job (Docker).
pub const PROGRESS_BOUNDS: (f64, f64) = (0.05, 3600.0);

fn progress_every() -> Duration {
    progress_interval(std::env::var("MPIEXEC_DOCKER_PROGRESS_INTERVAL").ok().as_deref())
}

/// The interval a `MPIEXEC_DOCKER_PROGRESS_INTERVAL` value asks for, within [`PROGRESS_BOUNDS`].
pub fn progress_interval(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.clamp(PROGRESS_BOUNDS.0, PROGRESS_BOUNDS.1)))
        .unwrap_or(PROGRESS_EVERY)
}

/// An image as the user named it, its file (if any) opened with the user's rights.
#[derive(Debug)]
pub struct Named {
    text: String,
    source: ImageSource,
    file: Option<ImageFile>,
}

impl Named {
    /// The real path of the image file that was opened (what the descriptor is, not what a name
    /// said), when the image is a file.
    pub fn opened_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let f = self.file.as_ref()?;
        std::fs::read_link(format!("/proc/self/fd/{}", f.file.as_raw_fd())).ok()
    }
}

/// Parses what the user named and opens an image file; relative paths are taken from `base` (the
/// job's directory). Call it with the user's rights: only what they may read is opened.
pub fn name_image(image: &str, base: &Path) -> Result<Named, CacheError> {
    let source = ImageSource::parse(image)?;
    let file = match &source {
        ImageSource::Registry(_) | ImageSource::Store { .. } => None,
        ImageSource::Archive { path, .. } => Some(ImageFile::open(&absolute(path, base))?),
    };
    Ok(Named { text: image.to_string(), source, file })
}

/// An image resolved without asking the engine: what to fetch, and the name it gets in the store.
#[derive(Debug)]
pub struct Resolved {
    /// The reference to run: a registry reference as written (normalised), a file's cache name; in a
    /// shared store, see [`ensure`] for what is run.
    pub local: String,
    /// The user whose names these are, in a store shared by users (Docker's): None otherwise.
    scope: Option<u32>,
    file: Option<(ImageFile, ArchiveInfo)>,
    /// `dockerd://` or `podman://`: the image must be in that store, which must be the engine's.
    store: Option<crate::image_source::LocalStore>,
}

impl Resolved {
    /// The names that, when in the store, are this image without any fetch (in the order [`ensure`]
    /// looks): a file's cache name; a registry reference, or in a shared store the user's own name
    /// for it first.
    pub fn cached_names(&self) -> Vec<String> {
        if self.store.is_some() {
            // which store it names is checked by `ensure`
            return Vec::new();
        }
        match (&self.file, self.scope) {
            (None, Some(uid)) => vec![user_pulled_name(uid, &self.local), self.local.clone()],
            _ => vec![self.local.clone()],
        }
    }
}

/// Resolves a named image. A file's index is read and its bytes hashed (from the descriptor opened
/// by [`name_image`]); `memo`, a directory of whoever runs this, keeps the hashes of unchanged files.
/// `scope`: the user, when the store is shared by users (see the module docs).
pub fn resolve(named: Named, scope: Option<u32>, memo: Option<&Path>) -> Result<Resolved, CacheError> {
    let Named { text, source, file } = named;
    match (source, file) {
        (ImageSource::Archive { format, .. }, Some(mut file)) => {
            let info = ArchiveInfo::of(&mut file, format)?;
            let sha = memo_sha256(&mut file, memo)?;
            let local = ArchiveInfo::cache_name(&file.path, &sha, scope);
            Ok(Resolved { local, scope, file: Some((file, info)), store: None })
        }
        (ImageSource::Registry(reference), _) => {
            if scope.is_some() {
                check_reachable(&reference).map_err(|why| CacheError::NotYours(text.clone(), why))?;
            }
            Ok(Resolved { local: reference, scope, file: None, store: None })
        }
        (ImageSource::Store { store, reference }, _) => {
            if scope.is_some() {
                check_reachable(&reference).map_err(|why| CacheError::NotYours(text.clone(), why))?;
            }
            Ok(Resolved { local: reference, scope, file: None, store: Some(store) })
        }
        (ImageSource::Archive { .. }, None) => unreachable!("name_image opens every file"),
    }
}

/// Names a user may not give in a shared store: the tool's own (another user's fetches) and image
/// ids (anything in the store, whoever fetched it).
fn check_reachable(reference: &str) -> Result<(), &'static str> {
    let lower = reference.to_ascii_lowercase();
    // (the cache and the named containers kept by container_scope=global, in every spelling)
    if lower.starts_with("localhost/mpiexec-docker-") || lower.starts_with("mpiexec-docker-") {
        return Err("names under localhost/mpiexec-docker-* are the tool's own: name the image file or reference");
    }
    let hex = lower.strip_prefix("sha256:").unwrap_or(&lower);
    if lower.starts_with("sha256:")
        || (hex.len() >= 12 && hex.len() <= 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(
            "image ids are not accepted here (the store is shared by users): name the image by its reference or file",
        );
    }
    Ok(())
}

/// The file's SHA-256, from `memo` when the same file (device, inode, size, times) was hashed before.
fn memo_sha256(file: &mut ImageFile, memo: Option<&Path>) -> Result<String, CacheError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(dir) = memo else { return Ok(file.sha256()?) };
    let path = dir.join(format!("sha256-{}", file.stamp_key()));
    let read = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path);
    if let Ok(mut f) = read {
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut f, &mut text).is_ok()
            && text.len() == 64
            && text.chars().all(|c| c.is_ascii_hexdigit())
        {
            // used: kept by the sweep for another 30 days
            let _ = f.set_modified(std::time::SystemTime::now());
            return Ok(text);
        }
    }
    let sha = with_progress(&format!("checking {}", file.path.display()), || file.sha256())?;
    if file.unchanged() {
        let tmp = dir.join(format!(".sha256-{}", runtime_dir::random_hex()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, sha.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(sha)
}

/// `path` from `base` when relative, without `.` components.
pub(crate) fn absolute(path: &Path, base: &Path) -> PathBuf {
    let rel: PathBuf = path.components().filter(|c| *c != std::path::Component::CurDir).collect();
    if path.is_absolute() {
        rel
    } else {
        base.join(rel)
    }
}

/// Makes the image available in `engine`'s store and returns the name to run it by: `image.local`,
/// or in a shared store the user's own name for a registry image (see the module docs). The caller
/// holds [`fetch_lock`]. `credentials`: a Docker client configuration directory with the user's
/// registry logins, for pulls. `user`: the user root acts for (whose rights read another store).
/// `job`: the job's hand-on directory (see [`crate::job_fetch`]), for a registry image the store
/// lacks: one node of the job pulls it, the others load what it hands on.
pub fn ensure(
    engine: &Engine,
    image: &mut Resolved,
    policy: PullPolicy,
    credentials: Option<&Path>,
    user: Option<&crate::identity::UserIds>,
    job: Option<&JobFetch>,
) -> Result<String, CacheError> {
    if let Some(store) = image.store {
        use crate::image_source::LocalStore;
        let reference = image.local.clone();
        let named = format!("{}{reference}", store.scheme());
        let ours = matches!(
            (store, engine.kind),
            (LocalStore::Docker, crate::engine::EngineKind::Docker)
                | (LocalStore::Podman, crate::engine::EngineKind::Podman)
        );
        if !ours {
            // exported from that store with the user's rights, loaded into ours once
            let state = runtime_dir::user_base()?;
            return crate::store_import::import(engine, store, &reference, image.scope, user, &state);
        }
        if !engine.image_present(&reference)? {
            return Err(CacheError::NotInStore { image: named, engine: engine.name() });
        }
        return Ok(reference);
    }
    match &mut image.file {
        None => {
            let reference = image.local.clone();
            let Some(uid) = image.scope else {
                match job {
                    Some(job) if policy == PullPolicy::Missing && !engine.image_present(&reference)? => {
                        pull_for_job(engine, &reference, credentials, job)?
                    }
                    _ => ensure_pulled(engine, &reference, policy, credentials)?,
                }
                return Ok(reference);
            };
            // a shared store: the user's own name for what they pulled, or what the node's admin put
            // there (a name none of our pulls leaves behind)
            let mine = user_pulled_name(uid, &reference);
            let fresh = matches!(policy, PullPolicy::Missing | PullPolicy::Never);
            if fresh && engine.image_present(&mine)? {
                return Ok(mine);
            }
            if fresh && engine.image_present(&reference)? {
                return Ok(reference);
            }
            if policy == PullPolicy::Never {
                return Err(EngineError::NotLocal { image: reference, engine: engine.name() }.into());
            }
            match (job, user) {
                (Some(job), Some(user)) if policy == PullPolicy::Missing => {
                    pull_for_job_as(engine, &reference, &mine, credentials, job, user)?
                }
                _ => pull_as_users_own(engine, &reference, &mine, credentials)?,
            }
            Ok(mine)
        }
        Some((file, info)) => {
            let name = image.local.clone();
            if engine.image_present(&name)? {
                return Ok(name);
            }
            if policy == PullPolicy::Never {
                return Err(EngineError::NotLocal { image: name, engine: engine.name() }.into());
            }
            let path = file.path.display().to_string();
            let bad = |reason: String| CacheError::Load { path: path.clone(), reason };
            if info.format == crate::image_source::ArchiveFormat::Squashfs {
                // imported as one layer, under a temporary name that becomes ours once complete
                let env = crate::engine::squashfs_environment(&file.file).unwrap_or_default();
                let partial = format!("{name}-partial");
                let imported = with_progress(&format!("importing {path}"), || {
                    engine.import_squashfs(FETCH_LIMIT, &file.file, &partial, &env)
                });
                if let Err(e) = imported {
                    let _ = engine.remove_images(&[partial]);
                    return Err(bad(e));
                }
                if !file.unchanged() {
                    let _ = engine.remove_images(&[partial]);
                    return Err(bad("the file changed while it was loaded: try again once it is written".into()));
                }
                engine.tag(&partial, &name).map_err(bad)?;
                let _ = engine.untag(&name, &partial);
                return Ok(name);
            }
            let want = info.image_id(file)?;
            // fed from the descriptor the user opened, without the archive's names
            let mut reader = file.file.try_clone().map_err(|e| bad(e.to_string()))?;
            let loaded = with_progress(&format!("loading {path}"), || {
                engine.load(FETCH_LIMIT, move |stdin| copy_without_names(&mut reader, stdin))
            })
            .map_err(bad)?;
            let id = engine.image_id(&loaded).map_err(bad)?;
            if !file.unchanged() {
                return Err(bad("the file changed while it was loaded: try again once it is written".into()));
            }
            if id != want {
                return Err(bad(format!("the archive says its image is {want:.12} but it holds {id:.12}: refused")));
            }
            engine.tag(&id, &name).map_err(bad)?;
            Ok(name)
        }
    }
}

fn ensure_pulled(
    engine: &Engine,
    reference: &str,
    policy: PullPolicy,
    credentials: Option<&Path>,
) -> Result<(), CacheError> {
    let present = engine.image_present(reference)?;
    match (policy, present) {
        (PullPolicy::Never, false) => {
            Err(EngineError::NotLocal { image: reference.to_string(), engine: engine.name() }.into())
        }
        (PullPolicy::Newer, true) => {
            let id = |r: &str| engine.image_id(r).ok();
            let before = id(reference);
            // a registry that cannot answer leaves us with what we have
            match with_progress(&format!("checking {reference}"), || {
                engine.pull_with(reference, credentials, FETCH_LIMIT)
            }) {
                Err(e) => eprintln!("mpiexec_docker: warning: using the cached {reference}: {e}"),
                Ok(()) if id(reference) != before => {
                    // the tag moved: our name follows it, and the old image goes unless in use
                    let _ = engine.tag(reference, &pulled_name(reference));
                    if let Some(old) = before {
                        let _ = engine.remove_images(&[old]);
                    }
                }
                Ok(()) => {}
            }
            Ok(())
        }
        (PullPolicy::Always, _) | (PullPolicy::Missing | PullPolicy::Newer, false) => {
            with_progress(&format!("pulling {reference}"), || engine.pull_with(reference, credentials, FETCH_LIMIT))?;
            // our name for it, so that `images` and `prune` know what we fetched
            let _ = engine.tag(reference, &pulled_name(reference));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A registry image through the job's hand-on directory (see [`crate::job_fetch`]): pulled by the
/// first of the job's nodes, which hands it on as a file; loaded from that file by the others.
fn pull_for_job(
    engine: &Engine,
    reference: &str,
    credentials: Option<&Path>,
    job: &JobFetch,
) -> Result<(), CacheError> {
    use std::os::unix::fs::OpenOptionsExt;
    let hand_on = |reason: String| CacheError::HandOn { image: reference.to_string(), reason };
    match job.claim(&short_hash(reference), FETCH_LIMIT).map_err(|e| hand_on(e.to_string()))? {
        Turn::Load(path) => {
            let mut file = std::fs::File::open(&path).map_err(|e| hand_on(format!("{}: {e}", path.display())))?;
            let loaded = with_progress(&format!("loading {reference} as another node of the job fetched it"), || {
                engine.load(FETCH_LIMIT, move |stdin| {
                    std::io::copy(&mut file, stdin).map(|_| ()).map_err(|e| format!("reading it: {e}"))
                })
            })
            .map_err(hand_on)?;
            if loaded != reference {
                engine.tag(&loaded, reference).map_err(hand_on)?;
            }
        }
        Turn::Fetch(lease) => {
            crate::fault_point::reached("hand-on");
            with_progress(&format!("pulling {reference}"), || engine.pull_with(reference, credentials, FETCH_LIMIT))?;
            // handed on to the job's other nodes; this node has the image whatever happens to that
            let partial = lease.partial();
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    let into = out.try_clone().map_err(|e| e.to_string())?;
                    engine.save_into(FETCH_LIMIT, reference, into)?;
                    lease.complete(&out, &partial).map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                log::warn!("cannot hand {reference} on to the job's other nodes (they pull it themselves): {e}");
                let _ = std::fs::remove_file(&partial);
            }
        }
    }
    let _ = engine.tag(reference, &pulled_name(reference));
    Ok(())
}

/// A registry image pulled into a store shared by users under `mine`, the user's own name for it
/// (see the module docs).
fn pull_as_users_own(
    engine: &Engine,
    reference: &str,
    mine: &str,
    credentials: Option<&Path>,
) -> Result<(), CacheError> {
    // one pull of a reference at a time on this node, whoever asks: ours untags it afterwards
    let base = runtime_dir::user_base()?;
    let _lock = runtime_dir::lock(&base, &format!("pull-{}.lock", short_hash(reference)), FETCH_LIMIT)?;
    let had = engine.image_present(reference)?;
    with_progress(&format!("pulling {reference}"), || engine.pull_with(reference, credentials, FETCH_LIMIT))?;
    engine.tag(reference, mine).map_err(|reason| EngineError::Pull { image: reference.to_string(), reason })?;
    if !had {
        // the name stays the user's alone
        let _ = engine.untag(mine, reference);
    }
    Ok(())
}

/// [`pull_for_job`] in a store shared by users (Docker's, root acting for `user`). The job's
/// directory is the user's: every look, open, rename and removal in it is made with the user's
/// rights, and root's engine only reads or writes descriptors the user opened. The fetching node
/// pulls as [`pull_as_users_own`] does; the others load the handed-on file as they would an image
/// file of the user's: without the names the file gives, named `mine` (the user's alone).
fn pull_for_job_as(
    engine: &Engine,
    reference: &str,
    mine: &str,
    credentials: Option<&Path>,
    job: &JobFetch,
    user: &crate::identity::UserIds,
) -> Result<(), CacheError> {
    use std::os::unix::fs::OpenOptionsExt;
    let hand_on = |reason: String| CacheError::HandOn { image: reference.to_string(), reason };
    let as_user = || user.act_as().map_err(|e| hand_on(e.to_string()));
    let turn = {
        let _as = as_user()?;
        job.claim(&short_hash(reference), FETCH_LIMIT)
    };
    match turn.map_err(|e| hand_on(e.to_string()))? {
        Turn::Load(path) => {
            let opened = {
                let _as = as_user()?;
                // (a FIFO put there never blocks root's open)
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path)
            };
            let mut file = opened
                .and_then(|f| match f.metadata()?.is_file() {
                    true => Ok(f),
                    false => Err(std::io::Error::other("not a plain file")),
                })
                .map_err(|e| hand_on(format!("{}: {e}", path.display())))?;
            let loaded = with_progress(&format!("loading {reference} as another node of the job fetched it"), || {
                engine.load(FETCH_LIMIT, move |stdin| copy_without_names(&mut file, stdin))
            })
            .map_err(hand_on)?;
            let id = engine.image_id(&loaded).map_err(hand_on)?;
            engine.tag(&id, mine).map_err(hand_on)?;
        }
        Turn::Fetch(lease) => {
            crate::fault_point::reached("hand-on");
            if let Err(e) = pull_as_users_own(engine, reference, mine, credentials) {
                // the lease goes with the user's rights: another node of the job may take it
                let _as = as_user()?;
                drop(lease);
                return Err(e);
            }
            let partial = lease.partial();
            let opened = {
                let _as = as_user()?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&partial)
            };
            let saved = opened.map_err(|e| e.to_string()).and_then(|out| {
                let into = out.try_clone().map_err(|e| e.to_string())?;
                engine.save_into(FETCH_LIMIT, mine, into).map(|()| out)
            });
            // handed on to the job's other nodes; this node has the image whatever happens to that
            let _as = as_user()?;
            let handed = saved.and_then(|out| lease.complete(&out, &partial).map_err(|e| e.to_string()));
            if let Err(e) = handed {
                log::warn!("cannot hand {reference} on to the job's other nodes (they pull it themselves): {e}");
                let _ = std::fs::remove_file(&partial);
            }
        }
    }
    Ok(())
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn short_hash(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A user's registry logins for root's pulls (gathered by [`crate::registry_auth`]: logins only, no
/// helper or other setting root would act on), in a directory of root's for `DOCKER_CONFIG`.
/// Removed when dropped.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// Writes `config` (from [`crate::registry_auth::Logins::for_registry`]) into a new private
    /// directory of `base`.
    pub fn write(base: &Path, config: &serde_json::Value) -> Result<Credentials, CacheError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = base.join(format!("docker-config-{}", runtime_dir::random_hex()));
        let err = |source| CacheError::Io { what: dir.display().to_string(), source };
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(err)?;
        let creds = Credentials { dir: dir.clone() };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("config.json"))
            .map_err(err)?;
        std::io::Write::write_all(&mut f, config.to_string().as_bytes()).map_err(err)?;
        Ok(creds)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f`, printing a line to stderr every [`PROGRESS_EVERY`] while it lasts (not on a terminal,
/// where the engine shows its own progress).
pub(crate) fn with_progress<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let tty = std::io::stderr().is_terminal();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let what = format!("{what} on {host}");
    let every = progress_every();
    let ticker = (!tty).then(|| {
        std::thread::spawn(move || {
            let start = Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                eprintln!("mpiexec_docker: {what}: {:.1} s so far", start.elapsed().as_secs_f64());
            }
        })
    });
    let out = f();
    drop(tx);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    out
}

/// Our name for a registry image we pulled: `CACHE_REPOSITORY/<reference, sanitised>:pulled`.
pub fn pulled_name(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let reference =
        if last.contains(':') || last.contains('@') { reference.to_string() } else { format!("{reference}:latest") };
    let clean = repository_component(&reference);
    format!("{CACHE_REPOSITORY}/{clean}:pulled")
}

/// A user's own name for a registry image pulled for them into a shared store:
/// `CACHE_REPOSITORY/u<UID>/<reference, sanitised>:pulled`.
pub fn user_pulled_name(uid: u32, reference: &str) -> String {
    pulled_name(reference).replacen(&format!("{CACHE_REPOSITORY}/"), &format!("{CACHE_REPOSITORY}/u{uid}/"), 1)
}

/// One image the tool keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Our name for it.
    pub name: String,
    pub id: String,
    pub size: u64,
    /// When the engine says it was created (for the oldest-first cap).
    pub created: String,
}

/// What the tool keeps in this store.
pub fn list(engine: &Engine) -> Result<Vec<Cached>, CacheError> {
    let names = engine.images_under(CACHE_REPOSITORY)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let facts = engine.image_facts(&names)?;
    Ok(names.into_iter().zip(facts).map(|(name, (id, size, created))| Cached { name, id, size, created }).collect())
}

/// Removes cached images (and, for registry pulls, the name they were pulled under). Returns what
/// could not be removed, with the reason (an image a container still uses, say).
pub fn remove(engine: &Engine, items: &[Cached]) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for c in items {
        let mut names = vec![c.name.clone()];
        if let Some(original) = original_of(engine, c) {
            names.push(original);
        }
        if let Err(why) = engine.remove_images(&names) {
            kept.push((c.name.clone(), why));
        }
    }
    kept
}

/// The registry reference a `…:pulled` image was pulled under (its other name).
fn original_of(engine: &Engine, c: &Cached) -> Option<String> {
    if !c.name.ends_with(":pulled") {
        return None;
    }
    engine.image_names(&c.name).ok()?.into_iter().find(|t| !t.starts_with(CACHE_REPOSITORY))
}

/// The store space the cached images take (an image under several of our names counts once).
pub fn total_size(items: &[Cached]) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().filter(|c| seen.insert(c.id.clone())).map(|c| c.size).sum()
}

/// Removes the oldest cached images until the cache is at most `max` bytes, never `keep`.
pub fn enforce_cap(engine: &Engine, max: u64, keep: &str) -> Result<Vec<String>, CacheError> {
    let mut items = list(engine)?;
    items.sort_by(|a, b| a.created.cmp(&b.created));
    let mut total = total_size(&items);
    let mut removed = Vec::new();
    for c in items {
        if total <= max {
            break;
        }
        if c.name == keep {
            continue;
        }
        if remove(engine, std::slice::from_ref(&c)).is_empty() {
            removed.push(c.name);
            total = total_size(&list(engine)?);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_shared_store_never_hands_out_the_tools_own_names_or_ids() {
        use super::check_reachable;
        for name in [
            "localhost/mpiexec-docker-cache/u1500/abc:latest",
            "localhost/mpiexec-docker-named/u1500:dev",
            "LOCALHOST/MPIEXEC-DOCKER-NAMED:dev",
            "mpiexec-docker-named/u1500:dev",
            "sha256:0123456789abcdef",
            "0123456789abcdef",
        ] {
            assert!(check_reachable(name).is_err(), "{name}");
        }
        assert!(check_reachable("localhost/myimage:1").is_ok());
        assert!(check_reachable("docker.io/library/ubuntu:24.04").is_ok());
    }

    #[test]
    fn progress_intervals_stay_within_bounds() {
        use super::progress_interval;
        assert_eq!(progress_interval(None), super::PROGRESS_EVERY);
        assert_eq!(progress_interval(Some("2")), std::time::Duration::from_secs(2));
        assert_eq!(progress_interval(Some("1e-9")), std::time::Duration::from_millis(50));
        assert_eq!(progress_interval(Some("1e300")), std::time::Duration::from_secs(3600));
        for bad in ["NaN", "inf", "-3", "0", "soon", ""] {
            assert_eq!(progress_interval(Some(bad)), super::PROGRESS_EVERY, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn names_of_pulled_images() {
        let want = format!("{CACHE_REPOSITORY}/127.0.0.1-5000-md-openmpi-latest:pulled");
        assert_eq!(pulled_name("127.0.0.1:5000/md/openmpi:latest"), want);
        assert_eq!(pulled_name("127.0.0.1:5000/md/openmpi"), want, "the same image, the same name");
    }
}
