//! Getting an image into the engine's store: once per node and user, however many steps and tasks ask
//! at the same moment, and what the tool keeps there.
//!
//! - Every fetch (registry pull or file load) happens under the node lock ([`node_lock`]: a file in the
//!   node-local runtime directory, one per user since rootless stores are per user). Whoever waits
//!   finds the image there afterwards and reuses it.
//! - A registry image is pulled by the engine, which commits it only when complete; a file is loaded
//!   and then tagged [`crate::image_source::CACHE_REPOSITORY`]`/NAME:KEY` (see
//!   [`crate::image_source`]). A half-finished fetch therefore never counts as cached.
//! - What the tool fetched carries a name under `CACHE_REPOSITORY` (registry pulls too, as
//!   `…/REFERENCE:pulled`): `mpiexec_docker images` lists those, `images prune` removes them, and the
//!   config's `cache_max_size` removes the oldest when the cache grows past it.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::config::PullPolicy;
use crate::engine::{Engine, EngineError};
use crate::image_source::{repository_component, ArchiveInfo, ImageError, ImageSource, CACHE_REPOSITORY};

#[derive(Debug, Error)]
pub enum CacheError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot load image file {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot take the image lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// One engine operation on the store at a time per user and node. Held until dropped.
pub fn node_lock() -> Result<Flock<std::fs::File>, CacheError> {
    let path = crate::launch::runtime_base().join(format!("mpiexec-docker-{}.lock", nix::unistd::getuid()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| CacheError::Io { what: path.display().to_string(), source })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| CacheError::Lock { path, source })
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

/// An image as the user named it, resolved without asking the engine: the name it has (or will have)
/// in the store, and for a file what its index says.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference to run: a registry reference as written (normalised), a file's cache name.
    pub local: String,
    file: Option<(PathBuf, ArchiveInfo)>,
}

/// Resolves `image`; relative file paths are taken from `base` (the job's directory). A file's index
/// is read here, once.
pub fn resolve(image: &str, base: &Path) -> Result<Resolved, CacheError> {
    Ok(match ImageSource::parse(image)? {
        ImageSource::Registry(reference) => Resolved { local: reference, file: None },
        ImageSource::Archive { path, format } => {
            let path = absolute(&path, base);
            let info = ArchiveInfo::read(&path, format)?;
            Resolved { local: info.cache_name(&path), file: Some((path, info)) }
        }
    })
}

/// `path` from `base` when relative, without `.` components.
fn absolute(path: &Path, base: &Path) -> PathBuf {
    let rel: PathBuf = path.components().filter(|c| *c != std::path::Component::CurDir).collect();
    if path.is_absolute() {
        rel
    } else {
        base.join(rel)
    }
}

/// Makes the image available in `engine`'s store under `image.local`. The caller holds [`node_lock`].
pub fn ensure(engine: &Engine, image: &Resolved, policy: PullPolicy) -> Result<(), CacheError> {
    match &image.file {
        None => {
            let reference = &image.local;
            let present = engine.image_present(reference)?;
            match (policy, present) {
                (PullPolicy::Never, false) => {
                    Err(EngineError::NotLocal { image: reference.clone(), engine: engine.name() }.into())
                }
                (PullPolicy::Newer, true) => {
                    let id = |r: &str| quiet(engine, &["image", "inspect", "--format", "{{.Id}}", r]).ok();
                    let before = id(reference);
                    // a registry that cannot answer leaves us with what we have
                    match with_progress(&format!("checking {reference}"), || pull(engine, reference)) {
                        Err(e) => eprintln!("mpiexec_docker: warning: using the cached {reference}: {e}"),
                        Ok(()) if id(reference) != before => {
                            // the tag moved: our name follows it, and the old image goes unless in use
                            let _ = quiet(engine, &["tag", reference, &pulled_name(reference)]);
                            if let Some(old) = before {
                                let _ = quiet(engine, &["rmi", old.trim()]);
                            }
                        }
                        Ok(()) => {}
                    }
                    Ok(())
                }
                (PullPolicy::Always, _) | (PullPolicy::Missing | PullPolicy::Newer, false) => {
                    with_progress(&format!("pulling {reference}"), || pull(engine, reference))?;
                    // our name for it, so that `images` and `prune` know what we fetched
                    let _ = quiet(engine, &["tag", reference, &pulled_name(reference)]);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Some((path, info)) => {
            let name = &image.local;
            if engine.image_present(name)? {
                return Ok(());
            }
            if policy == PullPolicy::Never {
                return Err(EngineError::NotLocal { image: name.clone(), engine: engine.name() }.into());
            }
            // a load also applies the archive's own names: those the store did not have before are
            // taken off again, so that the user's store gains only our name
            // and names it did have are given back to the images they named: in a store shared by
            // users (Docker's), a file must not change what a name means for anyone else
            let mut new_names = Vec::new();
            let mut old_names = Vec::new();
            for n in &info.names {
                match quiet(engine, &["image", "inspect", "--format", "{{.Id}}", n]) {
                    Ok(id) => old_names.push((n.clone(), id.trim().to_string())),
                    Err(_) if !engine.image_present(n)? => new_names.push(n.clone()),
                    Err(_) => {}
                }
            }
            let loaded = with_progress(&format!("loading {}", path.display()), || load(engine, path))?;
            let tagged = quiet(engine, &["tag", &loaded, name]);
            for (n, id) in &old_names {
                let _ = quiet(engine, &["tag", id, n]);
            }
            tagged.map_err(|reason| CacheError::Load { path: path.display().to_string(), reason })?;
            for n in new_names {
                // Podman takes one name off an image with `untag`; Docker's `rmi` of a name does that
                // while the image has another (ours)
                let _ = match engine.kind {
                    crate::plugstack::EngineKind::Podman => quiet(engine, &["untag", name, &n]),
                    crate::plugstack::EngineKind::Docker => quiet(engine, &["rmi", &n]),
                };
            }
            Ok(())
        }
    }
}

/// Runs `f`, printing a line to stderr every [`PROGRESS_EVERY`] while it lasts (not on a terminal,
/// where the engine shows its own progress).
fn with_progress<T>(what: &str, f: impl FnOnce() -> T) -> T {
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

fn pull(engine: &Engine, reference: &str) -> Result<(), CacheError> {
    Ok(engine.pull(reference, std::io::stderr().is_terminal())?)
}

/// `engine load` of an archive; returns the loaded image's name or id.
fn load(engine: &Engine, path: &Path) -> Result<String, CacheError> {
    let bad = |reason: String| CacheError::Load { path: path.display().to_string(), reason };
    let mut cmd = engine.command();
    cmd.arg("load").arg("--quiet").arg("--input").arg(path).stdin(Stdio::null());
    let out = cmd.output().map_err(|source| EngineError::Spawn { engine: engine.name(), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(bad(shorten(line.trim_start_matches("Error: "))));
    }
    loaded_name(&stdout).ok_or_else(|| bad(format!("{} load named no image: {}", engine.name(), stdout.trim())))
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

/// Runs an engine command, discarding its output; the last error line on failure.
fn quiet(engine: &Engine, args: &[&str]) -> Result<String, String> {
    let out = engine
        .command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", engine.name()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().trim_start_matches("Error: ").into())
}

/// Our name for a registry image we pulled: `CACHE_REPOSITORY/<reference, sanitised>:pulled`.
pub fn pulled_name(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let reference =
        if last.contains(':') || last.contains('@') { reference.to_string() } else { format!("{reference}:latest") };
    let clean = repository_component(&reference);
    format!("{CACHE_REPOSITORY}/{clean}:pulled")
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
    let out = quiet(
        engine,
        &["images", "--filter", &format!("reference={CACHE_REPOSITORY}/*"), "--format", "{{.Repository}}:{{.Tag}}"],
    )
    .map_err(|reason| EngineError::Unavailable { engine: engine.name(), reason })?;
    let names: Vec<String> =
        out.lines().map(str::trim).filter(|l| l.starts_with(CACHE_REPOSITORY)).map(String::from).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["image", "inspect", "--format", "{{.Id}} {{.Size}} {{.Created}}"];
    args.extend(names.iter().map(String::as_str));
    let out = quiet(engine, &args).map_err(|reason| EngineError::Unavailable { engine: engine.name(), reason })?;
    Ok(names
        .iter()
        .zip(out.lines())
        .map(|(name, line)| {
            let mut w = line.splitn(3, ' ');
            let id = w.next().unwrap_or("").trim_start_matches("sha256:").chars().take(12).collect();
            let size = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            Cached { name: name.clone(), id, size, created: w.next().unwrap_or("").to_string() }
        })
        .collect())
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
        let mut args = vec!["rmi"];
        args.extend(names.iter().map(String::as_str));
        if let Err(why) = quiet(engine, &args) {
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
    let out =
        quiet(engine, &["image", "inspect", "--format", "{{range .RepoTags}}{{println .}}{{end}}", &c.name]).ok()?;
    out.lines().map(str::trim).find(|t| !t.is_empty() && !t.starts_with(CACHE_REPOSITORY)).map(String::from)
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
    fn names_of_loaded_images() {
        assert_eq!(
            loaded_name("Loaded image: localhost/md-openmpi:latest\n").as_deref(),
            Some("localhost/md-openmpi:latest")
        );
        assert_eq!(loaded_name("Loaded image(s): a:1,b:2\n").as_deref(), Some("a:1"));
        assert_eq!(loaded_name("Loaded image ID: sha256:abc\n").as_deref(), Some("sha256:abc"));
        assert_eq!(loaded_name("nothing\n"), None);
    }

    #[test]
    fn names_of_pulled_images() {
        let want = format!("{CACHE_REPOSITORY}/127.0.0.1-5000-md-openmpi-latest:pulled");
        assert_eq!(pulled_name("127.0.0.1:5000/md/openmpi:latest"), want);
        assert_eq!(pulled_name("127.0.0.1:5000/md/openmpi"), want, "the same image, the same name");
    }
}
