//! A user's registry logins for the pulls root makes for them (Docker's daemon pulls as root; rootless
//! Podman reads the user's own files and helpers itself).
//!
//! Gathered in the order the engines prefer them (an earlier source wins for a registry):
//! 1. Podman's auth files: `/run/user/UID/containers/auth.json`, then `~/.config/containers/auth.json`;
//! 2. Docker's `~/.docker/config.json`: its `auths`; and, for the registry being pulled from when no
//!    file had it, its credential helper (`credHelpers`, else `credsStore`): `docker-credential-NAME
//!    get`, run as the user, never as root;
//! 3. the site's auth file (config `registry_auth`, root's alone): logins every user's pulls may use.
//!
//! The user's files are read with their rights (the caller acts as them). What is gathered is only
//! ever written into root's private directory for the pull ([`crate::image_cache::Credentials`]):
//! no value is printed or logged, and errors name a file, never what is in it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::identity::UserIds;

/// Docker Hub's key in auth files.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// How long a credential helper may take.
const HELPER_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Logins gathered so far: `auths` by registry host, and the helpers Docker's file names.
#[derive(Debug, Default)]
pub struct Logins {
    auths: Map<String, Value>,
    helpers: BTreeMap<String, String>,
    store: Option<String>,
}

impl Logins {
    /// The user's files (call it acting as the user: their rights, not root's).
    pub fn read_user(home: &Path, uid: u32) -> Logins {
        let mut l = Logins::default();
        for file in [
            Path::new("/run/user").join(uid.to_string()).join("containers/auth.json"),
            home.join(".config/containers/auth.json"),
            home.join(".docker/config.json"),
        ] {
            if let Some(v) = read_json(&file) {
                l.add(&v);
            }
        }
        l
    }

    /// The site's file, under the user's own logins (root reads it).
    pub fn add_site(&mut self, file: &Path) {
        if let Some(v) = read_json(file) {
            let helpers = (std::mem::take(&mut self.helpers), self.store.take());
            self.add(&v);
            // the site's file gives logins, never helpers (root would run them for users)
            (self.helpers, self.store) = helpers;
        }
    }

    fn add(&mut self, v: &Value) {
        for (k, auth) in v.get("auths").and_then(Value::as_object).into_iter().flatten() {
            self.auths.entry(host_of_key(k)).or_insert_with(|| auth.clone());
        }
        for (k, h) in v.get("credHelpers").and_then(Value::as_object).into_iter().flatten() {
            if let Some(h) = h.as_str() {
                self.helpers.entry(host_of_key(k)).or_insert_with(|| h.to_string());
            }
        }
        if self.store.is_none() {
            self.store = v.get("credsStore").and_then(Value::as_str).map(String::from);
        }
    }

    /// Whether these logins say anything for `registry` (a login, or a helper to ask).
    pub fn know(&self, registry: &str) -> bool {
        let host = host_of_key(registry);
        self.auths.contains_key(&host) || self.helpers.contains_key(&host) || self.store.is_some()
    }

    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        self.auths.is_empty() && self.helpers.is_empty() && self.store.is_none()
    }

    /// A Docker client configuration (`{"auths": …}`) for a pull from `registry`: its login from
    /// the files, else from its credential helper run as `user`.
    pub fn for_registry(mut self, registry: &str, user: &UserIds) -> Value {
        let host = host_of_key(registry);
        if !self.auths.contains_key(&host) {
            let helper = self.helpers.get(&host).cloned().or(self.store.clone());
            if let Some(auth) = helper.and_then(|h| run_helper(&h, &host, user)) {
                self.auths.insert(host.clone(), auth);
            }
        }
        // Docker Hub's logins are looked up under its historical key
        let mut auths = Map::new();
        for (k, v) in self.auths {
            let key = if k == "docker.io" { DOCKER_HUB.to_string() } else { k };
            auths.insert(key, v);
        }
        serde_json::json!({ "auths": auths })
    }
}

/// A JSON file of at most 1 MiB, if it is a regular file that parses.
fn read_json(path: &Path) -> Option<Value> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(_) => {
            log::warn!("{}: not JSON; its registry logins are not used", path.display());
            None
        }
    }
}

/// The site's login for `registry` alone from its file (`registry_auth`, which root reads), as an
/// auth file (`{"auths": …}`), for a pull the user's own engine makes (rootless Podman): the user
/// is given no other registry's.
pub fn site_login(file: &Path, registry: &str) -> Option<Value> {
    SiteLogins::read(file).login_for(registry)
}

/// The site's logins (its `registry_auth` file), read once by root (the SPANK plugin, before
/// slurmstepd takes the user's ids) for [`SiteLogins::login_for`].
#[derive(Debug, Default)]
pub struct SiteLogins(Logins);

impl SiteLogins {
    pub fn read(file: &Path) -> SiteLogins {
        let mut site = Logins::default();
        site.add_site(file);
        SiteLogins(site)
    }

    /// The login for `registry` alone, as an auth file (see [`site_login`]).
    pub fn login_for(&self, registry: &str) -> Option<Value> {
        let host = host_of_key(registry);
        let auth = self.0.auths.get(&host)?.clone();
        let key = if host == "docker.io" { DOCKER_HUB.to_string() } else { host };
        Some(serde_json::json!({ "auths": { key: auth } }))
    }
}

