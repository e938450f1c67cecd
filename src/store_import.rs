//! `dockerd://IMAGE` and `podman://IMAGE` (enroot's URIs) where the site's engine is the other one:
//! the image is exported from the store it names with the user's own rights (the node's Docker
//! daemon, which answers only users it lets in; the user's own Podman store) and loaded into the
//! engine's store once, under a cache name of the exported image's id.
//!
//! As with an image file, what the export wrote is loaded without the names it carries (in a store
//! shared by users, Docker's, an archive's names could replace another user's), and the loaded image
//! must be the one the store said it had. The export goes into an unnamed file of the caller's state
//! directory, which nothing else can open, and vanishes with it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::engine::{failure_line, output_within, Engine, EngineKind};
use crate::identity::UserIds;
use crate::image_cache::{CacheError, FETCH_LIMIT};
use crate::image_source::{LocalStore, CACHE_REPOSITORY};

impl LocalStore {
    /// The engine whose store this is.
    pub fn engine_kind(self) -> EngineKind {
        match self {
            LocalStore::Docker => EngineKind::Docker,
            LocalStore::Podman => EngineKind::Podman,
        }
    }
}

/// Brings `reference` from `store` (not `engine`'s) into `engine`'s store and answers the name to
/// run it by. `user`: whose rights the export runs with, when root acts for them (a shared store,
/// whose names then carry their uid, `scope`); the caller's own otherwise.
pub fn import(
    engine: &Engine,
    store: LocalStore,
    reference: &str,
    scope: Option<u32>,
    user: Option<&UserIds>,
    state: &Path,
) -> Result<String, CacheError> {
    let named = format!("{}{reference}", store.scheme());
    let fail = |reason: String| CacheError::FromStore { image: named.clone(), reason };
    let source = Engine::find(store.engine_kind())
        .map_err(|_| fail(format!("this node has no {} to read that store", store.engine_kind().command())))?;
    let as_user = |args: &[&str]| {
        let mut cmd = source.command();
        cmd.args(args);
        if let Some(user) = user.filter(|u| !u.is_root()) {
            user_environment(&mut cmd, user);
            user.become_in_child(&mut cmd);
        }
        cmd
    };
    // the store's id for it, asked as the user: what they cannot see there stays unseen
    let out = output_within(&mut as_user(&["image", "inspect", "--format", "{{.Id}}", reference]), FETCH_LIMIT)
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let why = failure_line(store.engine_kind().command(), out.status, &String::from_utf8_lossy(&out.stderr));
        return Err(fail(match why.contains("permission denied") {
            true => format!("the node's {} refuses you ({why})", store.engine_kind().command()),
            false => why,
        }));
    }
    let want = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("sha256:").to_string();
    if want.len() < 12 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!("the store gave no image id ({want})")));
    }
    let word = store.scheme().trim_end_matches("://");
    let user_part = scope.map(|u| format!("u{u}/")).unwrap_or_default();
    let name = format!("{CACHE_REPOSITORY}/{user_part}{word}-{}:imported", &want[..12]);
    if engine.image_present(&name)? {
        return Ok(name);
    }
    // exported as the user into a file nobody can open by name
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(state)
        .map_err(|e| CacheError::Io { what: state.display().to_string(), source: e })?;
    let mut save = as_user(&["save", reference]);
    if store == LocalStore::Podman {
        save.args(["--format", "docker-archive"]);
    }
    let into = file.try_clone().map_err(|e| fail(e.to_string()))?;
    let saved = crate::image_cache::with_progress(&format!("exporting {named}"), || {
        crate::engine::output_into_within(&mut save, FETCH_LIMIT, into).map_err(|e| fail(e.to_string()))
    })?;
    if !saved.output.status.success() {
        return Err(fail(format!(
            "cannot export it: {}",
            failure_line(
                store.engine_kind().command(),
                saved.output.status,
                &String::from_utf8_lossy(&saved.output.stderr)
            )
        )));
    }
    let loaded = crate::image_cache::with_progress(&format!("loading {named}"), || {
        engine.load(FETCH_LIMIT, move |stdin| {
            use std::io::Seek;
            file.rewind().map_err(|e| e.to_string())?;
            crate::image_source::copy_without_names(&mut file, stdin)
        })
    })
    .map_err(&fail)?;
    let id = engine.image_id(&loaded).map_err(&fail)?;
    if id.trim_start_matches("sha256:") != want {
        let _ = engine.remove_images(std::slice::from_ref(&id));
        return Err(fail(format!("the store said {want:.12} but the export held {id:.12}: refused")));
    }
    engine.tag(&id, &name).map_err(&fail)?;
    Ok(name)
}

/// What the user's Podman needs to find their store when root starts it for them: their home, and
/// their runtime directory where they have one.
fn user_environment(cmd: &mut Command, user: &UserIds) {
    let entry = nix::unistd::User::from_uid(user.uid.into()).ok().flatten();
    cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin").env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
    if let Some(entry) = entry {
        cmd.env("HOME", &entry.dir).env("USER", &entry.name).env("LOGNAME", &entry.name);
    }
    let runtime = format!("/run/user/{}", user.uid);
    let owned = std::fs::metadata(&runtime).map(|m| std::os::unix::fs::MetadataExt::uid(&m) == user.uid);
    if owned.unwrap_or(false) {
        cmd.env("XDG_RUNTIME_DIR", runtime);
    }
}