/// At most this much of a site login is read from the plugin (see [`site_login`]).
pub const SITE_LOGIN_MAX: u64 = 16 << 10;

/// An auth file's key as a registry host: `https://index.docker.io/v1/` → `docker.io`,
/// `https://r.example.org:5000/v2/` → `r.example.org:5000`.
pub fn host_of_key(key: &str) -> String {
    let k = key.split_once("://").map(|(_, rest)| rest).unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

/// The registry a reference pulls from (Docker Hub for a name without a host part).
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_ascii_lowercase(),
        _ => "docker.io".into(),
    }
}

/// `docker-credential-NAME get` for `host`, as `user` (their ids, not root's), within
/// [`HELPER_LIMIT`]: an `auths` entry, or `None` (nothing is said of why: its output may hold secrets).
fn run_helper(name: &str, host: &str, user: &UserIds) -> Option<Value> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return None;
    }
    let mut cmd = std::process::Command::new(format!("docker-credential-{name}"));
    cmd.arg("get")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", nix::unistd::User::from_uid(user.uid.into()).ok().flatten().map(|u| u.dir).unwrap_or_default())
        .stdin(std::process::Stdio::piped());
    if nix::unistd::geteuid().is_root() && user.uid != 0 {
        user.become_in_child(&mut cmd);
    }
    let server = if host == "docker.io" { DOCKER_HUB.to_string() } else { host.to_string() };
    let out = crate::engine::output_within_feeding(&mut cmd, HELPER_LIMIT, move |stdin| {
        std::io::Write::write_all(stdin, server.as_bytes()).map_err(|e| e.to_string())
    })
    .ok()?;
    if !out.output.status.success() {
        log::warn!("the credential helper docker-credential-{name} had no login for {host}");
        return None;
    }
    let v: Value = serde_json::from_slice(&out.output.stdout).ok()?;
    let (user_name, secret) = (v.get("Username")?.as_str()?, v.get("Secret")?.as_str()?);
    Some(match user_name {
        "<token>" => serde_json::json!({ "identitytoken": secret }),
        _ => serde_json::json!({ "auth": base64(format!("{user_name}:{secret}").as_bytes()) }),
    })
}

/// Standard base64 with padding (what auth files hold).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_auth_files_hold_it() {
        assert_eq!(base64(b"user:secret"), "dXNlcjpzZWNyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn registries_and_keys() {
        assert_eq!(registry_of("10.77.0.1:5000/md/tiny"), "10.77.0.1:5000");
        assert_eq!(registry_of("nvcr.io/nvidia/pytorch:24.01"), "nvcr.io");
        assert_eq!(registry_of("library/ubuntu"), "docker.io");
        assert_eq!(registry_of("ubuntu"), "docker.io");
        assert_eq!(host_of_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(host_of_key("https://R.example.org:5000/v2/"), "r.example.org:5000");
        assert_eq!(host_of_key("r.example.org"), "r.example.org");
    }

    #[test]
    fn podmans_files_win_then_dockers_then_the_sites() {
        let home = crate::test_scratch::subdir("home");
        let write = |p: &str, v: &str| {
            let p = home.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        write(".config/containers/auth.json", r#"{"auths":{"r1:5000":{"auth":"cG9kbWFu"}}}"#);
        write(
            ".docker/config.json",
            r#"{"auths":{"r1:5000":{"auth":"ZG9ja2Vy"},"https://index.docker.io/v1/":{"auth":"aHVi"}},"credHelpers":{"r9":"none"}}"#,
        );
        let site = home.join("site.json");
        std::fs::write(
            &site,
            r#"{"auths":{"r1:5000":{"auth":"c2l0ZQ=="},"mirror:5000":{"auth":"bWlycm9y"}},"credsStore":"x"}"#,
        )
        .unwrap();
        let mut l = Logins::read_user(&home, u32::MAX);
        l.add_site(&site);
        let me = UserIds::of_caller();
        let v = l.for_registry("r1:5000", &me);
        assert_eq!(v["auths"]["r1:5000"]["auth"], "cG9kbWFu");
        assert_eq!(v["auths"]["mirror:5000"]["auth"], "bWlycm9y");
        assert_eq!(v["auths"][DOCKER_HUB]["auth"], "aHVi");
        assert!(v.get("credsStore").is_none() && v.get("credHelpers").is_none());
    }

    #[test]
    fn the_site_gives_one_registrys_login_alone() {
        let dir = crate::test_scratch::subdir("site-login");
        let file = dir.join("auth.json");
        std::fs::write(&file, r#"{"auths":{"10.77.0.1:5001":{"auth":"bWR0OnM="},"https://index.docker.io/v1/":{"auth":"aHViOnM="}},"credHelpers":{"x.org":"evil"}}"#).unwrap();
        let login = site_login(&file, "10.77.0.1:5001").unwrap();
        assert_eq!(login, serde_json::json!({"auths": {"10.77.0.1:5001": {"auth": "bWR0OnM="}}}));
        let hub = site_login(&file, &registry_of("ubuntu:24.04")).unwrap();
        assert_eq!(hub, serde_json::json!({"auths": {DOCKER_HUB: {"auth": "aHViOnM="}}}));
        assert_eq!(site_login(&file, "x.org"), None, "never a helper");
        assert_eq!(site_login(&dir.join("absent"), "10.77.0.1:5001"), None);
    }
}
